//! `atrest serve` as a process for one test: started on a loopback port with a data directory
//! and the flags the test names ([`Launch`]), spoken to over HTTPS trusting only its own
//! certificate (or the CA the test names), stopped with SIGTERM or killed, and started again on
//! the same data directory ([`Appliance::restart`]). The one appliance handle of the process
//! tests.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::exposition::{self, Exposition};
use crate::https;
use crate::process::{Served, appliance_port, metrics_addr, serve_command, spawn_until};

/// Where the appliance's stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stderr {
    /// The test's own stderr (shown with a failing test's output).
    #[default]
    Inherit,
    /// Nowhere.
    Null,
    /// Collected line by line: [`Appliance::stderr_lines`] and [`Appliance::stderr`].
    Piped,
}

/// How to start an appliance: [`serve_command`] (the data directory, a free loopback port,
/// `RUST_LOG=warn`) with the flags and environment added here. Kept by the [`Appliance`] it
/// starts, which starts again with it.
#[derive(Debug, Clone)]
pub struct Launch {
    bin: PathBuf,
    data: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stderr: Stderr,
    login: bool,
}

impl Launch {
    /// `BIN serve --data-dir DATA --listen 127.0.0.1:0`, stderr inherited (`bin` is the test's
    /// `env!("CARGO_BIN_EXE_atrest")`).
    pub fn new(bin: impl AsRef<OsStr>, data: &Path) -> Launch {
        Launch {
            bin: PathBuf::from(bin.as_ref()),
            data: data.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            stderr: Stderr::default(),
            login: false,
        }
    }

    /// One more flag or value.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More flags and values, in order.
    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable of the process (`RUST_LOG` replaces the default `warn`).
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.envs
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Where stderr goes (inherited unless said otherwise).
    pub fn stderr(mut self, to: Stderr) -> Launch {
        self.stderr = to;
        self
    }

    /// Logs in as the admin once the appliance listens, the token kept for
    /// [`Appliance::token`].
    pub fn logged_in(mut self) -> Launch {
        self.login = true;
        self
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Starts the appliance and waits until it listens (see [`spawn_until`]).
    pub fn start(&self) -> Appliance {
        let mut cmd = serve_command(&self.bin, &self.data);
        cmd.args(&self.args);
        for (name, value) in &self.envs {
            cmd.env(name, value);
        }
        cmd.stderr(match self.stderr {
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::Piped => Stdio::piped(),
        });
        let (mut served, port) = spawn_until(&mut cmd, appliance_port);
        let output = std::mem::take(&mut served.output);
        let mut app = Appliance {
            served,
            launch: self.clone(),
            port,
            ca: self.data.join("tls/cert.pem"),
            output,
            token: None,
        };
        if self.login {
            app.token = Some(app.login());
        }
        app
    }
}

/// A running `atrest serve`, killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Appliance {
    served: Served,
    launch: Launch,
    port: u16,
    ca: PathBuf,
    output: Vec<String>,
    token: Option<String>,
}

impl Appliance {
    /// `BIN serve` on `data` with the flags `extra`, stderr inherited: [`Launch::start`].
    pub fn start(bin: impl AsRef<OsStr>, data: &Path, extra: &[&str]) -> Appliance {
        Launch::new(bin, data).args(extra).start()
    }

    /// How it was started.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// The HTTPS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.launch.data
    }

    /// The CA the requests trust: the certificate the appliance made in its data directory
    /// (`tls/cert.pem`) unless [`Appliance::trust`] named another.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Trusts `ca` instead (an appliance started with a certificate of the test's own).
    pub fn trust(&mut self, ca: &Path) {
        self.ca = ca.to_owned();
    }

    /// What it printed on stdout up to the line saying where it listens.
    pub fn output(&self) -> &[String] {
        &self.output
    }

    /// The `HOST:PORT` of its metrics listener (`--metrics-listen`), from the line it printed;
    /// panics when there is none.
    pub fn metrics(&self) -> String {
        metrics_addr(&self.output)
    }

    /// A scrape of its metrics listener, checked strictly ([`exposition::scrape`]).
    pub fn scrape(&self) -> Exposition {
        exposition::scrape(&self.metrics())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.served.pid()
    }

    /// Its stderr lines so far, with [`Stderr::Piped`] (else none).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.served.stderr_lines()
    }

    /// Its stderr lines as they are collected, with [`Stderr::Piped`]: still readable after the
    /// process has ended.
    pub fn stderr(&self) -> Arc<Mutex<Vec<String>>> {
        self.served.stderr.clone()
    }

    /// The admin's token of [`Launch::logged_in`]; panics when it was started without.
    pub fn token(&self) -> &str {
        self.token
            .as_deref()
            .expect("an appliance started with Launch::logged_in")
    }

    /// One HTTPS request with a raw `body` of `content_type` (see [`https::request`]): the
    /// status and the body (JSON when it parses).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        content_type: &str,
    ) -> (u16, Value) {
        https::request(&self.ca, self.port, method, path, token, body, content_type)
    }

    /// One HTTPS request with an optional JSON body: the status and the body.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        https::json(&self.ca, self.port, method, path, token, body)
    }

    /// [`Appliance::json`] that must succeed (2xx): the answer's JSON.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Value {
        https::api(&self.ca, self.port, method, path, token, body)
    }

    /// The generated admin password (`initial-admin-password` in the data directory).
    pub fn password(&self) -> String {
        let file = self.data().join("initial-admin-password");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
            .trim()
            .to_owned()
    }

    /// Logs in as the admin with the generated password (asserting 200): the API token.
    pub fn login(&self) -> String {
        let (status, v) = self.json(
            "POST",
            "/api/session",
            None,
            Some(&json!({"username": "admin", "password": self.password()})),
        );
        assert_eq!(status, 200, "login: {v}");
        v["token"].as_str().expect("a token").to_owned()
    }

    /// Polls `GET /api/encryption` until its state is `want`: that answer. Panics after two
    /// minutes.
    pub fn wait_state(&self, token: &str, want: &str) -> Value {
        let mut last = Value::Null;
        https::wait_until(&format!("the appliance is {want}"), || {
            let (_, st) = self.json("GET", "/api/encryption", Some(token), None);
            let reached = st["state"] == want;
            last = st;
            reached
        });
        last
    }

    /// Sends SIGTERM and waits for the process to end (see [`Served::terminate`]).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.served.terminate(within)
    }

    /// Kills the process (if it still runs) and starts it again as it was started, on the same
    /// data directory.
    pub fn restart(self) -> Appliance {
        let launch = self.launch.clone();
        drop(self);
        launch.start()
    }
}
