//! Used-space-only conversion: the conversion asks the layer above (`UsedRanges`) which parts
//! of each chunk hold content, under the chunk's lock; what holds none is neither read nor
//! written (a hole in a sparse image stays a hole), and nothing written during the conversion
//! is lost or left under the wrong key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use atrest_volume::*;
use common::*;

const BLOCK: u64 = 4096;

/// What has been written, or is about to be (marked before the write starts), per 4 KiB
/// block: the answer a store gives, conservative as the contract asks.
struct Written {
    blocks: Mutex<Vec<bool>>,
    asked: AtomicU64,
}

impl Written {
    fn new(len: u64) -> Arc<Written> {
        Arc::new(Written {
            blocks: Mutex::new(vec![false; len.div_ceil(BLOCK) as usize]),
            asked: AtomicU64::new(0),
        })
    }

    fn mark(&self, offset: u64, len: u64) {
        let mut b = self.blocks.lock().unwrap();
        for i in offset / BLOCK..(offset + len).div_ceil(BLOCK) {
            b[i as usize] = true;
        }
    }

    fn ranges(&self) -> Vec<(u64, u64)> {
        let b = self.blocks.lock().unwrap();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] {
                let s = i;
                while i < b.len() && b[i] {
                    i += 1;
                }
                out.push((s as u64 * BLOCK, (i - s) as u64 * BLOCK));
            } else {
                i += 1;
            }
        }
        out
    }
}

impl UsedRanges for Written {
    fn in_use(&self, offset: u64, len: u64) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let b = self.blocks.lock().unwrap();
        (offset / BLOCK..(offset + len).div_ceil(BLOCK)).any(|i| b[i as usize])
    }
}

/// What was written: the bytes, and which of them were (only those are content: the rest of
/// a partly written block reads back as whatever the device held).
#[derive(Clone)]
struct Model {
    bytes: Vec<u8>,
    written: Vec<bool>,
}

impl Model {
    fn new(len: u64) -> Model {
        Model {
            bytes: vec![0u8; len as usize],
            written: vec![false; len as usize],
        }
    }

    /// Takes `[start, end)` from `other`.
    fn take(&mut self, other: &Model, start: usize, end: usize) {
        self.bytes[start..end].copy_from_slice(&other.bytes[start..end]);
        self.written[start..end].copy_from_slice(&other.written[start..end]);
    }
}

/// Writes `data` at `off` the way a store does: marked in use first, then written.
fn write(u: &UnlockedVolume, used: &Written, model: &mut Model, off: u64, data: &[u8]) {
    used.mark(off, data.len() as u64);
    u.write_at(data, off).unwrap();
    let r = off as usize..off as usize + data.len();
    model.bytes[r.clone()].copy_from_slice(data);
    model.written[r].fill(true);
}

