//! Serving while converting: ranged download latency (p50/p99/max) and upload throughput with
//! 4 downloaders and 4 uploaders, first on the plain volume ("idle"), then while the volume is
//! encrypted online ("during Encrypt", default settings: used space only, no rate cap), and the
//! ratio p99(during) / p99(idle) against the goal of 3×.
//!
//! `cargo bench -p atrest --bench serving`
//!
//! It starts `atrest serve --embedded-kms` (this build's binary) on a fresh data directory:
//! ATREST_BENCH_DIR (default: the target's tmp dir; removed afterwards), a volume of
//! ATREST_BENCH_VOLUME (default 16G) filled with ATREST_BENCH_FILL (default 8G) of 64 MiB
//! recordings; ATREST_BENCH_SECONDS (default 20) is the length of the idle phase. Each
//! downloader asks for 1 MiB at a random offset of a random recording on its own kept-open
//! HTTPS connection; each uploader uploads 16 MiB recordings under new ids and deletes them.
//! With ATREST_BENCH_DROP_CACHE=1 the volume file's cached pages are written back and dropped
//! before each phase, so that both phases start reading from the disk; by default the
//! recordings stay in the page cache as the fill left them (a steady state).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const RECORDING: u64 = 64 * MIB;
const UPLOAD: u64 = 16 * MIB;
const RANGE: u64 = MIB;
const WORKERS: usize = 4;

fn size_var(name: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 1 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("{name}={v}: give a size such as 512M or 16G"))
        * mult
}

/// A small xorshift generator: offsets, recording choices and upload contents.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

