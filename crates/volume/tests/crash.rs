//! Crash safety of in-place conversion: simulated power loss at every write and flush
//! (`atrest_volume::testing::CrashDevice`: unflushed writes and the one in flight dropped, kept
//! or torn at 512-byte units), and kill -9 of a child process converting a file.
//! After resuming, the payload must equal the original.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use atrest_volume::testing::{CrashDevice, LossMode};
use atrest_volume::*;
use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Encrypt,
    Rekey,
    Decrypt,
}

const K1: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";
const K2: [u8; 64] = *b"fedcba9876543210FEDCBA9876543210fedcba9876543210FEDCBA987654321x";

/// Opens, unlocks, starts the conversion if it has not started, and runs it to the end,
/// converting only what `used` says holds content (all when `None`), and writing conversion
/// records of version 1 (as earlier atrest did) when `legacy`.
fn run_full(
    dev: Arc<dyn BlockDevice>,
    kind: Kind,
    chunk: u64,
    sector: u32,
    used: Option<Arc<dyn UsedRanges>>,
    legacy: bool,
) -> Result<State> {
    let v = Volume::open(dev)?;
    let state = v.state();
    let mut keys = Vec::new();
    for k in [&K1[..], &K2[..]] {
        if let Ok(vk) = v.verify_key(key_of(k)) {
            keys.push(vk);
        }
    }
    let has_k2 = keys.iter().any(|k| k.size() == KeySize::Bits512);
    let u = v.unlock(keys)?;
    u.write_version_1_records(legacy);
    match (kind, state) {
        (Kind::Encrypt, State::Plain) => {
            let opts = EncryptOptions {
                sector_size: sector,
                ..fast()
            };
            u.begin_encrypt(key_of(&K1), reference("k1"), &opts)?
        }
        (Kind::Rekey, State::Encrypted) if !has_k2 => {
            u.begin_rekey(key_of(&K2), reference("k2"), &fast())?
        }
        (Kind::Decrypt, State::Encrypted) => u.begin_decrypt()?,
        _ => {}
    }
    u.convert_with(&chunked(chunk), used, &mut |_| {
        if std::env::var_os("ATREST_CRASH_CHILD").is_some() {
            println!("CHUNK");
        }
    })
}

/// Content in some [`GRANULE`]-sized sub-ranges of the data segment only.
struct Granules(Vec<u64>);

/// The unit in which the tests say what holds content (the conversion's sub-range).
const GRANULE: u64 = 1 << 20;

impl UsedRanges for Granules {
    fn in_use(&self, offset: u64, len: u64) -> bool {
        self.0
            .iter()
            .any(|g| g * GRANULE < offset + len && offset < (g + 1) * GRANULE)
    }
}

fn expected_final(kind: Kind) -> State {
    match kind {
        Kind::Encrypt | Kind::Rekey => State::Encrypted,
        Kind::Decrypt => State::Plain,
    }
}

/// A volume image in the state the conversion starts from, and its payload.
fn base_image(kind: Kind, data_len: usize) -> (Vec<u8>, Vec<u8>) {
    let dev = Arc::new(MemDevice::new((1 << 20) + data_len));
    let v = Volume::format(dev.clone(), &small_format()).unwrap();
    let u = v.unlock(vec![]).unwrap();
    let data = payload(data_len, 99);
    u.write_at(&data, 0).unwrap();
    if kind != Kind::Encrypt {
        u.begin_encrypt(key_of(&K1), reference("k1"), &fast())
            .unwrap();
        u.convert(&chunked(1 << 20), &mut |_| {}).unwrap();
    }
    drop(u);
    (dev.to_vec(), data)
}

fn check_payload(img: Vec<u8>, kind: Kind, data: &[u8]) {
    let v = Volume::open(Arc::new(MemDevice::from_vec(img))).unwrap();
    assert_eq!(v.state(), expected_final(kind));
    let u = unlock_with(v, &[&K1, &K2]);
    assert_eq!(
        read_all(&u),
        data,
        "{kind:?}: payload differs after crashes"
    );
}

/// What one power-loss run varies.
struct Suite {
    kind: Kind,
    sector: u32,
    data_len: usize,
    chunk: u64,
    used: Option<Vec<u64>>,
    /// The first run (before the first power loss) writes version 1 records.
    legacy: bool,
}

