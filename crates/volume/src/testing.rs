//! Test support (the `testing` feature): a device that simulates power loss, for the crash
//! tests of anything built on a [`BlockDevice`] — the volume's conversion and the content
//! store above it.
//!
//! Writes go to a volatile cache until [`BlockDevice::flush`]; reads see them. When the armed
//! countdown of writes and flushes runs out, the power fails during that write or flush, and
//! what reaches the medium is what the [`LossMode`] says: the cache lost, or lost in part as a
//! drive that reorders its cache, or each write lost, kept or torn. Every later I/O fails until
//! [`CrashDevice::power_cycle`]; the medium then holds the crash image.
//!
//! Put it *under* the volume: a torn sector of ciphertext then decrypts to noise, as on real
//! XTS media.

use parking_lot::{Mutex, MutexGuard};
use std::io;
use std::sync::Arc;

use crate::BlockDevice;

/// The sector a drive writes atomically or tears (in [`LossMode::DropAll`] and
/// [`LossMode::Reorder`]).
const SECTOR: u64 = 4096;
/// The unit that is either all old or all new in a torn write.
const UNIT: u64 = 512;

/// What reaches the medium at a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossMode {
    /// Every write since the last flush is lost; the write in flight reaches the medium in
    /// order up to one of its 4 KiB sectors, which is torn (some of its 512-byte units new,
    /// the others old).
    DropAll,
    /// Each write since the last flush independently reaches the medium or not (a drive that
    /// reorders its cache); the write in flight as in [`LossMode::DropAll`].
    Reorder,
    /// Each write since the last flush, and the one in flight, is independently lost, kept
    /// whole, or torn: any subset of its 512-byte units reaches the medium.
    Tear,
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

/// A block device with a volatile write cache and an injectable power failure, over a durable
/// `medium` (a [`crate::MemDevice`] whose bytes the test reads back as the crash image).
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

/// xorshift64*: the device's choices (which writes survive, where they tear).
fn next(rng: &mut u64) -> u64 {
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl CrashDevice {
    /// A device whose durable medium is `medium`; `seed` drives the choices at a power failure.
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Power fails during the `n`-th write or flush from now (1 = the next one).
    pub fn arm(&self, n: u64, mode: LossMode) {
        let mut s = self.lock();
        s.countdown = Some(n.max(1));
        s.mode = mode;
    }

    /// Cancels a pending power failure.
    pub fn disarm(&self) {
        self.lock().countdown = None;
    }

    /// Whether the power failed (and has not come back).
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Power failures so far.
    pub fn crashes(&self) -> u64 {
        self.lock().crashes
    }

    /// Power comes back: the device works again with what the medium holds.
    pub fn power_cycle(&self) {
        let mut s = self.lock();
        s.cache.clear();
        s.crashed = false;
        s.countdown = None;
    }

    /// Fails the power now, between two writes: the cache reaches the medium as `mode` says
    /// (with no write in flight).
    pub fn cut_power(&self, mode: LossMode) -> io::Result<()> {
        let mut s = self.lock();
        s.countdown = None;
        s.mode = mode;
        self.fail(&mut s, None)
    }

    /// The power fails with `in_flight` (offset, bytes) being written, if any.
    fn fail(&self, s: &mut State, in_flight: Option<(u64, &[u8])>) -> io::Result<()> {
        s.crashed = true;
        s.crashes += 1;
        let cache = std::mem::take(&mut s.cache);
        match s.mode {
            LossMode::DropAll => {}
            LossMode::Reorder => {
                for (o, d) in cache {
                    if next(&mut s.rng).is_multiple_of(2) {
                        self.medium.write_at(&d, o)?;
                    }
                }
            }
            LossMode::Tear => {
                let all = cache.iter().map(|(o, d)| (*o, &d[..])).chain(in_flight);
                for (o, d) in all {
                    match next(&mut s.rng) % 3 {
                        0 => {}
                        1 => self.medium.write_at(d, o)?,
                        _ => self.tear(&mut s.rng, d, o, o, o + d.len() as u64)?,
                    }
                }
                return Ok(());
            }
        }
        let Some((offset, buf)) = in_flight else {
            return Ok(());
        };
        // The write in flight reaches the medium in order up to a torn 4 KiB sector.
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
        self.tear(&mut s.rng, buf, offset, from, to)
    }

    /// Writes a random subset of the 512-byte units of `[from, to)` of `buf` (which belongs at
    /// `offset`) to the medium.
    fn tear(&self, rng: &mut u64, buf: &[u8], offset: u64, from: u64, to: u64) -> io::Result<()> {
        let mut u = from;
        while u < to {
            let ue = ((u / UNIT + 1) * UNIT).min(to);
            if next(rng).is_multiple_of(2) {
                self.medium
                    .write_at(&buf[(u - offset) as usize..(ue - offset) as usize], u)?;
            }
            u = ue;
        }
        Ok(())
    }

    /// Counts down one write or flush; true when the power fails during it.
    fn fails_now(s: &mut State) -> bool {
        match s.countdown {
            Some(n) if n <= 1 => {
                s.countdown = None;
                true
            }
            Some(n) => {
                s.countdown = Some(n - 1);
                false
            }
            None => false,
        }
    }
}

impl BlockDevice for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.lock();
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
        let mut s = self.lock();
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
        if Self::fails_now(&mut s) {
            self.fail(&mut s, (!buf.is_empty()).then_some((offset, buf)))?;
            return Err(dead());
        }
        s.cache.push((offset, buf.to_vec()));
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        if Self::fails_now(&mut s) {
            // The power fails while the cache is being written back.
            self.fail(&mut s, None)?;
            return Err(dead());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::MemDevice;

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

    #[test]
    fn in_tear_mode_each_write_is_lost_kept_or_torn_by_units() {
        let (mut lost, mut kept, mut torn) = (0, 0, 0);
        for seed in 0..64 {
            let mem = Arc::new(MemDevice::new(64 << 10));
            let d = CrashDevice::new(mem.clone(), seed);
            d.arm(4, LossMode::Tear);
            for i in 0..3u8 {
                d.write_at(&[i + 1; 8192], u64::from(i) * 8192).unwrap();
            }
            assert!(d.write_at(&[4u8; 8192], 3 * 8192).is_err());
            assert!(d.crashed());
            let img = mem.to_vec();
            for i in 0..4u8 {
                let w = &img[usize::from(i) * 8192..(usize::from(i) + 1) * 8192];
                assert!(w.chunks(512).all(|u| u.iter().all(|&x| x == u[0])));
                match w.iter().filter(|&&x| x == i + 1).count() {
                    0 => lost += 1,
                    8192 => kept += 1,
                    _ => torn += 1,
                }
            }
        }
        assert!(lost > 0 && kept > 0 && torn > 0, "{lost} {kept} {torn}");
    }

    #[test]
    fn power_cut_between_writes_loses_the_cache_and_stops_io() {
        let mem = Arc::new(MemDevice::new(16 << 10));
        let d = CrashDevice::new(mem.clone(), 3);
        d.write_at(&[5u8; 4096], 0).unwrap();
        d.cut_power(LossMode::DropAll).unwrap();
        assert!(d.crashed());
        assert_eq!(d.crashes(), 1);
        assert!(d.flush().is_err());
        d.power_cycle();
        let mut b = [9u8; 4096];
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 4096]);
        assert_eq!(d.writes(), 1);
    }
}
