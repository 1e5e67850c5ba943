//! `atrest volume` respects a live volume: every command takes the volume's lock (shared to
//! read, exclusive to write) before it opens the image, and is refused with one sentence while
//! `atrest serve` or another process holds it; `dump` writes nothing unless `--repair`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use atrest_testkit::Scratch;
use atrest_testkit::appliance::Appliance;
use atrest_testkit::process::{ok, output};
use atrest_testkit::volume::stopped_encryption;
use atrest_volume::VolumeLock;

/// What every refusal says.
const IN_USE: &str = "is in use by another atrest appliance or `atrest volume` command";

fn atrest(args: &[&str]) -> Output {
    output(env!("CARGO_BIN_EXE_atrest"), args)
}

/// Asserts that `o` is the refusal of a volume in use: non-zero, one line on stderr naming the
/// volume and what to do.
fn refused(o: &Output, img: &Path, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} was not refused: {err}");
    assert!(
        err.contains(IN_USE) && err.contains(&img.display().to_string()),
        "{what}: {err}"
    );
    assert!(err.contains("stop that process, or wait"), "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
}

fn sha256(p: &Path) -> [u8; 32] {
    openssl::sha::sha256(&std::fs::read(p).unwrap())
}

/// A plain volume made by `atrest volume format`.
fn format(dir: &Path) -> PathBuf {
    let img = dir.join("v.img");
    ok(&atrest(&[
        "volume",
        "format",
        img.to_str().unwrap(),
        "--size",
        "2M",
        "--header-area",
        "1M",
    ]));
    img
}

/// `atrest serve` as a child process, killed on drop.
fn serve(data: &Path) -> Appliance {
    Appliance::start(
        env!("CARGO_BIN_EXE_atrest"),
        data,
        &["--embedded-kms", "--volume-size", "32M"],
    )
}

#[test]
fn a_running_appliance_refuses_every_volume_command() {
    let s = Scratch::new("vlock-serve");
    let data = s.join("appliance");
    let app = serve(&data);
    let img = data.join("volume.img");
    let img_s = img.to_str().unwrap();
    assert!(data.join("volume.img.lock").exists());
    let before = sha256(&img);
    let kms = atrest_testkit::Peer::from_file(&data.join("kms/client.env"));
    let out = s.join("export.bin");
    let out_s = out.to_str().unwrap();
    let keyed = |args: &[&str]| {
        kms.cli(env!("CARGO_BIN_EXE_atrest"), args)
            .output()
            .unwrap()
    };
    let runs: Vec<(&str, Output)> = vec![
        ("unlock", keyed(&["volume", "unlock", img_s])),
        (
            "export",
            keyed(&["volume", "export", img_s, "--out", out_s]),
        ),
        ("encrypt", keyed(&["volume", "encrypt", img_s])),
        ("rekey", keyed(&["volume", "rekey", img_s])),
        ("decrypt", keyed(&["volume", "decrypt", img_s])),
        ("dump", atrest(&["volume", "dump", img_s])),
        ("dump --json", atrest(&["volume", "dump", img_s, "--json"])),
        (
            "dump --repair",
            atrest(&["volume", "dump", img_s, "--repair"]),
        ),
        (
            "format --force",
            atrest(&["volume", "format", img_s, "--force"]),
        ),
    ];
    for (what, o) in &runs {
        refused(o, &img, what);
        assert!(o.stdout.is_empty(), "{what} printed {:?}", o.stdout);
    }
    assert!(!out.exists(), "a refused export wrote its output");
    assert_eq!(sha256(&img), before, "a refused command changed the image");

    // Once the appliance has stopped, the lock is gone with it.
    drop(app);
    let dump: serde_json::Value =
        serde_json::from_str(&ok(&atrest(&["volume", "dump", img_s, "--json"]))).unwrap();
    assert_eq!(dump["state"], "plain");
}

