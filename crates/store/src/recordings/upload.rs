//! Uploads: [`Recordings::upload`] starts one, [`Upload`] buffers a batch of chunks, writes
//! them into free blocks and commits their entries, and publishes the recording when finished.

use std::io;

use atrest_volume::UnlockedBytes;
use redb::ReadableTable;

use super::blocks::write_blocks;
use super::{
    CHUNK_LEN, CHUNKS, EXTENTS, GARBAGE, INLINE_MAX, MAX_SESSION_LEN, NEXT_BLOB_KEY, PENDING,
    RECORD_VERSION, RECS, RecordingInfo, Recordings, SUMS, check_id, collect_garbage, decode_entry,
    decode_info, encode_info, entry,
};
use crate::error::{Error, Result, storage};
use crate::store::{META, Store, Timestamp};

impl Recordings<'_> {
    /// Starts uploading recording `id` of `session`. The data is written with
    /// [`Upload::write`] and becomes visible, replacing any recording of that id, only when
    /// [`Upload::finish`] returns. An upload dropped unfinished (or cut by a crash) leaves
    /// nothing behind.
    pub fn upload(&self, id: &str, session: &str) -> Result<Upload> {
        check_id(id)?;
        if session.is_empty() || session.len() > MAX_SESSION_LEN {
            return Err(Error::Invalid(format!(
                "the session id of a recording must be 1 to {MAX_SESSION_LEN} bytes long"
            )));
        }
        let op = "start a recording upload";
        let blob = self.store.write(op, false, |txn| {
            let mut meta = txn.open_table(META).map_err(storage(op))?;
            let next = match meta.get(NEXT_BLOB_KEY).map_err(storage(op))? {
                Some(v) => <[u8; 8]>::try_from(v.value())
                    .map(u64::from_le_bytes)
                    .map_err(|_| Error::Corrupt {
                        what: "the recording counter".into(),
                    })?,
                None => 1,
            };
            meta.insert(NEXT_BLOB_KEY, &(next + 1).to_le_bytes()[..])
                .map_err(storage(op))?;
            txn.open_table(PENDING)
                .map_err(storage(op))?
                .insert(next, id)
                .map_err(storage(op))?;
            Ok(next)
        })?;
        let chunks = (self.store.inner.opts.upload_batch_bytes / CHUNK_LEN).max(1);
        Ok(Upload {
            store: self.store.clone(),
            id: id.to_string(),
            session: session.to_string(),
            blob,
            batch: chunks * CHUNK_LEN,
            buf: UnlockedBytes::new(),
            next_chunk: 0,
            size: 0,
            hasher: openssl::sha::Sha256::new(),
            done: false,
        })
    }

    /// Uploads `data` whole (a convenience over [`Recordings::upload`]).
    pub fn put(&self, id: &str, session: &str, data: &[u8]) -> Result<RecordingInfo> {
        let mut u = self.upload(id, session)?;
        u.write(data)?;
        u.finish()
    }
}