struct Appliance {
    child: Child,
    port: u16,
    ca: PathBuf,
    data: PathBuf,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, volume: u64) -> Appliance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["serve", "--embedded-kms", "--data-dir"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--volume-size"])
        .arg(format!("{}M", volume / MIB))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("atrest serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("atrest serve printed its address before exiting")
            .unwrap();
        if let Some(rest) = line.strip_prefix("atrest appliance listening on https://127.0.0.1:") {
            break rest.trim_end_matches('/').parse::<u16>().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Appliance {
        child,
        port,
        ca: data.join("tls/cert.pem"),
        data: data.to_path_buf(),
    }
}

/// One kept-open HTTPS connection (HTTP/1.1) that trusts only the appliance's certificate;
/// it reconnects when the server closed it.
struct Conn {
    port: u16,
    ca: PathBuf,
    token: Option<String>,
    s: Option<BufReader<SslStream<TcpStream>>>,
}

impl Conn {
    fn new(app: &Appliance, token: Option<&str>) -> Conn {
        Conn {
            port: app.port,
            ca: app.ca.clone(),
            token: token.map(str::to_owned),
            s: None,
        }
    }

    fn connect(&self) -> BufReader<SslStream<TcpStream>> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(&self.ca).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        let connector = b.build();
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut cfg = connector.configure().unwrap();
        cfg.set_verify_hostname(false);
        cfg.param_mut()
            .set_ip("127.0.0.1".parse().unwrap())
            .unwrap();
        BufReader::with_capacity(
            256 << 10,
            cfg.connect("127.0.0.1", tcp).expect("TLS to the appliance"),
        )
    }

    /// Sends one request and reads the whole answer: (status, body).
    fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
        content_type: &str,
    ) -> (u16, Vec<u8>) {
        if self.s.is_none() {
            self.s = Some(self.connect());
        }
        let s = self.s.as_mut().unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n{headers}",
            body.len()
        );
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        s.get_mut().write_all(head.as_bytes()).unwrap();
        s.get_mut().write_all(body).unwrap();
        let mut status_line = String::new();
        s.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {status_line:?}"));
        let (mut len, mut chunked, mut close) = (None, false, false);
        loop {
            let mut line = String::new();
            s.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let (k, v) = (k.to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => len = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if status == 204 || status == 304 || method == "HEAD" {
            // No body.
        } else if chunked {
            loop {
                let mut size = String::new();
                s.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let at = out.len();
                out.resize(at + n + 2, 0);
                s.read_exact(&mut out[at..]).unwrap();
                out.truncate(at + n);
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            s.read_exact(&mut out).unwrap();
        } else {
            s.read_to_end(&mut out).unwrap();
            close = true;
        }
        if close {
            self.s = None;
        }
        (status, out)
    }

    fn json(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        let (s, b) = self.call(method, path, "", body.as_bytes(), "application/json");
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

fn login(app: &Appliance) -> String {
    let pw = std::fs::read_to_string(app.data.join("initial-admin-password")).unwrap();
    let (s, v) = Conn::new(app, None).json(
        "POST",
        "/api/session",
        Some(&json!({"username": "admin", "password": pw.trim()})),
    );
    assert_eq!(s, 200, "login: {v}");
    v["token"].as_str().unwrap().to_owned()
}

#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    uploaded: u64,
    seconds: f64,
}

impl Phase {
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }
    fn print(&self, name: &str) {
        println!(
            "{name:>15}: {:>6} ranged GETs of 1 MiB, p50 {:7.1} ms, p99 {:7.1} ms, max {:7.1} ms; \
             uploads {:6.1} MB/s ({} MiB in {:.1} s)",
            self.latencies.len(),
            Self::ms(self.pct(0.5)),
            Self::ms(self.pct(0.99)),
            Self::ms(*self.latencies.last().unwrap()),
            self.uploaded as f64 / self.seconds / 1e6,
            self.uploaded / MIB,
            self.seconds,
        );
    }
}

/// Runs 4 downloaders and 4 uploaders until `stop` is set by `until` (called on this thread).
fn load(
    app: &Appliance,
    token: &str,
    recordings: usize,
    phase: &str,
    until: impl FnOnce(),
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut downloaders = Vec::new();
    for w in 0..WORKERS {
        let mut c = Conn::new(app, Some(token));
        let stop = stop.clone();
        downloaders.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) * 0x1234_5678));
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = rng.next() as usize % recordings;
                let at = rng.next() % (RECORDING - RANGE);
                let range = format!("Range: bytes={at}-{}\r\n", at + RANGE - 1);
                let t = Instant::now();
                let (s, body) = c.call(
                    "GET",
                    &format!("/api/recordings/fill-{id}"),
                    &range,
                    &[],
                    "",
                );
                lat.push(t.elapsed());
                assert_eq!(s, 206, "ranged GET: {}", String::from_utf8_lossy(&body));
                assert_eq!(body.len() as u64, RANGE);
            }
            lat
        }));
    }
    let mut uploaders = Vec::new();
    for w in 0..WORKERS {
        let mut c = Conn::new(app, Some(token));
        let stop = stop.clone();
        let phase = phase.to_owned();
        uploaders.push(std::thread::spawn(move || {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((w as u64 + 7) * 0x9876_5431));
            let mut body = vec![0u8; UPLOAD as usize];
            rng.fill(&mut body);
            let mut bytes = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                body[..8].copy_from_slice(&rng.next().to_le_bytes());
                let path = format!("/api/recordings/{phase}-{w}-{n}");
                let (s, b) = c.call(
                    "PUT",
                    &format!("{path}?session=bench"),
                    "",
                    &body,
                    "application/octet-stream",
                );
                assert_eq!(s, 201, "upload: {}", String::from_utf8_lossy(&b));
                bytes += UPLOAD;
                let (s, _) = c.call("DELETE", &path, "", &[], "");
                assert_eq!(s, 204);
                n += 1;
            }
            bytes
        }));
    }
    until();
    stop.store(true, Ordering::Relaxed);
    let mut out = Phase::default();
    for d in downloaders {
        out.latencies.extend(d.join().unwrap());
    }
    for u in uploaders {
        out.uploaded += u.join().unwrap();
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.latencies.sort();
    out
}