#[test]
fn commands_respect_a_lock_another_process_holds() {
    let s = Scratch::new("vlock-held");
    let img = format(&s);
    let img_s = img.to_str().unwrap();
    let before = sha256(&img);
    let out = s.join("export.bin");
    let out_s = out.to_str().unwrap();
    // No KMIP server answers here: a command that got past the lock would fail differently.
    let kmip = ["--server", "127.0.0.1:1"];
    let with_kmip = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(kmip);
        atrest(&a)
    };

    // Held exclusively (a writer): even reading is refused.
    let x = VolumeLock::exclusive(&img).unwrap();
    refused(&atrest(&["volume", "dump", img_s]), &img, "dump");
    refused(
        &atrest(&["volume", "export", img_s, "--out", out_s]),
        &img,
        "export",
    );
    refused(&with_kmip(&["volume", "unlock", img_s]), &img, "unlock");
    drop(x);

    // Held shared (a reader): reading works, writing is refused.
    let r = VolumeLock::shared(&img).unwrap();
    let d: serde_json::Value =
        serde_json::from_str(&ok(&atrest(&["volume", "dump", img_s, "--json"]))).unwrap();
    assert_eq!(d["state"], "plain");
    ok(&atrest(&["volume", "export", img_s, "--out", out_s]));
    assert_eq!(std::fs::read(&out).unwrap().len(), 2 << 20);
    refused(&with_kmip(&["volume", "encrypt", img_s]), &img, "encrypt");
    refused(&with_kmip(&["volume", "rekey", img_s]), &img, "rekey");
    refused(&with_kmip(&["volume", "decrypt", img_s]), &img, "decrypt");
    refused(
        &atrest(&["volume", "format", img_s, "--force"]),
        &img,
        "format --force",
    );
    refused(
        &atrest(&["volume", "dump", img_s, "--repair"]),
        &img,
        "dump --repair",
    );
    assert_eq!(sha256(&img), before, "a refused command changed the image");
    drop(r);

    // A new image is not made while its lock is held.
    let new = s.join("new.img");
    let _x = VolumeLock::exclusive(&new).unwrap();
    let o = atrest(&["volume", "format", new.to_str().unwrap(), "--size", "1M"]);
    refused(&o, &new, "format of a new image");
    assert!(!new.exists());
}

#[test]
fn dump_reports_a_damaged_copy_and_repairs_it_only_when_asked() {
    let s = Scratch::new("vlock-repair");
    let img = format(&s);
    let img_s = img.to_str().unwrap();
    let good = std::fs::read(&img).unwrap();
    // Flip a byte in the secondary copy's JSON area (the copy sits at hdr_size, its JSON area
    // 4 KiB into it).
    let hdr_size = u64::from_be_bytes(good[8..16].try_into().unwrap()) as usize;
    let mut damaged = good.clone();
    damaged[hdr_size + 4096 + 2] ^= 0x20;
    std::fs::write(&img, &damaged).unwrap();

    let text = ok(&atrest(&["volume", "dump", img_s]));
    let header = text
        .lines()
        .find(|l| l.starts_with("Header:"))
        .unwrap_or_else(|| panic!("dump shows no damage: {text}"));
    assert!(
        header.contains("secondary copy") && header.contains("checksum"),
        "{header}"
    );
    assert!(
        header.contains("not repaired") && header.contains("--repair"),
        "{header}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(&atrest(&["volume", "dump", img_s, "--json"]))).unwrap();
    assert!(
        j["header_repair"]
            .as_str()
            .is_some_and(|r| r.contains("not repaired")),
        "{j}"
    );
    // Exporting reads only, too.
    ok(&atrest(&[
        "volume",
        "export",
        img_s,
        "--out",
        s.join("x.bin").to_str().unwrap(),
    ]));
    assert!(
        std::fs::read(&img).unwrap() == damaged,
        "dump or export changed the image"
    );

    // --repair rewrites the damaged copy from the good one (with a fresh salt in its binary
    // header); nothing else changes.
    let text = ok(&atrest(&["volume", "dump", img_s, "--repair"]));
    assert!(text.contains("(repaired)"), "{text}");
    let repaired = std::fs::read(&img).unwrap();
    let secondary = hdr_size..2 * hdr_size;
    assert!(
        repaired[..hdr_size] == good[..hdr_size],
        "the primary copy changed"
    );
    assert!(
        repaired[secondary.end..] == good[secondary.end..],
        "more than the header changed"
    );
    assert!(
        repaired[hdr_size + 4096..secondary.end] == good[hdr_size + 4096..secondary.end],
        "the secondary JSON area is not the undamaged one"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(&atrest(&["volume", "dump", img_s, "--json"]))).unwrap();
    assert!(j["header_repair"].is_null(), "{j}");
}

#[test]
fn reading_a_conversion_under_way_needs_the_exclusive_lock() {
    // A volume whose encryption stopped after its first chunk.
    let s = Scratch::new("vlock-conv");
    let img = s.join("v.img");
    stopped_encryption(&img, "127.0.0.1:1");
    let img_s = img.to_str().unwrap();
    let before = sha256(&img);

    // Unlocking it may finish an interrupted chunk, which writes: a reader's shared lock is
    // enough to refuse export and unlock, while dump still reads it.
    let _r = VolumeLock::shared(&img).unwrap();
    let out = s.join("x.bin");
    let o = atrest(&["volume", "export", img_s, "--out", out.to_str().unwrap()]);
    refused(&o, &img, "export of a conversion under way");
    assert!(!out.exists());
    let o = atrest(&["volume", "unlock", img_s, "--server", "127.0.0.1:1"]);
    refused(&o, &img, "unlock of a conversion under way");
    let d: serde_json::Value =
        serde_json::from_str(&ok(&atrest(&["volume", "dump", img_s, "--json"]))).unwrap();
    assert_eq!(d["state"], "encrypting");
    assert_eq!(sha256(&img), before);
}
