//! The recovery key from the command line, against the bundled KMIP server (`atrest kms
//! serve`, a real server the test can stop): `atrest volume recovery-key add` prints it once;
//! with every KMIP server stopped, `export --recovery-key-file` returns the plaintext and
//! `unlock --recovery-key-file` verifies the key; Debian's cryptsetup accepts the recovery key;
//! after `rekey`, the old recovery key opens nothing (atrest and cryptsetup) and the new one,
//! printed by rekey, does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use atrest_testkit::Peer;
use atrest_testkit::process::{Served, kms_port, kms_serve_command, ok, spawn_until};
use atrest_testkit::volume::cryptsetup_opens;

fn atrest() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atrest"));
    // A small argon2 memory keeps the tests quick; the default is 256 MiB.
    c.env("ATREST_RECOVERY_KDF_MEMORY_KIB", "16384");
    c
}

/// The bundled KMIP server as a process, killed when dropped.
struct Kms {
    _served: Served,
    dir: PathBuf,
}

fn kms(dir: &Path) -> Kms {
    let (served, _) = spawn_until(
        kms_serve_command(env!("CARGO_BIN_EXE_atrest"), dir, "127.0.0.1:0")
            .env("ATREST_RECOVERY_KDF_MEMORY_KIB", "16384")
            .stderr(Stdio::null()),
        kms_port,
    );
    Kms {
        _served: served,
        dir: dir.to_path_buf(),
    }
}

impl Kms {
    /// `atrest ARGS…` with the flags and password of the client.env this server wrote (its
    /// bound port).
    fn run(&self, args: &[&str]) -> Output {
        Peer::from_file(&self.dir.join("client.env"))
            .cli(env!("CARGO_BIN_EXE_atrest"), args)
            // A small argon2 memory keeps the tests quick; the default is 256 MiB.
            .env("ATREST_RECOVERY_KDF_MEMORY_KIB", "16384")
            .output()
            .unwrap()
    }
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

fn have_cryptsetup() -> bool {
    atrest_testkit::tool("cryptsetup", "cryptsetup-bin")
}

fn export_with(img: &Path, key_file: &Path, out: &Path) -> Output {
    atrest()
        .args(["volume", "export"])
        .arg(img)
        .arg("--out")
        .arg(out)
        .arg("--recovery-key-file")
        .arg(key_file)
        .output()
        .unwrap()
}

#[test]
fn recovery_key_opens_the_volume_with_every_kmip_server_stopped_and_rekey_retires_it() {
    let cs = have_cryptsetup();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("v.img");
    let ip = img.to_str().unwrap();
    ok(&atrest()
        .args([
            "volume",
            "format",
            ip,
            "--size",
            "4M",
            "--header-area",
            "4M",
        ])
        .output()
        .unwrap());
    let mut payload = vec![0u8; 4 << 20];
    openssl::rand::rand_bytes(&mut payload).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&payload, 4 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let server = kms(&d.join("kms"));
    ok(&server.run(&["volume", "encrypt", ip, "--appliance-name", "rk"]));
    // Not before it is asked for.
    let dump: serde_json::Value = serde_json::from_str(&ok(&atrest()
        .args(["volume", "dump", ip, "--json"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(dump["recovery_key"], false);

    // add: the key on stdout (one line, 8 groups of 6 digits), the warning on stderr.
    let o = server.run(&["volume", "recovery-key", "add", ip]);
    let r1 = ok(&o);
    assert_eq!(r1.lines().count(), 1);
    assert_eq!(r1.len(), 55, "{r1}");
    assert!(
        r1.split('-')
            .all(|g| g.len() == 6 && g.parse::<u32>().unwrap() % 11 == 0)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("shown only now"));
    let dump: serde_json::Value = serde_json::from_str(&ok(&atrest()
        .args(["volume", "dump", ip, "--json"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(dump["recovery_key"], true);
    let r1_file = d.join("r1.txt");
    // As a person would keep it: grouped with spaces, a newline at the end.
    std::fs::write(&r1_file, format!("{}\n", r1.replace('-', " "))).unwrap();

    // Every KMIP server stopped.
    let kms_dir = server.dir.clone();
    drop(server);
    let out = d.join("plain.bin");
    let o = atrest()
        .args(["volume", "export", ip, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = failed(&o);
    assert!(
        err.contains("KMIP"),
        "without the recovery key the KMIP server is needed: {err}"
    );
    ok(&export_with(&img, &r1_file, &out));
    assert!(
        std::fs::read(&out).unwrap() == payload,
        "export with the recovery key differs"
    );
    let o = atrest()
        .args(["volume", "unlock", ip, "--recovery-key-file"])
        .arg(&r1_file)
        .output()
        .unwrap();
    assert!(ok(&o).contains("with the recovery key"));
    // A mistyped group is caught before the KDF, and named.
    let bad = d.join("bad.txt");
    let mut t = r1.clone().into_bytes();
    t[0] = if t[0] == b'9' { b'0' } else { t[0] + 1 };
    std::fs::write(&bad, &t).unwrap();
    let err = failed(&export_with(&img, &bad, &out));
    assert!(err.contains("group 1") && !err.contains(&r1[..6]), "{err}");
    if cs {
        assert!(cryptsetup_opens(&img, &r1, d));
    }

    // Rekey (a KMIP server is needed for the new key): a new recovery key is printed, the old
    // one no longer opens the volume.
    let server = kms(&kms_dir);
    let o = server.run(&["volume", "rekey", ip, "--appliance-name", "rk"]);
    let stdout = ok(&o);
    let r2 = stdout.lines().next().unwrap().to_owned();
    assert_eq!(r2.len(), 55, "{stdout}");
    assert_ne!(r1, r2);
    drop(server);
    let err = failed(&export_with(&img, &r1_file, &out));
    assert!(err.contains("opens no keyslot"), "{err}");
    let r2_file = d.join("r2.txt");
    std::fs::write(&r2_file, &r2).unwrap();
    std::fs::remove_file(&out).unwrap();
    ok(&export_with(&img, &r2_file, &out));
    assert!(
        std::fs::read(&out).unwrap() == payload,
        "export after rekey differs"
    );
    if cs {
        assert!(
            !cryptsetup_opens(&img, &r1, d),
            "cryptsetup still opens the old recovery key"
        );
        assert!(cryptsetup_opens(&img, &r2, d));
    }

    // remove, with the recovery key itself (no KMIP server): then it opens nothing.
    let o = atrest()
        .args([
            "volume",
            "recovery-key",
            "remove",
            ip,
            "--recovery-key-file",
        ])
        .arg(&r2_file)
        .output()
        .unwrap();
    assert!(ok(&o).contains("removed"));
    let err = failed(&export_with(&img, &r2_file, &out));
    assert!(err.contains("no recovery key"), "{err}");
    if cs {
        assert!(!cryptsetup_opens(&img, &r2, d));
    }
}
