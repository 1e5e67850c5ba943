//! The recovery key: a standard LUKS2 argon2id keyslot that stock cryptsetup opens, that atrest
//! opens without any KMIP server, that a rekey replaces (the old recovery key then opens
//! nothing) and that removal wipes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_volume::*;
use common::*;

/// Cheap argon2id cost for tests (the default is 256 MiB, 4 passes).
fn test_kdf() -> RecoveryKdf {
    RecoveryKdf {
        memory_kib: 8 * 1024,
        time: 2,
        lanes: 4,
    }
}

fn cryptsetup(args: &[&str]) -> (i32, String) {
    let out = Command::new("cryptsetup").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `cryptsetup open --test-passphrase --key-file` with `text` as the passphrase (no newline).
fn cryptsetup_accepts(img: &Path, text: &str, dir: &Path) -> bool {
    let kf = dir.join("recovery.txt");
    std::fs::write(&kf, text).unwrap();
    let (rc, out) = cryptsetup(&[
        "open",
        "--test-passphrase",
        "--key-file",
        kf.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    // 2: wrong passphrase; 1: no keyslot left to try.
    assert!(
        rc == 0 || rc == 2 || (rc == 1 && out.contains("No usable keyslot")),
        "cryptsetup failed otherwise (rc {rc}): {out}"
    );
    rc == 0
}

/// The volume key cryptsetup recovers with the passphrase (`luksDump --dump-volume-key`).
fn cryptsetup_volume_key(img: &Path, text: &str, dir: &Path) -> Vec<u8> {
    let kf = dir.join("recovery.txt");
    std::fs::write(&kf, text).unwrap();
    let (rc, out) = cryptsetup(&[
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
        kf.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{out}");
    let mut hex = String::new();
    let mut on = false;
    for line in out.lines() {
        if line.starts_with("MK dump:") || line.starts_with("Volume key:") {
            on = true;
            hex.push_str(line.split_once(':').unwrap().1);
        } else if on && line.starts_with(|c: char| c.is_whitespace()) {
            hex.push_str(line);
        } else if on {
            on = false;
        }
    }
    let hex: String = hex.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    ::hex::decode(hex).unwrap()
}

/// A 2 MiB header area (room for recovery keyslots) and `data` bytes of payload, encrypted.
fn encrypted(dir: &Path, bits: KeySize, data: usize) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let img = dir.join("vol.img");
    let dev = Arc::new(FileDevice::create(&img, (2 << 20) + data as u64).unwrap());
    let opts = FormatOptions {
        data_offset: 2 << 20,
        label: "recovery".into(),
    };
    let u = Volume::format(dev, &opts).unwrap().unlock(vec![]).unwrap();
    let payload = payload(u.len() as usize, 7);
    u.write_at(&payload, 0).unwrap();
    let key = KeyMaterial::generate(bits).unwrap();
    let raw = key.expose().to_vec();
    u.begin_encrypt(key, reference("key-a"), &fast()).unwrap();
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    (img, raw, payload)
}

fn open(img: &Path) -> Volume {
    Volume::open(Arc::new(FileDevice::open(img).unwrap())).unwrap()
}

fn zero_area(img: &Path) -> bool {
    // The recovery region: the last 3 × 258048 bytes of the keyslots area (which ends at 2 MiB).
    let all = std::fs::read(img).unwrap();
    all[(2 << 20) - 3 * 258_048..2 << 20]
        .iter()
        .all(|&b| b == 0)
}

#[test]
fn cryptsetup_opens_the_recovery_keyslot_and_atrest_unlocks_without_kmip() {
    if !have_cryptsetup() {
        return;
    }
    for bits in [KeySize::Bits256, KeySize::Bits512] {
        let dir = temp_dir("recovery-compat");
        let (img, raw, data) = encrypted(&dir, bits, 256 << 10);
        let u = unlock_with(open(&img), &[&raw]);
        assert!(!u.has_recovery_key());
        let rk = u.add_recovery_key(&test_kdf()).unwrap();
        assert!(u.has_recovery_key());
        drop(u);
        let text = rk.expose().to_string();
        assert_eq!(text.len(), 55);

        // Stock cryptsetup: luksDump shows an argon2id keyslot; the key opens it and yields
        // exactly the volume key; another valid-looking key does not.
        let (rc, dump) = cryptsetup(&["luksDump", img.to_str().unwrap()]);
        assert_eq!(rc, 0, "{dump}");
        assert!(dump.contains("argon2id"), "{dump}");
        assert!(cryptsetup_accepts(&img, &text, &dir));
        let other = RecoveryKey::generate().unwrap();
        assert!(!cryptsetup_accepts(&img, other.expose(), &dir));
        assert_eq!(cryptsetup_volume_key(&img, &text, &dir), raw);

        // atrest: the recovery key typed with spaces unlocks, no KMIP key involved.
        let typed = RecoveryKey::parse(&text.replace('-', "  ")).unwrap();
        let v = open(&img);
        assert!(v.has_recovery_key());
        let keys = v.keys_from_recovery_key(&typed).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].expose(), &raw[..]);
        let u = v.unlock(keys).unwrap();
        let mut back = vec![0u8; data.len()];
        u.read_at(&mut back, 0).unwrap();
        assert!(back == data, "recovered data differs");
        let err = open(&img).keys_from_recovery_key(&other).unwrap_err();
        assert!(err.to_string().contains("opens no keyslot"), "{err}");

        // Removal: the keyslot leaves the header, its area is wiped, cryptsetup refuses.
        assert!(u.remove_recovery_key().unwrap());
        drop(u);
        assert!(zero_area(&img));
        assert!(!cryptsetup_accepts(&img, &text, &dir));
        let err = open(&img).keys_from_recovery_key(&typed).unwrap_err();
        assert!(err.to_string().contains("no recovery key"), "{err}");
        let (rc, dump) = cryptsetup(&["luksDump", img.to_str().unwrap()]);
        assert_eq!(rc, 0, "{dump}");
        assert!(!dump.contains("argon2id"), "{dump}");
    }
}

#[test]
fn rekey_renews_the_recovery_key_and_the_old_one_opens_nothing() {
    if !have_cryptsetup() {
        return;
    }
    let dir = temp_dir("recovery-rekey");
    let (img, a, data) = encrypted(&dir, KeySize::Bits256, 512 << 10);
    let u = unlock_with(open(&img), &[&a]);
    let r1 = u.add_recovery_key(&test_kdf()).unwrap();
    let b = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let b_raw = b.expose().to_vec();
    let r2 = u
        .begin_rekey_renewing_recovery(b, reference("key-b"), &fast(), &test_kdf())
        .unwrap()
        .expect("a new recovery key");
    // Stop half way: the new recovery key alone opens both keys; the old one nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let opts = ConvertOptions {
        chunk_size: 64 << 10,
        threads: 1,
        stop: Some(stop),
    };
    let mut n = 0;
    u.convert(&opts, &mut |_| {
        n += 1;
        if n == 3 {
            s2.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(u.state(), State::Rekeying);
    drop(u);
    assert!(!cryptsetup_accepts(&img, r1.expose(), &dir));
    assert!(cryptsetup_accepts(&img, r2.expose(), &dir));
    let v = open(&img);
    assert!(v.keys_from_recovery_key(&r1).is_err());
    let keys = v.keys_from_recovery_key(&r2).unwrap();
    assert_eq!(keys.len(), 2, "both keys of the rekey");
    let u = v.unlock(keys).unwrap();
    let mut back = vec![0u8; data.len()];
    u.read_at(&mut back, 0).unwrap();
    assert!(
        back == data,
        "half-rekeyed data read with the recovery key differs"
    );
    // Finish (resumed with the recovery key only): the old key's keyslot goes with it.
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    assert_eq!(u.state(), State::Encrypted);
    drop(u);
    assert!(!cryptsetup_accepts(&img, r1.expose(), &dir));
    assert!(cryptsetup_accepts(&img, r2.expose(), &dir));
    assert_eq!(cryptsetup_volume_key(&img, r2.expose(), &dir), b_raw);
    let v = open(&img);
    let err = v.keys_from_recovery_key(&r1).unwrap_err();
    assert!(err.to_string().contains("opens no keyslot"), "{err}");
    let keys = v.keys_from_recovery_key(&r2).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].expose(), &b_raw[..]);
    let m = v.metadata().clone();
    assert_eq!(m.keyslots.len(), 1, "only the new key's keyslot is left");

    // A rekey that does not renew (scheduled rotation) removes the recovery key at once.
    let u = v.unlock(keys).unwrap();
    let c = KeyMaterial::generate(KeySize::Bits256).unwrap();
    u.begin_rekey(c, reference("key-c"), &fast()).unwrap();
    assert!(!u.has_recovery_key());
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    drop(u);
    assert!(!cryptsetup_accepts(&img, r2.expose(), &dir));
    assert!(zero_area(&img));
}

#[test]
fn decrypt_removes_the_recovery_key_with_the_key() {
    let dir = temp_dir("recovery-decrypt");
    let (img, a, data) = encrypted(&dir, KeySize::Bits256, 256 << 10);
    let u = unlock_with(open(&img), &[&a]);
    let r = u.add_recovery_key(&test_kdf()).unwrap();
    u.begin_decrypt().unwrap();
    // While decrypting, the recovery key still opens the old key (the data's).
    assert!(u.has_recovery_key());
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    assert_eq!(u.state(), State::Plain);
    assert!(!u.has_recovery_key());
    drop(u);
    assert!(zero_area(&img));
    let v = open(&img);
    assert!(v.keys_from_recovery_key(&r).is_err());
    let u = v.unlock(vec![]).unwrap();
    let mut back = vec![0u8; data.len()];
    u.read_at(&mut back, 0).unwrap();
    assert!(back == data);
}

#[test]
fn a_small_header_area_has_no_room_and_says_so() {
    let dir = temp_dir("recovery-small");
    let img = dir.join("vol.img");
    let dev = Arc::new(FileDevice::create(&img, (1 << 20) + (256 << 10)).unwrap());
    let u = Volume::format(dev, &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let key = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let raw = key.expose().to_vec();
    u.begin_encrypt(key, reference("k"), &fast()).unwrap();
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    drop(u);
    let u = unlock_with(open(&img), &[&raw]);
    let err = u.add_recovery_key(&test_kdf()).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

/// Rewrites both header copies of `img` as someone with write access to the disk and no key
/// would: JSON edited, checksums fixed.
fn forge(img: &Path, f: impl Fn(&mut serde_json::Value)) {
    const HDR: usize = 16384;
    let mut all = std::fs::read(img).unwrap();
    for off in [0, HDR] {
        let copy = &mut all[off..off + HDR];
        let end = copy[4096..].iter().position(|&b| b == 0).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&copy[4096..4096 + end]).unwrap();
        f(&mut v);
        let text = serde_json::to_vec(&v).unwrap();
        copy[4096..].fill(0);
        copy[4096..4096 + text.len()].copy_from_slice(&text);
        atrest_volume::luks2::fix_checksum(copy);
    }
    std::fs::write(img, all).unwrap();
}

fn keyslot_id(v: &serde_json::Value) -> String {
    v["keyslots"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone()
}

#[test]
fn forged_recovery_keyslots_are_refused() {
    let dir = temp_dir("recovery-forged");
    let (img, raw, _) = encrypted(&dir, KeySize::Bits256, 256 << 10);
    let u = unlock_with(open(&img), &[&raw]);
    let rk = u.add_recovery_key(&test_kdf()).unwrap();
    drop(u);
    let genuine = std::fs::read(&img).unwrap();

    // A cost that would allocate 4 GiB (or run for minutes): refused before the KDF runs,
    // with the reason; the header itself still reads.
    forge(&img, |v| {
        let id = keyslot_id(v);
        v["keyslots"][&id]["kdf"]["memory"] = serde_json::json!(4u64 << 20);
    });
    let err = open(&img)
        .keys_from_recovery_key(&rk)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("could be tried") && err.contains("memory"),
        "{err}"
    );
    std::fs::write(&img, &genuine).unwrap();
    forge(&img, |v| {
        let id = keyslot_id(v);
        v["keyslots"][&id]["kdf"]["time"] = serde_json::json!(1_000_000);
    });
    let err = open(&img)
        .keys_from_recovery_key(&rk)
        .unwrap_err()
        .to_string();
    assert!(err.contains("argon2 time"), "{err}");

    // An area moved elsewhere yields a key that fails the digest: never used.
    std::fs::write(&img, &genuine).unwrap();
    forge(&img, |v| {
        let id = keyslot_id(v);
        v["keyslots"][&id]["area"]["offset"] = serde_json::json!("1048576");
    });
    let err = open(&img)
        .keys_from_recovery_key(&rk)
        .unwrap_err()
        .to_string();
    assert!(err.contains("opens no keyslot"), "{err}");

    // The keyslot unbound from the digest (or removed): the header MAC, which covers each
    // digest's keyslots, refuses the header under the genuine key.
    for remove in [false, true] {
        std::fs::write(&img, &genuine).unwrap();
        forge(&img, |v| {
            let id = keyslot_id(v);
            for (_, d) in v["digests"].as_object_mut().unwrap() {
                d["keyslots"] = serde_json::json!([]);
            }
            if remove {
                v["keyslots"].as_object_mut().unwrap().remove(&id);
            }
        });
        let v = open(&img);
        let key = v.verify_key(key_of(&raw)).unwrap();
        let err = v.unlock(vec![key]).unwrap_err();
        assert!(matches!(err, Error::HeaderAuth(_)), "{err}");
    }
    // A keyslot bound a second time under another id: refused the same way.
    std::fs::write(&img, &genuine).unwrap();
    forge(&img, |v| {
        let id = keyslot_id(v);
        let slot = v["keyslots"][&id].clone();
        v["keyslots"]["7"] = slot;
        for (_, d) in v["digests"].as_object_mut().unwrap() {
            d["keyslots"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!("7"));
        }
    });
    let v = open(&img);
    let key = v.verify_key(key_of(&raw)).unwrap();
    assert!(matches!(v.unlock(vec![key]), Err(Error::HeaderAuth(_))));
    // The genuine header still opens with both.
    std::fs::write(&img, &genuine).unwrap();
    let keys = open(&img).keys_from_recovery_key(&rk).unwrap();
    open(&img).unlock(keys).unwrap();
}
