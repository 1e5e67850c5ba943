//! The recovery key through the appliance's API, `atrest serve` as a process with its bundled
//! KMIP server: enabled with the admin password and answered once; the appliance restarted
//! with no KMIP server is locked and unlocks with the recovery key (`POST
//! /api/encryption/unlock`), its content readable; Debian's cryptsetup accepts the key on the
//! volume image; a Rekey answers a new recovery key and the old one opens nothing any more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use atrest_testkit::appliance::{Appliance, Launch};
use serde_json::json;

fn start(data: &Path, extra: &[&str]) -> Appliance {
    Launch::new(env!("CARGO_BIN_EXE_atrest"), data)
        .args(["--volume-size", "64M"])
        .args(["--convert-chunk", "4M", "--unlock-retry-max", "1"])
        .args(extra)
        // Tests keep the argon2 memory small; the default is 256 MiB.
        .env("ATREST_RECOVERY_KDF_MEMORY_KIB", "16384")
        .start()
}

/// Whether cryptsetup opens `img` with `key`; None (with a note) without cryptsetup.
fn cryptsetup_accepts(img: &Path, key: &str, dir: &Path) -> Option<bool> {
    atrest_testkit::tool("cryptsetup", "cryptsetup-bin")
        .then(|| atrest_testkit::volume::cryptsetup_opens(img, key, dir))
}

