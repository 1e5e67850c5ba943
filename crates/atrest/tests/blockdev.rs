//! The content volume on a block device (a loop device; root only, skipped with a note
//! otherwise unless ATREST_REQUIRE_PEERS=1): `atrest volume format DEVICE`, `atrest serve
//! --volume DEVICE`, Save and Test, Encrypt, restart, unlocked with the content intact; a device
//! in use or without a LUKS2 header is refused with a sentence. Growth of the volume, plain and
//! encrypted: `atrest volume grow`, POST /api/volume/grow, and at start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use atrest_testkit::LoopDevice;
use atrest_testkit::appliance::{Appliance, Launch};
use atrest_testkit::https::wait_until;
use atrest_testkit::process::output;
use serde_json::{Value, json};

fn atrest(args: &[&str]) -> Output {
    output(env!("CARGO_BIN_EXE_atrest"), args)
}

/// A sparse file of `len` bytes attached as a loop device.
fn loop_device(dir: &Path, len: u64) -> Option<LoopDevice> {
    let file = dir.join("disk.raw");
    std::fs::File::create(&file).unwrap().set_len(len).unwrap();
    LoopDevice::attach(&file)
}

fn start(data: &Path, volume: &Path) -> Appliance {
    start_with(data, volume, &[])
}

fn start_with(data: &Path, volume: &Path, extra: &[&str]) -> Appliance {
    Launch::new(env!("CARGO_BIN_EXE_atrest"), data)
        .arg("--embedded-kms")
        .arg("--volume")
        .arg(volume)
        .args(["--convert-chunk", "1M", "--unlock-retry-max", "1"])
        .args(extra)
        .start()
}