/// Simulated power loss at each write or flush of a conversion (three crash images per point,
/// up to three successive losses), then resume; the payload must be intact, and with `used`, the
/// granules without content must hold exactly the bytes they held before (never written).
/// Returns how many crash images held a conversion record of version 1 with a hotzone.
fn power_loss_suite(t: &Suite) -> usize {
    let (base, data) = base_image(t.kind, t.data_len);
    let used = || -> Option<Arc<dyn UsedRanges>> {
        t.used
            .clone()
            .map(|g| Arc::new(Granules(g)) as Arc<dyn UsedRanges>)
    };
    let mut v1_hotzones = 0;
    let mut n = 0u64;
    loop {
        let mut first_completed = false;
        // Three different crash images (which unflushed writes survive, torn how) per point.
        for seed in 0..3u64 {
            let mut rng = Rng(0x5eed ^ ((n + 1) * 7919) ^ (seed << 40));
            let medium = Arc::new(MemDevice::from_vec(base.clone()));
            let dev = Arc::new(CrashDevice::new(medium.clone(), rng.next()));
            // `n` writes or flushes complete, the power fails during the next one.
            dev.arm(n + 1, LossMode::Tear);
            let mut crashes = 0;
            // Up to three successive power losses, then a clean run.
            loop {
                let legacy = t.legacy && crashes == 0;
                let r = run_full(dev.clone(), t.kind, t.chunk, t.sector, used(), legacy);
                if !dev.crashed() {
                    let state = r.unwrap_or_else(|e| panic!("{:?} n={n}: {e}", t.kind));
                    assert_eq!(state, expected_final(t.kind));
                    // Nothing is pending after the last flush.
                    dev.cut_power(LossMode::Tear).unwrap();
                    if crashes == 0 {
                        first_completed = true;
                    }
                    break;
                }
                let mut header = vec![0u8; 16384 - 4096];
                medium.read_at(&mut header, 4096).unwrap();
                let text = String::from_utf8_lossy(&header).to_string();
                if text.contains("atrest-conversion-v1") && text.contains("\"hash\":\"sha256\"") {
                    v1_hotzones += 1;
                }
                crashes += 1;
                dev.power_cycle();
                if crashes < 3 {
                    dev.arm(1 + rng.below(12), LossMode::Tear);
                }
            }
            let img = medium.to_vec();
            match &t.used {
                None => check_payload(img, t.kind, &data),
                Some(g) => check_used(img, &base, t.kind, &data, g),
            }
        }
        if first_completed {
            eprintln!(
                "{:?} ({}-byte sectors, used: {:?}, version 1 first: {}): survived power loss at \
                 each of {n} write and flush points",
                t.kind, t.sector, t.used, t.legacy
            );
            return v1_hotzones;
        }
        n += 1;
        assert!(n < 500, "conversion never completes");
    }
}

/// The granules in `used` read back as `data`; every other granule holds the raw bytes it held
/// in `base` (the conversion never wrote it, nor did recovery).
fn check_used(img: Vec<u8>, base: &[u8], kind: Kind, data: &[u8], used: &[u64]) {
    let v = Volume::open(Arc::new(MemDevice::from_vec(img.clone()))).unwrap();
    assert_eq!(v.state(), expected_final(kind));
    let data_offset = v.info().data_offset as usize;
    let u = unlock_with(v, &[&K1, &K2]);
    let all = read_all(&u);
    for g in 0..(data.len() as u64).div_ceil(GRANULE) {
        let r = (g * GRANULE) as usize..(((g + 1) * GRANULE) as usize).min(data.len());
        if used.contains(&g) {
            assert!(
                all[r.clone()] == data[r],
                "{kind:?}: granule {g} differs after crashes"
            );
        } else {
            let raw = data_offset + r.start..data_offset + r.end;
            assert!(
                img[raw.clone()] == base[raw],
                "{kind:?}: granule {g}, which holds no content, was written"
            );
        }
    }
}

#[test]
fn power_loss_at_every_write() {
    for (kind, sector) in [
        (Kind::Encrypt, 4096),
        (Kind::Encrypt, 512),
        (Kind::Rekey, 4096),
        (Kind::Decrypt, 4096),
    ] {
        power_loss_suite(&Suite {
            kind,
            sector,
            data_len: 256 << 10,
            chunk: 64 << 10,
            used: None,
            legacy: false,
        });
    }
}

