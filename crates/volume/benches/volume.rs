//! Volume benchmarks, each a ratio measured in one run (numbers go to BENCHMARKS.md):
//!
//! 1. XTS-AES-128 throughput per core, 4096-byte sectors, vs
//!    `openssl speed -elapsed -bytes 4096 -evp aes-128-xts` (goal ≥ 1.0×);
//! 2. in-place encryption of a volume (2 GiB by default) vs `cryptsetup reencrypt --encrypt` of
//!    the same payload (goal on tmpfs, where only the CPU counts: ≥ 1.5× faster), vs `dd`
//!    rewriting the same payload in place with fdatasync (goal on disk: ≥ 0.8×), and vs a plain
//!    copy of it with fsync.
//!
//! `cargo bench -p atrest-volume --bench volume`; env ATREST_BENCH_SIZE (e.g. `256M`) for a
//! quicker run, ATREST_BENCH_DIR for where the images go (default: the target's tmp dir),
//! ATREST_BENCH_CHUNK_MIB for the conversion chunk (default: the CLI's, 64), ATREST_BENCH_ONLY=conversion
//! to skip the XTS measurement.

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

/// CPU seconds (user + system) used so far by this process (`who` = RUSAGE_SELF) or by its
/// waited-for children (RUSAGE_CHILDREN): on a shared machine, the part of a measurement that
/// other load does not change.
fn cpu_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage the call fills in.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `dd if=F of=F bs=4M conv=notrunc,fdatasync`: every byte read and written back where it is.
fn rewrite_in_place(path: &Path) -> Option<f64> {
    let t = Instant::now();
    let st = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", path.display()))
        .args(["bs=4M", "conv=notrunc,fdatasync", "status=none"])
        .status()
        .ok()?;
    st.success().then(|| t.elapsed().as_secs_f64())
}

/// XTS per core, ours and `openssl speed`'s, in GB/s (printed).
fn xts_section() -> (f64, Option<f64>) {
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

    (ours, theirs)
}

fn main() {
    // libtest passes --bench; nothing else is accepted.
    let size = size_from_env();
    let dir: PathBuf = std::env::var_os("ATREST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("volume-bench"));
    std::fs::create_dir_all(&dir).unwrap();

    // ATREST_BENCH_ONLY=conversion skips the XTS measurement.
    let only_conversion = std::env::var("ATREST_BENCH_ONLY").is_ok_and(|v| v == "conversion");
    let (ours, theirs) = if only_conversion {
        (0.0, None)
    } else {
        xts_section()
    };

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
    let setup_s = t.elapsed().as_secs_f64();
    let cpu0 = cpu_s(libc::RUSAGE_SELF);
    u.convert(&conv, &mut |_| {}).unwrap();
    let atrest_cpu = cpu_s(libc::RUSAGE_SELF) - cpu0;
    let atrest_s = t.elapsed().as_secs_f64();
    println!(
        "  (open, unlock and begin_encrypt: {setup_s:.2} s of it; convert: {atrest_cpu:.2} CPU s)"
    );
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
    // The same payload rewritten in place, as `dd` does it: the floor of any in-place conversion.
    let cpu0 = cpu_s(libc::RUSAGE_CHILDREN);
    let dd_s = rewrite_in_place(&plain);
    let dd_cpu = cpu_s(libc::RUSAGE_CHILDREN) - cpu0;
    if let Some(s) = dd_s {
        println!(
            "dd in-place rewrite + fdatasync: {s:.2} s, {:.0} MB/s ({dd_cpu:.2} CPU s)",
            mb_s(size, s)
        );
    }
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
        let cpu0 = cpu_s(libc::RUSAGE_CHILDREN);
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
        let cs_cpu = cpu_s(libc::RUSAGE_CHILDREN) - cpu0;
        if st.success() {
            cs_s = Some((s, cs_cpu));
            println!(
                "cryptsetup reencrypt --encrypt: {s:.2} s, {:.0} MB/s ({cs_cpu:.2} CPU s)",
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
    if let Some(d) = dd_s {
        println!(
            "atrest vs dd in-place rewrite: {:.2}x (goal >= 0.8 on disk); CPU time: {:.2}x",
            d / atrest_s,
            dd_cpu / atrest_cpu
        );
    }
    println!(
        "atrest vs copy+fsync: {:.2}x (goal >= 0.7)",
        copy_s / atrest_s
    );
    if let Some((c, c_cpu)) = cs_s {
        println!(
            "atrest vs cryptsetup reencrypt: {:.2}x faster (goal >= 1.5 on tmpfs); CPU time: {:.2}x less",
            c / atrest_s,
            c_cpu / atrest_cpu
        );
    }
    if let Some(t) = theirs {
        println!(
            "XTS per core vs openssl speed: {:.2}x (goal >= 1.0)",
            ours / t
        );
    }
}
