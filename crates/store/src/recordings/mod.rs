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
//! An upload writes each batch's chunks into free blocks (`crate::extents`: marked in use
//! before they are written), then commits their entries under a new blob number (the commit's
//! first flush makes the blocks durable before any state references them); finishing
//! publishes the recording and retires the blob it replaces in one transaction.
//!
//! The code is in four parts: this module (the tables, the record format, listing and
//! deleting), `upload` ([`Upload`]), `reader` ([`RecordingReader`]) and `blocks` (the blocks on
//! the device: entries, writing, the references and reclaiming them).

mod blocks;
mod reader;
mod upload;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result, storage};
use crate::extents::BLOCK;
use crate::store::{META, Store, Timestamp};

pub(crate) use blocks::{collect_garbage, decode_entry, entry, referenced_blocks};
pub use reader::RecordingReader;
pub use upload::Upload;

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
