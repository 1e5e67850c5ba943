//! `atrest kmip …` as an administrator runs it, against the PyKMIP peer: output, exit status,
//! and a one-line reason on stderr when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The PyKMIP peer (EC server key), with the commands these tests run against it.
struct Peer(atrest_testkit::Peer);

fn peer() -> Option<Peer> {
    atrest_testkit::ec_peer().map(Peer)
}

impl Peer {
    fn v(&self, k: &str) -> &str {
        self.0.v(k)
    }

    /// `atrest kmip` with the peer's server, CA and PKCS#12 identity; passphrase and password
    /// from the environment.
    fn atrest(&self, args: &[&str]) -> Output {
        self.atrest_with(args, &[])
    }

    /// `extra` holds flag/value pairs that replace the defaults of the same flag.
    fn atrest_with(&self, args: &[&str], extra: &[&str]) -> Output {
        let server = format!("{}:{}", self.v("KMIP_HOST"), self.v("KMIP_PORT"));
        let mut flags: Vec<(&str, &str)> = vec![
            ("--server", &server),
            ("--server-name", self.v("KMIP_SERVER_NAME")),
            ("--ca", self.v("KMIP_CA")),
            ("--client-cert", self.v("KMIP_CLIENT_P12")),
            ("--username", self.v("KMIP_USERNAME")),
        ];
        for pair in extra.chunks(2) {
            flags.retain(|(f, _)| *f != pair[0]);
            flags.push((pair[0], pair[1]));
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atrest"));
        cmd.arg("kmip");
        for (f, v) in flags {
            cmd.args([f, v]);
        }
        cmd.args(args)
            .env(
                "ATREST_KMIP_PASSPHRASE",
                self.v("KMIP_CLIENT_P12_PASSPHRASE"),
            )
            .env("ATREST_KMIP_PASSWORD", self.v("KMIP_PASSWORD"))
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

fn assert_one_line_failure(o: &Output, needle: &str) {
    assert!(!o.status.success(), "succeeded: {}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("atrest: "), "{err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn test_prints_the_negotiated_version_and_exits_0() {
    let Some(p) = peer() else { return };
    let o = p.atrest(&["test"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("OK: "), "{out}");
    assert!(out.contains("KMIP version:     2.0"), "{out}");
    assert!(out.contains("PyKMIP 0.11.0 Software Server"), "{out}");
    assert!(out.contains("Discover Versions"), "{out}");

    let o = p.atrest(&["test", "--json"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["kmip_version"], "2.0");
    assert_eq!(j["ok"], true);
    assert!(
        j["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "Get")
    );

    let o = p.atrest_with(&["query", "--json"], &["--kmip-version", "1.2"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["kmip_version"], "1.2");
}

#[test]
fn create_get_locate_destroy() {
    let Some(p) = peer() else { return };
    let name = format!("cli-{}", std::process::id());
    let o = p.atrest(&["create", "--name", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o);
    assert!(!id.is_empty() && !id.contains('\n'));

    let o = p.atrest(&["get", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("256-bit AES key"), "{}", stdout(&o));
    let o = p.atrest(&["get", &id, "--hex"]);
    let hex = stdout(&o);
    assert_eq!(hex.len(), 64);
    // PyKMIP's own client gets the same 32 bytes for that id.
    assert_eq!(p.0.pykmip_get_hex(&id, None), hex);

    let dir = std::env::temp_dir().join(format!("atrest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("key.bin");
    let o = p.atrest(&["get", &id, "--out", out.to_str().unwrap()]);
    assert!(o.status.success());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(hex::encode(&bytes), hex);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The key never appears in ordinary output.
    let o = p.atrest(&["attributes", &id, "--json"]);
    assert!(!stdout(&o).contains(&hex));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["State"], "Active");

    let o = p.atrest(&["locate", "--name", &name]);
    assert_eq!(stdout(&o), id);
    let o = p.atrest(&["destroy", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = p.atrest(&["get", &id]);
    assert_one_line_failure(&o, "Item Not Found");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn settings_from_a_toml_file() {
    let Some(p) = peer() else { return };
    let dir = std::env::temp_dir().join(format!("atrest-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pass"),
        format!("{}\n", p.v("KMIP_CLIENT_KEY_PASSPHRASE")),
    )
    .unwrap();
    let cfg: PathBuf = dir.join("kmip.toml");
    std::fs::write(
        &cfg,
        format!(
            "servers = [\"127.0.0.1:1\", \"{}:{}\"]\nserver_name = \"localhost\"\nca = \"{}\"\n\
             client_cert = \"{}\"\nclient_key = \"{}\"\npassphrase_file = \"pass\"\n\
             username = \"appliance\"\ntimeout = 5\n",
            p.v("KMIP_HOST"),
            p.v("KMIP_PORT"),
            p.v("KMIP_CA"),
            p.v("KMIP_CLIENT_CERT"),
            p.v("KMIP_CLIENT_KEY_ENCRYPTED"),
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["kmip", "--config", cfg.to_str().unwrap(), "test"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("OK: {}:{}", p.v("KMIP_HOST"), p.v("KMIP_PORT"))));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The peer's env file alone gives server, CA, PKCS#12 identity and credentials; a flag
/// overrides what it gives.
#[test]
fn settings_from_an_env_file_under_the_flags() {
    let Some(p) = peer() else { return };
    let env = std::env::var("ATREST_PYKMIP_EC_ENV").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["kmip", "--env-file", &env, "test"])
        .env_remove("ATREST_KMIP_PASSPHRASE")
        .env_remove("ATREST_KMIP_PASSWORD")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("OK: {}:{}", p.v("KMIP_HOST"), p.v("KMIP_PORT"))));
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["kmip", "--env-file", &env, "--server", "127.0.0.1:9"])
        .args(["--timeout", "2", "test"])
        .output()
        .unwrap();
    assert_one_line_failure(&o, "connection refused");
}

#[test]
fn each_failure_has_its_own_one_line_reason() {
    let Some(p) = peer() else { return };
    let o = p.atrest_with(&["test"], &["--ca", p.v("KMIP_UNTRUSTED_CA")]);
    assert_one_line_failure(&o, "not signed by the configured CA");
    let o = p.atrest_with(&["test"], &["--server-name", "wrong.example"]);
    assert_one_line_failure(&o, "not valid for `wrong.example`");
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["kmip", "--server", "127.0.0.1:9", "--ca", p.v("KMIP_CA")])
        .args([
            "--client-cert",
            p.v("KMIP_CLIENT_CERT"),
            "--client-key",
            p.v("KMIP_CLIENT_KEY"),
        ])
        .args(["--timeout", "2", "test"])
        .output()
        .unwrap();
    assert_one_line_failure(&o, "connection refused");
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["kmip", "--ca", p.v("KMIP_CA"), "test"])
        .output()
        .unwrap();
    assert_one_line_failure(&o, "no KMIP server given");
    let o = p.atrest_with(
        &["test"],
        &["--client-cert", p.v("KMIP_UNTRUSTED_CLIENT_P12")],
    );
    assert_one_line_failure(&o, "rejected the client certificate");
    let o = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["kmip", "--server", "localhost", "--ca", p.v("KMIP_CA")])
        .args(["--client-cert", p.v("KMIP_CLIENT_P12"), "test"])
        .env("ATREST_KMIP_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert_one_line_failure(&o, "wrong passphrase");
}