/// Used-space-only conversion: a chunk of two granules, one holding content, then a chunk of
/// one granule that holds content.
#[test]
fn power_loss_during_a_used_space_only_conversion() {
    for kind in [Kind::Encrypt, Kind::Rekey, Kind::Decrypt] {
        power_loss_suite(&Suite {
            kind,
            sector: 4096,
            data_len: 3 << 20,
            chunk: 2 << 20,
            used: Some(vec![0, 2]),
            legacy: false,
        });
    }
}

/// A conversion record of version 1 (SHA-256 table, as earlier atrest wrote it), interrupted
/// by power loss at every write point, is recovered and finished by the current code.
#[test]
fn power_loss_during_a_version_1_conversion() {
    for kind in [Kind::Encrypt, Kind::Rekey, Kind::Decrypt] {
        let v1 = power_loss_suite(&Suite {
            kind,
            sector: 4096,
            data_len: 256 << 10,
            chunk: 64 << 10,
            used: None,
            legacy: true,
        });
        assert!(v1 > 0, "{kind:?}: no crash image held a version 1 hotzone");
    }
}

/// Child side of `kill9_during_conversion`: converts the image named in ATREST_CRASH_CHILD.
#[test]
fn crash_child() {
    let Some(spec) = std::env::var_os("ATREST_CRASH_CHILD") else {
        return;
    };
    let spec = spec.to_string_lossy().to_string();
    let (kind, path) = spec.split_once(':').unwrap();
    let (kind, used) = match kind.split_once('+') {
        Some((k, "used")) => (k, Some(Arc::new(Granules(KILL9_USED.to_vec())) as _)),
        _ => (kind, None),
    };
    let kind = match kind {
        "encrypt" => Kind::Encrypt,
        "rekey" => Kind::Rekey,
        _ => Kind::Decrypt,
    };
    let dev = Arc::new(FileDevice::open(Path::new(path)).unwrap());
    run_full(dev, kind, 64 << 10, 4096, used, false).unwrap();
    println!("DONE");
}

/// The granules that hold content in the used-space-only kill -9 runs.
const KILL9_USED: [u64; 2] = [0, 2];

#[test]
fn kill9_during_conversion() {
    let exe = std::env::current_exe().unwrap();
    for (kind, name) in [
        (Kind::Encrypt, "encrypt"),
        (Kind::Rekey, "rekey"),
        (Kind::Decrypt, "decrypt"),
        (Kind::Encrypt, "encrypt+used"),
        (Kind::Rekey, "rekey+used"),
        (Kind::Decrypt, "decrypt+used"),
    ] {
        let used = name.ends_with("+used").then_some(&KILL9_USED[..]);
        let dir = temp_dir("kill9");
        let img = dir.join("vol.img");
        let (base, data) = base_image(kind, 4 << 20);
        std::fs::write(&img, &base).unwrap();
        let mut rng = Rng(0xdead_beef ^ name.len() as u64);
        let mut kills = 0;
        let mut finished = false;
        for _ in 0..40 {
            let mut child = Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env("ATREST_CRASH_CHILD", format!("{name}:{}", img.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let wait_chunks = rng.below(4);
            let mut seen = 0;
            let mut done = false;
            while seen < wait_chunks {
                match lines.next() {
                    Some(Ok(l)) if l == "CHUNK" => seen += 1,
                    Some(Ok(l)) if l == "DONE" => {
                        done = true;
                        break;
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        done = true;
                        break;
                    }
                }
            }
            if !done {
                // Land somewhere inside the next chunk, or between chunks.
                std::thread::sleep(std::time::Duration::from_micros(rng.below(3000)));
                child.kill().unwrap();
                kills += 1;
            }
            let status = child.wait().unwrap();
            if done {
                assert!(status.success(), "child failed: {status}");
                finished = true;
                break;
            }
            if kills >= 20 {
                break;
            }
        }
        // Finish in-process whatever is left, then compare.
        let dev = Arc::new(FileDevice::open(&img).unwrap());
        let granules = used.map(|g| Arc::new(Granules(g.to_vec())) as Arc<dyn UsedRanges>);
        let state = run_full(dev, kind, 64 << 10, 4096, granules, false).unwrap();
        assert_eq!(state, expected_final(kind));
        match used {
            None => check_payload(std::fs::read(&img).unwrap(), kind, &data),
            Some(g) => check_used(std::fs::read(&img).unwrap(), &base, kind, &data, g),
        }
        eprintln!("{name}: {kills} kill -9, child finished by itself: {finished}");
        assert!(kills >= 5, "too few interruptions landed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
