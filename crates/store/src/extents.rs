//! Recording data on the data segment beside the database: 1 MiB blocks handed out from the top
//! of the segment down, while the database's file grows from the bottom up.
//!
//! Which blocks hold content is known in memory only; it is rebuilt at every open from the
//! committed state (each recording chunk's entry names its block), so it can never disagree
//! with what is on disk after a crash. A block is marked in use *before* anything is written
//! to it, and stays marked:
//!
//! - while an upload's batch that uses it is being written and committed;
//! - while the committed state references it;
//! - after a deletion's commit, until no reader that may still see the older state is left
//!   (quarantine: readers register an epoch before they take their snapshot).
//!
//! The database's region `[0, db_end)` (superblock slots and every byte the database wrote) is
//! claimed here too, before the database writes there; it never overlaps a block in use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_volume::UsedRanges;
use parking_lot::Mutex;

/// Size of an extent block (and of a recording chunk in store format 2).
pub(crate) const BLOCK: u64 = 1 << 20;

#[derive(Debug, Default)]
struct State {
    /// Device bytes `[0, db_end)` belong to the superblock and the database file.
    db_end: u64,
    /// Until the blocks of the committed state are known (at open), the database may not
    /// claim bytes at or above this device offset (the persisted extent floor).
    fence: u64,
    /// [`Extents::load`] ran: the fence no longer applies.
    loaded: bool,
    /// One bit per block: referenced, being written, or quarantined.
    used: Vec<u64>,
    /// Blocks marked in `used`.
    count: u64,
    /// Freed blocks, with the epoch of the commit that freed them.
    quarantine: Vec<(u64, u64)>,
    epoch: u64,
    /// Live readers per epoch they registered at.
    readers: BTreeMap<u64, usize>,
}

impl State {
    fn get(&self, b: u64) -> bool {
        self.used
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    fn set(&mut self, b: u64) {
        let i = (b / 64) as usize;
        if i >= self.used.len() {
            self.used.resize(i + 1, 0);
        }
        if self.used[i] & (1 << (b % 64)) == 0 {
            self.used[i] |= 1 << (b % 64);
            self.count += 1;
        }
    }

    fn clear(&mut self, b: u64) {
        if let Some(w) = self.used.get_mut((b / 64) as usize)
            && *w & (1 << (b % 64)) != 0
        {
            *w &= !(1 << (b % 64));
            self.count -= 1;
        }
    }

    /// Whether any block overlapping device bytes `[from, to)` is marked.
    fn any(&self, from: u64, to: u64) -> bool {
        if to <= from {
            return false;
        }
        let (first, last) = (from / BLOCK, (to - 1) / BLOCK);
        let words = self.used.len() as u64 * 64;
        (first..=last.min(words.saturating_sub(1))).any(|b| self.get(b))
    }

    /// Frees quarantined blocks no registered reader can still see.
    fn release(&mut self) {
        let oldest = self.readers.keys().next().copied().unwrap_or(u64::MAX);
        let q = std::mem::take(&mut self.quarantine);
        for (epoch, b) in q {
            if epoch <= oldest {
                self.clear(b);
            } else {
                self.quarantine.push((epoch, b));
            }
        }
    }
}

/// The in-memory map of the data segment shared by a store and its database backends.
#[derive(Debug, Default)]
pub(crate) struct Extents {
    state: Mutex<State>,
    /// A block was written since the database's last flush.
    pub(crate) unflushed: AtomicBool,
}

/// Refusal of [`Extents::allocate`].
#[derive(Debug)]
pub(crate) struct NoRoom;

impl Extents {
    /// Sets the blocks referenced by the committed state (read at open, before any block is
    /// handed out) and lifts the fence.
    pub(crate) fn load(&self, blocks: impl IntoIterator<Item = u64>) {
        let mut st = self.state.lock();
        for b in blocks {
            st.set(b);
        }
        st.loaded = true;
    }

    /// A database instance opened with its written-up-to mark at device offset `db_end` and
    /// the persisted extent floor `fence` (which holds until [`Extents::load`]).
    pub(crate) fn set_db_end(&self, db_end: u64, fence: u64) {
        let mut st = self.state.lock();
        // Never lowered here: a database instance retired after an error may still have a
        // write in flight below its old mark.
        st.db_end = st.db_end.max(db_end);
        if !st.loaded {
            st.fence = fence;
        }
    }

    /// The database shrank its written region to device offset `db_end`.
    pub(crate) fn lower_db_end(&self, db_end: u64) {
        let mut st = self.state.lock();
        st.db_end = st.db_end.min(db_end);
    }

    /// Lowest device offset of a block in use (or of the fence), to be persisted with each
    /// state: no block that state references lies below it.
    pub(crate) fn floor(&self) -> u64 {
        let st = self.state.lock();
        let lowest = st
            .used
            .iter()
            .position(|&w| w != 0)
            .map(|i| (i as u64 * 64 + st.used[i].trailing_zeros() as u64) * BLOCK)
            .unwrap_or(u64::MAX);
        let q = st.quarantine.iter().map(|&(_, b)| b * BLOCK).min();
        let fence = if st.loaded { u64::MAX } else { st.fence };
        lowest.min(fence).min(q.unwrap_or(u64::MAX))
    }

    /// Claims device bytes up to `end` for the database before it writes there: refused when
    /// a block in use lies below `end + keep` (`keep`: room that must stay free above it) or
    /// `end` is past `dev_len`.
    pub(crate) fn claim_db(&self, end: u64, keep: u64, dev_len: u64) -> bool {
        let mut st = self.state.lock();
        if end <= st.db_end {
            return true;
        }
        let top = end.saturating_add(keep);
        if top > dev_len || (!st.loaded && top > st.fence) || st.any(st.db_end, top) {
            return false;
        }
        st.db_end = end;
        true
    }

