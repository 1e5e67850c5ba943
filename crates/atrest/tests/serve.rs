//! `atrest serve` as a process: first start (password printed and kept 0600, self-signed
//! HTTPS), login over HTTPS, and Save and Test against the bundled KMIP server
//! (`--embedded-kms`) and against the PyKMIP peer (its env file in ATREST_PYKMIP_EC_ENV; the
//! peer tests are skipped with a note when it is unset, unless ATREST_REQUIRE_PEERS=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use atrest_testkit::appliance::Appliance;
use atrest_testkit::https::wait_until;
use serde_json::json;

fn start(data: &Path, extra: &[&str]) -> Appliance {
    Appliance::start(env!("CARGO_BIN_EXE_atrest"), data, extra)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_then_save_and_test_against_the_embedded_kms() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let app = start(&data, &["--embedded-kms"]);
    let pw_file = data.join("initial-admin-password");
    assert_eq!(mode(&pw_file), 0o600);
    let pw = std::fs::read_to_string(&pw_file).unwrap();
    // stdout is not a terminal (a service manager would keep it): the password stays in the
    // file, and the line says where.
    assert!(
        !app.output().iter().any(|l| l.contains(pw.trim())),
        "the password is not printed to a pipe: {:?}",
        app.output()
    );
    assert!(
        app.output()
            .iter()
            .any(|l| l.contains("the password is in") && l.contains("initial-admin-password")),
        "{:?}",
        app.output()
    );
    // The bundled KMIP server's weakness is said at start.
    assert!(
        app.output()
            .iter()
            .any(|l| l.starts_with("Warning: ") && l.contains("same disk as the volume")),
        "{:?}",
        app.output()
    );
    let (s, v) = app.json("GET", "/api/encryption", None, None);
    assert_eq!(s, 401, "{v}");
    let t = app.login();
    let (s, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(s, 200);
    assert_eq!(st["state"], "plain");
    assert_eq!(st["settings"]["source"], "embedded", "pre-filled: {st}");
    assert_eq!(st["encrypt"]["allowed"], false);
    let (s, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(s, 200);
    assert_eq!(r["ok"], true, "{r}");
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["encrypt"]["allowed"], true, "{st}");
    assert_eq!(mode(&data.join("kmip/settings.json")), 0o600);
    // A second start keeps the password and the certificate.
    let cert = std::fs::read(data.join("tls/cert.pem")).unwrap();
    drop(app);
    let app = start(&data, &["--embedded-kms"]);
    assert!(
        !app.output()
            .iter()
            .any(|l| l.contains("Admin account created"))
    );
    assert_eq!(std::fs::read(data.join("tls/cert.pem")).unwrap(), cert);
    let t = app.login();
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["last_test"]["ok"], true, "the last test is remembered");
}

