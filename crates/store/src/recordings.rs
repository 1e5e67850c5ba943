//! Session recordings: large binary streams stored in fixed-size chunks, uploaded in batches
//! with bounded memory, read back by range with every chunk's SHA-256 checked.
//!
//! Tables:
//! - `rec.meta`: recording id → [`RecordingInfo`] (its blob number, size, SHA-256, …);
//! - `rec.extents`: (blob, index) → the 1 MiB block on the device holding chunk `index`
//!   ([`CHUNK_LEN`] bytes each, the last one shorter) and the chunk's SHA-256;
//! - `rec.pending`: blob → id of an upload under way (a blob left there by a crash is garbage);
//! - `rec.garbage`: blobs whose chunks are being deleted;
//! - `rec.chunks`, `rec.sums`: (blob, index) → chunk bytes / SHA-256 of chunks inside the
//!   database: a recording's last chunk when it is at most [`INLINE_MAX`] bytes, and every chunk
//!   of recordings stored by format 1 (chunks of 1020 KiB), read until they are deleted.
//!
//! An upload writes each batch's chunks into free blocks ([`crate::extents`]: marked in use
//! before they are written), then commits their entries under a new blob number (the commit's
//! first flush makes the blocks durable before any state references them); finishing
//! publishes the recording and retires the blob it replaces in one transaction.

use std::io::{self, Read, Seek, SeekFrom};

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use atrest_volume::UnlockedBytes;

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result, storage};
use crate::extents::BLOCK;
use crate::store::{META, Store, Timestamp};

const RECS: TableDefinition<&str, &[u8]> = TableDefinition::new("rec.meta");
const EXTENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("rec.extents");
const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("rec.chunks");
const SUMS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("rec.sums");
const PENDING: TableDefinition<u64, &str> = TableDefinition::new("rec.pending");
const GARBAGE: TableDefinition<u64, ()> = TableDefinition::new("rec.garbage");
const NEXT_BLOB_KEY: &str = "rec.next_blob";

/// Bytes per chunk: one block on the device.
pub const CHUNK_LEN: usize = BLOCK as usize;
/// A last chunk of at most this many bytes is kept inside the database instead of taking a
/// whole block (a recording of 100 KiB takes 128 KiB of database pages, not 1 MiB).
pub const INLINE_MAX: usize = 128 << 10;
/// Bytes per chunk of recordings stored by format 1 (1 MiB less a page header).
const V1_CHUNK_LEN: usize = 1020 << 10;
/// Length of a `rec.extents` value: block number and SHA-256.
const EXTENT_ENTRY: usize = 8 + 32;
/// Longest recording id.
pub const MAX_ID_LEN: usize = 128;
/// Longest session id.
pub const MAX_SESSION_LEN: usize = 256;
/// Chunks deleted per transaction when space is reclaimed.
const GC_BATCH: usize = 256;
/// Recording records of version 2 have their chunks in blocks; version 1 in the database.
const RECORD_VERSION: u8 = 2;
const RECORD_VERSION_1: u8 = 1;

/// What the store knows about a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingInfo {
    /// Its id (letters, digits, `.`, `_`, `-`).
    pub id: String,
    /// The session it records.
    pub session: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole recording.
    pub sha256: [u8; 32],
    /// When the upload finished.
    pub created: Timestamp,
    blob: u64,
    /// Record version: where the chunks are.
    version: u8,
}

impl RecordingInfo {
    fn chunk_len(&self) -> usize {
        if self.version == RECORD_VERSION_1 {
            V1_CHUNK_LEN
        } else {
            CHUNK_LEN
        }
    }

    /// SHA-256 in lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub(crate) fn encode_info(i: &RecordingInfo) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(i.version)
        .str(&i.id)
        .str(&i.session)
        .u64(i.size)
        .raw(&i.sha256)
        .i64(i.created.0)
        .u64(i.blob)
        .u32(i.chunk_len() as u32);
    w.finish()
}

