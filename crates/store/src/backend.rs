//! The database file on a block device (a `redb::StorageBackend`), made safe for media whose
//! torn writes garble whole sectors (XTS) and whose unwritten sectors do not read as zeros.
//!
//! Layout of the device:
//!
//! ```text
//! [0, 8 KiB)        superblock slot 0
//! [8 KiB, 16 KiB)   superblock slot 1
//! [16 KiB, end)     file bytes [4 KiB, …): file offset x is at device offset x + 12 KiB
//! ```
//!
//! - The file's first page (the database header with its two commit slots, which the database
//!   updates in place) is never written in place: it is held in memory and persisted, with the
//!   file length and the written-up-to mark, into the superblock slot that does not hold the
//!   current state, only after every earlier write has been flushed. A torn slot write fails
//!   its checksum and the other slot, the previous durable state, is used.
//! - Bytes of the file at or above the written-up-to mark read as zeros without touching the
//!   device; a write above the mark first fills the gap with zeros. So new space reads as zeros
//!   on any medium, and the mark is persisted with the state it belongs to.
//! - The file may be longer than the device (the database grows its file by doubling); only
//!   writes need room. Recording blocks are handed out from the top of the device down
//!   ([`crate::extents`]); a write that raises the mark claims the device bytes below it first,
//!   and fails — reported as "full" — when they reach a block in use, the room kept above the
//!   database for deletions, or the end of the device.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use atrest_volume::BlockDevice;
use parking_lot::{Mutex, RwLock};

use crate::extents::Extents;
use crate::superblock::{MAX_LOGICAL_LEN, NO_EXTENT, SHADOW_LEN, SLOT_SIZE, Superblock};

/// File offset `x` (≥ [`SHADOW_LEN`]) lives at device offset `x + PHYS_SHIFT`.
pub(crate) const PHYS_SHIFT: u64 = 2 * SLOT_SIZE as u64 - SHADOW_LEN as u64;
/// The database page size, and the alignment of its writes.
pub(crate) const PAGE: u64 = 4096;
const ZERO_CHUNK: usize = 1 << 20;

/// State shared by a backend and the store that owns it.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// A write was refused for lack of room.
    pub(crate) full_hit: AtomicBool,
    /// The running write transaction may use the reserve (it deletes).
    pub(crate) maintenance: AtomicBool,
    /// The backend was replaced after an error: it refuses all I/O.
    pub(crate) retired: AtomicBool,
    /// A read, write or flush of the device failed: the database instance must be replaced by
    /// one opened from the last durable state before it is used again.
    pub(crate) io_failed: AtomicBool,
    /// [`crate::StoreOptions::reserve_bytes`]: the reserve kept at the end of the device for
    /// deletions is computed from it and the device's size at each write, so that it follows
    /// a growth.
    pub(crate) reserve_bytes: Option<u64>,
    /// Writes that were not page-aligned (the crash-safety argument needs none).
    pub(crate) unaligned_writes: AtomicU64,
    /// Persisted states (superblock slot writes).
    pub(crate) commits: AtomicU64,
    /// Highest file offset ever written (mirror of the written-up-to mark).
    pub(crate) written_to: AtomicU64,
    /// The map of the device shared with the store (recording blocks, the database's region).
    pub(crate) extents: Arc<Extents>,
}

impl Shared {
    pub(crate) fn new(extents: Arc<Extents>, reserve_bytes: Option<u64>) -> Shared {
        Shared {
            extents,
            reserve_bytes,
            ..Shared::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    len: u64,
    written_to: u64,
}

#[derive(Debug)]
struct Persisted {
    seq: u64,
    state: FileState,
    shadow: Vec<u8>,
}

/// The database file on a block device.
pub(crate) struct VolumeBackend {
    dev: Arc<dyn BlockDevice>,
    store_id: [u8; 16],
    state: RwLock<FileState>,
    shadow: Mutex<Vec<u8>>,
    persisted: Mutex<Persisted>,
    shared: Arc<Shared>,
    /// A device write happened since the last flush.
    unflushed: AtomicBool,
}

impl std::fmt::Debug for VolumeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeBackend")
            .field("device_len", &self.dev.len())
            .finish_non_exhaustive()
    }
}

/// What opening found on the device.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Neither slot holds a valid superblock.
    NoStore {
        slot0: String,
        slot1: String,
    },
    /// The device is too small.
    TooSmall(u64),
    Io(io::Error),
}

/// Smallest device a store accepts.
pub(crate) const MIN_DEVICE: u64 = 2 * SLOT_SIZE as u64 + 64 * PAGE;

fn full_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no room left on the volume for the content store",
    )
}

fn retired_error() -> io::Error {
    io::Error::other("this database instance was closed after an error")
}

