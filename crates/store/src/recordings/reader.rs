//! Reading a recording: [`Recordings::open`] takes a snapshot, [`RecordingReader`] reads its
//! chunks (from blocks on the device or inside the database) and checks their SHA-256.

use std::io::{self, Read, Seek, SeekFrom};

use super::{
    CHUNKS, EXTENTS, RECORD_VERSION_1, RECS, RecordingInfo, Recordings, SUMS, decode_entry,
    decode_info,
};
use crate::error::{Error, Result, storage};
use crate::extents::BLOCK;

impl Recordings<'_> {
    /// Opens recording `id` for reading (a snapshot: a later delete or replacement does not
    /// affect this reader).
    pub fn open(&self, id: &str) -> Result<RecordingReader> {
        let op = "open a recording";
        // Registered before the snapshot is taken: blocks this snapshot references are not
        // reused while the reader lives, even when the recording is deleted meanwhile.
        let guard = self.store.inner.extents.reader();
        let txn = self.store.read()?;
        let recs = txn.open_table(RECS).map_err(storage(op))?;
        let info = match recs.get(id).map_err(storage(op))? {
            Some(v) => decode_info(v.value())?,
            None => {
                return Err(Error::NotFound(format!(
                    "there is no recording {id:?}: list the recordings to see which exist"
                )));
            }
        };
        Ok(RecordingReader {
            extents: txn.open_table(EXTENTS).map_err(storage(op))?,
            chunks: txn.open_table(CHUNKS).map_err(storage(op))?,
            sums: txn.open_table(SUMS).map_err(storage(op))?,
            dev: self.store.device().clone(),
            _guard: guard,
            info,
            pos: 0,
            cur: None,
            hasher: Some((0, openssl::sha::Sha256::new())),
        })
    }

    /// Reads `len` bytes of recording `id` from `start` (clipped at the end).
    pub fn read_range(&self, id: &str, start: u64, len: usize) -> Result<Vec<u8>> {
        let mut r = self.open(id)?;
        let n = (r.info.size.saturating_sub(start)).min(len as u64) as usize;
        let mut buf = vec![0u8; n];
        r.read_exact_at(&mut buf, start)?;
        Ok(buf)
    }
}

/// Reads a recording: [`Read`] + [`Seek`] for streaming and HTTP ranges, or
/// [`RecordingReader::read_exact_at`]. Every chunk's SHA-256 is checked as it is read, and a
/// read from the start to the end also checks the recording's SHA-256.
pub struct RecordingReader {
    info: RecordingInfo,
    extents: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    dev: std::sync::Arc<dyn atrest_volume::BlockDevice>,
    _guard: crate::extents::ReaderGuard,
    chunks: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    sums: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    pos: u64,
    cur: Option<(u64, Vec<u8>)>,
    /// (offset hashed up to, hasher) while the reads are sequential from 0.
    hasher: Option<(u64, openssl::sha::Sha256)>,
}

impl std::fmt::Debug for RecordingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingReader")
            .field("info", &self.info)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl RecordingReader {
    /// The recording's metadata.
    pub fn info(&self) -> &RecordingInfo {
        &self.info
    }

    fn chunk(&mut self, idx: u64) -> Result<&[u8]> {
        if self.cur.as_ref().is_none_or(|(i, _)| *i != idx) {
            let op = "read a recording";
            let key = (self.info.blob, idx);
            let clen = self.info.chunk_len() as u64;
            let expected = (self.info.size - idx * clen).min(clen) as usize;
            let missing = || Error::Corrupt {
                what: format!("chunk {idx} of recording {:?} is missing", self.info.id),
            };
            let entry = if self.info.version == RECORD_VERSION_1 {
                None
            } else {
                self.extents
                    .get(key)
                    .map_err(storage(op))?
                    .map(|v| decode_entry(v.value()))
                    .transpose()?
            };
            // Chunks of format 1, and a short last chunk, are inside the database.
            let (data, sum) = if let Some((block, sum)) = entry {
                let padded = expected.next_multiple_of(4096);
                let at = block
                    .checked_mul(BLOCK)
                    .filter(|at| at.saturating_add(padded as u64) <= self.dev.len())
                    .ok_or_else(|| Error::Corrupt {
                        what: format!(
                            "chunk {idx} of recording {:?} names a block outside the volume",
                            self.info.id
                        ),
                    })?;
                // The previous chunk's buffer is reused (no new zeroed 1 MiB per chunk).
                let mut data = self.cur.take().map(|(_, d)| d).unwrap_or_default();
                data.resize(padded, 0);
                self.dev
                    .read_at(&mut data, at)
                    .map_err(|e| crate::error::classify(op, redb::Error::Io(e)))?;
                data.truncate(expected);
                (data, sum.to_vec())
            } else {
                let data = self
                    .chunks
                    .get(key)
                    .map_err(storage(op))?
                    .ok_or_else(missing)?
                    .value()
                    .to_vec();
                let sum = self
                    .sums
                    .get(key)
                    .map_err(storage(op))?
                    .ok_or_else(missing)?
                    .value()
                    .to_vec();
                (data, sum)
            };
            if data.len() != expected || openssl::sha::sha256(&data)[..] != sum[..] {
                return Err(Error::Corrupt {
                    what: format!(
                        "chunk {idx} of recording {:?} does not match its SHA-256",
                        self.info.id
                    ),
                });
            }
            self.cur = Some((idx, data));
        }
        Ok(self.cur.as_ref().map(|(_, d)| &d[..]).unwrap_or_default())
    }

    /// Reads `buf.len()` bytes at `offset`; fails past the end.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.info.size) {
            return Err(Error::Invalid(format!(
                "the range of {} bytes at {offset} goes past the end of recording {:?} ({} bytes)",
                buf.len(),
                self.info.id,
                self.info.size
            )));
        }
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let clen = self.info.chunk_len() as u64;
            let idx = at / clen;
            let within = (at % clen) as usize;
            let c = self.chunk(idx)?;
            let n = (c.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&c[within..within + n]);
            done += n;
        }
        Ok(())
    }
}

impl Read for RecordingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.info.size - self.pos.min(self.info.size);
        let n = (buf.len() as u64)
            .min(left)
            .min(self.info.chunk_len() as u64) as usize;
        if n > 0 {
            let pos = self.pos;
            self.read_exact_at(&mut buf[..n], pos)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((at, h)) = self.hasher.as_mut()
                && *at == pos
            {
                h.update(&buf[..n]);
                *at += n as u64;
            }
            self.pos += n as u64;
        }
        if self.pos == self.info.size
            && let Some((at, h)) = self.hasher.take()
            && at == self.info.size
            && h.finish() != self.info.sha256
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::Corrupt {
                    what: format!("recording {:?} does not match its SHA-256", self.info.id),
                },
            ));
        }
        Ok(n)
    }
}

impl Seek for RecordingReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.info.size as i128;
        let new = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 || new > u64::MAX as i128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the recording",
            ));
        }
        self.pos = new as u64;
        if self.hasher.as_ref().is_some_and(|(at, _)| *at != self.pos) {
            self.hasher = None;
        }
        Ok(self.pos)
    }
}
