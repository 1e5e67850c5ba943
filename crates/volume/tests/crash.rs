//! Crash safety of in-place conversion: simulated power loss at every write (unflushed writes
//! dropped, kept or torn at 512-byte units), and kill -9 of a child process converting a file.
//! After resuming, the payload must equal the original.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

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

/// Opens, unlocks, starts the conversion if it has not started, and runs it to the end.
fn run(dev: Arc<dyn BlockDevice>, kind: Kind, chunk: u64) -> Result<State> {
    run_with(dev, kind, chunk, 4096)
}

fn run_with(dev: Arc<dyn BlockDevice>, kind: Kind, chunk: u64, sector: u32) -> Result<State> {
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
    u.convert(&chunked(chunk), &mut |_| {
        if std::env::var_os("ATREST_CRASH_CHILD").is_some() {
            println!("CHUNK");
        }
    })
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

#[test]
fn power_loss_at_every_write() {
    for (kind, sector) in [
        (Kind::Encrypt, 4096),
        (Kind::Encrypt, 512),
        (Kind::Rekey, 4096),
        (Kind::Decrypt, 4096),
    ] {
        let (base, data) = base_image(kind, 256 << 10);
        let mut n = 0u64;
        loop {
            let mut first_completed = false;
            // Three different crash images (which unflushed writes survive, torn how) per point.
            for seed in 0..3u64 {
                let mut rng = Rng(0x5eed ^ ((n + 1) * 7919) ^ (seed << 40));
                let mut img = base.clone();
                let mut crash_at = n;
                let mut crashes = 0;
                // Up to three successive power losses, then a clean run.
                loop {
                    let dev = PowerLoss::new(img.clone(), crash_at);
                    let r = run_with(dev.clone(), kind, 64 << 10, sector);
                    if !dev.crashed() {
                        let state = r.unwrap_or_else(|e| panic!("{kind:?} n={n}: {e}"));
                        assert_eq!(state, expected_final(kind));
                        img = dev.crash_image(&mut rng); // nothing pending after the last flush
                        if crashes == 0 {
                            first_completed = true;
                        }
                        break;
                    }
                    img = dev.crash_image(&mut rng);
                    crashes += 1;
                    crash_at = if crashes < 3 { rng.below(12) } else { u64::MAX };
                }
                check_payload(img, kind, &data);
            }
            if first_completed {
                eprintln!(
                    "{kind:?} ({sector}-byte sectors): survived power loss at each of {n} write points"
                );
                break;
            }
            n += 1;
            assert!(n < 500, "conversion never completes");
        }
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
    let kind = match kind {
        "encrypt" => Kind::Encrypt,
        "rekey" => Kind::Rekey,
        _ => Kind::Decrypt,
    };
    let dev = Arc::new(FileDevice::open(Path::new(path)).unwrap());
    run(dev, kind, 64 << 10).unwrap();
    println!("DONE");
}

#[test]
fn kill9_during_conversion() {
    let exe = std::env::current_exe().unwrap();
    for (kind, name) in [
        (Kind::Encrypt, "encrypt"),
        (Kind::Rekey, "rekey"),
        (Kind::Decrypt, "decrypt"),
    ] {
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
        assert_eq!(run(dev, kind, 64 << 10).unwrap(), expected_final(kind));
        check_payload(std::fs::read(&img).unwrap(), kind, &data);
        eprintln!("{name}: {kills} kill -9, child finished by itself: {finished}");
        assert!(kills >= 5, "too few interruptions landed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
