//! `atrest kms serve` and `add-client` as a person runs them: first start in an empty
//! directory, the files it prints, client.env with the bound port, a client added while the
//! server runs, reuse on the second start, and a clean stop on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn atrest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atrest"))
}

/// Starts the server; returns it and its port once it listens. The caller waits for it
/// (`stop`).
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path) -> (Child, u16, Vec<String>) {
    let mut child = atrest()
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut l = String::new();
        let n = out.read_line(&mut l).unwrap_or(0);
        if let Some(addr) = l.trim().strip_prefix("listening on ") {
            let port = addr.rsplit(':').next().unwrap().parse().unwrap();
            // Keep draining stdout so the server never blocks on it.
            std::thread::spawn(move || for _ in out.lines() {});
            return (child, port, lines);
        }
        lines.push(l);
        if n == 0 || Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait();
            panic!("the server did not start ({status:?}): {lines:?}");
        }
    }
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn env_var(env: &str, k: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {k}=")))
        .unwrap_or_else(|| panic!("{k} missing from client.env"))
        .trim_matches('\'')
        .to_owned()
}

#[test]
fn serve_first_start_reuse_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let (child, port, lines) = serve(&dir);
    let text = lines.concat();
    assert!(text.contains("Created a new key server"), "{text}");
    for f in ["ca.crt", "appliance.p12", "client.env", "master.key"] {
        assert!(text.contains(f), "{f} not printed: {text}");
    }
    let env = std::fs::read_to_string(dir.join("client.env")).unwrap();
    assert_eq!(env_var(&env, "KMIP_PORT"), port.to_string());
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
        assert!(!env_var(&env, k).is_empty(), "{k}");
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
    stop(child);

    let (child, port2, lines) = serve(&dir);
    assert!(lines.concat().contains("Using the key server"), "{lines:?}");
    let env = std::fs::read_to_string(dir.join("client.env")).unwrap();
    assert_eq!(env_var(&env, "KMIP_PORT"), port2.to_string());
    stop(child);
}

#[test]
fn a_second_server_on_the_same_directory_is_refused_and_remove_client_revokes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let (child, _port, _) = serve(&dir);
    let out = atrest()
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("another key server is running on"), "{err}");
    assert!(err.contains(&format!("process {}", child.id())), "{err}");

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
    stop(child);
    // With the server stopped the directory is free again.
    let (child, _, _) = serve(&dir);
    stop(child);
}