fn fill(app: &Appliance, token: &str, recordings: usize) {
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..WORKERS)
        .map(|w| {
            let mut c = Conn::new(app, Some(token));
            let next = next.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0xdead_beef_cafe_f00d ^ ((w as u64 + 3) * 0x5555_1111));
                let mut body = vec![0u8; RECORDING as usize];
                rng.fill(&mut body);
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= recordings {
                        break;
                    }
                    body[..8].copy_from_slice(&rng.next().to_le_bytes());
                    let (s, b) = c.call(
                        "PUT",
                        &format!("/api/recordings/fill-{id}?session=fill"),
                        "",
                        &body,
                        "application/octet-stream",
                    );
                    assert_eq!(s, 201, "fill: {}", String::from_utf8_lossy(&b));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "fill: {recordings} recordings of 64 MiB in {secs:.1} s ({:.0} MB/s, 4 uploaders)",
        (recordings as u64 * RECORDING) as f64 / secs / 1e6
    );
}

/// Writes back and drops the volume file's cached pages, so that each phase starts reading
/// from the disk (only this file's pages: nothing else on the machine is touched).
fn drop_cache(volume: &Path) {
    if std::env::var("ATREST_BENCH_DROP_CACHE").as_deref() != Ok("1") {
        return;
    }
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(volume).unwrap();
    f.sync_data().unwrap();
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for the call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise on {}", volume.display());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // A test runner that lists targets gets nothing: this is a bench, not a test.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let volume = size_var("ATREST_BENCH_VOLUME", 16 << 30);
    let fill_bytes = size_var("ATREST_BENCH_FILL", 8 << 30);
    let seconds: f64 = std::env::var("ATREST_BENCH_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("ATREST_BENCH_SECONDS: a number of seconds")
        })
        .unwrap_or(20.0);
    let recordings = (fill_bytes / RECORDING).max(1) as usize;
    let dir: PathBuf = std::env::var_os("ATREST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("serving-bench"));
    let data = dir.join("appliance");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "serving while converting: volume {} MiB, {recordings} recordings of 64 MiB, idle phase {seconds} s, load average {}",
        volume / MIB,
        loadavg()
    );
    {
        let app = start(&data, volume);
        let token = login(&app);
        fill(&app, &token, recordings);

        drop_cache(&data.join("volume.img"));
        let idle = load(&app, &token, recordings, "idle", || {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        });
        println!("load average after the idle phase: {}", loadavg());

        let mut admin = Conn::new(&app, Some(&token));
        let (_, st) = admin.json("GET", "/api/encryption", None);
        println!("space before Encrypt: {}", st["volume"]["space"]);
        let (_, r) = admin.json("POST", "/api/encryption/test", None);
        assert_eq!(r["ok"], true, "test of the KMIP settings: {r}");
        drop_cache(&data.join("volume.img"));
        let during = load(&app, &token, recordings, "during", || {
            let (s, st) = admin.json("POST", "/api/encryption/encrypt", None);
            assert_eq!(s, 202, "Encrypt: {st}");
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let (_, st) = admin.json("GET", "/api/encryption", None);
                if st["state"] == "encrypted" {
                    break;
                }
                assert!(st["last_error"].is_null(), "the conversion stopped: {st}");
            }
        });
        println!("load average after the Encrypt phase: {}", loadavg());
        let (_, st) = admin.json("GET", "/api/encryption", None);
        let lc = &st["volume"]["last_conversion"];

        println!();
        idle.print("idle");
        during.print("during Encrypt");
        let ratio = during.pct(0.99).as_secs_f64() / idle.pct(0.99).as_secs_f64();
        println!(
            "p99 during / idle: {ratio:.2}× (goal < 3×: {}); p50 {:.2}×; uploads {:.2}×",
            if ratio < 3.0 { "met" } else { "NOT met" },
            during.pct(0.5).as_secs_f64() / idle.pct(0.5).as_secs_f64(),
            (during.uploaded as f64 / during.seconds) / (idle.uploaded as f64 / idle.seconds),
        );
        println!(
            "conversion: {} MiB converted of a {} MiB volume (full: {}) in {:.1} s, {:.0} MB/s",
            lc["run_bytes"].as_u64().unwrap_or(0) / MIB,
            lc["bytes"].as_u64().unwrap_or(0) / MIB,
            lc["full"],
            lc["seconds"].as_f64().unwrap_or(f64::NAN),
            lc["bytes_per_sec"].as_f64().unwrap_or(f64::NAN) / 1e6,
        );
        println!("last_conversion: {lc}");
    }
    std::fs::remove_dir_all(&data).unwrap();
}
