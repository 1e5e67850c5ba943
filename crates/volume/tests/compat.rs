//! Compatibility with stock tools: cryptsetup accepts every steady state atrest writes and the
//! key as the volume key; Python's `cryptography` (an independent XTS) decrypts the data
//! segment; atrest reads volumes whose header and data cryptsetup wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use atrest_volume::*;
use common::*;

fn cryptsetup(args: &[&str]) -> (i32, String) {
    let out = Command::new("cryptsetup").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn accepted(img: &Path, key: Option<&[u8]>, dir: &Path) {
    let p = img.to_str().unwrap();
    let (rc, text) = cryptsetup(&["luksDump", p]);
    assert_eq!(rc, 0, "luksDump refused {p}: {text}");
    assert!(!text.contains("Requirements"), "{text}");
    let (rc, text) = cryptsetup(&["isLuks", p]);
    assert_eq!(rc, 0, "isLuks: {text}");
    if let Some(key) = key {
        let kf = dir.join("key.bin");
        std::fs::write(&kf, key).unwrap();
        let bits = (key.len() * 8).to_string();
        let kfs = kf.to_str().unwrap();
        let (rc, text) = cryptsetup(&[
            "open",
            "--test-passphrase",
            "--volume-key-file",
            kfs,
            "--key-size",
            &bits,
            p,
        ]);
        assert_eq!(rc, 0, "cryptsetup refused the volume key: {text}");
        let mut wrong = key.to_vec();
        wrong[0] ^= 1;
        std::fs::write(&kf, &wrong).unwrap();
        let (rc, _) = cryptsetup(&[
            "open",
            "--test-passphrase",
            "--volume-key-file",
            kfs,
            "--key-size",
            &bits,
            p,
        ]);
        assert_ne!(rc, 0, "cryptsetup accepted a wrong key");
        std::fs::remove_file(&kf).unwrap();
    }
}

/// Decrypts the data segment with Python's cryptography and compares with `expected`.
fn python_check(
    py: &str,
    img: &Path,
    key: &[u8],
    offset: u64,
    sector: u32,
    expected: &[u8],
    dir: &Path,
) {
    let exp = dir.join("expected.bin");
    std::fs::write(&exp, expected).unwrap();
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, keyhex, off, sector, exp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
key = bytes.fromhex(keyhex)
want = open(exp, 'rb').read()
with open(img, 'rb') as f:
    f.seek(off)
    data = f.read(len(want))
out = bytearray()
for i in range(0, len(data), sector):
    tweak = (i // 512).to_bytes(16, 'little')
    d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
    out += d.update(data[i:i + sector]) + d.finalize()
sys.exit(0 if bytes(out) == want else 3)
"#;
    let st = Command::new(py)
        .args([
            "-c",
            script,
            img.to_str().unwrap(),
            &hex::encode(key),
            &offset.to_string(),
            &sector.to_string(),
            exp.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "Python's XTS does not decrypt the data segment to the payload"
    );
}

#[test]
fn cryptsetup_accepts_every_steady_state() {
    if !have_cryptsetup() {
        return;
    }
    let py = python();
    for (bits, sector) in [(256usize, 4096u32), (512, 4096), (256, 512)] {
        let dir = temp_dir("steady");
        let img = dir.join("vol.img");
        let dev = Arc::new(FileDevice::create(&img, (1 << 20) + (512 << 10)).unwrap());
        let v = Volume::format(dev, &small_format()).unwrap();
        accepted(&img, None, &dir);
        let u = v.unlock(vec![]).unwrap();
        let data = payload(u.len() as usize, bits as u64);
        u.write_at(&data, 0).unwrap();
        let size = if bits == 256 {
            KeySize::Bits256
        } else {
            KeySize::Bits512
        };
        let k1 = KeyMaterial::generate(size).unwrap();
        let k1b = k1.expose().to_vec();
        let opts = EncryptOptions {
            sector_size: sector,
            pbkdf2_iterations: 1000,
        };
        u.begin_encrypt(k1, reference("key-1"), &opts).unwrap();
        // Mid-conversion: luksDump shows the requirement; header-changing commands refuse.
        let (rc, text) = cryptsetup(&["luksDump", img.to_str().unwrap()]);
        assert_eq!(rc, 0, "{text}");
        assert!(text.contains("atrest-conversion-v2"), "{text}");
        u.convert(&chunked(128 << 10), &mut |_| {}).unwrap();
        assert_eq!(u.state(), State::Encrypted);
        drop(u);
        accepted(&img, Some(&k1b), &dir);
        let raw = std::fs::read(&img).unwrap();
        assert!(
            !raw.windows(k1b.len()).any(|w| w == k1b.as_slice())
                && !String::from_utf8_lossy(&raw).contains(&hex::encode(&k1b)),
            "the key must never reach the image"
        );
        if let Some(py) = &py {
            python_check(py, &img, &k1b, 1 << 20, sector, &data, &dir);
        }
        // Rekey.
        let u = unlock_with(
            Volume::open(Arc::new(FileDevice::open(&img).unwrap())).unwrap(),
            &[&k1b],
        );
        assert_eq!(read_all(&u), data);
        let k2 = KeyMaterial::generate(size).unwrap();
        let k2b = k2.expose().to_vec();
        u.begin_rekey(k2, reference("key-2"), &opts).unwrap();
        u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
        drop(u);
        accepted(&img, Some(&k2b), &dir);
        if let Some(py) = &py {
            python_check(py, &img, &k2b, 1 << 20, sector, &data, &dir);
        }
        let v = Volume::open(Arc::new(FileDevice::open(&img).unwrap())).unwrap();
        assert!(matches!(
            v.verify_key(key_of(&k1b)),
            Err(Error::WrongKey { .. })
        ));
        let info = v.info();
        assert_eq!(info.keys.len(), 1);
        assert_eq!(info.keys[0].reference.unique_identifier, "key-2");
        // Decrypt.
        let u = unlock_with(v, &[&k2b]);
        u.begin_decrypt().unwrap();
        u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
        assert_eq!(u.state(), State::Plain);
        drop(u);
        accepted(&img, None, &dir);
        let raw = std::fs::read(&img).unwrap();
        assert_eq!(&raw[1 << 20..], &data[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn reads_a_volume_cryptsetup_wrote() {
    if !have_cryptsetup() {
        return;
    }
    let dir = temp_dir("cs-written");
    let img = dir.join("cs.img");
    let p = img.to_str().unwrap();
    // 4 MiB of payload followed by room for the header that reencrypt shifts in.
    let data = payload(4 << 20, 7);
    let mut file = data.clone();
    file.resize((4 << 20) + (4 << 20), 0);
    std::fs::write(&img, &file).unwrap();
    let key = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let kf = dir.join("k");
    std::fs::write(&kf, key.expose()).unwrap();
    let pass = dir.join("pass");
    std::fs::write(&pass, b"passphrase").unwrap();
    let out = Command::new("cryptsetup")
        .args([
            "reencrypt",
            "--encrypt",
            "--type",
            "luks2",
            "--batch-mode",
            "--reduce-device-size",
            "4M",
            "--sector-size",
            "4096",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--volume-key-file",
            kf.to_str().unwrap(),
            "--key-size",
            "256",
            "--key-file",
            pass.to_str().unwrap(),
            p,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cryptsetup reencrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = Volume::open_read_only(Arc::new(FileDevice::open_read_only(&img).unwrap())).unwrap();
    assert_eq!(v.state(), State::Encrypted);
    let info = v.info();
    assert_eq!(info.cipher.as_deref(), Some("aes-xts-plain64"));
    assert_eq!(info.sector_size, 4096);
    let mut wrong = key.expose().to_vec();
    wrong[5] ^= 0x80;
    assert!(matches!(
        v.verify_key(key_of(&wrong)),
        Err(Error::WrongKey { .. })
    ));
    let vk = v.verify_key(key.clone()).unwrap();
    // cryptsetup writes no atrest header MAC: atrest refuses it until the administrator
    // accepts the header explicitly.
    let err = v.authenticate(std::slice::from_ref(&vk)).unwrap_err();
    assert!(matches!(err, Error::HeaderAuth(_)), "{err}");
    let u = v.unlock_accepting_header(vec![vk]).unwrap();
    let mut got = vec![0u8; 4 << 20];
    u.read_at(&mut got, 0).unwrap();
    assert_eq!(got, data);
    // A plain luksFormat header too (keyslot, dynamic segment).
    let img2 = dir.join("fmt.img");
    std::fs::write(&img2, vec![0u8; 20 << 20]).unwrap();
    let (rc, text) = cryptsetup(&[
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--volume-key-file",
        kf.to_str().unwrap(),
        "--key-size",
        "256",
        "--key-file",
        pass.to_str().unwrap(),
        img2.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{text}");
    let v = Volume::open(Arc::new(FileDevice::open(&img2).unwrap())).unwrap();
    assert_eq!(v.info().data_size, 4 << 20);
    let vk = v.verify_key(key.clone()).unwrap();
    let u = v.unlock_accepting_header(vec![vk]).unwrap();
    drop(u);
    // Accepted once: signed, so it now unlocks without being asked, and cryptsetup still
    // reads the header.
    let v = Volume::open(Arc::new(FileDevice::open(&img2).unwrap())).unwrap();
    assert!(v.info().header_mac);
    let vk = v.verify_key(key).unwrap();
    let u = v.unlock(vec![vk]).unwrap();
    let (rc, text) = cryptsetup(&["luksDump", img2.to_str().unwrap()]);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("atrest-header-mac"), "{text}");
    assert!(
        matches!(u.begin_decrypt(), Err(Error::State(_))),
        "keyslots must block a decrypt"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// docs/volume-format.md, "Token atrest-header-mac", implemented from the text alone with
/// Python's standard library (hmac, hashlib). argv: IMAGE KEY_HEX. Prints `ok` when the MAC in
/// the primary header copy is the documented MAC under that key.
const MAC_FROM_THE_DOCS: &str = r#"
import base64, hashlib, hmac, json, struct, sys
path, key = sys.argv[1], bytes.fromhex(sys.argv[2])
with open(path, "rb") as f:
    copy = f.read(16384)
hdr_size = struct.unpack(">Q", copy[8:16])[0]
uuid = copy[168:208].split(b"\0", 1)[0]
meta = json.loads(copy[4096:].split(b"\0", 1)[0])
u32 = lambda v: struct.pack(">I", v)
u64 = lambda v: struct.pack(">Q", v)
s = lambda b: u32(len(b)) + b
ids = lambda l: u32(len(l)) + b"".join(u32(int(i)) for i in l)
out = b"atrest-header-mac-v1" + s(uuid) + u64(hdr_size) + u64(int(meta["config"]["keyslots_size"]))
seg = meta["segments"]["0"]
out += u64(int(seg["offset"]))
out += u64(2**64 - 1 if seg["size"] == "dynamic" else int(seg["size"]))
if seg["type"] == "crypt":
    out += s(b"crypt") + s(seg["encryption"].encode()) + u32(seg["sector_size"]) + u64(int(seg["iv_tweak"]))
else:
    out += s(b"linear") + s(b"") + u32(0) + u64(0)
req = meta["config"].get("requirements", {}).get("mandatory", [])
out += u32(len(req)) + b"".join(s(r.encode()) for r in req)
digests = sorted(meta["digests"].items(), key=lambda kv: int(kv[0]))
out += u32(len(digests))
for i, d in digests:
    out += u32(int(i)) + s(d["hash"].encode()) + u32(d["iterations"])
    out += s(base64.b64decode(d["salt"])) + s(base64.b64decode(d["digest"]))
    out += ids(d["segments"]) + ids(d["keyslots"])
tokens = sorted(meta["tokens"].items(), key=lambda kv: int(kv[0]))
kmip = [(i, t) for i, t in tokens if t["type"] == "atrest-kmip"]
out += u32(len(kmip))
for i, t in kmip:
    out += u32(int(i)) + u32(int(t["digest"])) + s(t["unique_identifier"].encode())
    out += u32(len(t["servers"])) + b"".join(s(x.encode()) for x in t["servers"])
    out += u32(t["key_bits"]) + s(t["created"].encode())
conv = [(i, t) for i, t in tokens if t["type"] == "atrest-conversion"]
if not conv:
    out += b"\0"
else:
    i, c = conv[0]
    version = c.get("version", 1)
    out += bytes([version]) + u32(int(i)) + bytes([{"encrypt": 1, "rekey": 2, "decrypt": 3}[c["kind"]]])
    for d in (c["old_digest"], c["new_digest"]):
        out += (b"\1" + u32(int(d))) if d is not None else (b"\0" + u32(0))
    out += u64(int(c["boundary"]))
    h = c["hotzone"]
    if h is None:
        out += b"\0" + u64(0) * 3
    else:
        out += b"\1" + u64(int(h["offset"])) + u64(int(h["size"])) + u64(int(h["table_offset"]))
    if version == 2:
        out += base64.b64decode(h["table_sha256"]) if h else b"\0" * 32
        out += u64(int(h["skip"]) if h else 0)
# HKDF-SHA256 (RFC 5869), no salt, one block.
prk = hmac.new(b"\0" * 32, key, hashlib.sha256).digest()
mac_key = hmac.new(prk, b"atrest LUKS2 header MAC key v1" + b"\1", hashlib.sha256).digest()
mac = hmac.new(mac_key, out, hashlib.sha256).digest()
stored = [t for _, t in tokens if t["type"] == "atrest-header-mac"]
print("ok" if stored and base64.b64decode(stored[0]["mac"]) == mac else "mismatch")
"#;

fn mac_per_docs(img: &Path, key: &[u8]) -> String {
    let out = Command::new("python3")
        .args(["-c", MAC_FROM_THE_DOCS])
        .arg(img)
        .arg(hex::encode(key))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn header_mac_matches_the_documented_layout() {
    let dir = temp_dir("mac-docs");
    let img = dir.join("v.img");
    // 3 MiB of data: room for a chunk of two MiB granules, one of them skipped (below).
    let dev = Arc::new(FileDevice::create(&img, (1 << 20) + (3 << 20)).unwrap());
    let u = Volume::format(dev.clone(), &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let a = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let ab = a.expose().to_vec();
    u.begin_encrypt(a, reference("key-a"), &fast()).unwrap();
    // Encrypting: MAC by the new key.
    assert_eq!(mac_per_docs(&img, &ab), "ok");
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    assert_eq!(mac_per_docs(&img, &ab), "ok", "encrypted");
    let b = KeyMaterial::generate(KeySize::Bits512).unwrap();
    let bb = b.expose().to_vec();
    u.begin_rekey(b, reference("key-b"), &fast()).unwrap();
    // Rekeying, with a hotzone: MAC by the old key.
    let mut seen = false;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = ConvertOptions {
        stop: Some(stop.clone()),
        ..chunked(64 << 10)
    };
    u.convert(&opts, &mut |_| {
        if !seen {
            seen = true;
            assert_eq!(mac_per_docs(&img, &ab), "ok", "rekeying, hotzone");
            assert_eq!(mac_per_docs(&img, &bb), "mismatch");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(mac_per_docs(&img, &ab), "ok", "rekeying, stopped");
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    assert_eq!(mac_per_docs(&img, &bb), "ok", "encrypted with B");
    u.begin_decrypt().unwrap();
    assert_eq!(mac_per_docs(&img, &bb), "ok", "decrypting");
    // A record of version 1 (as earlier atrest wrote it), with a hotzone.
    u.write_version_1_records(true);
    let stop_at_first =
        |u: &UnlockedVolume, used: Option<Arc<dyn UsedRanges>>, chunk: u64, what: &str| {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let opts = ConvertOptions {
                stop: Some(stop.clone()),
                ..chunked(chunk)
            };
            let mut seen = false;
            u.convert_with(&opts, used, &mut |_| {
                if !seen {
                    seen = true;
                    let text = std::fs::read(&img).unwrap();
                    let text = String::from_utf8_lossy(&text[4096..16384]).to_string();
                    assert!(text.contains(what), "{what}: {text}");
                    assert_eq!(mac_per_docs(&img, &bb), "ok", "decrypting, {what}");
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .unwrap();
        };
    stop_at_first(&u, None, 128 << 10, "\"sha256\"");
    // Version 2, with a skipped sub-range in the hotzone: a 2 MiB chunk whose first MiB holds
    // nothing (a chunk that holds nothing at all is passed over without a hotzone).
    assert_eq!(u.info().progress.map(|p| p.done), Some(128 << 10));
    u.write_version_1_records(false);
    stop_at_first(&u, Some(Arc::new(SecondMiB)), 2 << 20, "\"skip\":\"1\"");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Says only bytes from 1 MiB past the boundary the test's decryption stopped at (one chunk
/// of 128 KiB) hold content: the next 2 MiB chunk's first MiB holds nothing.
struct SecondMiB;

impl UsedRanges for SecondMiB {
    fn in_use(&self, offset: u64, len: u64) -> bool {
        offset + len > (128 << 10) + (1 << 20)
    }
}
