//! Test support shared by atrest's crates: the PyKMIP peers that `scripts/test` starts are
//! described by env files (`export NAME=value` lines, see the peer kit's README) whose paths are
//! in `ATREST_PYKMIP_EC_ENV` and `ATREST_PYKMIP_RSA_ENV`. They are read, and a client
//! configuration made from them, by the settings resolver every front end uses
//! ([`atrest_keys::settings`]).
//!
//! A test that needs a peer or an external tool skips with a printed note when it is missing,
//! unless `ATREST_REQUIRE_PEERS=1` (CI sets it), where the missing piece fails the test: a CI
//! run can never pass by skipping.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Test support: a broken test setup panics with a message, as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod appliance;
pub mod exposition;
pub mod https;
pub mod process;
pub mod table;
pub mod volume;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use atrest_keys::settings::{EnvFile, Sources};
use atrest_kmip::client::{ClientConfig, Identity, ServerAddr, Timeouts};
use zeroize::Zeroizing;

/// The repository's `testdata/` folder (published vectors, see its README) joined with `rel`.
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

/// The shared test kit (PyKMIP peer scripts, the OASIS XML test cases): `ATREST_SHARED`, else
/// `../shared` beside the checkout. The one place tests and benches look for it.
pub fn shared_kit() -> PathBuf {
    match std::env::var_os("ATREST_SHARED") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// Reads and parses a JSON file of `testdata/`, panicking with the path on failure (a test
/// helper: the files are part of the repository).
pub fn testdata_json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    let path = testdata(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Whether missing peers and tools fail tests instead of skipping them.
pub fn require_peers() -> bool {
    std::env::var("ATREST_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// `false` (with a note) when `what` is missing; panics instead under ATREST_REQUIRE_PEERS=1.
pub fn available(present: bool, what: &str, how: &str) -> bool {
    if !present {
        if require_peers() {
            panic!("{what} is missing but ATREST_REQUIRE_PEERS=1: {how}");
        }
        eprintln!("SKIPPED: {what} is missing ({how})");
    }
    present
}

/// Whether `program --version` runs (see [`available`]).
pub fn tool(program: &str, package: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    available(ok, program, &format!("apt-get install {package}"))
}

/// Checks a Prometheus text exposition with `promtool check metrics` (Debian's `prometheus`
/// package). Without promtool: skipped with a note, or a failure under ATREST_REQUIRE_PEERS=1
/// (`scripts/test` installs it).
pub fn promtool_check(text: &str) {
    use std::io::Write as _;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        available(false, "promtool", "apt-get install prometheus");
        return;
    };
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A KMIP peer described by its env file.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Every `NAME=value` of the env file.
    pub vars: HashMap<String, String>,
    file: PathBuf,
}

/// The peer whose env file is named by the environment variable `var` (see [`available`]).
pub fn peer(var: &str) -> Option<Peer> {
    let path = std::env::var_os(var);
    if !available(
        path.is_some(),
        var,
        "run scripts/test, which starts the PyKMIP peers",
    ) {
        return None;
    }
    Some(Peer::from_file(Path::new(&path?)))
}

/// The PyKMIP peer with an EC server key.
pub fn ec_peer() -> Option<Peer> {
    peer("ATREST_PYKMIP_EC_ENV")
}

impl Peer {
    /// Reads an env file of `export NAME=value` lines.
    pub fn from_file(path: &Path) -> Peer {
        let env = EnvFile::read(path).unwrap_or_else(|e| panic!("{e}"));
        let vars = env.vars().iter().cloned().collect();
        Peer {
            vars,
            file: path.to_owned(),
        }
    }

    /// The value of `name`.
    pub fn v(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("the peer env file has no {name}"))
    }

    /// The value of `name`, a path.
    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(self.v(name))
    }

    /// The contents of the file named by `name`.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name))
            .unwrap_or_else(|e| panic!("cannot read {} ({name}): {e}", self.v(name)))
    }

    /// The server address, `KMIP_HOST` and `KMIP_PORT`.
    pub fn server(&self) -> ServerAddr {
        ServerAddr {
            host: self.v("KMIP_HOST").to_owned(),
            port: self.v("KMIP_PORT").parse().expect("KMIP_PORT is a port"),
        }
    }

    /// The flags of `atrest kmip` and `atrest volume` for this server with the PEM identity
    /// and the username: `--server HOST:PORT --server-name KMIP_SERVER_NAME --ca KMIP_CA
    /// --client-cert KMIP_CLIENT_CERT --client-key KMIP_CLIENT_KEY --username KMIP_USERNAME`.
    pub fn cli_flags(&self) -> Vec<String> {
        let server = format!("{}:{}", self.v("KMIP_HOST"), self.v("KMIP_PORT"));
        [
            ("--server", server.as_str()),
            ("--server-name", self.v("KMIP_SERVER_NAME")),
            ("--ca", self.v("KMIP_CA")),
            ("--client-cert", self.v("KMIP_CLIENT_CERT")),
            ("--client-key", self.v("KMIP_CLIENT_KEY")),
            ("--username", self.v("KMIP_USERNAME")),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value.to_owned()])
        .collect()
    }

    /// `BIN ARGS…` followed by [`Peer::cli_flags`], the password in `ATREST_KMIP_PASSWORD`: a
    /// command of the `atrest` binary `bin` against this server.
    pub fn cli(&self, bin: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .args(self.cli_flags())
            .env("ATREST_KMIP_PASSWORD", self.v("KMIP_PASSWORD"));
        cmd
    }

    /// The key `uid` in hex as PyKMIP's own client (`ProxyKmipClient`, in the peer's Python)
    /// gets it, speaking `kmip_version` (a name of PyKMIP's `KMIPVersion`, e.g. `KMIP_1_2`) or
    /// its default; panics with PyKMIP's stderr when it fails.
    pub fn pykmip_get_hex(&self, uid: &str, kmip_version: Option<&str>) -> String {
        let version = kmip_version
            .map(|v| format!(", kmip_version=enums.KMIPVersion.{v}"))
            .unwrap_or_default();
        let script = format!(
            "import sys\n\
             from kmip.pie.client import ProxyKmipClient\n\
             from kmip.core import enums\n\
             host, port, cert, key, ca, uid = sys.argv[1:7]\n\
             c = ProxyKmipClient(hostname=host, port=int(port), cert=cert, key=key, ca=ca, \
             config_file='/dev/null'{version})\n\
             c.open()\n\
             sys.stdout.write(c.get(uid).value.hex())\n\
             c.close()\n"
        );
        let out = Command::new(self.v("PYKMIP_PYTHON_BIN"))
            .arg("-c")
            .arg(script)
            .args([self.v("KMIP_HOST"), self.v("KMIP_PORT")])
            .args([self.v("KMIP_CLIENT_CERT"), self.v("KMIP_CLIENT_KEY")])
            .args([self.v("KMIP_CA"), uid])
            .output()
            .expect("the peer's Python runs");
        assert!(
            out.status.success(),
            "PyKMIP's client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A PEM identity from the files named by `cert` and `key`.
    pub fn pem_identity(&self, cert: &str, key: &str) -> Identity {
        Identity::Pem {
            cert_chain: self.read(cert),
            key: Zeroizing::new(self.read(key)),
            passphrase: None,
        }
    }

    /// A client configuration with the main PEM identity (KMIP_CLIENT_CERT, KMIP_CLIENT_KEY),
    /// username and password, resolved from the env file as every front end resolves one; 10 s
    /// timeouts.
    pub fn client_config(&self) -> ClientConfig {
        let sources = Sources::env_file(&self.file);
        let mut layer = sources.layer().unwrap_or_else(|e| panic!("{e}"));
        layer.client_cert = Some(self.path("KMIP_CLIENT_CERT"));
        layer.client_key = Some(self.path("KMIP_CLIENT_KEY"));
        layer.passphrase = None;
        let mut config = sources
            .resolve_layer(layer)
            .unwrap_or_else(|e| panic!("{e}"))
            .client_config();
        config.timeouts = Timeouts::uniform(Duration::from_secs(10));
        config
    }
}

/// A loop device attached to a file for one test, detached when dropped (also when the test
/// fails or panics).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` (`losetup -f --show FILE`). `None` with a note when not root or loop
    /// devices are unavailable here; a failure under ATREST_REQUIRE_PEERS=1 (see [`available`]).
    pub fn attach(file: &Path) -> Option<LoopDevice> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if !available(root, "root", "loop devices need root: run the test as root") {
            return None;
        }
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output();
        let attached = out.as_ref().is_ok_and(|o| o.status.success());
        let how = match &out {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("{e}; apt-get install mount"),
        };
        if !available(attached, "a loop device (losetup -f --show)", &how) {
            return None;
        }
        let path = String::from_utf8_lossy(&out.ok()?.stdout).trim().to_owned();
        Some(LoopDevice {
            path: PathBuf::from(path),
        })
    }

    /// The device node (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let ok = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot detach the loop device {}", self.path.display());
        }
    }
}

/// A scratch directory for one test, `atrest-NAME-PID` in the system's temporary directory:
/// emptied when made, removed when dropped (also when the test fails or panics).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Makes the directory (removing what a previous run with the same process id left).
    pub fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("atrest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
