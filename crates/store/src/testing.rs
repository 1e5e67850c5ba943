//! A device that simulates power loss, for crash tests of anything built on a
//! [`BlockDevice`].
//!
//! Writes go to a volatile cache until [`BlockDevice::flush`]. When the armed countdown of
//! writes and flushes runs out, the power fails during that write or flush: the cache is lost
//! (entirely, or — in [`LossMode::Reorder`] — all but a random subset of its writes, as a
//! drive that reorders its cache), the write in flight reaches the medium up to one of its 4 KiB
//! sectors, which is torn (some of its 512-byte units new, the others old), and every later I/O fails until
//! [`CrashDevice::power_cycle`].
//!
//! Put it *under* the volume: a torn sector of ciphertext then decrypts to noise, as on real
//! XTS media.

use std::io;
use std::sync::Arc;

use atrest_volume::BlockDevice;
use parking_lot::Mutex;

/// What happens to the volatile cache at a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossMode {
    /// Every write since the last flush is lost.
    DropAll,
    /// Each write since the last flush independently reaches the medium or not.
    Reorder,
}

#[derive(Debug)]
struct State {
    cache: Vec<(u64, Vec<u8>)>,
    countdown: Option<u64>,
    crashed: bool,
    rng: u64,
    mode: LossMode,
    writes: u64,
    crashes: u64,
}

/// A block device with a volatile write cache and an injectable power failure.
pub struct CrashDevice {
    medium: Arc<dyn BlockDevice>,
    state: Mutex<State>,
}

impl std::fmt::Debug for CrashDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashDevice")
            .field("len", &self.medium.len())
            .finish_non_exhaustive()
    }
}

fn dead() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "simulated power loss")
}

impl CrashDevice {
    /// A device whose durable medium is `medium`; `seed` drives the tearing.
    pub fn new(medium: Arc<dyn BlockDevice>, seed: u64) -> CrashDevice {
        CrashDevice {
            medium,
            state: Mutex::new(State {
                cache: Vec::new(),
                countdown: None,
                crashed: false,
                rng: seed | 1,
                mode: LossMode::DropAll,
                writes: 0,
                crashes: 0,
            }),
        }
    }

    /// Power fails during the `n`-th write or flush from now (1 = the next one).
    pub fn arm(&self, n: u64, mode: LossMode) {
        let mut s = self.state.lock();
        s.countdown = Some(n.max(1));
        s.mode = mode;
    }

    /// Cancels a pending power failure.
    pub fn disarm(&self) {
        self.state.lock().countdown = None;
    }

    /// Whether the power failed.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Power failures so far.
    pub fn crashes(&self) -> u64 {
        self.state.lock().crashes
    }

    /// Power comes back: the device works again with what the medium holds.
    pub fn power_cycle(&self) {
        let mut s = self.state.lock();
        s.cache.clear();
        s.crashed = false;
        s.countdown = None;
    }

    /// Fails the power now, as during a write of nothing: the cache is lost.
    pub fn cut_power(&self) {
        let mut s = self.state.lock();
        s.cache.clear();
        s.crashed = true;
        s.crashes += 1;
    }
}

impl CrashDevice {
    /// Loses the cache (all of it, or a random part in [`LossMode::Reorder`]).
    fn fail(&self, s: &mut State) -> io::Result<()> {
        s.crashed = true;
        s.crashes += 1;
        let cache = std::mem::take(&mut s.cache);
        if s.mode == LossMode::Reorder {
            for (o, d) in cache {
                if next(&mut s.rng).is_multiple_of(2) {
                    self.medium.write_at(&d, o)?;
                }
            }
        }
        Ok(())
    }
}

fn next(rng: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl BlockDevice for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.state.lock();
        if s.crashed {
            return Err(dead());
        }
        self.medium.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        for (o, d) in &s.cache {
            let wend = o + d.len() as u64;
            if *o < end && offset < wend {
                let from = (*o).max(offset);
                let to = wend.min(end);
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&d[(from - o) as usize..(to - o) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.crashed {
            return Err(dead());
        }
        if offset + buf.len() as u64 > self.medium.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "write past the end of the device",
            ));
        }
        s.writes += 1;
        if let Some(n) = s.countdown {
            if n <= 1 {
                s.countdown = None;
                self.fail(&mut s)?;
                // The write in flight reaches the medium in order up to a torn 4 KiB sector.
                const SECTOR: u64 = 4096;
                const UNIT: u64 = 512;
                let end = offset + buf.len() as u64;
                let first = offset / SECTOR;
                let last = (end - 1) / SECTOR;
                let sector = first + next(&mut s.rng) % (last - first + 1);
                let from = (sector * SECTOR).max(offset);
                if from > offset {
                    self.medium
                        .write_at(&buf[..(from - offset) as usize], offset)?;
                }
                let to = ((sector + 1) * SECTOR).min(end);
                let mut u = from;
                while u < to {
                    let ue = ((u / UNIT + 1) * UNIT).min(to);
                    if next(&mut s.rng).is_multiple_of(2) {
                        let d = &buf[(u - offset) as usize..(ue - offset) as usize];
                        self.medium.write_at(d, u)?;
                    }
                    u = ue;
                }
                return Err(dead());
            }
            s.countdown = Some(n - 1);
        }
        s.cache.push((offset, buf.to_vec()));
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.crashed {
            return Err(dead());
        }
        if let Some(n) = s.countdown {
            if n <= 1 {
                // The power fails while the cache is being written back.
                s.countdown = None;
                self.fail(&mut s)?;
                return Err(dead());
            }
            s.countdown = Some(n - 1);
        }
        for (o, d) in std::mem::take(&mut s.cache) {
            self.medium.write_at(&d, o)?;
        }
        self.medium.flush()
    }

    fn len(&self) -> u64 {
        self.medium.len()
    }
}

/// Rewrites the text of audit event `seq` in `store` and recomputes every hash after it up to
/// the recorded head, as someone with write access to the store's pages (but not the seal key)
/// could: the hash chain then checks, only the seal under the volume key tells.
pub fn rewrite_audit_history(store: &crate::Store, seq: u64, text: &str) -> crate::Result<()> {
    crate::audit::rewrite_history(store, seq, text)
}

/// Stores `data` as recording `id` the way a format-1 store kept it (chunks of 1020 KiB inside
/// the database) and marks the store as format 1: what an appliance made before format 2 has.
pub fn put_format_1_recording(
    store: &crate::Store,
    id: &str,
    session: &str,
    data: &[u8],
) -> crate::Result<()> {
    crate::recordings::put_format_1(store, id, session, data)
}

/// The store format number recorded in the store.
pub fn recorded_format(store: &crate::Store) -> crate::Result<u32> {
    crate::store::recorded_format(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrest_volume::MemDevice;

    #[test]
    fn unflushed_writes_are_lost_and_the_sector_in_flight_is_torn() {
        let mem = Arc::new(MemDevice::new(64 << 10));
        let d = CrashDevice::new(mem.clone(), 7);
        d.write_at(&[1u8; 4096], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2u8; 4096], 4096).unwrap();
        let mut b = [0u8; 4096];
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [2u8; 4096]);
        d.arm(1, LossMode::DropAll);
        assert!(d.write_at(&[3u8; 4096], 0).is_err());
        assert!(d.crashed());
        assert!(d.read_at(&mut b, 0).is_err());
        d.power_cycle();
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0u8; 4096], "the unflushed write is gone");
        d.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 1 || x == 3), "torn, not garbled");
        assert!(b.chunks(512).all(|u| u.iter().all(|&x| x == u[0])));
    }
}
