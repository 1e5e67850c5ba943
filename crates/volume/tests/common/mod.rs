//! Shared helpers of the integration tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use atrest_volume::*;

/// A fresh empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn peers_required() -> bool {
    std::env::var("ATREST_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Whether an external tool is there; without it the test is skipped with a note, unless
/// ATREST_REQUIRE_PEERS=1, in which case it fails.
pub fn have_tool(name: &str, probe: &mut Command) -> bool {
    let ok = probe.output().is_ok_and(|o| o.status.success());
    if !ok {
        if peers_required() {
            panic!("{name} is required (ATREST_REQUIRE_PEERS=1) but not available");
        }
        eprintln!("note: {name} not available; skipping this test");
    }
    ok
}

pub fn have_cryptsetup() -> bool {
    have_tool("cryptsetup", Command::new("cryptsetup").arg("--version"))
}

/// The Python interpreter with `cryptography` (ATREST_PYTHON), if any.
pub fn python() -> Option<String> {
    match std::env::var("ATREST_PYTHON") {
        Ok(p) if !p.is_empty() => {
            if have_tool(
                "ATREST_PYTHON with cryptography",
                Command::new(&p).args(["-c", "import cryptography"]),
            ) {
                Some(p)
            } else {
                None
            }
        }
        _ => {
            if peers_required() {
                panic!("ATREST_PYTHON is required (ATREST_REQUIRE_PEERS=1) but not set");
            }
            eprintln!("note: ATREST_PYTHON not set; skipping the independent XTS check");
            None
        }
    }
}

/// Deterministic test payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small xorshift generator for test choices.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn reference(id: &str) -> KeyReference {
    KeyReference {
        unique_identifier: id.into(),
        servers: vec!["kms1.example:5696".into(), "kms2.example:5696".into()],
        created: "2026-11-27T11:00:00Z".into(),
    }
}

pub fn fast() -> EncryptOptions {
    EncryptOptions {
        sector_size: 4096,
        pbkdf2_iterations: 1000,
    }
}

pub fn chunked(chunk: u64) -> ConvertOptions {
    ConvertOptions {
        chunk_size: chunk,
        threads: 2,
        stop: None,
    }
}

pub fn small_format() -> FormatOptions {
    FormatOptions {
        data_offset: 1 << 20,
        label: "test".into(),
    }
}

/// Reads the whole data segment.
pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut b = vec![0u8; dev.len() as usize];
    dev.read_at(&mut b, 0).unwrap();
    b
}

pub fn key_of(bytes: &[u8]) -> KeyMaterial {
    let mut v = bytes.to_vec();
    KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut v)).unwrap()
}

/// Verifies each key in `keys` that matches a digest of `v` and unlocks.
pub fn unlock_with(v: Volume, keys: &[&[u8]]) -> UnlockedVolume {
    let mut verified = Vec::new();
    for k in keys {
        if let Ok(vk) = v.verify_key(key_of(k)) {
            verified.push(vk);
        }
    }
    v.unlock(verified).unwrap()
}
