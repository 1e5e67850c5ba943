//! The Debian package on this machine: build it (from the test binary, as tests/package.rs),
//! install it with `dpkg -i`, `systemd-analyze verify` both installed units, then run
//! `atrest kms serve` and `atrest serve` the way their units do — as the `atrest` user with
//! CAP_IPC_LOCK as the only (ambient) capability, umask 0077, the installed settings files and
//! state directories — and take the appliance through Save and Test and Encrypt against that key
//! server. Cleans up after itself (`dpkg --purge`, the state directory it made) and runs again
//! the same way. Needs root, dpkg, cargo-deb, systemd-analyze and setpriv; skipped otherwise
//! (a failure under ATREST_REQUIRE_PEERS=1).
//!
//! Only the listening addresses differ from the units: port 0 instead of 8443/9180/5696, so that
//! the test never collides with anything else on the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use atrest_testkit::Peer;
use atrest_testkit::process::{Served, appliance_port, has, kms_port, run, spawn_until};
use serde_json::{Value, json};

const STATE: &str = "/var/lib/atrest";
/// Left in the state directory this test made, so that a later run may remove it; a state
/// directory without it is not this test's and is never touched.
const MARKER: &str = "/var/lib/atrest/.made-by-the-package-install-test";

/// dpkg, retried while another dpkg or apt holds its lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("lock") || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "atrest"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Removes what an earlier run (or this one) left: the package, and the state directory when it
/// carries the marker.
fn clean_up() {
    if installed() {
        let out = dpkg(&["--purge", "atrest"]);
        assert!(
            out.status.success(),
            "dpkg --purge atrest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if Path::new(MARKER).exists() {
        std::fs::remove_dir_all(STATE).unwrap();
    }
}

/// Runs `args` as the unit does: user atrest, CAP_IPC_LOCK ambient, umask 0077, cwd /; returns
/// the process once `ready` recognises a line of its stdout, and what it gave.
fn as_unit<T>(args: &[&str], ready: impl Fn(&str) -> Option<T>) -> (Served, T) {
    spawn_until(
        Command::new("sh")
            .args([
                "-c",
                "umask 0077; cd /; exec setpriv --reuid=atrest --regid=atrest --init-groups \
                 --inh-caps=+ipc_lock --ambient-caps=+ipc_lock \"$@\"",
                "sh",
                "/usr/bin/atrest",
            ])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit()),
        ready,
    )
}

fn api(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
    atrest_testkit::https::api(
        Path::new(&format!("{STATE}/tls/cert.pem")),
        port,
        method,
        path,
        token,
        body.as_ref(),
    )
}

