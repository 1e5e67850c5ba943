//! The recordings' blocks on the device: the `rec.extents` entry naming a chunk's block and
//! SHA-256, writing chunks into blocks, the blocks the committed state references, and
//! reclaiming the blocks of retired blobs.

use std::io;

use redb::ReadableTable;

use super::{CHUNK_LEN, CHUNKS, EXTENT_ENTRY, EXTENTS, GARBAGE, GC_BATCH, SUMS};
use crate::error::{Error, Result, storage};
use crate::extents::BLOCK;
use crate::store::Store;

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
pub(super) fn write_blocks(
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
