//! `atrest volume encrypt | unlock | rekey | decrypt | export` against the PyKMIP peer, checked by
//! Debian's cryptsetup, PyKMIP's own client, and kill -9 in the middle of conversions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use atrest_testkit::Scratch;
use atrest_testkit::process::{ok, output};

/// The PyKMIP peer (EC server key), with the commands these tests run against it.
struct Peer(atrest_testkit::Peer);

fn peer() -> Option<Peer> {
    atrest_testkit::ec_peer().map(Peer)
}

fn cryptsetup() -> bool {
    atrest_testkit::tool("cryptsetup", "cryptsetup-bin")
}

impl Peer {
    fn command(&self, args: &[&str]) -> Command {
        self.0.cli(env!("CARGO_BIN_EXE_atrest"), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

/// A plain volume with `mib` MiB of random payload; returns the image and the payload.
fn plain_volume(dir: &Path, mib: u64) -> (PathBuf, Vec<u8>) {
    let img = dir.join("v.img");
    ok(&output(
        env!("CARGO_BIN_EXE_atrest"),
        &[
            "volume",
            "format",
            img.to_str().unwrap(),
            "--size",
            &format!("{mib}M"),
        ],
    ));
    let dump = dump(&img);
    let offset = dump["data_offset"].as_u64().unwrap();
    let mut payload = vec![0u8; (mib << 20) as usize];
    openssl::rand::rand_bytes(&mut payload).unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&payload, offset).unwrap();
    f.sync_all().unwrap();
    (img, payload)
}

fn dump(img: &Path) -> serde_json::Value {
    let o = output(
        env!("CARGO_BIN_EXE_atrest"),
        &["volume", "dump", img.to_str().unwrap(), "--json"],
    );
    serde_json::from_str(&ok(&o)).unwrap()
}

fn export(p: &Peer, img: &Path, out: &Path) -> Vec<u8> {
    ok(&p.run(&[
        "volume",
        "export",
        img.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    std::fs::read(out).unwrap()
}

#[test]
fn encrypt_then_cryptsetup_accepts_the_key_pykmip_gets() {
    let Some(p) = peer() else { return };
    if !cryptsetup() {
        return;
    }
    let dir = Scratch::new("vk-cs");
    let (img, payload) = plain_volume(&dir, 8);
    let img_s = img.to_str().unwrap();
    let out = ok(&p.run(&["volume", "encrypt", img_s, "--json"]));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["state"], "encrypted");
    let uid = j["unique_identifier"].as_str().unwrap().to_owned();

    let d = dump(&img);
    assert_eq!(d["state"], "encrypted");
    assert_eq!(d["cipher"], "aes-xts-plain64");
    assert_eq!(d["keys"][0]["unique_identifier"], uid.as_str());
    let dumped = Command::new("cryptsetup")
        .args(["luksDump", img_s])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dumped.stdout);
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(
        text.contains("atrest-kmip") && text.contains("aes-xts-plain64"),
        "{text}"
    );
    assert!(
        Command::new("cryptsetup")
            .args(["isLuks", img_s])
            .status()
            .unwrap()
            .success()
    );

    // The key PyKMIP's own client gets for the header's id opens the volume in cryptsetup.
    let key = hex::decode(p.0.pykmip_get_hex(&uid, None)).unwrap();
    assert_eq!(key.len(), 32);
    let key_file = dir.join("key.bin");
    std::fs::write(&key_file, &key).unwrap();
    let st = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--volume-key-file"])
        .arg(&key_file)
        .args(["--key-size", "256", img_s])
        .status()
        .unwrap();
    assert!(st.success(), "cryptsetup refused the KMIP key");
    // The key is nowhere in the image.
    let raw = std::fs::read(&img).unwrap();
    assert!(!raw.windows(32).any(|w| w == key.as_slice()));

    assert_eq!(export(&p, &img, &dir.join("out.bin")), payload);
    let o = ok(&p.run(&["volume", "unlock", img_s]));
    assert!(o.contains("1 key verified"), "{o}");
    // Running encrypt again on a finished volume does nothing and asks for no new key.
    let again: serde_json::Value =
        serde_json::from_str(&ok(&p.run(&["volume", "encrypt", img_s, "--json"]))).unwrap();
    assert_eq!(again["unique_identifier"], uid.as_str());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Starts `args`, kills it with SIGKILL after `after`; returns whether it was still running.
fn kill_after(p: &Peer, args: &[&str], after: Duration) -> bool {
    let mut child = p
        .command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// kill -9 a conversion at spread-out moments until `want` kills have landed mid-conversion
/// (at most 4 × `want` attempts), checking after each that the header names the same key(s);
/// returns how many kills landed mid-conversion. Until the conversion has begun (the KMIP
/// round trips and the key digest come first, slow on a loaded machine) the delay doubles.
fn interrupt(p: &Peer, args: &[&str], img: &Path, converting: &str, want: u32) -> u32 {
    let mut mid = 0;
    let mut uid: Option<String> = None;
    let mut before_start = Duration::from_millis(150);
    for i in 0..want * 4 {
        if mid == want {
            break;
        }
        let after = if uid.is_none() {
            before_start
        } else {
            Duration::from_millis(100 + (i as u64 * 37) % 250)
        };
        kill_after(p, args, after);
        let d = dump(img);
        if d["state"] != converting {
            before_start = (before_start * 2).min(Duration::from_secs(8));
            continue;
        }
        mid += 1;
        let now: Vec<String> = d["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["unique_identifier"].as_str().unwrap().to_owned())
            .collect();
        let joined = now.join(",");
        // Once the header names the key(s), resuming never swaps them.
        if let Some(u) = &uid {
            assert_eq!(&joined, u, "the key changed on resume");
        }
        uid = Some(joined);
    }
    mid
}

#[test]
fn twenty_kills_during_encryption_lose_nothing() {
    let Some(p) = peer() else { return };
    let dir = Scratch::new("vk-kill");
    let (img, payload) = plain_volume(&dir, 64);
    let img_s = img.to_str().unwrap();
    let args = [
        "volume",
        "encrypt",
        img_s,
        "--chunk-size",
        "64K",
        "--max-rate",
        "16M",
    ];
    let mid = interrupt(&p, &args, &img, "encrypting", 20);
    // Finish at full speed, then compare every byte.
    ok(&p.run(&args[..3]));
    assert_eq!(dump(&img)["state"], "encrypted");
    assert_eq!(export(&p, &img, &dir.join("out.bin")), payload);
    assert_eq!(mid, 20, "only {mid} kills landed mid-conversion");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rekey_and_decrypt_with_kills_lose_nothing() {
    let Some(p) = peer() else { return };
    let dir = Scratch::new("vk-rekey");
    let (img, payload) = plain_volume(&dir, 48);
    let img_s = img.to_str().unwrap();
    ok(&p.run(&["volume", "encrypt", img_s]));
    let old = dump(&img)["keys"][0]["unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();

    let rekey = [
        "volume",
        "rekey",
        img_s,
        "--chunk-size",
        "128K",
        "--threads",
        "1",
        // Paced, so that kills at 0.1–0.35 s land mid-conversion however fast the disk is.
        "--max-rate",
        "16M",
    ];
    assert_eq!(interrupt(&p, &rekey, &img, "rekeying", 6), 6);
    ok(&p.run(&rekey));
    let d = dump(&img);
    assert_eq!(d["state"], "encrypted");
    let new = d["keys"][0]["unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(export(&p, &img, &dir.join("a.bin")), payload);

    let decrypt = [
        "volume",
        "decrypt",
        img_s,
        "--chunk-size",
        "128K",
        "--threads",
        "1",
        // Paced, so that kills at 0.1–0.35 s land mid-conversion however fast the disk is.
        "--max-rate",
        "16M",
    ];
    assert_eq!(interrupt(&p, &decrypt, &img, "decrypting", 6), 6);
    ok(&p.run(&decrypt));
    let d = dump(&img);
    assert_eq!(d["state"], "plain");
    assert!(d["keys"].as_array().unwrap().is_empty());
    assert_eq!(export(&p, &img, &dir.join("b.bin")), payload);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A Deactivated key still reads (NIST SP 800-57): `unlock` and `export` work with a note on
/// stderr, `grow` (a header signed anew) is refused with one line; a Compromised key reads only
/// with `--allow-compromised`, and `rekey` moves the data off it; a Destroyed key is refused.
#[test]
fn unlock_and_export_read_a_deactivated_key() {
    let Some(p) = peer() else { return };
    let dir = Scratch::new("vk-revoked");
    let (img, payload) = plain_volume(&dir, 4);
    let img_s = img.to_str().unwrap();
    ok(&p.run(&["volume", "encrypt", img_s]));
    let uid = dump(&img)["keys"][0]["unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&p.run(&["kmip", "revoke", &uid]));
    let o = p.run(&["volume", "unlock", img_s]);
    let out = ok(&o);
    assert!(out.contains("1 key verified"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&uid) && err.contains("Deactivated") && err.contains("atrest volume rekey"),
        "{err}"
    );
    assert_eq!(export(&p, &img, &dir.join("out.bin")), payload);
    let before = std::fs::read(&img).unwrap();
    let o = p.run(&["volume", "grow", img_s]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not Active") && err.contains("Deactivated"),
        "{err}"
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "grow wrote with a Deactivated key"
    );

    // Compromised: refused in one line naming the flag; read with it; rekey moves off it.
    let (img2, payload2) = {
        let d2 = dir.join("second");
        std::fs::create_dir_all(&d2).unwrap();
        plain_volume(&d2, 4)
    };
    let img2_s = img2.to_str().unwrap();
    ok(&p.run(&["volume", "encrypt", img2_s]));
    let uid2 = dump(&img2)["keys"][0]["unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&p.run(&["kmip", "revoke", "--compromised", &uid2]));
    let x = dir.join("x");
    let o = p.run(&["volume", "export", img2_s, "--out", x.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(!x.exists(), "export wrote a file with a refused key");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("Compromised") && err.contains("--allow-compromised"),
        "{err}"
    );
    let o = p.run(&[
        "volume",
        "export",
        img2_s,
        "--allow-compromised",
        "--out",
        x.to_str().unwrap(),
    ]);
    ok(&o);
    assert_eq!(std::fs::read(&x).unwrap(), payload2);
    ok(&p.run(&["volume", "rekey", img2_s, "--allow-compromised"]));
    let uid3 = dump(&img2)["keys"][0]["unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(uid3, uid2);
    let o = p.run(&["volume", "unlock", img2_s]);
    ok(&o);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("note:"));
    assert_eq!(export(&p, &img2, &dir.join("out2.bin")), payload2);

    // Destroyed: gone.
    ok(&p.run(&["kmip", "destroy", &uid]));
    let o = p.run(&["volume", "unlock", img_s]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for k in [&uid2, &uid3] {
        let _ = p.run(&["kmip", "destroy", k]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}
