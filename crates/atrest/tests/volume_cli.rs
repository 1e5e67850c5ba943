//! `atrest volume format|dump|export` from the command line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use atrest_testkit::Scratch;
use atrest_testkit::process::output;
use atrest_testkit::volume::stopped_encryption;

fn atrest(args: &[&str]) -> Output {
    output(env!("CARGO_BIN_EXE_atrest"), args)
}

#[test]
fn format_dump_export() {
    let d = Scratch::new("volume-cli-basic");
    let img = d.join("v.img");
    let p = img.to_str().unwrap();
    let o = atrest(&["volume", "format", p, "--size", "2M", "--header-area", "1M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 3 << 20);

    let o = atrest(&["volume", "dump", p, "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "plain");
    assert_eq!(v["data_offset"], 1 << 20);
    assert_eq!(v["data_size"], 2 << 20);
    assert_eq!(v["sector_size"], 4096);
    for k in ["cipher", "key_id", "servers", "progress"] {
        assert!(v.get(k).is_some(), "dump --json lacks {k}");
    }
    let o = atrest(&["volume", "dump", p]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("State:"));

    // Payload written straight into the data area comes back out of export.
    let mut raw = std::fs::read(&img).unwrap();
    for (i, b) in raw[1 << 20..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&img, &raw).unwrap();
    let out = d.join("out.bin");
    let o = atrest(&["volume", "export", p, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), &raw[1 << 20..]);

    // Refusals: one line on stderr, non-zero status, nothing changed.
    let before = std::fs::read(&img).unwrap();
    let o = atrest(&["volume", "format", p, "--size", "2M"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--force") && err.lines().count() == 1, "{err}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    let o = atrest(&["volume", "dump", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("magic"));
    let o = atrest(&[
        "volume",
        "format",
        d.join("x.img").to_str().unwrap(),
        "--size",
        "12345",
    ]);
    assert!(!o.status.success());
    assert!(!d.join("x.img").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn dump_shows_a_conversion_under_way() {
    let d = Scratch::new("volume-cli-conv");
    let img = d.join("v.img");
    stopped_encryption(&img, "kms.example:5696");

    let o = atrest(&["volume", "dump", img.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "encrypting");
    assert_eq!(v["cipher"], "aes-xts-plain64");
    assert_eq!(v["key_id"], "uid-7");
    assert_eq!(v["servers"][0], "kms.example:5696");
    assert_eq!(v["progress"]["done"], 256 << 10);
    assert_eq!(v["progress"]["total"], 2 << 20);
    let o = atrest(&[
        "volume",
        "export",
        img.to_str().unwrap(),
        "--out",
        d.join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("encrypting"));
    std::fs::remove_dir_all(&d).unwrap();
}