impl VolumeBackend {
    /// Writes a new, empty store on `dev` (both slots), replacing whatever was there.
    pub(crate) fn create(
        dev: Arc<dyn BlockDevice>,
        shared: Arc<Shared>,
    ) -> Result<Self, OpenError> {
        if dev.len() < MIN_DEVICE {
            return Err(OpenError::TooSmall(dev.len()));
        }
        let mut store_id = [0u8; 16];
        openssl::rand::rand_bytes(&mut store_id)
            .map_err(|e| OpenError::Io(io::Error::other(e.to_string())))?;
        let mut sb = Superblock {
            store_id,
            seq: 0,
            len: 0,
            written_to: SHADOW_LEN as u64,
            extent_floor: NO_EXTENT,
            shadow: vec![0; SHADOW_LEN],
        };
        // Slot 1 first loses any older store, so a crash part-way leaves at most slot 0 valid.
        // Sequence number n always lives in slot n % 2.
        dev.write_at(&vec![0u8; SLOT_SIZE], SLOT_SIZE as u64)
            .and_then(|_| dev.flush())
            .and_then(|_| dev.write_at(&sb.encode(), 0))
            .and_then(|_| dev.flush())
            .map_err(OpenError::Io)?;
        sb.seq = 1;
        dev.write_at(&sb.encode(), SLOT_SIZE as u64)
            .and_then(|_| dev.flush())
            .map_err(OpenError::Io)?;
        Ok(Self::from_superblock(dev, sb, shared))
    }

    /// Opens the store on `dev` from its newest valid superblock slot.
    pub(crate) fn open(dev: Arc<dyn BlockDevice>, shared: Arc<Shared>) -> Result<Self, OpenError> {
        if dev.len() < MIN_DEVICE {
            return Err(OpenError::TooSmall(dev.len()));
        }
        let mut buf = vec![0u8; 2 * SLOT_SIZE];
        dev.read_at(&mut buf, 0).map_err(OpenError::Io)?;
        let slot = |i: usize| {
            Superblock::decode(&buf[i * SLOT_SIZE..(i + 1) * SLOT_SIZE]).and_then(|s| {
                if s.seq % 2 == i as u64 {
                    Ok(s)
                } else {
                    Err(crate::codec::DecodeError {
                        record: "superblock",
                        field: "sequence",
                        offset: 32,
                        problem: "does not belong in this slot",
                    })
                }
            })
        };
        let a = slot(0);
        let b = slot(1);
        let best = match (a, b) {
            (Ok(a), Ok(b)) => {
                if a.store_id != b.store_id {
                    // Only a create interrupted between its slot writes leaves two stores' slots,
                    // and it writes slot 0 last-but-one: slot 0 is the new store.
                    a
                } else if a.seq >= b.seq {
                    a
                } else {
                    b
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(ea), Err(eb)) => {
                return Err(OpenError::NoStore {
                    slot0: ea.to_string(),
                    slot1: eb.to_string(),
                });
            }
        };
        Ok(Self::from_superblock(dev, best, shared))
    }

    fn from_superblock(dev: Arc<dyn BlockDevice>, sb: Superblock, shared: Arc<Shared>) -> Self {
        let state = FileState {
            len: sb.len,
            written_to: sb.written_to.max(SHADOW_LEN as u64),
        };
        shared.written_to.store(state.written_to, Ordering::Relaxed);
        shared
            .extents
            .set_db_end(state.written_to + PHYS_SHIFT, sb.extent_floor);
        VolumeBackend {
            dev,
            store_id: sb.store_id,
            state: RwLock::new(state.clone()),
            shadow: Mutex::new(sb.shadow.clone()),
            persisted: Mutex::new(Persisted {
                seq: sb.seq,
                state,
                shadow: sb.shadow,
            }),
            shared,
            unflushed: AtomicBool::new(false),
        }
    }

    /// Device bytes usable for file data.
    pub(crate) fn capacity(dev_len: u64) -> u64 {
        dev_len.saturating_sub(PHYS_SHIFT)
    }

    /// Notes that the device failed (the store replaces this instance before its next use).
    fn failed(&self, e: io::Error) -> io::Error {
        self.shared.io_failed.store(true, Ordering::Release);
        e
    }

    fn live(&self) -> io::Result<()> {
        if self.shared.retired.load(Ordering::Acquire) {
            return Err(retired_error());
        }
        Ok(())
    }

    /// Room that must stay free above the database after a write: the reserve, except in
    /// deleting transactions.
    fn keep(&self) -> u64 {
        if self.shared.maintenance.load(Ordering::Acquire) {
            0
        } else {
            crate::store::reserve_for(self.dev.len(), self.shared.reserve_bytes)
        }
    }

    fn write_zeros(&self, from: u64, to: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK.min((to - from) as usize)];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.dev
                .write_at(&zeros[..n], at + PHYS_SHIFT)
                .map_err(|e| self.failed(e))?;
            at += n as u64;
        }
        Ok(())
    }
}

