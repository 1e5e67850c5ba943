//! `atrest kms serve` and `add-client` as a person runs them: first start in an empty
//! directory, the files it prints, client.env with the bound port, a client added while the
//! server runs, reuse on the second start, and a clean stop on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use atrest_testkit::Peer;
use atrest_testkit::process::{Served, kms_port, kms_serve_command, spawn_until};

fn atrest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atrest"))
}

/// Starts the server; returns it (with what it printed) and its port once it listens.
fn serve(dir: &Path) -> (Served, u16) {
    spawn_until(
        kms_serve_command(env!("CARGO_BIN_EXE_atrest"), dir, "127.0.0.1:0").stderr(Stdio::null()),
        kms_port,
    )
}

/// SIGTERM: the server ends cleanly.
fn stop(mut kms: Served) {
    let status = kms.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// The value of `k` in the directory's client.env.
fn env_var(dir: &Path, k: &str) -> String {
    Peer::from_file(&dir.join("client.env")).v(k).to_owned()
}

#[test]
fn serve_first_start_reuse_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let (kms, port) = serve(&dir);
    let text = kms.output.join("\n");
    assert!(text.contains("Created a new key server"), "{text}");
    for f in ["ca.crt", "appliance.p12", "client.env", "master.key"] {
        assert!(text.contains(f), "{f} not printed: {text}");
    }
    assert_eq!(env_var(&dir, "KMIP_PORT"), port.to_string());
    for k in [
        "KMIP_HOST",
        "KMIP_CA",
        "KMIP_CLIENT_CERT",
        "KMIP_CLIENT_KEY",
        "KMIP_CLIENT_P12",
        "KMIP_CLIENT_P12_PASSPHRASE",
        "KMIP_USERNAME",
        "KMIP_PASSWORD",
    ] {
        assert!(!env_var(&dir, k).is_empty(), "{k}");
    }
    // Another client, accepted by the running server.
    let out = atrest()
        .args(["kms", "add-client", "--data-dir"])
        .arg(&dir)
        .arg("backup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("clients/backup.p12").exists());
    let out = atrest()
        .args(["kms", "add-client", "--data-dir"])
        .arg(&dir)
        .arg("backup")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists already"), "{err}");
    stop(kms);

    let (kms, port2) = serve(&dir);
    assert!(
        kms.output.join("\n").contains("Using the key server"),
        "{:?}",
        kms.output
    );
    assert_eq!(env_var(&dir, "KMIP_PORT"), port2.to_string());
    stop(kms);
}

#[test]
fn a_second_server_on_the_same_directory_is_refused_and_remove_client_revokes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let (kms, _port) = serve(&dir);
    let out = atrest()
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("another key server is running on"), "{err}");
    assert!(err.contains(&format!("process {}", kms.pid())), "{err}");

    let remove = |name: &str| {
        atrest()
            .args(["kms", "remove-client", "--data-dir"])
            .arg(&dir)
            .arg(name)
            .output()
            .unwrap()
    };
    assert!(
        atrest()
            .args(["kms", "add-client", "--data-dir"])
            .arg(&dir)
            .arg("backup")
            .status()
            .unwrap()
            .success()
    );
    let out = remove("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removed client"));
    assert!(!dir.join("clients/backup.key").exists());
    assert!(!dir.join("clients/backup.p12").exists());
    let out = remove("backup");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no client named"));
    stop(kms);
    // With the server stopped the directory is free again.
    let (kms, _) = serve(&dir);
    stop(kms);
}