fn check_used(u: &dyn BlockDevice, used: &Written, model: &Model, what: &str) {
    let mut checked = 0;
    for (off, len) in used.ranges() {
        let mut got = vec![0u8; len as usize];
        u.read_at(&mut got, off).unwrap();
        for (i, g) in got.iter().enumerate() {
            let at = off as usize + i;
            if model.written[at] {
                assert!(
                    *g == model.bytes[at],
                    "{what}: the byte at {at} differs from what was written"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "{what}: nothing to check");
}

/// Bytes of the file the file system has allocated.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `lseek(SEEK_DATA)` from `from`: where the next allocated byte is.
fn next_data(path: &Path, from: u64) -> i64 {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a plain system call on an open descriptor.
    unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) as i64 }
}

fn key_bytes(size: KeySize) -> Vec<u8> {
    KeyMaterial::generate(size).unwrap().expose().to_vec()
}

fn opts() -> ConvertOptions {
    chunked(4 << 20)
}

#[test]
fn used_space_only_leaves_holes_and_full_conversion_fills_them() {
    let dir = temp_dir("used-holes");
    let img = dir.join("vol.img");
    let header = 1u64 << 20;
    let size = 16u64 << 20;
    let dev = Arc::new(FileDevice::create(&img, header + size).unwrap());
    let u = Volume::format(dev.clone(), &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let used = Written::new(size);
    let mut model = Model::new(size);
    // Content in granules 2 and 9 only (and a little in 12).
    write(&u, &used, &mut model, 2 << 20, &payload(1 << 20, 1));
    write(&u, &used, &mut model, 9 << 20, &payload(1 << 20, 2));
    write(&u, &used, &mut model, (12 << 20) + 8192, &payload(5000, 3));
    u.flush().unwrap();
    let before = allocated(&img);
    assert!(
        before < header + (4 << 20),
        "the image is not sparse: {before}"
    );
    let hole = header + (5 << 20);
    assert_eq!(next_data(&img, hole), (header + (9 << 20)) as i64);

    let a = key_bytes(KeySize::Bits256);
    u.begin_encrypt(key_of(&a), reference("a"), &fast())
        .unwrap();
    let r = u.convert_with(
        &opts(),
        Some(used.clone() as Arc<dyn UsedRanges>),
        &mut |_| {},
    );
    assert_eq!(r.unwrap(), State::Encrypted);
    assert!(
        used.asked.load(Ordering::Relaxed) >= 16,
        "asked per 1 MiB sub-range"
    );
    check_used(&u, &used, &model, "encrypted");
    // At most: the rest of granule 12, where 5000 bytes hold content, and the two checksum
    // tables in the header area.
    let after = allocated(&img);
    assert!(
        after <= before + (1 << 20) + (512 << 10),
        "used-space-only encryption allocated {} bytes more",
        after - before
    );
    assert_eq!(
        next_data(&img, hole),
        (header + (9 << 20)) as i64,
        "a hole was written"
    );
    // The content is encrypted on the device.
    let raw = std::fs::read(&img).unwrap();
    let at = (header + (2 << 20)) as usize;
    assert!(raw[at..at + 4096] != model.bytes[2 << 20..(2 << 20) + 4096]);

    // Rekey, full: every byte is written, the holes are filled.
    let b = key_bytes(KeySize::Bits512);
    u.begin_rekey(key_of(&b), reference("b"), &fast()).unwrap();
    assert_eq!(u.convert(&opts(), &mut |_| {}).unwrap(), State::Encrypted);
    check_used(&u, &used, &model, "rekeyed (full)");
    assert!(
        allocated(&img) >= header + size - (1 << 20),
        "the full conversion left holes: {} allocated",
        allocated(&img)
    );
    assert_eq!(next_data(&img, hole), hole as i64);

    // Decrypt, used space only, then reopen with no key: the content is there in the clear.
    u.begin_decrypt().unwrap();
    let r = u.convert_with(
        &opts(),
        Some(used.clone() as Arc<dyn UsedRanges>),
        &mut |_| {},
    );
    assert_eq!(r.unwrap(), State::Plain);
    drop(u);
    let v = Volume::open(Arc::new(FileDevice::open(&img).unwrap())).unwrap();
    let u = v.unlock(vec![]).unwrap();
    check_used(&u, &used, &model, "decrypted, reopened");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two writers and a reader run beside a used-space-only conversion, each writing mostly into
/// space that held nothing when the conversion started (so the converter may have decided to
/// skip it a moment before): after Encrypt, Rekey and Decrypt, and after reopening the volume
/// from disk with its keys, everything written reads back.
#[test]
fn writes_during_a_used_space_only_conversion_are_never_skipped() {
    let dir = temp_dir("used-writers");
    let img = dir.join("vol.img");
    let size = 24u64 << 20;
    let dev = Arc::new(FileDevice::create(&img, (1 << 20) + size).unwrap());
    let u = Volume::format(dev, &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let used = Written::new(size);
    let mut model = Model::new(size);
    write(&u, &used, &mut model, 0, &payload(3 << 20, 7));
    let keys: Vec<Vec<u8>> = vec![key_bytes(KeySize::Bits256), key_bytes(KeySize::Bits512)];
    let stripe = 64u64 << 10;
    for (step, what) in ["encrypt", "rekey", "decrypt"].iter().enumerate() {
        match step {
            0 => u
                .begin_encrypt(key_of(&keys[0]), reference("a"), &fast())
                .unwrap(),
            1 => u
                .begin_rekey(key_of(&keys[1]), reference("b"), &fast())
                .unwrap(),
            _ => u.begin_decrypt().unwrap(),
        }
        let running = AtomicBool::new(true);
        // Each writer owns every other 64 KiB stripe, so the two models never overlap.
        let models: Vec<Mutex<Model>> = (0..2).map(|_| Mutex::new(model.clone())).collect();
        let mut writes = [0u64; 2];
        std::thread::scope(|s| {
            let conv = s.spawn(|| {
                let r = u.convert_with(
                    &chunked(2 << 20),
                    Some(used.clone() as Arc<dyn UsedRanges>),
                    &mut |_| std::thread::yield_now(),
                );
                running.store(false, Ordering::Release);
                r
            });
            let handles: Vec<_> = (0..2u64)
                .map(|t| {
                    let (u, used, running, models) = (&u, &used, &running, &models);
                    s.spawn(move || {
                        let mut rng = Rng(0xabc ^ ((t + 1) * 7) ^ ((step as u64) << 20));
                        let mut m = models[t as usize].lock().unwrap();
                        let mut n = 0u64;
                        while running.load(Ordering::Acquire) || n < 20 {
                            let k = rng.below(size / stripe / 2) * 2 + t;
                            let off = k * stripe + rng.below(stripe - 9000);
                            let len = 1 + rng.below(9000) as usize;
                            let data = payload(len, rng.next());
                            write(u, used, &mut m, off, &data);
                            // Read back a range this writer owns.
                            let mut got = vec![0u8; len];
                            u.read_at(&mut got, off).unwrap();
                            assert!(got == data, "{what}: read after write at {off}");
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                writes[i] = h.join().unwrap();
            }
            assert_eq!(
                conv.join().unwrap().unwrap(),
                if step == 2 {
                    State::Plain
                } else {
                    State::Encrypted
                }
            );
        });
        // Merge the writers' stripes into the model.
        for (t, m) in models.iter().enumerate() {
            let m = m.lock().unwrap();
            for k in (t as u64..size / stripe).step_by(2) {
                model.take(&m, (k * stripe) as usize, ((k + 1) * stripe) as usize);
            }
        }
        check_used(&u, &used, &model, what);
        // From the disk, with only the keys the header names now.
        let dev = Arc::new(FileDevice::open_read_only(&img).unwrap());
        let v = Volume::open_read_only(dev).unwrap();
        let ks: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let fresh = if step == 2 {
            v.unlock(vec![]).unwrap()
        } else {
            unlock_with(v, &ks)
        };
        check_used(&fresh, &used, &model, &format!("{what}, reopened"));
        drop(fresh);
        eprintln!(
            "{what}: {} + {} writes during the conversion",
            writes[0], writes[1]
        );
        assert!(writes.iter().sum::<u64>() >= 40);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
