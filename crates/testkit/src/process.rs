//! The `atrest` servers as processes: the commands that start `atrest serve` and `atrest kms
//! serve` on a loopback port, the wait for the line that says they listen, the process killed
//! when the test ends (or stopped with SIGTERM), and running the other programs a test needs.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to print the line [`spawn_until`] waits for.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// `BIN serve --data-dir DATA --listen 127.0.0.1:0`, logging warnings only (`RUST_LOG=warn`):
/// add flags, then start it with [`spawn_until`] and [`appliance_port`].
pub fn serve_command(bin: impl AsRef<OsStr>, data: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn");
    c
}

/// `BIN kms serve --data-dir DATA --listen LISTEN` (`127.0.0.1:0` for a free port), logging
/// warnings only: add flags, then start it with [`spawn_until`] and [`kms_port`].
pub fn kms_serve_command(bin: impl AsRef<OsStr>, data: &Path, listen: &str) -> Command {
    let mut c = Command::new(bin);
    c.args(["kms", "serve", "--data-dir"])
        .arg(data)
        .args(["--listen", listen])
        .env("RUST_LOG", "warn");
    c
}

/// A process a test started, killed (and reaped) when dropped, with what it printed on
/// stdout up to the line [`spawn_until`] waited for.
#[derive(Debug)]
pub struct Served {
    /// The process.
    pub child: Child,
    /// Its stdout lines up to and including the one [`spawn_until`] waited for.
    pub output: Vec<String>,
    /// Its stderr lines so far, when the command's stderr was [`Stdio::piped`] (read in the
    /// background from the start, so the process never blocks on a full pipe); else empty.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to end; panics if it is still running after
    /// `within`. The exit status (also when it had ended before).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("waiting for the process") {
            return status;
        }
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid}: {sent}");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the process") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The stderr lines collected so far (see [`Served::stderr`]).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

/// Spawns `cmd` with stdout piped and reads its lines until `ready` recognises one; the rest
/// of stdout is drained in the background, so the process never blocks on a full pipe (and so
/// is stderr when `cmd` pipes it, into [`Served::stderr`]). Panics with what the process
/// printed when it exits first, or when it has printed lines for two minutes without the one
/// awaited.
pub fn spawn_until<T>(cmd: &mut Command, ready: impl Fn(&str) -> Option<T>) -> (Served, T) {
    read_until(cmd, None, ready)
}

/// [`spawn_until`] that also writes every line of stdout to the file `log` (created, or
/// emptied), the lines after the awaited one too: for a test that keeps what a server printed
/// (the command's stderr can go to a file of its own with [`Stdio::from`]).
pub fn spawn_until_logging<T>(
    cmd: &mut Command,
    log: &Path,
    ready: impl Fn(&str) -> Option<T>,
) -> (Served, T) {
    let file = std::fs::File::create(log)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    read_until(cmd, Some(file), ready)
}

/// Spawns `cmd` as it is, reading nothing: the process, killed (and reaped) when dropped.
pub fn spawn(cmd: &mut Command) -> Served {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    Served {
        child,
        output: Vec::new(),
        stderr: Arc::default(),
    }
}

/// [`spawn_until`], each line of stdout also written to `log` when there is one.
fn read_until<T>(
    cmd: &mut Command,
    mut log: Option<std::fs::File>,
    ready: impl Fn(&str) -> Option<T>,
) -> (Served, T) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(err) = child.stderr.take() {
        let log = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                log.lock().unwrap().push(l);
            }
        });
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut served = Served {
        child,
        output: Vec::new(),
        stderr,
    };
    let mut keep = move |line: &str| {
        if let Some(f) = log.as_mut() {
            writeln!(f, "{line}").expect("writing the log of a process");
        }
    };
    let deadline = Instant::now() + READY_WITHIN;
    let found = loop {
        let Some(Ok(line)) = lines.next() else {
            let status = served.child.wait();
            panic!(
                "{cmd:?} exited ({status:?}) before its ready line; it printed {:?}",
                served.output
            );
        };
        keep(&line);
        served.output.push(line.clone());
        if let Some(t) = ready(&line) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} printed no ready line within {READY_WITHIN:?}: {:?}",
            served.output
        );
    };
    std::thread::spawn(move || {
        for line in lines {
            match line {
                Ok(line) => keep(&line),
                // A line that is not UTF-8 is passed over; the rest is still read.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
                Err(_) => break,
            }
        }
    });
    (served, found)
}

/// A loopback port nothing listens on: bound on 127.0.0.1, then released (for a server the
/// test starts later, or a peer that must be found absent).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// The port in `atrest serve`'s line "atrest appliance listening on https://127.0.0.1:PORT/".
pub fn appliance_port(line: &str) -> Option<u16> {
    line.strip_prefix("atrest appliance listening on https://127.0.0.1:")
        .and_then(|rest| rest.trim_end_matches('/').parse().ok())
}

/// The port in `atrest kms serve`'s line "listening on HOST:PORT".
pub fn kms_port(line: &str) -> Option<u16> {
    line.strip_prefix("listening on ")
        .and_then(|addr| addr.trim().rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
}

/// The address (`HOST:PORT`) in the line "metrics on http://HOST:PORT/metrics ..." that both
/// servers print with `--metrics-listen`; panics with `output` when there is none.
pub fn metrics_addr(output: &[String]) -> String {
    output
        .iter()
        .find_map(|l| l.strip_prefix("metrics on http://"))
        .and_then(|l| l.split_once('/'))
        .map(|(a, _)| a.to_owned())
        .unwrap_or_else(|| panic!("no metrics address printed: {output:?}"))
}

/// Runs `cmd` to the end and asserts it succeeded (its stdout and stderr in the message when
/// not): its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `BIN ARGS…` run to its end: its output, whatever the exit status (see [`ok`]).
pub fn output(bin: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Whether `program arg` runs and succeeds (e.g. `has("dpkg", "--version")`).
pub fn has(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Asserts that the command whose output is `o` succeeded (its stderr and stdout in the
/// message when not): its stdout, trimmed.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}
