//! Both servers under hostile load, as processes: a login flood against `atrest serve`, slow-
//! trickle sockets against `atrest kms serve`, and core dumps off for both, run as root and as
//! a non-root user.
//!
//! Latencies are printed (`--nocapture` or nextest's output), never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use atrest_testkit::process::{
    Served, appliance_port, kms_port, kms_serve_command, serve_command, spawn_until,
};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::{Value, json};

fn serve(bin: &Path, data: &Path, extra: &[&str], user: Option<(u32, u32)>) -> (Served, u16) {
    let mut c = serve_command(bin, data);
    c.args(extra).stderr(Stdio::inherit());
    as_user(&mut c, user);
    spawn_until(&mut c, appliance_port)
}

fn kms_serve(bin: &Path, data: &Path, extra: &[&str], user: Option<(u32, u32)>) -> (Served, u16) {
    let mut c = kms_serve_command(bin, data, "127.0.0.1:0");
    c.args(extra).stderr(Stdio::inherit());
    as_user(&mut c, user);
    spawn_until(&mut c, kms_port)
}

fn as_user(c: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        // Run as root, std also drops the supplementary groups.
        c.uid(uid).gid(gid);
    }
}

/// A TCP connection to 127.0.0.1:`port` from the source address `from` (any 127.0.0.x is a
/// distinct source on Linux loopback).
fn connect_from(from: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    Ok(s.into())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---- HTTPS client ----

struct Response {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// A TLS client trusting only the appliance's own certificate (built once: OpenSSL contexts
/// are costly, and the flood's cost should be the server's).
fn connector(data: &Path) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(data.join("tls/cert.pem")).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.build()
}

fn https(
    connector: &SslConnector,
    port: u16,
    from: IpAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let tcp = connect_from(from, port).expect("connect to the appliance");
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut cfg = connector.configure().unwrap();
    cfg.set_verify_hostname(false);
    cfg.param_mut()
        .set_ip("127.0.0.1".parse().unwrap())
        .unwrap();
    let mut s = cfg.connect("127.0.0.1", tcp).expect("TLS to the appliance");
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let retry_after = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .map(|v| v.trim().parse::<u64>().expect("Retry-After in seconds"));
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Response {
        status,
        retry_after,
        body,
    }
}

/// An authenticated API client on one kept-open HTTPS connection, as a real one works.
struct KeepAlive {
    s: openssl::ssl::SslStream<TcpStream>,
    token: String,
}

impl KeepAlive {
    fn open(data: &Path, port: u16, token: &str) -> KeepAlive {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(data.join("tls/cert.pem")).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut cfg = b.build().configure().unwrap();
        cfg.set_verify_hostname(false);
        cfg.param_mut()
            .set_ip("127.0.0.1".parse().unwrap())
            .unwrap();
        KeepAlive {
            s: cfg.connect("127.0.0.1", tcp).unwrap(),
            token: token.to_owned(),
        }
    }

    /// GET `path`; the status (the body, with its Content-Length, is read and dropped).
    fn get(&mut self, path: &str) -> u16 {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
            self.token
        );
        self.s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.s.read_exact(&mut b).expect("a response head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a Content-Length")
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).unwrap();
        head.split(' ').nth(1).unwrap().parse().unwrap()
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn login(tls: &SslConnector, port: u16, from: IpAddr, password: &str) -> Response {
    https(
        tls,
        port,
        from,
        "POST",
        "/api/session",
        None,
        Some(&json!({"username": "admin", "password": password})),
    )
}

/// 200 concurrent wrong logins from 200 connections while an authenticated client reads the
/// content API: every read answers 200; the flood meets 429 with Retry-After; a correct login
/// from another address goes through during the flood; the flooded address logs in again once
/// its delay has passed.
#[test]
fn login_flood_is_throttled_and_authenticated_reads_keep_answering() {
    const FLOOD: usize = 200;
    const IDLE_READS: usize = 40;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_atrest"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let (_app, port) = serve(
        &bin,
        &data,
        &[
            "--volume-size",
            "32M",
            "--login-free-failures",
            "3",
            "--login-max-delay",
            "3",
        ],
        None,
    );
    let password = std::fs::read_to_string(data.join("initial-admin-password"))
        .unwrap()
        .trim()
        .to_owned();
    let local = ip("127.0.0.1");
    let tls = Arc::new(connector(&data));
    let r = login(&tls, port, local, &password);
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    // The content store comes up with the volume; wait for it (bounded).
    let read = |from: IpAddr| https(&tls, port, from, "GET", "/api/config", Some(&token), None);
    let mut ready = false;
    for _ in 0..100 {
        if read(local).status == 200 {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "GET /api/config never answered 200");

    let mut idle = Vec::new();
    let mut api = KeepAlive::open(&data, port, &token);
    // The first request on a connection is slower (TCP delayed acknowledgement): leave it out.
    let t = Instant::now();
    assert_eq!(api.get("/api/config"), 200);
    println!(
        "first authenticated read on the kept-open connection: {}",
        ms(t.elapsed())
    );
    for _ in 0..IDLE_READS {
        let t = Instant::now();
        assert_eq!(api.get("/api/config"), 200);
        idle.push(t.elapsed());
    }

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut statuses = Vec::new();
            while !done.load(Ordering::SeqCst) || lat.len() < 10 {
                let t = Instant::now();
                statuses.push(api.get("/api/config"));
                lat.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            (lat, statuses)
        })
    };
    let start = Arc::new(Barrier::new(FLOOD + 1));
    let results = Arc::new(Mutex::new(Vec::new()));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (start, results, tls) = (start.clone(), results.clone(), tls.clone());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                let r = login(&tls, port, local, "not the password");
                results
                    .lock()
                    .unwrap()
                    .push((r.status, r.retry_after, t.elapsed()));
            })
        })
        .collect();
    let flood_started = Instant::now();
    start.wait();
    // A correct login from another address while the flood runs.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let other = login(&tls, port, ip("127.0.0.2"), &password);
    let other_latency = t.elapsed();
    for f in flood {
        f.join().unwrap();
    }
    let flood_time = flood_started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (mut under, statuses) = reader.join().unwrap();

    let results = results.lock().unwrap().clone();
    let count = |s: u16| results.iter().filter(|r| r.0 == s).count();
    let (wrong, throttled, busy) = (count(401), count(429), count(503));
    let mut flood_lat: Vec<Duration> = results.iter().map(|r| r.2).collect();
    flood_lat.sort();
    idle.sort();
    under.sort();
    println!(
        "login flood: {FLOOD} concurrent wrong logins from 127.0.0.1 in {:.2} s: {wrong} × 401 \
         (checked), {throttled} × 429, {busy} × 503; their latency p50 {} p99 {}",
        flood_time.as_secs_f64(),
        ms(percentile(&flood_lat, 0.5)),
        ms(percentile(&flood_lat, 0.99)),
    );
    println!(
        "authenticated GET /api/config (one kept-open connection): idle p50 {} p99 {} ({} \
         requests); under the flood p50 {} p99 {} ({} requests)",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        idle.len(),
        ms(percentile(&under, 0.5)),
        ms(percentile(&under, 0.99)),
        under.len(),
    );
    println!(
        "correct login from 127.0.0.2 during the flood: {} in {}",
        other.status,
        ms(other_latency)
    );

    assert!(
        statuses.iter().all(|s| *s == 200),
        "an authenticated read failed during the flood: {statuses:?}"
    );
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(
        wrong + throttled + busy,
        FLOOD,
        "unexpected answers: {results:?}"
    );
    assert!(wrong >= 1, "no wrong password was checked");
    assert!(throttled >= 1, "no 429 during the flood");
    assert!(
        results
            .iter()
            .filter(|r| r.0 == 429 || r.0 == 503)
            .all(|r| r.1.is_some_and(|s| s >= 1)),
        "a 429 or 503 without Retry-After"
    );
    let r = results.iter().find(|r| r.0 == 429).unwrap();
    println!("first 429 seen says Retry-After: {} s", r.1.unwrap());

    // The flooded address: one or two more wrong passwords lock it out (the flood's lock-out
    // may be over by now); then even the correct password gets 429 until the delay has passed,
    // and works after it.
    let mut locked = None;
    for _ in 0..5 {
        let r = login(&tls, port, local, "not the password");
        if r.status == 429 {
            locked = r.retry_after;
            break;
        }
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let secs = locked.expect("wrong passwords after the flood are throttled (429 + Retry-After)");
    assert!(secs <= 4, "Retry-After {secs} beyond --login-max-delay 3");
    let r = login(&tls, port, local, &password);
    assert_eq!(
        r.status, 429,
        "the correct password during the lock-out: {}",
        r.body
    );
    let mut waited = Duration::ZERO;
    let mut ok = false;
    let mut wait = Duration::from_secs(r.retry_after.expect("Retry-After on 429"));
    for _ in 0..5 {
        let d = wait + Duration::from_millis(100);
        std::thread::sleep(d);
        waited += d;
        let r = login(&tls, port, local, &password);
        if r.status == 200 {
            ok = true;
            break;
        }
        assert_eq!(r.status, 429, "{}", r.body);
        wait = Duration::from_secs(r.retry_after.expect("Retry-After on 429"));
    }
    assert!(ok, "the correct password never worked again");
    println!(
        "the correct password from 127.0.0.1: 429 during the lock-out, 200 after waiting {:.1} s",
        waited.as_secs_f64()
    );
}