#[test]
fn save_and_test_against_pykmip() {
    let Some(peer) = atrest_testkit::ec_peer() else {
        return;
    };
    let var = |k: &str| peer.v(k).to_owned();
    let read = |k: &str| std::fs::read(var(k)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir.path().join("appliance"), &[]);
    let t = app.login();
    let mut settings = json!({
        "servers": [format!("{}:{}", var("KMIP_HOST"), var("KMIP_PORT"))],
        "server_name": var("KMIP_SERVER_NAME"),
        "ca_pem": String::from_utf8(read("KMIP_CA")).unwrap(),
        "client_p12_base64": openssl::base64::encode_block(&read("KMIP_CLIENT_P12")),
        "passphrase": var("KMIP_CLIENT_P12_PASSPHRASE"),
        "username": var("KMIP_USERNAME"),
        "password": var("KMIP_PASSWORD"),
    });
    // Encrypt before any test: 409 with the reason.
    let (s, v) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 409, "{v}");
    // A CA that did not issue the server's certificate: the TLS step says so.
    let mut wrong = settings.clone();
    wrong["ca_pem"] = json!(String::from_utf8(read("KMIP_UNTRUSTED_CA")).unwrap());
    let (s, v) = app.json("PUT", "/api/encryption/kmip", Some(&t), Some(&wrong));
    assert_eq!(s, 200, "{v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], false);
    assert_eq!(r["servers"][0]["steps"][1]["class"], "tls-untrusted", "{r}");
    let (s, v) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 409);
    assert!(
        v["error"].as_str().unwrap().contains("TLS handshake"),
        "{v}"
    );
    // A wrong passphrase is refused on save.
    let mut bad = settings.clone();
    bad["passphrase"] = json!("not-the-passphrase");
    let (s, v) = app.json("PUT", "/api/encryption/kmip", Some(&t), Some(&bad));
    assert_eq!(s, 422, "{v}");
    // The right settings, as PKCS#12 and then as PEM: every step passes.
    let (s, v) = app.json("PUT", "/api/encryption/kmip", Some(&t), Some(&settings));
    assert_eq!(s, 200, "{v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["servers"][0]["steps"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("KMIP")
    );
    settings
        .as_object_mut()
        .unwrap()
        .remove("client_p12_base64");
    settings["client_cert_pem"] = json!(String::from_utf8(read("KMIP_CLIENT_CERT")).unwrap());
    settings["client_key_pem"] = json!(String::from_utf8(read("KMIP_CLIENT_KEY")).unwrap());
    settings["passphrase"] = json!("");
    let (s, v) = app.json("PUT", "/api/encryption/kmip", Some(&t), Some(&settings));
    assert_eq!(s, 200, "{v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["encrypt"]["allowed"], true, "{st}");
    // The password and passphrase never come back.
    let text = st.to_string();
    assert!(!text.contains(&var("KMIP_PASSWORD")));
    assert!(!text.contains(&var("KMIP_CLIENT_P12_PASSPHRASE")));
}

#[test]
fn encrypt_killed_midway_resumes_and_unlocks_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let flags = [
        "--embedded-kms",
        "--volume-size",
        "64M",
        "--convert-chunk",
        "1M",
        "--convert-rate",
        "8M",
        "--unlock-retry-max",
        "1",
    ];
    let app = start(&data, &flags);
    assert!(
        app.output().iter().any(|l| l.contains("volume.img: plain")),
        "{:?}",
        app.output()
    );
    assert_eq!(mode(&data.join("volume.img")), 0o600);
    let t = app.login();
    // Content before encryption.
    let (s, v) = app.json(
        "PUT",
        "/api/config",
        Some(&t),
        Some(&json!({"site": "north", "retention.days": 90})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = app.json(
        "POST",
        "/api/audit",
        Some(&t),
        Some(&json!({"session": "s1", "kind": "login", "text": "operator logged in"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 409, "Encrypt before a test: {v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    // Every byte (a used-space-only Encrypt of this nearly empty volume is over at once): a
    // conversion long enough to kill in the middle, and the choice survives the restart.
    let (s, st) = app.json(
        "POST",
        "/api/encryption/encrypt",
        Some(&t),
        Some(&json!({"full": true})),
    );
    assert_eq!(s, 202, "{st}");
    let key_id = st["key_id"].as_str().unwrap().to_owned();
    // The content API works during the conversion; progress is reported.
    wait_until("progress is reported", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["progress"]["done_bytes"].as_u64().is_some_and(|d| d > 0)
    });
    let (s, v) = app.json(
        "PUT",
        "/api/config",
        Some(&t),
        Some(&json!({"during": true})),
    );
    assert_eq!(s, 200, "{v}");
    // kill -9 in the middle of the conversion.
    drop(app);

    let app = start(&data, &flags);
    assert!(
        app.output()
            .iter()
            .any(|l| l.contains("volume.img: locked")),
        "{:?}",
        app.output()
    );
    let t = app.login();
    wait_until("the resumed encryption finished", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted"
    });
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["key_id"], key_id.as_str());
    assert_eq!(st["volume"]["last_conversion"]["percent"], 100.0, "{st}");
    let (_, v) = app.json("GET", "/api/config", Some(&t), None);
    assert_eq!(
        v["settings"],
        json!({"site": "north", "retention.days": 90, "during": true})
    );
    let (_, v) = app.json(
        "GET",
        &format!("/api/audit?q={key_id}&order=oldest"),
        Some(&t),
        None,
    );
    let texts: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("operation=create"))
            && texts.iter().any(|t| t.contains("operation=get")),
        "{texts:?}"
    );
    let (_, v) = app.json("GET", "/api/audit?session=s1", Some(&t), None);
    assert_eq!(v["events"][0]["text"], "operator logged in");
}