fn owner_and_mode(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

/// The .deb built by `cargo deb --no-build` from the test binary.
fn build_deb(tmp: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = tmp.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_atrest"), target.join("release/atrest")).unwrap();
    let out_dir = tmp.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    run(Command::new(&cargo)
        .args([
            "deb",
            "-p",
            "atrest",
            "--no-build",
            "--fast",
            "--locked",
            "-o",
        ])
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")));
    out_dir.join(format!("atrest_{}_amd64.deb", env!("CARGO_PKG_VERSION")))
}

#[test]
fn the_installed_package_runs_save_and_test_and_encrypt_as_its_units_do() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tools = atrest_testkit::available(root, "root", "run the test as root (dpkg -i)")
        && atrest_testkit::available(
            Command::new(&cargo)
                .args(["deb", "--version"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "cargo-deb",
            "cargo install --locked cargo-deb",
        )
        && atrest_testkit::available(has("dpkg", "--version"), "dpkg", "a Debian machine")
        && atrest_testkit::available(
            has("systemd-analyze", "--version"),
            "systemd-analyze",
            "apt-get install systemd",
        )
        && atrest_testkit::available(
            has("setpriv", "--version"),
            "setpriv",
            "apt-get install util-linux",
        );
    if !tools {
        return;
    }
    assert!(
        !Path::new(STATE).exists() || Path::new(MARKER).exists() || installed(),
        "{STATE} exists and was not made by this test: it is left alone; run the test on a \
         machine without an atrest installation"
    );
    clean_up();
    let made_state = !Path::new(STATE).exists();
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(tmp.path());

    let out = dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dpkg -i: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if made_state {
        std::fs::write(MARKER, b"").unwrap();
    }
    // What the package installed, and the maintainer script made.
    run(Command::new("/usr/bin/atrest").arg("--version"));
    let uid = String::from_utf8(run(Command::new("id").args(["-u", "atrest"])).stdout)
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    assert_eq!(owner_and_mode(Path::new(STATE)), (uid, 0o700));
    for conf in ["/etc/atrest/atrest.toml", "/etc/atrest/atrest-kms.toml"] {
        assert!(Path::new(conf).is_file(), "{conf}");
    }
    let units = [
        "/usr/lib/systemd/system/atrest.service",
        "/usr/lib/systemd/system/atrest-kms.service",
    ];
    let out = run(Command::new("systemd-analyze").arg("verify").args(units));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.trim().is_empty(),
        "systemd-analyze verify: {warnings}"
    );
    // The commands the units run.
    let exec = |unit: &str| {
        std::fs::read_to_string(unit)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/atrest "))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (serve_args, kms_args) = (exec(units[0]), exec(units[1]));
    assert_eq!(serve_args, ["serve", "--config", "/etc/atrest/atrest.toml"]);
    assert_eq!(
        kms_args,
        ["kms", "serve", "--config", "/etc/atrest/atrest-kms.toml"]
    );

    // The key server as its unit runs it (StateDirectory=atrest/kms: made here as systemd would).
    run(Command::new("install")
        .args(["-d", "-m", "0700", "-o", "atrest", "-g", "atrest"])
        .arg(format!("{STATE}/kms")));
    let mut a: Vec<&str> = kms_args.iter().map(String::as_str).collect();
    a.extend(["--listen", "127.0.0.1:0"]);
    let (_kms, _) = as_unit(&a, kms_port);
    let env = Peer::from_file(Path::new(&format!("{STATE}/kms/client.env")));
    assert_eq!(
        owner_and_mode(Path::new(&format!("{STATE}/kms/client.env"))),
        (uid, 0o600)
    );

    // The appliance as its unit runs it.
    let mut a: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    a.extend(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    let (app, port) = as_unit(&a, appliance_port);
    let pw = std::fs::read_to_string(format!("{STATE}/initial-admin-password")).unwrap();
    assert_eq!(
        owner_and_mode(Path::new(&format!("{STATE}/initial-admin-password"))),
        (uid, 0o600)
    );
    let t = api(
        port,
        "POST",
        "/api/session",
        None,
        Some(json!({"username": "admin", "password": pw.trim()})),
    );
    let t = t["token"].as_str().unwrap().to_owned();
    let read = |k: &str| std::fs::read_to_string(env.path(k)).unwrap();
    api(
        port,
        "PUT",
        "/api/encryption/kmip",
        Some(&t),
        Some(json!({
            "servers": [format!("{}:{}", env.v("KMIP_HOST"), env.v("KMIP_PORT"))],
            "ca_pem": read("KMIP_CA"),
            "client_cert_pem": read("KMIP_CLIENT_CERT"),
            "client_key_pem": read("KMIP_CLIENT_KEY"),
            "username": env.v("KMIP_USERNAME"),
            "password": env.v("KMIP_PASSWORD"),
        })),
    );
    let r = api(port, "POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    let r = api(port, "POST", "/api/encryption/encrypt", Some(&t), None);
    let key_id = r["key_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    let st = loop {
        let st = api(port, "GET", "/api/encryption", Some(&t), None);
        if st["state"] == "encrypted" {
            break st;
        }
        assert!(Instant::now() < deadline, "not encrypted: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["key_id"], key_id.as_str());
    // Everything it wrote is the atrest user's, private.
    let volume = Path::new(STATE).join("volume.img");
    assert_eq!(owner_and_mode(&volume), (uid, 0o600));
    let kmip_dir = Path::new(STATE).join("kmip");
    assert_eq!(owner_and_mode(&kmip_dir).0, uid);
    assert_eq!(owner_and_mode(&kmip_dir).1 & 0o077, 0);
    drop(app);
    drop(_kms);
    let dump = run(Command::new("/usr/bin/atrest")
        .args(["volume", "dump", "--json"])
        .arg(&volume));
    let d: Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(d["state"], "encrypted");
    assert_eq!(d["keys"][0]["unique_identifier"], key_id.as_str());

    clean_up();
    assert!(!installed());
    assert!(!Path::new("/usr/bin/atrest").exists());
    assert!(!Path::new("/etc/atrest/atrest.toml").exists());
    if made_state {
        assert!(!Path::new(STATE).exists());
    }
}