// ---- KMS under slow-trickle sockets ----

/// A genuine TLS ClientHello for the server, captured from an OpenSSL client talking to a
/// local listener.
fn client_hello() -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        let _ = b.build().connect("localhost", tcp);
    });
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    drop(s);
    let _ = t.join();
    let mut out = head.to_vec();
    out.extend(body);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Connects and sends nothing.
    Silent,
    /// Sends a ClientHello one byte every few hundred milliseconds.
    Trickle,
    /// Sends a whole ClientHello, then never its next flight.
    Stalled,
}

struct Hostile {
    kind: Kind,
    stream: TcpStream,
    sent: usize,
    closed: bool,
}

impl Hostile {
    /// Whether the server has closed the connection (reads drain whatever it sent).
    fn check_closed(&mut self) -> bool {
        if self.closed {
            return true;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.closed
    }
}

/// 300 hostile sockets (silent, trickling, stalled mid-handshake) from 127.0.0.1 — the real
/// client's own address — and ten other loopback addresses; then atrest's KMIP client works at
/// once, and every hostile socket is closed by the server in bounded time, the trickling ones
/// included (a whole deadline, not a per-read timeout).
#[test]
fn kms_serve_holds_under_300_slow_trickle_sockets() {
    const HOSTILE: usize = 300;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_atrest"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kms");
    let (_kms, port) = kms_serve(&bin, &data, &["--handshake-timeout", "3"], None);
    let hello = client_hello();
    let mut hostile: Vec<Hostile> = Vec::new();
    let opened = Instant::now();
    for i in 0..HOSTILE {
        let kind = match i % 3 {
            0 => Kind::Silent,
            1 => Kind::Trickle,
            _ => Kind::Stalled,
        };
        // Half from the real client's address, the rest spread over ten others.
        let from = if i % 2 == 0 {
            ip("127.0.0.1")
        } else {
            IpAddr::from([127, 0, 0, 2 + (i % 10) as u8])
        };
        let stream = connect_from(from, port).expect("connect to the key server");
        let mut h = Hostile {
            kind,
            stream,
            sent: 0,
            closed: false,
        };
        if kind == Kind::Stalled {
            let _ = h.stream.write_all(&hello);
            h.sent = hello.len();
        }
        h.stream.set_nonblocking(true).unwrap();
        hostile.push(h);
    }
    let hostile = Arc::new(Mutex::new(hostile));
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let (hostile, stop, hello) = (hostile.clone(), stop.clone(), hello.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for h in hostile.lock().unwrap().iter_mut() {
                    if h.kind == Kind::Trickle && !h.closed && h.sent < hello.len() {
                        match h.stream.write(&hello[h.sent..h.sent + 1]) {
                            Ok(n) => h.sent += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => h.closed = true,
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // Let the hostile sockets settle in (their handshakes grow stale), trickling meanwhile.
    std::thread::sleep(Duration::from_millis(1500));

    let peer = atrest_testkit::Peer::from_file(&data.join("client.env"));
    let mut config = peer.client_config();
    config.timeouts = atrest_kmip::client::Timeouts::uniform(Duration::from_secs(10));
    let t = Instant::now();
    let mut client = atrest_kmip::client::Client::new(config).unwrap();
    let q = client.query().expect("the real client is served");
    assert!(!q.operations.is_empty());
    let uid = client.create_aes_key(256, Some("under-trickle")).unwrap();
    client.activate(&uid).unwrap();
    assert_eq!(client.get_key(&uid).unwrap().material.len(), 32);
    println!(
        "real KMIP client under {HOSTILE} hostile sockets: Query + Create + Activate + Get in {}",
        ms(t.elapsed())
    );

    // Every hostile socket is closed by the server: refused, given way or past its deadline.
    let mut all_closed = false;
    for _ in 0..100 {
        let mut open = 0;
        for h in hostile.lock().unwrap().iter_mut() {
            if !h.check_closed() {
                open += 1;
            }
        }
        if open == 0 {
            all_closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    trickler.join().unwrap();
    let hs = hostile.lock().unwrap();
    let trickled = hs
        .iter()
        .filter(|h| h.kind == Kind::Trickle)
        .map(|h| h.sent)
        .max()
        .unwrap_or(0);
    println!(
        "hostile sockets closed by the server after {:.1} s (trickling ones sent up to {trickled} \
         bytes)",
        opened.elapsed().as_secs_f64()
    );
    let open: Vec<Kind> = hs.iter().filter(|h| !h.closed).map(|h| h.kind).collect();
    assert!(all_closed, "hostile sockets still open: {open:?}");
    drop(hs);
    // The server still serves a new connection.
    let mut c = atrest_kmip::client::Client::new(peer.client_config()).unwrap();
    assert_eq!(c.get_key(&uid).unwrap().material.len(), 32);
}

// ---- core dumps ----

/// The limits and dump state of a running process.
fn check_no_core(pid: u32, who: &str, non_root: bool) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core size line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    println!("{who}: {core}");
    assert_eq!(
        &fields[4..6],
        &["0", "0"],
        "{who}: core dumps are on: {core}"
    );
    if non_root {
        // A non-dumpable process's /proc files belong to root, whoever runs it.
        use std::os::unix::fs::MetadataExt;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let owner = std::fs::metadata(format!("/proc/{pid}/status"))
            .unwrap()
            .uid();
        println!("{who}: {uid_line}; /proc/{pid}/status owned by uid {owner} (non-dumpable)");
        assert_ne!(uid_line.split_whitespace().nth(1), Some("0"));
        assert_eq!(owner, 0, "{who}: the process is dumpable");
    }
}

/// The non-root user to run the servers as: `atrest-test`, created (as a system user without
/// a home or shell) when missing.
fn test_user() -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id")
            .args([flag, "atrest-test"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        // Another test process may create it at the same moment; look again after.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "atrest-test",
            ])
            .status();
    }
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => (u, g),
        _ => panic!("cannot create the user atrest-test with useradd; install passwd"),
    }
}

/// The binary where another user can run it (the build directory may be private).
fn public_copy(bin: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("atrest");
    std::fs::copy(bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[test]
fn serve_and_kms_serve_run_without_core_dumps_as_root_and_as_another_user() {
    // SAFETY: reading the effective user id.
    let root = unsafe { libc::geteuid() } == 0;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_atrest"));
    let dir = tempfile::tempdir().unwrap();
    // (who, run as (uid, gid), binary)
    type Run = (String, Option<(u32, u32)>, PathBuf);
    let mut runs: Vec<Run> = Vec::new();
    if root {
        runs.push(("as root".into(), None, bin.clone()));
        let user = test_user();
        runs.push((
            format!("as user atrest-test (uid {})", user.0),
            Some(user),
            public_copy(&bin, dir.path()),
        ));
    } else {
        runs.push(("as this non-root user".into(), None, bin.clone()));
        atrest_testkit::available(
            false,
            "root",
            "run the tests as root to also check a run as root (and as a created user)",
        );
    }
    for (i, (who, user, bin)) in runs.iter().enumerate() {
        let non_root = user.is_some() || !root;
        let data = dir.path().join(format!("run{i}"));
        std::fs::create_dir(&data).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&data, Some(*uid), Some(*gid)).unwrap();
        }
        let (app, _) = serve(bin, &data.join("appliance"), &["--no-volume"], *user);
        check_no_core(app.pid(), &format!("atrest serve {who}"), non_root);
        let (kms, _) = kms_serve(bin, &data.join("kms"), &[], *user);
        check_no_core(kms.pid(), &format!("atrest kms serve {who}"), non_root);
        assert!(
            kms.output.iter().any(|l| l.contains("key server")),
            "{:?}",
            kms.output
        );
    }
}