/// Rewrites both LUKS2 header copies of IMAGE as someone with write access to the disk and no
/// key would: JSON edited, SHA-256 checksum fixed. argv: IMAGE MODE; MODE `decrypt` adds a
/// decrypt record at boundary 0, `plain` marks the segment plain and drops every key.
const FORGE: &str = r#"
import hashlib, json, sys
path, mode = sys.argv[1], sys.argv[2]
with open(path, "r+b") as f:
    for off in (0, 16384):
        f.seek(off)
        copy = bytearray(f.read(16384))
        text = bytes(copy[4096:]).split(b"\0", 1)[0]
        meta = json.loads(text)
        if mode == "decrypt":
            free = next(str(i) for i in range(32) if str(i) not in meta["tokens"])
            meta["tokens"][free] = {"type": "atrest-conversion", "keyslots": [], "kind": "decrypt",
                "old_digest": "0", "new_digest": None, "boundary": "0", "hotzone": None}
            meta["config"]["requirements"] = {"mandatory": ["atrest-conversion-v1"]}
        else:
            seg = meta["segments"]["0"]
            meta["segments"]["0"] = {"type": "linear", "offset": seg["offset"], "size": seg["size"]}
            meta["digests"] = {}
            meta["tokens"] = {}
        new = json.dumps(meta).encode()
        copy[4096:] = new + b"\0" * (16384 - 4096 - len(new))
        copy[448:512] = b"\0" * 64
        copy[448:480] = hashlib.sha256(bytes(copy)).digest()
        f.seek(off)
        f.write(copy)
"#;