/// An upload under way. Memory use is bounded by the batch size
/// ([`crate::StoreOptions::upload_batch_bytes`]) whatever the recording's size, and grows with
/// the data received: an upload that stalled after a few bytes holds a few bytes.
pub struct Upload {
    store: Store,
    id: String,
    session: String,
    blob: u64,
    batch: usize,
    /// Not locked in RAM even when the process locks all its memory: it holds no key, and
    /// uploads must not pin locked memory.
    buf: UnlockedBytes,
    next_chunk: u64,
    size: u64,
    hasher: openssl::sha::Sha256,
    done: bool,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Upload {
    /// Appends `data`; commits a batch of chunks whenever the buffer is full.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = (self.batch - self.buf.len()).min(data.len());
            // Grow geometrically as the data arrives, never past one batch: an upload that sent
            // little holds little.
            self.buf
                .reserve(n, 64 << 10, self.batch)
                .and_then(|()| self.buf.extend_from_slice(&data[..n]))
                .map_err(|e| Error::Invalid(format!("cannot buffer the upload ({e}); retry it")))?;
            self.hasher.update(&data[..n]);
            self.size += n as u64;
            data = &data[n..];
            if self.buf.len() == self.batch {
                self.commit(None)?;
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes buffered chunks (all of them, and publishes the recording, when `publish` is
    /// given).
    fn commit(&mut self, publish: Option<&RecordingInfo>) -> Result<()> {
        let op = "store recording data";
        let blob = self.blob;
        let first = self.next_chunk;
        let store = &self.store;
        let all = self.buf.as_slice();
        // Only the publishing commit can end with a short chunk: when it is small, it goes
        // inside the database.
        let tail_len = all.len() % CHUNK_LEN;
        let inline = (publish.is_some() && tail_len > 0 && tail_len <= INLINE_MAX)
            .then(|| &all[all.len() - tail_len..]);
        let buf = &all[..all.len() - inline.map_or(0, <[u8]>::len)];
        let n = buf.len().div_ceil(CHUNK_LEN);
        let extents = &store.inner.extents;
        let dev = store.device();
        let blocks = if n == 0 {
            Vec::new()
        } else {
            extents
                .allocate(n, store.inner.reserve(), dev.len())
                .map_err(|_| store.full())?
        };
        let mut sums = Vec::with_capacity(n);
        if let Err(e) = write_blocks(dev.as_ref(), buf, &blocks, &mut sums) {
            // Nothing references these blocks yet.
            extents.give_back(&blocks);
            return Err(crate::error::classify(op, redb::Error::Io(e)));
        }
        extents.note_write();
        let result = store.write(op, false, |txn| {
            let mut table = txn.open_table(EXTENTS).map_err(storage(op))?;
            for (i, (b, sum)) in blocks.iter().zip(&sums).enumerate() {
                table
                    .insert((blob, first + i as u64), &entry(*b, sum)[..])
                    .map_err(storage(op))?;
            }
            if let Some(tail) = inline {
                let key = (blob, first + n as u64);
                txn.open_table(CHUNKS)
                    .map_err(storage(op))?
                    .insert(key, tail)
                    .map_err(storage(op))?;
                txn.open_table(SUMS)
                    .map_err(storage(op))?
                    .insert(key, &openssl::sha::sha256(tail)[..])
                    .map_err(storage(op))?;
            }
            if let Some(info) = publish {
                txn.open_table(PENDING)
                    .map_err(storage(op))?
                    .remove(blob)
                    .map_err(storage(op))?;
                let mut recs = txn.open_table(RECS).map_err(storage(op))?;
                let old = recs
                    .insert(info.id.as_str(), &encode_info(info)[..])
                    .map_err(storage(op))?
                    .map(|v| v.value().to_vec());
                if let Some(old) = old {
                    let old = decode_info(&old)?;
                    txn.open_table(GARBAGE)
                        .map_err(storage(op))?
                        .insert(old.blob, ())
                        .map_err(storage(op))?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            // The blocks go back only when the durable state is known not to reference them
            // (a commit that failed late may still have reached the disk).
            if !blocks.is_empty() && matches!(self.committed_block(first), Ok(None)) {
                extents.give_back(&blocks);
            }
            return Err(e);
        }
        self.next_chunk += (n + usize::from(inline.is_some())) as u64;
        self.buf.clear();
        Ok(())
    }

    /// The block of chunk `idx` of this upload in the newest committed state.
    fn committed_block(&self, idx: u64) -> Result<Option<u64>> {
        let op = "check an upload's blocks";
        let txn = self.store.read()?;
        let t = txn.open_table(EXTENTS).map_err(storage(op))?;
        let v = t.get((self.blob, idx)).map_err(storage(op))?;
        v.map(|v| decode_entry(v.value()).map(|e| e.0)).transpose()
    }

    /// Stores what is left and publishes the recording.
    pub fn finish(mut self) -> Result<RecordingInfo> {
        let hasher = std::mem::replace(&mut self.hasher, openssl::sha::Sha256::new());
        let info = RecordingInfo {
            id: self.id.clone(),
            session: self.session.clone(),
            size: self.size,
            sha256: hasher.finish(),
            created: Timestamp::now(),
            blob: self.blob,
            version: RECORD_VERSION,
        };
        self.commit(Some(&info))?;
        self.done = true;
        collect_garbage(&self.store)?;
        Ok(info)
    }

    fn abort(&mut self) -> Result<()> {
        self.done = true;
        let op = "cancel a recording upload";
        let blob = self.blob;
        self.store.write(op, true, |txn| {
            txn.open_table(PENDING)
                .map_err(storage(op))?
                .remove(blob)
                .map_err(storage(op))?;
            txn.open_table(GARBAGE)
                .map_err(storage(op))?
                .insert(blob, ())
                .map_err(storage(op))?;
            Ok(())
        })?;
        collect_garbage(&self.store)
    }
}

impl io::Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Upload::write(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: whatever is left is reclaimed at the next open.
            let _ = self.abort();
        }
    }
}