/// Decodes a stored recording record. Never panics.
pub fn decode_info(b: &[u8]) -> Result<RecordingInfo, DecodeError> {
    let mut r = Reader::new("recording", b);
    let version = r.u8("version")?;
    if version != RECORD_VERSION && version != RECORD_VERSION_1 {
        return Err(r.err("version", "unknown recording record version"));
    }
    let id = r.str("id", MAX_ID_LEN)?.to_string();
    let session = r.str("session", MAX_SESSION_LEN)?.to_string();
    let size = r.u64("size")?;
    let sha256 = r.array::<32>("sha256")?;
    let created = Timestamp(r.i64("created")?);
    let blob = r.u64("blob")?;
    let info = RecordingInfo {
        id,
        session,
        size,
        sha256,
        created,
        blob,
        version,
    };
    if r.u32("chunk length")? as usize != info.chunk_len() {
        return Err(r.err("chunk length", "not the chunk length of this format"));
    }
    r.end()?;
    Ok(info)
}

/// Checks a recording id: 1 to [`MAX_ID_LEN`] bytes of letters, digits, `.`, `_`, `-`, not
/// `.` or `..` (ids appear in URLs and file names).
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        return Err(Error::Invalid(format!(
            "recording id {id:?} is not valid: use 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

pub(crate) fn init_tables(txn: &WriteTransaction) -> Result<()> {
    let op = "open the recording tables";
    txn.open_table(RECS).map_err(storage(op))?;
    txn.open_table(EXTENTS).map_err(storage(op))?;
    txn.open_table(CHUNKS).map_err(storage(op))?;
    txn.open_table(SUMS).map_err(storage(op))?;
    let mut pending = txn.open_table(PENDING).map_err(storage(op))?;
    let mut garbage = txn.open_table(GARBAGE).map_err(storage(op))?;
    // Uploads do not survive a restart: their chunks are reclaimed.
    let blobs: Vec<u64> = pending
        .iter()
        .map_err(storage(op))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()
        .map_err(storage(op))?;
    for b in blobs {
        pending.remove(b).map_err(storage(op))?;
        garbage.insert(b, ()).map_err(storage(op))?;
    }
    Ok(())
}

pub(crate) fn entry(block: u64, sum: &[u8; 32]) -> [u8; EXTENT_ENTRY] {
    let mut e = [0u8; EXTENT_ENTRY];
    e[..8].copy_from_slice(&block.to_le_bytes());
    e[8..].copy_from_slice(sum);
    e
}

/// Decodes a `rec.extents` value. Never panics.
pub(crate) fn decode_entry(v: &[u8]) -> Result<(u64, [u8; 32])> {
    let (b, sum) = <[u8; EXTENT_ENTRY]>::try_from(v)
        .map(|e| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[..8]);
            let mut sum = [0u8; 32];
            sum.copy_from_slice(&e[8..]);
            (u64::from_le_bytes(b), sum)
        })
        .map_err(|_| Error::Corrupt {
            what: "a recording's block entry".into(),
        })?;
    Ok((b, sum))
}

/// Every block the committed state references (published recordings, uploads under way,
/// blobs being reclaimed).
pub(crate) fn referenced_blocks(store: &Store) -> Result<Vec<u64>> {
    let op = "read the recordings' blocks";
    let txn = store.read()?;
    let t = txn.open_table(EXTENTS).map_err(storage(op))?;
    let mut out = Vec::new();
    for r in t.iter().map_err(storage(op))? {
        let (_, v) = r.map_err(storage(op))?;
        out.push(decode_entry(v.value())?.0);
    }
    Ok(out)
}

/// Deletes the chunks of retired blobs, a batch per transaction, until none is left. Blocks
/// freed by a transaction are reused once it is durable and no reader may still see them.
pub(crate) fn collect_garbage(store: &Store) -> Result<()> {
    let op = "reclaim the space of deleted recordings";
    loop {
        let (more, freed) = store.write(op, true, |txn| {
            let mut garbage = txn.open_table(GARBAGE).map_err(storage(op))?;
            let first = garbage
                .first()
                .map_err(storage(op))?
                .map(|(k, _)| k.value());
            let Some(blob) = first else {
                return Ok((false, Vec::new()));
            };
            let mut extents = txn.open_table(EXTENTS).map_err(storage(op))?;
            let mut freed = Vec::new();
            let keys: Vec<((u64, u64), u64)> = extents
                .range((blob, 0)..=(blob, u64::MAX))
                .map_err(storage(op))?
                .take(GC_BATCH)
                .map(|r| {
                    let (k, v) = r.map_err(storage(op))?;
                    Ok((
                        k.value(),
                        decode_entry(v.value()).map(|e| e.0).unwrap_or(u64::MAX),
                    ))
                })
                .collect::<Result<_>>()?;
            for (k, b) in &keys {
                extents.remove(k).map_err(storage(op))?;
                if *b != u64::MAX {
                    freed.push(*b);
                }
            }
            // Chunks of a format-1 recording, inside the database.
            let mut chunks = txn.open_table(CHUNKS).map_err(storage(op))?;
            let mut sums = txn.open_table(SUMS).map_err(storage(op))?;
            let old: Vec<(u64, u64)> = chunks
                .range((blob, 0)..=(blob, u64::MAX))
                .map_err(storage(op))?
                .take(GC_BATCH)
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(storage(op))?;
            for k in &old {
                chunks.remove(k).map_err(storage(op))?;
                sums.remove(k).map_err(storage(op))?;
            }
            if keys.len() < GC_BATCH && old.len() < GC_BATCH {
                garbage.remove(blob).map_err(storage(op))?;
            }
            Ok((true, freed))
        })?;
        store.inner.extents.freed(&freed);
        if !more {
            return Ok(());
        }
    }
}

/// Writes the chunks of `buf` into `blocks` (ascending; chunk `i` into `blocks[i]`), runs of
/// adjacent blocks in one write, the last chunk padded with zeros to whole 4 KiB sectors (so a
/// torn sector only ever hits bytes of this write); pushes each chunk's SHA-256 to `sums`.
fn write_blocks(
    dev: &dyn atrest_volume::BlockDevice,
    buf: &[u8],
    blocks: &[u64],
    sums: &mut Vec<[u8; 32]>,
) -> io::Result<()> {
    let chunks: Vec<&[u8]> = buf.chunks(CHUNK_LEN).collect();
    sums.extend(chunks.iter().map(|c| openssl::sha::sha256(c)));
    let mut i = 0;
    while i < chunks.len() {
        let mut j = i + 1;
        while j < chunks.len() && blocks[j] == blocks[j - 1] + 1 && chunks[j - 1].len() == CHUNK_LEN
        {
            j += 1;
        }
        let at = blocks[i] * BLOCK;
        let start = i * CHUNK_LEN;
        let end = start + chunks[i..j].iter().map(|c| c.len()).sum::<usize>();
        let bytes = &buf[start..end];
        if bytes.len().is_multiple_of(4096) {
            dev.write_at(bytes, at)?;
        } else {
            let mut padded = Vec::with_capacity(bytes.len().next_multiple_of(4096));
            padded.extend_from_slice(bytes);
            padded.resize(bytes.len().next_multiple_of(4096), 0);
            dev.write_at(&padded, at)?;
        }
        i = j;
    }
    Ok(())
}

/// Stores `data` as recording `id` the way format 1 did (chunks inside the database) and marks
/// the store as format 1, so the tests can check that such a store is taken over.
pub(crate) fn put_format_1(store: &Store, id: &str, session: &str, data: &[u8]) -> Result<()> {
    let op = "store a format-1 recording";
    store.write(op, false, |txn| {
        let mut meta = txn.open_table(META).map_err(storage(op))?;
        let blob = u64::MAX / 2 + data.len() as u64;
        meta.insert("store.format", &1u32.to_le_bytes()[..])
            .map_err(storage(op))?;
        let mut chunks = txn.open_table(CHUNKS).map_err(storage(op))?;
        let mut sums = txn.open_table(SUMS).map_err(storage(op))?;
        for (i, c) in data.chunks(V1_CHUNK_LEN).enumerate() {
            chunks.insert((blob, i as u64), c).map_err(storage(op))?;
            sums.insert((blob, i as u64), &openssl::sha::sha256(c)[..])
                .map_err(storage(op))?;
        }
        let info = RecordingInfo {
            id: id.into(),
            session: session.into(),
            size: data.len() as u64,
            sha256: openssl::sha::sha256(data),
            created: Timestamp::now(),
            blob,
            version: RECORD_VERSION_1,
        };
        txn.open_table(RECS)
            .map_err(storage(op))?
            .insert(id, &encode_info(&info)[..])
            .map_err(storage(op))?;
        Ok(())
    })
}

/// The recordings of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct Recordings<'a> {
    pub(crate) store: &'a Store,
}

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

    /// What the store knows about recording `id`.
    pub fn info(&self, id: &str) -> Result<Option<RecordingInfo>> {
        let txn = self.store.read()?;
        let t = txn
            .open_table(RECS)
            .map_err(storage("open the recordings"))?;
        let v = t.get(id).map_err(storage("read the recordings"))?;
        Ok(match v {
            Some(v) => Some(decode_info(v.value())?),
            None => None,
        })
    }

    /// All recordings, sorted by id.
    pub fn list(&self) -> Result<Vec<RecordingInfo>> {
        let op = "list the recordings";
        let txn = self.store.read()?;
        let t = txn.open_table(RECS).map_err(storage(op))?;
        let mut out = Vec::new();
        for r in t.iter().map_err(storage(op))? {
            let (_, v) = r.map_err(storage(op))?;
            out.push(decode_info(v.value())?);
        }
        Ok(out)
    }

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

    /// Deletes recording `id` and reclaims its space; returns whether it existed. Works also
    /// when the store is full.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let op = "delete a recording";
        let existed = self.store.write(op, true, |txn| {
            let mut recs = txn.open_table(RECS).map_err(storage(op))?;
            let old = recs
                .remove(id)
                .map_err(storage(op))?
                .map(|v| v.value().to_vec());
            match old {
                Some(b) => {
                    let info = decode_info(&b)?;
                    txn.open_table(GARBAGE)
                        .map_err(storage(op))?
                        .insert(info.blob, ())
                        .map_err(storage(op))?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })?;
        collect_garbage(self.store)?;
        Ok(existed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_records() {
        for ok in ["a", "rec-1.mp4", "A_b-C.9"] {
            check_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        let i = RecordingInfo {
            id: "r1".into(),
            session: "s".into(),
            size: 5,
            sha256: [3; 32],
            created: Timestamp(7),
            blob: 9,
            version: RECORD_VERSION,
        };
        let e = entry(77, &[5; 32]);
        assert_eq!(decode_entry(&e).unwrap(), (77, [5; 32]));
        assert!(decode_entry(&e[..39]).is_err());
        assert!(decode_entry(&[e.to_vec(), vec![0]].concat()).is_err());
        crate::fuzzing::records(&e);
        let mut v1 = i.clone();
        v1.version = RECORD_VERSION_1;
        assert_eq!(decode_info(&encode_info(&v1)).unwrap(), v1);
        let b = encode_info(&i);
        assert_eq!(decode_info(&b).unwrap(), i);
        for cut in 0..b.len() {
            assert!(decode_info(&b[..cut]).is_err());
        }
    }
}
