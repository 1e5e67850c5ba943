//! Volume benchmarks, each a ratio measured in one run (numbers go to BENCHMARKS.md):
//!
//! 1. XTS-AES-128 throughput per core, 4096-byte sectors, vs
//!    `openssl speed -elapsed -bytes 4096 -evp aes-128-xts` (goal ≥ 1.0×);
//! 2. in-place encryption of a volume (2 GiB by default) vs `cryptsetup reencrypt --encrypt` of
//!    the same payload (goal ≥ 5× faster) and vs a plain copy of it with fsync (goal ≥ 0.7×).
//!
//! `cargo bench -p atrest-volume --bench volume`; env ATREST_BENCH_SIZE (e.g. `256M`) for a
//! quicker run, ATREST_BENCH_DIR for where the images go (default: the target's tmp dir),
//! ATREST_BENCH_CHUNK_MIB for the conversion chunk (default 32).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use atrest_volume::*;

fn size_from_env() -> u64 {
    let Ok(s) = std::env::var("ATREST_BENCH_SIZE") else {
        return 2 << 30;
    };
    let s = s.trim().to_ascii_uppercase();
    let (n, shift) = match s.chars().last() {
        Some('G') => (&s[..s.len() - 1], 30),
        Some('M') => (&s[..s.len() - 1], 20),
        _ => (&s[..], 0),
    };
    n.parse::<u64>().expect("ATREST_BENCH_SIZE") << shift
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// XTS-AES-128 encryption of 4096-byte sectors on one thread, in GB/s.
fn xts_gbps(seconds: f64, backend: XtsBackend) -> f64 {
    let key = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let secret = SecretBytes::from_slice_zeroizing(&mut key.expose().to_vec());
    let x = XtsCipher::with_backend(&secret, backend).unwrap();
    let mut buf = vec![0x42u8; 1 << 20];
    let mut sector = 0u128;
    let mut bytes = 0u64;
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < seconds {
        x.encrypt_sectors(sector * 8, 4096, &mut buf).unwrap();
        sector += 256;
        bytes += buf.len() as u64;
    }
    bytes as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// `openssl speed -elapsed -bytes 4096 -evp aes-128-xts`, in GB/s.
fn openssl_speed_gbps(seconds: u32) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-elapsed",
            "-seconds",
            &seconds.to_string(),
            "-bytes",
            "4096",
            "-evp",
            "aes-128-xts",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| {
        l.trim_start().starts_with("aes-128-xts") || l.trim_start().starts_with("AES-128-XTS")
    })?;
    let last = line.split_whitespace().last()?;
    let k: f64 = last.trim_end_matches('k').parse().ok()?;
    Some(k * 1000.0 / 1e9)
}

fn fill(path: &Path, offset: u64, len: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(offset)).unwrap();
    let mut block = vec![0u8; 4 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(block.len() as u64) as usize;
        block[0] = block[0].wrapping_add(1);
        f.write_all(&block[..n]).unwrap();
        done += n as u64;
    }
    f.sync_all().unwrap();
}

fn copy_with_fsync(from: &Path, to: &Path) -> f64 {
    let t = Instant::now();
    let mut src = File::open(from).unwrap();
    let mut dst = File::create(to).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).unwrap();
    }
    dst.sync_all().unwrap();
    t.elapsed().as_secs_f64()
}