/// `atrest serve` with `volume`, expected to refuse to start: its stderr.
fn refused(data: &Path, volume: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["serve", "--embedded-kms", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--volume")
        .arg(volume)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "atrest serve started on {}",
        volume.display()
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn format_serve_encrypt_restart_on_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let Some(dev) = loop_device(dir.path(), 48 << 20) else {
        return;
    };
    let d = dev.path().to_str().unwrap();
    // The appliance leaves a device without a LUKS2 header alone and says how to format it.
    let data = dir.path().join("appliance");
    let err = refused(&data, dev.path());
    assert!(
        err.contains("has no LUKS2 header") && err.contains(&format!("atrest volume format {d}")),
        "{err}"
    );
    assert!(!data.join("volume.img").exists());
    // An empty device is formatted without --force; one that holds data needs it.
    let o = atrest(&["volume", "format", d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = atrest(&["volume", "format", d]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--force"), "{err}");
    let o = atrest(&["volume", "dump", d, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["data_size"], 32 << 20, "size from the device: {v}");

    let app = start(&data, dev.path());
    assert!(
        app.output()
            .iter()
            .any(|l| l.contains(&format!("{d}: plain"))),
        "{:?}",
        app.output()
    );
    assert!(
        !data.join("volume.img").exists(),
        "no image beside the device"
    );
    let t = app.login();
    let (s, v) = app.json(
        "PUT",
        "/api/config",
        Some(&t),
        Some(&json!({"site": "loop"})),
    );
    assert_eq!(s, 200, "{v}");
    let recording = b"recording on a block device ".repeat(4096);
    let (s, v) = app.request(
        "PUT",
        "/api/recordings/r1?session=s",
        Some(&t),
        &recording,
        "application/octet-stream",
    );
    assert_eq!(s, 201, "{v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    let (s, v) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 202, "{v}");
    wait_until("the encryption finished", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted"
    });
    drop(app);

    let app = start(&data, dev.path());
    let t = app.login();
    wait_until("the volume is unlocked", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted" && app.json("GET", "/api/config", Some(&t), None).0 == 200
    });
    let (_, v) = app.json("GET", "/api/config", Some(&t), None);
    assert_eq!(v["settings"], json!({"site": "loop"}));
    let (s, v) = app.request("GET", "/api/recordings/r1", Some(&t), b"", "");
    assert_eq!(s, 200);
    assert!(
        v.as_str()
            .is_some_and(|b| b.as_bytes() == recording.as_slice()),
        "the recording came back changed"
    );
    // The appliance holds the device: a command that writes it is refused.
    let o = atrest(&["volume", "format", d, "--force"]);
    assert!(!o.status.success());
    // The disk grows (its backing file, then the loop device's capacity): Grow uses it.
    extend(&dir.path().join("disk.raw"), 64 << 20);
    let o = Command::new("losetup")
        .arg("-c")
        .arg(dev.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (s, v) = app.json("POST", "/api/volume/grow", Some(&t), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data_size"], 48 << 20, "{v}");
    drop(app);
    // The plaintext is nowhere on the device.
    let raw = std::fs::read(dir.path().join("disk.raw")).unwrap();
    assert!(!raw.windows(28).any(|w| w == &recording[..28]));
    if atrest_testkit::tool("cryptsetup", "cryptsetup") {
        let o = Command::new("cryptsetup")
            .args(["luksDump", d])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn extend(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn data_size(app: &Appliance, t: &str) -> u64 {
    let (_, st) = app.json("GET", "/api/encryption", Some(t), None);
    st["volume"]["volume"]["data_size"].as_u64().unwrap()
}

fn capacity(app: &Appliance, t: &str) -> u64 {
    let (_, st) = app.json("GET", "/api/encryption", Some(t), None);
    st["volume"]["space"]["capacity"].as_u64().unwrap()
}

#[test]
fn the_volume_grows_plain_and_encrypted_by_api_at_start_and_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let img = data.join("volume.img");
    let flags = ["--volume-size", "32M", "--convert-rate", "4M"];
    let app = start_with(&data, &img, &flags);
    let t = app.login();
    assert_eq!(data_size(&app, &t), 16 << 20);
    let before = capacity(&app, &t);
    let recording = b"kept across growth ".repeat(1000);
    let (s, v) = app.request(
        "PUT",
        "/api/recordings/r1?session=s",
        Some(&t),
        &recording,
        "application/octet-stream",
    );
    assert_eq!(s, 201, "{v}");
    // Plain, while serving: nothing to do, then the image grows and Grow uses it.
    let (s, v) = app.json("POST", "/api/volume/grow", Some(&t), None);
    assert_eq!((s, &v["grown"]), (200, &json!(false)), "{v}");
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["volume"]["space"]["growable"], 0, "{st}");
    extend(&img, 48 << 20);
    // The status and the page say the disk grew, and the page offers Grow.
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["volume"]["space"]["growable"], 16 << 20, "{st}");
    let (s, v) = app.json("POST", "/api/volume/grow", Some(&t), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"grown": true, "old_data_size": 16 << 20, "data_size": 32 << 20})
    );
    assert_eq!(data_size(&app, &t), 32 << 20);
    assert_eq!(
        capacity(&app, &t),
        before + (16 << 20),
        "the store sees the new space"
    );
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["volume"]["space"]["growable"], 0, "{st}");
    // During a conversion it is refused with the reason.
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    let (s, v) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 202, "{v}");
    extend(&img, 56 << 20);
    let (s, v) = app.json("POST", "/api/volume/grow", Some(&t), None);
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("conversion"), "{v}");
    wait_until("the encryption finished", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted"
    });
    assert_eq!(data_size(&app, &t), 32 << 20);
    // Encrypted, while serving: the growth the conversion refused is taken now.
    let (s, v) = app.json("POST", "/api/volume/grow", Some(&t), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"grown": true, "old_data_size": 32 << 20, "data_size": 40 << 20})
    );
    assert_eq!(
        capacity(&app, &t),
        before + (24 << 20),
        "the store sees the new space"
    );
    let known = std::fs::read(data.join("volume-known.json")).unwrap();
    drop(app);

    // Encrypted, at start: the image grew while the appliance was stopped.
    extend(&img, 64 << 20);
    let app = start_with(&data, &img, &flags);
    let t = app.login();
    wait_until("the volume is unlocked", || {
        app.json("GET", "/api/config", Some(&t), None).0 == 200
    });
    assert_eq!(data_size(&app, &t), 48 << 20);
    let (s, v) = app.request("GET", "/api/recordings/r1", Some(&t), b"", "");
    assert_eq!(s, 200);
    assert!(
        v.as_str()
            .is_some_and(|b| b.as_bytes() == recording.as_slice())
    );
    let (_, v) = app.json("GET", "/api/audit?q=grew&order=oldest", Some(&t), None);
    let texts = v["events"].to_string();
    assert!(
        texts.contains("on request") && texts.contains("at start"),
        "{texts}"
    );
    drop(app);
    assert_eq!(
        std::fs::read(data.join("volume-known.json")).unwrap(),
        known,
        "growing changes no state or key"
    );
    // The header, grown twice and signed under the key, is still one cryptsetup reads.
    if atrest_testkit::tool("cryptsetup", "cryptsetup") {
        let o = Command::new("cryptsetup")
            .arg("luksDump")
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains(&format!("length: {} [bytes]", 48 << 20)),
            "{text}"
        );
    }

    // From the command line, plain: `atrest volume grow IMAGE`.
    let plain = dir.path().join("plain.img");
    let p = plain.to_str().unwrap();
    let o = atrest(&["volume", "format", p, "--size", "2M", "--header-area", "1M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    extend(&plain, 5 << 20);
    let o = atrest(&["volume", "grow", p, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["data_size"], 4 << 20, "{v}");
    let o = atrest(&["volume", "grow", p]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already fills the device"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_device_in_use_is_refused_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let Some(dev) = loop_device(dir.path(), 40 << 20) else {
        return;
    };
    let d = dev.path().to_str().unwrap();
    let o = atrest(&["volume", "format", d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Another program has it open exclusively (as a file system or device mapper would).
    let data = dir.path().join("appliance");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev.path())
            .unwrap();
        let err = refused(&data, dev.path());
        assert!(
            err.contains(&format!("the block device {d} is in use")) && err.contains("try again"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        let o = atrest(&["volume", "format", d, "--force"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("is in use"), "{err}");
    }
    // Mounted: a file system on it, mounted in a temporary directory (where mounting works).
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", d]).output();
    if !mkfs.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED the mounted case: mkfs.ext4 is missing");
        return;
    }
    let mounted = Command::new("mount")
        .arg(dev.path())
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED the mounted case: mount is not permitted here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let err = refused(&data, dev.path());
    assert!(
        err.contains("is in use (mounted at") && err.contains(&mnt.display().to_string()),
        "{err}"
    );
}