fn audit_texts(app: &Appliance, t: &str, q: &str) -> Vec<String> {
    let (s, v) = app.json(
        "GET",
        &format!("/api/audit?q={q}&order=oldest"),
        Some(t),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_locked_appliance_unlocks_with_the_recovery_key_and_rekey_retires_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let image = data.join("volume.img");
    let app = start(&data, &["--embedded-kms"]);
    let t = app.login();
    let (s, v) = app.json(
        "PUT",
        "/api/config",
        Some(&t),
        Some(&json!({"site": "north"})),
    );
    assert_eq!(s, 200, "{v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    let (s, v) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 202, "{v}");
    app.wait_state(&t, "encrypted");

    // Off by default; enabling takes the admin password again.
    let (s, v) = app.json("GET", "/api/encryption/recovery-key", Some(&t), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], false, "{v}");
    assert_eq!(v["can_add"], true, "{v}");
    assert!(
        v["trade_off"]
            .as_str()
            .unwrap()
            .contains("without any KMIP server")
    );
    let (s, v) = app.json("POST", "/api/encryption/recovery-key", Some(&t), None);
    assert_eq!(s, 403, "{v}");
    let (s, v) = app.json(
        "POST",
        "/api/encryption/recovery-key",
        Some(&t),
        Some(&json!({"password": "wrong password!"})),
    );
    assert_eq!(s, 403, "{v}");
    let (s, v) = app.json(
        "POST",
        "/api/encryption/recovery-key",
        Some(&t),
        Some(&json!({"password": app.password()})),
    );
    assert_eq!(s, 200, "{v}");
    let r1 = v["recovery_key"].as_str().unwrap().to_owned();
    assert_eq!(r1.len(), 55, "{r1}");
    let (_, v) = app.json("GET", "/api/encryption/recovery-key", Some(&t), None);
    assert_eq!(v["enabled"], true, "{v}");
    assert!(
        !v.to_string().contains(&r1),
        "the key is answered once only"
    );
    let texts = audit_texts(&app, &t, "recovery-key-add");
    assert!(texts.iter().any(|x| x.contains("result=ok")), "{texts:?}");
    assert!(
        texts.iter().all(|x| !x.contains(&r1)),
        "the key reached the audit history"
    );
    drop(app);
    if let Some(ok) = cryptsetup_accepts(&image, &r1, dir.path()) {
        assert!(ok, "cryptsetup refused the recovery key");
    }

    // No KMIP server at all: the appliance is locked, and offers the recovery key.
    let app = start(&data, &[]);
    let t = app.login();
    let st = app.wait_state(&t, "locked");
    assert!(!st["lock_reasons"].as_array().unwrap().is_empty(), "{st}");
    let (_, v) = app.json("GET", "/api/encryption/recovery-key", Some(&t), None);
    assert_eq!(v["enabled"], true, "{v}");
    let (s, _) = app.json("GET", "/api/config", Some(&t), None);
    assert_eq!(s, 503);
    // A mistyped key is refused before the KDF; a well-formed wrong one after.
    let mut typo = r1.clone().into_bytes();
    typo[0] = if typo[0] == b'9' { b'0' } else { typo[0] + 1 };
    let (s, v) = app.json(
        "POST",
        "/api/encryption/unlock",
        Some(&t),
        Some(&json!({"recovery_key": String::from_utf8(typo).unwrap()})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("group 1"), "{v}");
    let other = "000000-000000-000000-000000-000000-000000-000000-000011";
    let (s, v) = app.json(
        "POST",
        "/api/encryption/unlock",
        Some(&t),
        Some(&json!({"recovery_key": other})),
    );
    assert_eq!(s, 403, "{v}");
    let (s, v) = app.json(
        "POST",
        "/api/encryption/unlock",
        Some(&t),
        Some(&json!({"recovery_key": r1.replace('-', " ")})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "encrypted", "{v}");
    let (s, v) = app.json("GET", "/api/config", Some(&t), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["settings"]["site"], "north");
    let texts = audit_texts(&app, &t, "recovery-key-unlock");
    assert!(
        texts.iter().any(|x| x.contains("result=ok")) && texts.iter().any(|x| x.contains("failed")),
        "{texts:?}"
    );
    drop(app);

    // Rekey (with the KMIP server back): a new recovery key in the answer; the old one opens
    // nothing, with cryptsetup or the appliance.
    let app = start(&data, &["--embedded-kms"]);
    let t = app.login();
    app.wait_state(&t, "encrypted");
    let (s, v) = app.json("POST", "/api/encryption/rekey", Some(&t), None);
    assert_eq!(s, 202, "{v}");
    let r2 = v["recovery_key"]
        .as_str()
        .expect("the new recovery key")
        .to_owned();
    assert_ne!(r1, r2);
    app.wait_state(&t, "encrypted");
    let texts = audit_texts(&app, &t, "recovery-key-renew");
    assert!(texts.iter().any(|x| x.contains("result=ok")), "{texts:?}");
    drop(app);
    if let Some(ok) = cryptsetup_accepts(&image, &r1, dir.path()) {
        assert!(
            !ok,
            "cryptsetup still opens the volume with the old recovery key"
        );
        assert_eq!(cryptsetup_accepts(&image, &r2, dir.path()), Some(true));
    }
    let app = start(&data, &[]);
    let t = app.login();
    app.wait_state(&t, "locked");
    let (s, v) = app.json(
        "POST",
        "/api/encryption/unlock",
        Some(&t),
        Some(&json!({"recovery_key": r1})),
    );
    assert_eq!(s, 403, "the old recovery key after Rekey: {v}");
    let (s, v) = app.json(
        "POST",
        "/api/encryption/unlock",
        Some(&t),
        Some(&json!({"recovery_key": r2})),
    );
    assert_eq!(s, 200, "{v}");
    // Not locked any more.
    let (s, _) = app.json(
        "POST",
        "/api/encryption/unlock",
        Some(&t),
        Some(&json!({"recovery_key": r2})),
    );
    assert_eq!(s, 409);

    // Remove: admin password again; then the key opens nothing.
    let (s, v) = app.json(
        "DELETE",
        "/api/encryption/recovery-key",
        Some(&t),
        Some(&json!({"password": app.password()})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], true);
    let texts = audit_texts(&app, &t, "recovery-key-remove");
    assert!(texts.iter().any(|x| x.contains("result=ok")), "{texts:?}");
    drop(app);
    if let Some(ok) = cryptsetup_accepts(&image, &r2, dir.path()) {
        assert!(
            !ok,
            "cryptsetup opens the volume with a removed recovery key"
        );
    }
}