fn main() {
    // libtest passes --bench; nothing else is accepted.
    let size = size_from_env();
    let dir: PathBuf = std::env::var_os("ATREST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("volume-bench"));
    std::fs::create_dir_all(&dir).unwrap();

    println!("## XTS-AES-128, 4096-byte sectors, one thread");
    // Interleaved so that a change of load on the machine hits all three alike.
    let ours1 = xts_gbps(2.0, XtsBackend::Auto);
    let ossl1 = xts_gbps(2.0, XtsBackend::OpenSsl);
    let theirs = openssl_speed_gbps(3);
    let ours2 = xts_gbps(2.0, XtsBackend::Auto);
    let ossl2 = xts_gbps(2.0, XtsBackend::OpenSsl);
    let ours = ours1.max(ours2);
    let ossl = ossl1.max(ossl2);
    let backend = {
        let k = KeyMaterial::generate(KeySize::Bits256).unwrap();
        XtsCipher::new(&SecretBytes::from_slice_zeroizing(&mut k.expose().to_vec()))
            .unwrap()
            .backend_name()
    };
    println!("atrest ({backend}) {ours:.2} GB/s; atrest via OpenSSL EVP {ossl:.2} GB/s");
    match theirs {
        Some(t) => println!(
            "openssl speed {t:.2} GB/s; ratio {:.2}x ({backend}), {:.2}x (OpenSSL EVP)",
            ours / t,
            ossl / t
        ),
        None => println!("openssl speed not available"),
    }

    println!("## In-place encryption of {} MiB", size >> 20);
    let header = 16u64 << 20;
    // atrest: format, fill, then time begin_encrypt + convert (fsyncs included).
    let img = dir.join("atrest.img");
    let dev = Arc::new(FileDevice::create(&img, header + size).unwrap());
    Volume::format(dev.clone(), &FormatOptions::default()).unwrap();
    drop(dev);
    fill(&img, header, size);
    let t = Instant::now();
    let dev = Arc::new(FileDevice::open(&img).unwrap());
    let u = Volume::open(dev).unwrap().unlock(vec![]).unwrap();
    let key = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let reference = KeyReference {
        unique_identifier: "bench".into(),
        servers: vec!["localhost:5696".into()],
        created: "2026-01-01T00:00:00Z".into(),
    };
    u.begin_encrypt(key, reference, &EncryptOptions::default())
        .unwrap();
    let mut conv = ConvertOptions::default();
    if let Ok(c) = std::env::var("ATREST_BENCH_CHUNK_MIB") {
        conv.chunk_size = c.parse::<u64>().expect("ATREST_BENCH_CHUNK_MIB") << 20;
    }
    u.convert(&conv, &mut |_| {}).unwrap();
    let atrest_s = t.elapsed().as_secs_f64();
    drop(u);
    std::fs::remove_file(&img).unwrap();
    println!(
        "atrest encrypt: {atrest_s:.2} s, {:.0} MB/s",
        mb_s(size, atrest_s)
    );

    // Plain copy with fsync of the same payload.
    let plain = dir.join("plain.bin");
    File::create(&plain).unwrap().set_len(size).unwrap();
    fill(&plain, 0, size);
    let copy = dir.join("copy.bin");
    let copy_s = copy_with_fsync(&plain, &copy);
    std::fs::remove_file(&copy).unwrap();
    println!(
        "copy + fsync: {copy_s:.2} s, {:.0} MB/s",
        mb_s(size, copy_s)
    );

    // cryptsetup reencrypt --encrypt of the same payload (data shift into the reserved tail).
    let cs_img = dir.join("cryptsetup.img");
    let mut cs_s = None;
    if Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        std::fs::rename(&plain, &cs_img).unwrap();
        File::options()
            .write(true)
            .open(&cs_img)
            .unwrap()
            .set_len(size + 32 * (1 << 20))
            .unwrap();
        let keyf = dir.join("key");
        std::fs::write(
            &keyf,
            KeyMaterial::generate(KeySize::Bits256).unwrap().expose(),
        )
        .unwrap();
        let pass = dir.join("pass");
        std::fs::write(&pass, b"bench-passphrase").unwrap();
        let t = Instant::now();
        let st = Command::new("cryptsetup")
            .args([
                "reencrypt",
                "--encrypt",
                "--type",
                "luks2",
                "--batch-mode",
                "--reduce-device-size",
                "32M",
                "--sector-size",
                "4096",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-size",
                "256",
                "--volume-key-file",
            ])
            .arg(&keyf)
            .arg("--key-file")
            .arg(&pass)
            .arg(&cs_img)
            .status()
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        if st.success() {
            cs_s = Some(s);
            println!(
                "cryptsetup reencrypt --encrypt: {s:.2} s, {:.0} MB/s",
                mb_s(size, s)
            );
        } else {
            println!("cryptsetup reencrypt failed: {st}");
        }
        let _ = std::fs::remove_file(&cs_img);
        let _ = std::fs::remove_file(&keyf);
        let _ = std::fs::remove_file(&pass);
    } else {
        println!("cryptsetup not available");
    }
    let _ = std::fs::remove_file(&plain);

    println!("## Ratios");
    println!(
        "atrest vs copy+fsync: {:.2}x (goal >= 0.7)",
        copy_s / atrest_s
    );
    if let Some(c) = cs_s {
        println!(
            "atrest vs cryptsetup reencrypt: {:.2}x faster (goal >= 5)",
            c / atrest_s
        );
    }
    if let Some(t) = theirs {
        println!(
            "XTS per core vs openssl speed: {:.2}x (goal >= 1.0)",
            ours / t
        );
    }
}