impl redb::StorageBackend for VolumeBackend {
    fn len(&self) -> io::Result<u64> {
        self.live()?;
        Ok(self.state.read().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.live()?;
        let end = offset
            .checked_add(out.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        let st = self.state.read();
        if end > st.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of [{offset}, {end}) past the end of the file ({})",
                    st.len
                ),
            ));
        }
        let mut pos = offset;
        let mut buf = out;
        if pos < SHADOW_LEN as u64 {
            let n = (SHADOW_LEN as u64 - pos).min(buf.len() as u64) as usize;
            let shadow = self.shadow.lock();
            buf[..n].copy_from_slice(&shadow[pos as usize..pos as usize + n]);
            drop(shadow);
            buf = &mut buf[n..];
            pos += n as u64;
        }
        if buf.is_empty() {
            return Ok(());
        }
        let stored = st.written_to.saturating_sub(pos).min(buf.len() as u64) as usize;
        if stored > 0 {
            self.dev
                .read_at(&mut buf[..stored], pos + PHYS_SHIFT)
                .map_err(|e| self.failed(e))?;
        }
        buf[stored..].fill(0);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.live()?;
        if len > MAX_LOGICAL_LEN {
            return Err(full_error());
        }
        let mut st = self.state.write();
        if len < SHADOW_LEN as u64 {
            self.shadow.lock()[len as usize..].fill(0);
        }
        st.len = len;
        let mark = st.written_to.min(len).max(SHADOW_LEN as u64);
        if mark < st.written_to {
            st.written_to = mark;
            self.shared.extents.lower_db_end(mark + PHYS_SHIFT);
        }
        self.shared.written_to.store(mark, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.live()?;
        let mut p = self.persisted.lock();
        // Snapshot first: every write that completed before it is covered by the flush below.
        let state = self.state.write().clone();
        let shadow = self.shadow.lock().clone();
        // Recording blocks written for this commit are covered by the same flush.
        let blocks = self.shared.extents.unflushed.swap(false, Ordering::AcqRel);
        if self.unflushed.swap(false, Ordering::AcqRel) | blocks {
            self.dev.flush().map_err(|e| self.failed(e))?;
        }
        let extent_floor = self.shared.extents.floor();
        // The length and the mark only matter to a state whose header references bytes they
        // cover; until the header changes they are persisted with the next one that does.
        if shadow == p.shadow {
            return Ok(());
        }
        let sb = Superblock {
            store_id: self.store_id,
            seq: p.seq + 1,
            len: state.len,
            written_to: state.written_to,
            extent_floor,
            shadow,
        };
        let slot = (sb.seq % 2) * SLOT_SIZE as u64;
        self.dev
            .write_at(&sb.encode(), slot)
            .map_err(|e| self.failed(e))?;
        self.dev.flush().map_err(|e| self.failed(e))?;
        p.seq = sb.seq;
        p.state = state;
        p.shadow = sb.shadow;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.live()?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        let mut pos = offset;
        let mut data = data;
        {
            let st = self.state.read();
            if end > st.len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "write of [{offset}, {end}) past the end of the file ({})",
                        st.len
                    ),
                ));
            }
        }
        if pos < SHADOW_LEN as u64 {
            let n = (SHADOW_LEN as u64 - pos).min(data.len() as u64) as usize;
            self.shadow.lock()[pos as usize..pos as usize + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            pos += n as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        // Writes to the device proper must cover whole pages: a torn sector then only ever
        // hits bytes of this write (see docs/store.md).
        if !pos.is_multiple_of(PAGE) || !(data.len() as u64).is_multiple_of(PAGE) {
            self.shared.unaligned_writes.fetch_add(1, Ordering::Relaxed);
        }
        if end + PHYS_SHIFT > self.dev.len() {
            self.shared.full_hit.store(true, Ordering::Release);
            return Err(full_error());
        }
        {
            let st = self.state.read();
            if end <= st.written_to {
                self.dev
                    .write_at(data, pos + PHYS_SHIFT)
                    .map_err(|e| self.failed(e))?;
                self.unflushed.store(true, Ordering::Release);
                return Ok(());
            }
        }
        let mut st = self.state.write();
        // Claim the bytes up to the end of this write before anything is written there.
        if end > st.written_to
            && !self
                .shared
                .extents
                .claim_db(end + PHYS_SHIFT, self.keep(), self.dev.len())
        {
            self.shared.full_hit.store(true, Ordering::Release);
            return Err(full_error());
        }
        if pos > st.written_to {
            self.write_zeros(st.written_to, pos)?;
        }
        self.dev
            .write_at(data, pos + PHYS_SHIFT)
            .map_err(|e| self.failed(e))?;
        self.unflushed.store(true, Ordering::Release);
        if end > st.written_to {
            st.written_to = end;
            self.shared.written_to.store(end, Ordering::Relaxed);
        }
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrest_volume::MemDevice;
    use redb::StorageBackend;

    fn noisy(len: usize) -> Arc<dyn BlockDevice> {
        let mut v = vec![0u8; len];
        openssl::rand::rand_bytes(&mut v).unwrap();
        Arc::new(MemDevice::from_vec(v))
    }

    #[test]
    fn new_space_reads_as_zeros_on_a_noisy_device() {
        let dev = noisy(1 << 20);
        let b = VolumeBackend::create(dev.clone(), Arc::default()).unwrap();
        b.set_len(64 * PAGE).unwrap();
        let mut out = vec![1u8; 64 * PAGE as usize];
        b.read(0, &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0));
        b.write(20 * PAGE, &[5u8; PAGE as usize]).unwrap();
        b.read(0, &mut out).unwrap();
        assert!(out[..20 * PAGE as usize].iter().all(|&x| x == 0));
        assert!(
            out[20 * PAGE as usize..21 * PAGE as usize]
                .iter()
                .all(|&x| x == 5)
        );
        assert!(out[21 * PAGE as usize..].iter().all(|&x| x == 0));
        // Shrinking and growing again forgets the old bytes.
        b.set_len(10 * PAGE).unwrap();
        b.set_len(64 * PAGE).unwrap();
        b.read(0, &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0));
        assert!(b.read(64 * PAGE, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn state_survives_only_through_sync() {
        let dev = noisy(1 << 20);
        let b = VolumeBackend::create(dev.clone(), Arc::default()).unwrap();
        b.set_len(8 * PAGE).unwrap();
        b.write(0, &[9u8; 320]).unwrap();
        b.write(PAGE, &[3u8; PAGE as usize]).unwrap();
        b.sync_data().unwrap();
        b.write(0, &[8u8; 320]).unwrap();
        b.set_len(16 * PAGE).unwrap();
        drop(b);
        let b = VolumeBackend::open(dev.clone(), Arc::default()).unwrap();
        assert_eq!(b.len().unwrap(), 8 * PAGE);
        let mut h = [0u8; 320];
        b.read(0, &mut h).unwrap();
        assert_eq!(h, [9u8; 320]);
        let mut p = vec![0u8; PAGE as usize];
        b.read(PAGE, &mut p).unwrap();
        assert!(p.iter().all(|&x| x == 3));
    }

    #[test]
    fn torn_newest_slot_falls_back_to_the_previous_state() {
        let dev = noisy(1 << 20);
        let b = VolumeBackend::create(dev.clone(), Arc::default()).unwrap();
        b.set_len(8 * PAGE).unwrap();
        b.write(0, &[1u8; 64]).unwrap();
        b.sync_data().unwrap();
        let seq = b.persisted.lock().seq;
        b.write(0, &[2u8; 64]).unwrap();
        b.sync_data().unwrap();
        // Garble the slot the last sync wrote.
        let slot = ((seq + 1) % 2) * SLOT_SIZE as u64;
        dev.write_at(&[0xAA; 512], slot + 1024).unwrap();
        let b = VolumeBackend::open(dev.clone(), Arc::default()).unwrap();
        let mut h = [0u8; 64];
        b.read(0, &mut h).unwrap();
        assert_eq!(h, [1u8; 64]);
    }

    #[test]
    fn writes_past_the_device_are_full_and_reads_there_are_zeros() {
        let dev = noisy(MIN_DEVICE as usize);
        let shared = Arc::new(Shared::new(Arc::default(), Some(0)));
        let b = VolumeBackend::create(dev.clone(), shared.clone()).unwrap();
        let cap = VolumeBackend::capacity(dev.len());
        b.set_len(cap * 4).unwrap();
        let mut p = vec![1u8; PAGE as usize];
        b.read(cap * 3, &mut p).unwrap();
        assert!(p.iter().all(|&x| x == 0));
        let e = b.write(cap, &p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(shared.full_hit.load(Ordering::Relaxed));
        b.write(cap - PAGE, &p).unwrap();
    }

    #[test]
    fn a_blank_or_noisy_device_is_not_a_store() {
        assert!(matches!(
            VolumeBackend::open(noisy(1 << 20), Arc::default()),
            Err(OpenError::NoStore { .. })
        ));
        assert!(matches!(
            VolumeBackend::open(noisy(4096), Arc::default()),
            Err(OpenError::TooSmall(_))
        ));
    }
}