fn forge(image: &Path, mode: &str) {
    let out = Command::new("python3")
        .args(["-c", FORGE])
        .arg(image)
        .arg(mode)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "forging the header: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The attack of cryptsetup's CVE-2021-4122 against the appliance: with the volume encrypted, a
/// decrypt record is added to the header (checksums fixed, no key needed). At the next start
/// the appliance fetches the genuine key, finds that the record fails its MAC, and stays
/// locked with that reason, writing nothing: the recording's plaintext never reaches the disk.
/// Then the header is made to look plain: refused by the appliance's record of what it
/// encrypted.
#[test]
fn a_forged_decrypt_record_is_never_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let flags = [
        "--embedded-kms",
        "--volume-size",
        "32M",
        "--convert-chunk",
        "1M",
        "--unlock-retry-max",
        "1",
    ];
    let image = data.join("volume.img");
    let marker: Vec<u8> = b"ATREST-SECRET-MARKER-7f3a91c2-"
        .iter()
        .copied()
        .cycle()
        .take(64 << 10)
        .collect();
    {
        let app = start(&data, &flags);
        let t = app.login();
        let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
        assert_eq!(r["ok"], true, "{r}");
        let (s, st) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
        assert_eq!(s, 202, "{st}");
        wait_until("the encryption finished", || {
            let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
            st["state"] == "encrypted"
        });
        let (s, v) = app.request(
            "PUT",
            "/api/recordings/rec-1?session=s1",
            Some(&t),
            &marker,
            "application/octet-stream",
        );
        assert_eq!(s, 201, "{v}");
        let (s, v) = app.json("GET", "/api/recordings/rec-1", Some(&t), None);
        assert_eq!(s, 200, "{v}");
    }
    let genuine = std::fs::read(&image).unwrap();
    assert!(!contains(&genuine, &marker[..64]), "encrypted on disk");

    forge(&image, "decrypt");
    let forged = std::fs::read(&image).unwrap();
    // First line of defence: the appliance's record of what it wrote (outside the volume).
    let app = start(&data, &flags);
    let t = app.login();
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["state"], "locked", "{st}");
    assert_eq!(st["volume"]["hold"]["class"], "volume-changed", "{st}");
    let reason = st["lock_reasons"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("now says decrypting"), "{reason}");
    drop(app);
    assert!(
        std::fs::read(&image).unwrap() == forged,
        "the image changed"
    );
    // Second: without that record (a data directory restored, or also forged), the header MAC
    // under the genuine key refuses the record.
    let known = data.join("volume-known.json");
    let record = std::fs::read(&known).unwrap();
    std::fs::remove_file(&known).unwrap();
    let app = start(&data, &flags);
    let t = app.login();
    wait_until("locked with the integrity reason", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "locked" && st["volume"]["hold"]["class"] == "header-auth"
    });
    // It stays there: no retry, no resume, nothing written.
    std::thread::sleep(Duration::from_secs(3));
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["state"], "locked", "{st}");
    let reason = st["lock_reasons"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("changed outside atrest") && reason.contains("decrypt"),
        "{reason}"
    );
    assert_eq!(st["volume"]["hold"]["resume"], true, "{st}");
    let (s, v) = app.json("GET", "/api/recordings/rec-1", Some(&t), None);
    assert_eq!(s, 503, "content locked: {v}");
    // Resuming a decryption needs the admin password again.
    let (s, v) = app.json("POST", "/api/encryption/resume", Some(&t), None);
    assert_eq!(s, 403, "{v}");
    drop(app);
    let after = std::fs::read(&image).unwrap();
    assert!(after == forged, "the image changed while locked");
    assert!(!contains(&after, &marker[..64]), "plaintext on disk");

    // A header made to look plain: the appliance remembers it encrypted this volume.
    std::fs::write(&known, &record).unwrap();
    std::fs::write(&image, &genuine).unwrap();
    forge(&image, "plain");
    let forged = std::fs::read(&image).unwrap();
    let app = start(&data, &flags);
    let t = app.login();
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["state"], "locked", "{st}");
    assert_eq!(st["volume"]["hold"]["class"], "volume-changed", "{st}");
    let reason = st["lock_reasons"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("says it is plain"), "{reason}");
    let (s, _) = app.request(
        "PUT",
        "/api/recordings/rec-2?session=s1",
        Some(&t),
        &marker[..1000],
        "application/octet-stream",
    );
    assert_eq!(s, 503);
    drop(app);
    assert!(
        std::fs::read(&image).unwrap() == forged,
        "the image changed"
    );

    // The genuine header back: unlocked by itself, the recording intact.
    std::fs::write(&image, &genuine).unwrap();
    let app = start(&data, &flags);
    let t = app.login();
    wait_until("unlocked", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted"
    });
    let (s, v) = app.json("GET", "/api/recordings/rec-1", Some(&t), None);
    assert_eq!(s, 200, "{v}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--tls-cert` with a chain (server certificate, then the intermediate CA): a client that
/// trusts only the root verifies the appliance, so the whole chain is served.
#[test]
fn tls_cert_serves_the_whole_chain() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(
        pki.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    std::fs::write(
        pki.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut root = vec!["req", "-x509"];
    root.extend(ec);
    root.extend([
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-subj",
        "/CN=test root",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&pki, &root);
    for (name, cn, signer, ext) in [
        ("int", "/CN=test intermediate", "root", "ca.ext"),
        ("leaf", "/CN=127.0.0.1", "int", "leaf.ext"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
        openssl(&pki, &req);
        let ca = format!("{signer}.pem");
        let ca_key = format!("{signer}.key");
        openssl(
            &pki,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "30",
                "-extfile",
                ext,
            ],
        );
    }
    let chain = [
        std::fs::read(pki.join("leaf.pem")).unwrap(),
        std::fs::read(pki.join("int.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(pki.join("chain.pem"), chain).unwrap();
    let data = dir.path().join("appliance");
    let cert = pki.join("chain.pem");
    let key = pki.join("leaf.key");
    let mut app = start(
        &data,
        &[
            "--no-volume",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    app.trust(&pki.join("root.pem"));
    let (s, v) = app.json("GET", "/api/encryption", None, None);
    assert_eq!(s, 401, "verified through the intermediate: {v}");
}

/// Bytes of `p` the file system has allocated (a sparse image's holes take none).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Used-space-only Encrypt (the default): no live recording stays in plaintext, never-used
/// space stays a hole, and free space keeps what it held (a deleted recording's bytes, in
/// plaintext, as docs/workflow.md says). A Rekey with `{"full": true}` then overwrites the free
/// space too.
#[test]
fn used_space_only_encrypt_leaves_no_live_content_in_plaintext_and_keeps_holes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let flags = [
        "--embedded-kms",
        "--volume-size",
        "256M",
        "--convert-chunk",
        "1M",
    ];
    let image = data.join("volume.img");
    let pattern = |tag: &[u8]| -> Vec<u8> { tag.iter().copied().cycle().take(2 << 20).collect() };
    let live = pattern(b"ATREST-LIVE-RECORDING-4b1d9e-");
    let dead = pattern(b"ATREST-DELETED-RECORDING-88c2-");
    let app = start(&data, &flags);
    let t = app.login();
    for (id, bytes) in [("live", &live), ("dead", &dead)] {
        let (s, v) = app.request(
            "PUT",
            &format!("/api/recordings/{id}?session=s1"),
            Some(&t),
            bytes,
            "application/octet-stream",
        );
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = app.json("DELETE", "/api/recordings/dead", Some(&t), None);
    assert!(s == 200 || s == 204, "{s} {v}");
    let (_, r) = app.json("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    // A body that is not the scope is refused before anything starts.
    let (s, v) = app.json(
        "POST",
        "/api/encryption/encrypt",
        Some(&t),
        Some(&json!([1])),
    );
    assert_eq!(s, 400, "{v}");
    let (s, st) = app.json("POST", "/api/encryption/encrypt", Some(&t), None);
    assert_eq!(s, 202, "{st}");
    wait_until("the encryption finished", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted"
    });
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["volume"]["last_conversion"]["full"], false, "{st}");
    drop(app);
    let bytes = std::fs::read(&image).unwrap();
    assert!(
        !contains(&bytes, &live[..64]),
        "a live recording in plaintext"
    );
    assert!(
        contains(&bytes, &dead[..64]),
        "the deleted recording's bytes were converted: the conversion was not used-space-only"
    );
    let size = std::fs::metadata(&image).unwrap().len();
    assert!(
        allocated(&image) < size / 4,
        "holes filled: {} of {size} bytes allocated",
        allocated(&image)
    );
    drop(bytes);

    // Restart: unlocked, the live recording intact; then a full Rekey overwrites free space.
    let app = start(&data, &flags);
    let t = app.login();
    wait_until("unlocked", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted"
    });
    let (s, _) = app.json("GET", "/api/recordings/live", Some(&t), None);
    assert_eq!(s, 200);
    let (s, st) = app.json(
        "POST",
        "/api/encryption/rekey",
        Some(&t),
        Some(&json!({"full": true})),
    );
    assert_eq!(s, 202, "{st}");
    wait_until("the full rekey finished", || {
        let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
        st["state"] == "encrypted" && st["volume"]["last_conversion"]["kind"] == "rekeying"
    });
    let (_, st) = app.json("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["volume"]["last_conversion"]["full"], true, "{st}");
    drop(app);
    let bytes = std::fs::read(&image).unwrap();
    assert!(
        !contains(&bytes, &live[..64]),
        "a live recording in plaintext"
    );
    assert!(
        !contains(&bytes, &dead[..64]),
        "free space kept plaintext after --full"
    );
    assert!(
        !data.join("conversion-full").exists(),
        "the choice outlived its conversion"
    );
}