    /// Hands out `n` free blocks, the highest first, above the database's region plus `keep`
    /// bytes, within a device of `dev_len` bytes; they are marked in use before this returns.
    /// Sorted ascending.
    pub(crate) fn allocate(&self, n: usize, keep: u64, dev_len: u64) -> Result<Vec<u64>, NoRoom> {
        let mut st = self.state.lock();
        st.release();
        let top = dev_len / BLOCK;
        let floor = st.db_end.saturating_add(keep).div_ceil(BLOCK);
        let mut out = Vec::with_capacity(n);
        let mut b = top;
        while out.len() < n && b > floor {
            b -= 1;
            // Skip whole free-less words quickly.
            if b % 64 == 63 && st.used.get((b / 64) as usize) == Some(&u64::MAX) && b >= floor + 63
            {
                b -= 63;
                continue;
            }
            if !st.get(b) {
                out.push(b);
            }
        }
        if out.len() < n {
            return Err(NoRoom);
        }
        for &b in &out {
            st.set(b);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Gives back blocks that no committed state references (a batch that was not committed).
    pub(crate) fn give_back(&self, blocks: &[u64]) {
        let mut st = self.state.lock();
        for &b in blocks {
            st.clear(b);
        }
    }

    /// Blocks whose references a durable commit removed: reused once no reader registered
    /// before that commit is left.
    pub(crate) fn freed(&self, blocks: &[u64]) {
        if blocks.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        st.epoch += 1;
        let e = st.epoch;
        st.quarantine.extend(blocks.iter().map(|&b| (e, b)));
    }

    /// Registers a reader about to take a snapshot.
    pub(crate) fn reader(self: &Arc<Self>) -> ReaderGuard {
        let mut st = self.state.lock();
        let epoch = st.epoch;
        *st.readers.entry(epoch).or_insert(0) += 1;
        ReaderGuard {
            extents: self.clone(),
            epoch,
        }
    }

    /// (device bytes of the database's region, blocks in use).
    pub(crate) fn usage(&self) -> (u64, u64) {
        let mut st = self.state.lock();
        st.release();
        (st.db_end, st.count)
    }
}

impl UsedRanges for Extents {
    fn in_use(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let end = offset.saturating_add(len);
        let st = self.state.lock();
        offset < st.db_end || st.any(offset, end)
    }
}

/// Keeps the blocks a reader's snapshot may reference from being reused.
#[derive(Debug)]
pub(crate) struct ReaderGuard {
    extents: Arc<Extents>,
    epoch: u64,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut st = self.extents.state.lock();
        if let Some(n) = st.readers.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                st.readers.remove(&self.epoch);
            }
        }
    }
}

impl Extents {
    pub(crate) fn note_write(&self) {
        self.unflushed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_down_allocation_quarantine_and_database_claims() {
        let e = Arc::new(Extents::default());
        let dev = 16 * BLOCK;
        e.set_db_end(64 << 10, u64::MAX);
        e.load([]);
        let a = e.allocate(3, 0, dev).unwrap();
        assert_eq!(a, vec![13, 14, 15]);
        assert!(e.in_use(13 * BLOCK + 5, 1));
        assert!(!e.in_use(12 * BLOCK, BLOCK));
        assert!(e.in_use(0, 1), "the superblock area is in use");
        // The database cannot grow into a block in use, nor into the room kept above it.
        assert!(e.claim_db(12 * BLOCK, 0, dev));
        assert!(!e.claim_db(13 * BLOCK + 1, 0, dev));
        assert!(!e.claim_db(12 * BLOCK + 1, BLOCK, dev));
        // A reader registered before a deletion keeps its blocks from reuse.
        let r = e.reader();
        e.freed(&[14]);
        assert!(e.in_use(14 * BLOCK, 1));
        assert_eq!(e.allocate(1, 0, dev).unwrap(), vec![12]);
        assert!(e.allocate(1, 0, dev).is_err());
        drop(r);
        assert_eq!(e.allocate(1, 0, dev).unwrap(), vec![14]);
        // A reader registered after the deletion does not hold the block.
        e.freed(&[15]);
        let _r = e.reader();
        assert_eq!(e.allocate(1, 0, dev).unwrap(), vec![15]);
        e.give_back(&[12, 13, 14, 15]);
        assert!(!e.in_use(12 * BLOCK, 4 * BLOCK));
        assert_eq!(e.usage(), (12 * BLOCK, 0));
    }

    #[test]
    fn allocation_skips_full_words_and_keeps_room() {
        let e = Extents::default();
        let dev = 300 * BLOCK;
        e.set_db_end(BLOCK, 200 * BLOCK);
        assert!(!e.claim_db(200 * BLOCK + 1, 0, dev), "fenced until loaded");
        e.load((130..300).chain(5..100));
        assert_eq!(e.floor(), 5 * BLOCK);
        assert_eq!(e.allocate(2, 0, dev).unwrap(), vec![128, 129]);
        assert_eq!(e.allocate(1, 0, dev).unwrap(), vec![127]);
        // Blocks 100..127 are left; keep 110 MiB above the database: only 111.. qualify.
        let got = e.allocate(16, 110 * BLOCK, dev).unwrap();
        assert_eq!(got, (111..127).collect::<Vec<_>>());
        assert!(e.allocate(1, 110 * BLOCK, dev).is_err());
    }
}
