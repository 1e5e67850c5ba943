//! A byte-range lock: shared holders may overlap, an exclusive holder overlaps nobody.

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct RangeLock {
    held: Mutex<Vec<(u64, u64, u64, bool)>>, // (id, start, end, exclusive)
    changed: Condvar,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub(crate) struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    pub(crate) fn acquire(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut held = self.held.lock();
        loop {
            let conflict = held
                .iter()
                .any(|&(_, s, e, x)| s < end && start < e && (x || exclusive));
            if !conflict {
                break;
            }
            self.changed.wait(&mut held);
        }
        held.push((id, start, end, exclusive));
        RangeGuard { lock: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.held.lock();
        held.retain(|h| h.0 != self.id);
        drop(held);
        self.lock.changed.notify_all();
    }
}
