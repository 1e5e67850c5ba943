//! `atrest serve --config` and `atrest kms serve --config`: options from the TOML file, paths in
//! it relative to it, flags overriding it, and a one-line refusal of a wrong file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use atrest_testkit::process::{Served, spawn_until};

fn atrest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atrest"))
}

/// Starts `args`, returns the process and the line starting with `prefix` once printed.
fn start_until(args: &[&str], cwd: &Path, prefix: &str) -> (Served, String) {
    spawn_until(
        atrest()
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "warn")
            .env_remove("ATREST_DATA_DIR")
            .env_remove("ATREST_KMS_DATA_DIR")
            .stderr(Stdio::null()),
        |l| l.starts_with(prefix).then(|| l.trim().to_owned()),
    )
}

#[test]
fn kms_serve_reads_its_file_with_paths_relative_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(
        etc.join("atrest-kms.toml"),
        "data_dir = \"kms-data\"\nlisten = \"127.0.0.1:0\"\nserver_name = [\"kms.test\"]\n",
    )
    .unwrap();
    // Run from another directory: the data directory is beside the file, not the cwd.
    let (_kms, line) = start_until(
        &["kms", "serve", "--config", "etc/atrest-kms.toml"],
        tmp.path(),
        "listening on ",
    );
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    assert!(etc.join("kms-data/client.env").is_file());
}

#[test]
fn serve_reads_its_file_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("atrest.toml"),
        // Port 9 would fail; the flag's port 0 wins.
        "data_dir = \"state\"\nlisten = \"127.0.0.1:9\"\nno_volume = true\n",
    )
    .unwrap();
    let cfg = tmp.path().join("atrest.toml");
    let (_app, line) = start_until(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        Path::new("/"),
        "atrest appliance listening on ",
    );
    assert!(!line.contains("127.0.0.1:9/"), "{line}");
    assert!(tmp.path().join("state/admin.json").is_file());
}

#[test]
fn a_wrong_file_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("atrest.toml");
    for (text, says) in [
        (
            "data_dri = \"x\"\n",
            "`data_dri` is not an option of `serve`",
        ),
        ("key_bits = 384\n", "key length is 256 or 512"),
        ("data_dir = [\n", "not valid TOML"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = atrest()
            .args(["serve", "--config"])
            .arg(&cfg)
            .env_remove("ATREST_DATA_DIR")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{text:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let out = atrest()
        .args(["serve"])
        .env_remove("ATREST_DATA_DIR")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data directory given"));
}
