//! The content API's guarantees, black box against `atrest serve` (docs/store.md, "Uploads",
//! and docs/workflow.md, "Limits and timeouts"): a recording version appears whole or not at
//! all (client cancel on HTTP/1.1 and HTTP/2, SIGTERM during a replacing upload); every refusal
//! reaches the client on both protocols whatever the body; a full disk under the volume answers
//! 507 and recovers in place (a small tmpfs mounted here, as root; skipped with a note
//! otherwise unless ATREST_REQUIRE_PEERS=1), and the appliance starts on a full file system;
//! stalled uploads and idle connections are bounded.
//!
//! HTTP/2 is spoken by curl (`curl --http2`), which must be installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atrest_testkit::appliance::{Appliance, Launch};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use serde_json::Value;

/// The appliance, logged in as the admin (the token in [`Appliance::token`]).
fn start(data: &Path, extra: &[&str]) -> Appliance {
    Launch::new(env!("CARGO_BIN_EXE_atrest"), data)
        .args(extra)
        .logged_in()
        .start()
}

/// SIGTERM, then waits for the process to end.
fn terminate(mut a: Appliance) {
    let t = Instant::now();
    a.terminate(Duration::from_secs(60));
    println!("stopped {:?} after SIGTERM", t.elapsed());
}

/// The response of one curl run.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    headers: String,
    version: String,
    exit: i32,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(b))
}

/// What these tests do with the appliance besides JSON requests: curl on either protocol with
/// the admin's token, raw TLS connections, the process's memory and threads.
trait Content {
    fn curl(&self, proto: &str, args: &[&str]) -> Answer;
    fn put_file(&self, proto: &str, id: &str, file: &Path) -> Answer;
    fn get_recording(&self, id: &str) -> Answer;
    fn rss_kib(&self) -> u64;
    fn threads(&self) -> u64;
    fn tls(&self, alpn: &[u8]) -> SslStream<TcpStream>;
}

impl Content for Appliance {
    /// curl with the token, `proto` (`--http1.1` or `--http2`), and `args`.
    fn curl(&self, proto: &str, args: &[&str]) -> Answer {
        let dir = tempfile::tempdir().unwrap();
        let (b, h) = (dir.path().join("body"), dir.path().join("headers"));
        let out = Command::new("curl")
            .args(["-sk", proto, "--max-time", "60", "-o"])
            .arg(&b)
            .arg("-D")
            .arg(&h)
            .args(["-w", "%{http_code} %{http_version}"])
            .args(["-H", &format!("Authorization: Bearer {}", self.token())])
            .args(args)
            .output()
            .expect("curl runs");
        let w = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = w.split_whitespace();
        Answer {
            status: it.next().and_then(|s| s.parse().ok()).unwrap_or(0),
            version: it.next().unwrap_or_default().to_owned(),
            body: std::fs::read(&b).unwrap_or_default(),
            headers: std::fs::read_to_string(&h).unwrap_or_default(),
            exit: out.status.code().unwrap_or(-1),
        }
    }

    fn put_file(&self, proto: &str, id: &str, file: &Path) -> Answer {
        let url = self.url(&format!("/api/recordings/{id}?session=s"));
        self.curl(
            proto,
            &[
                "-X",
                "PUT",
                "--data-binary",
                &format!("@{}", file.display()),
                &url,
            ],
        )
    }

    fn get_recording(&self, id: &str) -> Answer {
        self.curl("--http1.1", &[&self.url(&format!("/api/recordings/{id}"))])
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn threads(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A TLS connection to the appliance (ALPN `alpn`, e.g. b"\x08http/1.1" or b"\x02h2").
    fn tls(&self, alpn: &[u8]) -> SslStream<TcpStream> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_alpn_protos(alpn).unwrap();
        let c = b.build();
        let tcp = TcpStream::connect(("127.0.0.1", self.port())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.configure()
            .unwrap()
            .verify_hostname(false)
            .connect("127.0.0.1", tcp)
            .expect("TLS to the appliance")
    }
}

fn random_file(dir: &Path, name: &str, len: usize, seed: u8) -> (PathBuf, String) {
    let mut data = vec![0u8; len];
    let mut x = seed as u64 | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, sha256_hex(&data))
}

fn curl_present() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

/// An upload fed from this process through curl's stdin (`-T -`), to be cut off at will.
fn streaming_upload(a: &Appliance, proto: &str, id: &str, bytes: usize) -> Child {
    let mut c = Command::new("curl")
        .args(["-sk", proto, "-o", "/dev/null", "-T", "-", "-X", "PUT"])
        .args(["-H", &format!("Authorization: Bearer {}", a.token())])
        .arg(a.url(&format!("/api/recordings/{id}?session=s")))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("curl runs");
    let mut stdin = c.stdin.take().unwrap();
    std::thread::spawn(move || {
        let piece = vec![0x5au8; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(piece.len());
            if stdin.write_all(&piece[..n]).is_err() {
                return;
            }
            left -= n;
        }
        // Keep stdin open: the upload stalls here until it is cut off.
        std::thread::sleep(Duration::from_secs(600));
        drop(stdin);
    });
    // Let the bytes reach the appliance.
    std::thread::sleep(Duration::from_secs(2));
    c
}

#[test]
fn a_recording_version_appears_whole_or_not_at_all() {
    if !curl_present() {
        eprintln!("note: curl is not installed; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (old, old_sha) = random_file(tmp.path(), "old", 3 << 20, 1);
    let a = start(&data, &["--shutdown-grace", "1"]);
    let r = a.put_file("--http1.1", "rec", &old);
    assert_eq!(r.status, 201, "{r:?}");
    let check = |a: &Appliance, when: &str| {
        let g = a.get_recording("rec");
        assert_eq!(g.status, 200, "{when}: {g:?}");
        assert_eq!(
            sha256_hex(&g.body),
            old_sha,
            "{when}: the acknowledged version changed"
        );
        let l = a.curl("--http1.1", &[&a.url("/api/recordings")]);
        assert_eq!(
            l.json()["recordings"].as_array().map(Vec::len),
            Some(1),
            "{when}: {:?}",
            l.json()
        );
    };
    // The client goes away in the middle of a replacing upload.
    for proto in ["--http1.1", "--http2"] {
        let mut c = streaming_upload(&a, proto, "rec", 8 << 20);
        c.kill().unwrap();
        c.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        check(&a, &format!("client cancel {proto}"));
    }
    // SIGTERM in the middle of a replacing upload (longer than the shutdown grace).
    let mut a = a;
    for proto in ["--http1.1", "--http2"] {
        let mut c = streaming_upload(&a, proto, "rec", 8 << 20);
        terminate(a);
        let _ = c.kill();
        let _ = c.wait();
        a = start(&data, &["--shutdown-grace", "1"]);
        check(&a, &format!("SIGTERM during an upload over {proto}"));
    }
    // And an upload that completes replaces it.
    let (new, new_sha) = random_file(tmp.path(), "new", 5 << 20, 2);
    let r = a.put_file("--http2", "rec", &new);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(sha256_hex(&a.get_recording("rec").body), new_sha);
}

#[test]
fn refusals_reach_the_client_on_both_protocols_whatever_the_body() {
    if !curl_present() {
        eprintln!("note: curl is not installed; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (big, _) = random_file(tmp.path(), "big", 4 << 20, 3);
    let a = start(&tmp.path().join("data"), &[]);
    let body = format!("@{}", big.display());
    for proto in ["--http1.1", "--http2"] {
        let cases: [(&str, String, u16, &str); 4] = [
            (
                "PUT",
                a.url("/api/recordings/rec"),
                400,
                "name the recording's session",
            ),
            (
                "PUT",
                a.url("/api/recordings/bad%20id?session=s"),
                400,
                "is not valid",
            ),
            ("PUT", a.url("/api/config"), 413, "the request body is over"),
            ("POST", a.url("/api/audit"), 413, "the request body is over"),
        ];
        for (method, url, status, words) in cases {
            let r = a.curl(proto, &["-X", method, "--data-binary", &body, &url]);
            assert_eq!(r.status, status, "{proto} {method} {url}: {r:?}");
            assert!(r.error().contains(words), "{proto} {url}: {:?}", r.error());
            assert_eq!(r.exit, 0, "{proto} {url}: curl failed: {r:?}");
            if proto == "--http1.1" {
                println!("{url} {status}: headers {:?}", r.headers.trim());
            } else {
                assert_eq!(r.version, "2", "{r:?}");
            }
        }
    }
}

/// A tmpfs mounted for the test and unmounted when dropped, whatever happens.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let block = vec![1u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn require_peers() -> bool {
    std::env::var("ATREST_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

#[test]
fn a_full_disk_answers_507_recovers_in_place_and_the_appliance_starts_on_it() {
    if !curl_present() {
        eprintln!("note: curl is not installed; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), "48m") else {
        assert!(
            !require_peers(),
            "cannot mount a tmpfs (the test needs root)"
        );
        eprintln!("note: cannot mount a tmpfs (the test needs root); skipping");
        return;
    };
    let data = fs.0.join("data");
    let (small, small_sha) = random_file(tmp.path(), "small", 2 << 20, 4);
    let (big, big_sha) = random_file(tmp.path(), "big", 4 << 20, 5);
    let a = start(&data, &["--embedded-kms"]);
    assert_eq!(a.put_file("--http1.1", "kept", &small).status, 201);

    let filler = fs.fill();
    for proto in ["--http1.1", "--http2"] {
        let r = a.put_file(proto, "new", &big);
        assert_eq!(r.status, 507, "{proto}: {r:?}");
        assert!(
            r.error().contains("the disk under the volume is full")
                && r.error().contains("free space"),
            "{proto}: {}",
            r.error()
        );
        assert_eq!(r.exit, 0, "{proto}: curl failed: {r:?}");
        // Acknowledged data still reads back right.
        let g = a.get_recording("kept");
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(sha256_hex(&g.body), small_sha);
    }
    // Space freed: the next requests succeed, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let r = a.put_file("--http2", "new", &big);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(sha256_hex(&a.get_recording("new").body), big_sha);
    assert_eq!(sha256_hex(&a.get_recording("kept").body), small_sha);
    let r = a.curl(
        "--http1.1",
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"session":"s","kind":"k","text":"after the disk was full"}"#,
            &a.url("/api/audit"),
        ],
    );
    assert_eq!(r.status, 201, "{r:?}");
    terminate(a);

    // Start-up on a full file system, with and without the bundled KMIP server.
    let filler = fs.fill();
    for extra in [&["--embedded-kms"][..], &[][..]] {
        let a = start(&data, extra);
        let g = a.get_recording("kept");
        assert_eq!(g.status, 200, "{extra:?}: {g:?}");
        assert_eq!(sha256_hex(&g.body), small_sha);
        let r = a.put_file("--http1.1", "more", &big);
        assert_eq!(r.status, 507, "{extra:?}: {r:?}");
        terminate(a);
    }
    std::fs::remove_file(&filler).unwrap();
}

/// The first start sizes a sparse image from the free space of the data directory's file
/// system; a sparse image bigger than its file system fills it up to 507 with nothing lost,
/// GET /api/encryption and the page show the file system's free space beside the volume's, and
/// space freed by a deletion is written again.
#[test]
fn a_sparse_volume_over_a_small_file_system_answers_507_and_shows_its_free_space() {
    if !curl_present() {
        eprintln!("note: curl is not installed; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), "400m") else {
        assert!(
            !require_peers(),
            "cannot mount a tmpfs (the test needs root)"
        );
        eprintln!("note: cannot mount a tmpfs (the test needs root); skipping");
        return;
    };
    use std::os::unix::fs::MetadataExt;
    // The default size: the free space less the margin (64 MiB here), sparse.
    let data = fs.0.join("auto");
    let a = start(&data, &["--embedded-kms"]);
    let img = std::fs::metadata(data.join("volume.img")).unwrap();
    assert!(
        img.len() > (300 << 20) && img.len() <= (400 << 20) - (64 << 20),
        "a {} byte image on a 400 MiB file system",
        img.len()
    );
    assert!(
        img.blocks() * 512 < (16 << 20),
        "the image is not sparse: {} bytes allocated",
        img.blocks() * 512
    );
    terminate(a);
    std::fs::remove_dir_all(&data).unwrap();

    // A 1 GiB image over the 400 MiB file system, which a filler leaves 48 MiB of.
    let data = fs.0.join("data");
    let a = start(&data, &["--embedded-kms", "--volume-size", "1G"]);
    let filler = fs.0.join("filler");
    let free = |a: &Appliance| -> Value {
        let r = a.curl("--http1.1", &[&a.url("/api/encryption")]);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["volume"]["space"].clone()
    };
    let before = free(&a);
    let fs_free = before["filesystem_free"].as_u64().unwrap();
    std::fs::write(&filler, vec![7u8; (fs_free - (48 << 20)) as usize]).unwrap();
    let sp = free(&a);
    assert!(sp["capacity"].as_u64().unwrap() > 1000 << 20, "{sp}");
    let fs_free = sp["filesystem_free"].as_u64().unwrap();
    assert!(
        fs_free <= 48 << 20 && fs_free > 40 << 20,
        "the file system's free space is shown: {sp}"
    );
    let mut kept = Vec::new();
    let status = loop {
        let (f, sha) = random_file(tmp.path(), "rec", 4 << 20, kept.len() as u8 + 1);
        let id = format!("r{}", kept.len());
        let r = a.put_file("--http1.1", &id, &f);
        if r.status != 201 {
            assert!(
                r.error().contains("the disk under the volume is full"),
                "{r:?}"
            );
            break r.status;
        }
        kept.push((id, sha));
        assert!(kept.len() < 20, "48 MiB took 80 MiB");
    };
    assert_eq!(status, 507);
    assert!(
        kept.len() >= 6,
        "only {} recordings of 4 MiB fit",
        kept.len()
    );
    let sp = free(&a);
    assert!(sp["filesystem_free"].as_u64().unwrap() < 4 << 20, "{sp}");
    assert!(
        sp["used"].as_u64().unwrap() >= (kept.len() as u64) * (4 << 20),
        "{sp}"
    );
    for (id, sha) in &kept {
        let g = a.get_recording(id);
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(&sha256_hex(&g.body), sha, "{id}");
    }
    // A deletion frees blocks the image already holds: the same space is written again.
    let (id, _) = kept.remove(0);
    let r = a.curl(
        "--http1.1",
        &["-X", "DELETE", &a.url(&format!("/api/recordings/{id}"))],
    );
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    let (f, sha) = random_file(tmp.path(), "again", 4 << 20, 99);
    let r = a.put_file("--http1.1", "again", &f);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(sha256_hex(&a.get_recording("again").body), sha);
    terminate(a);
    std::fs::remove_file(&filler).unwrap();
}

/// Opens a connection and sends the head of an upload and a few body bytes, then stalls.
fn stalled_upload(a: &Appliance, i: usize) -> SslStream<TcpStream> {
    let mut s = a.tls(b"\x08http/1.1");
    let head = format!(
        "PUT /api/recordings/stalled{i}?session=s HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        a.token(),
        10 << 20
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    s
}

/// Reads until the peer closes (Ok with what was read) or `limit` passes (Err).
fn read_until_closed(s: &mut SslStream<TcpStream>, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let t = Instant::now();
    s.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if t.elapsed() > limit {
                    return Err(got);
                }
            }
            Err(_) => return Ok(got),
        }
    }
}

#[test]
fn stalled_uploads_and_idle_connections_are_bounded() {
    if !curl_present() {
        eprintln!("note: curl is not installed; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = start(
        &tmp.path().join("data"),
        &[
            "--max-uploads",
            "8",
            "--body-timeout",
            "20",
            "--idle-timeout",
            "3",
            "--header-read-timeout",
            "2",
        ],
    );
    let before = a.rss_kib();
    let n = 500;
    let t = Instant::now();
    let mut conns: Vec<SslStream<TcpStream>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|k| {
                let a = &a;
                sc.spawn(move || {
                    (0..n / 4)
                        .map(|i| stalled_upload(a, k * 1000 + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let opening = t.elapsed();
    println!("{n} stalled uploads opened in {opening:?}");
    std::thread::sleep(Duration::from_secs(1));
    let during = a.rss_kib();
    let threads = a.threads();
    let t = Instant::now();
    let g = a.curl("--http1.1", &[&a.url("/api/recordings")]);
    let get_time = t.elapsed();
    assert_eq!(
        g.status, 200,
        "an authenticated GET during {n} stalled uploads: {g:?}"
    );
    let g2 = a.curl("--http2", &[&a.url("/api/encryption")]);
    assert_eq!(g2.status, 200, "{g2:?}");
    println!(
        "resident memory: {before} KiB before, {during} KiB with {n} stalled uploads \
         ({} KiB per upload); {threads} threads; GET /api/recordings answered in {get_time:?}",
        during.saturating_sub(before) / n as u64
    );
    // Bounded: far below what 500 uploads holding a batch buffer (8 MiB each) would take.
    assert!(
        during < before + 256 * 1024,
        "resident memory grew from {before} KiB to {during} KiB with {n} stalled uploads"
    );
    // Past the cap the uploads were refused 503 with Retry-After; the admitted ones are
    // dropped 408 once their body stalls for the body timeout.
    let results: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = conns
            .chunks_mut(n / 4)
            .map(|chunk| {
                sc.spawn(move || {
                    chunk
                        .iter_mut()
                        .map(|s| {
                            let got =
                                read_until_closed(s, Duration::from_secs(60)).unwrap_or_else(|g| g);
                            String::from_utf8_lossy(&got).into_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let busy = results
        .iter()
        .filter(|r| {
            r.starts_with("HTTP/1.1 503") && r.to_ascii_lowercase().contains("retry-after: 5")
        })
        .count();
    let timed_out = results
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 408"))
        .count();
    assert_eq!(busy + timed_out, n, "{:?}", &results[..3]);
    // One per upload slot and body-timeout window: on a loaded machine the opening outlasts
    // the 20 s body timeout, the first admitted uploads are dropped meanwhile and their slots
    // admit later ones — never more than 8 at a time.
    let windows = 1 + opening.as_secs() as usize / 20;
    assert!(
        (8..=8 * windows).contains(&timed_out),
        "{timed_out} uploads admitted and timed out; 8 slots over {windows} body-timeout \
         window(s) while the {n} uploads opened in {opening:?}"
    );
    let l = a.curl("--http1.1", &[&a.url("/api/recordings")]);
    assert_eq!(
        l.json()["recordings"],
        serde_json::json!([]),
        "nothing published"
    );

    // Idle connections: a TLS connection that sends nothing, HTTP/2 that sends its preface and
    // no request, and half-sent request headers are all closed.
    let t = Instant::now();
    let mut idle = a.tls(b"\x08http/1.1");
    let mut idle_h2 = a.tls(b"\x02h2");
    idle_h2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut half = a.tls(b"\x08http/1.1");
    half.write_all(b"GET /api/recordings HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    for (what, s) in [
        ("idle TLS connection", &mut idle),
        ("idle HTTP/2 connection", &mut idle_h2),
        ("half-sent headers", &mut half),
    ] {
        assert!(
            read_until_closed(s, Duration::from_secs(30)).is_ok(),
            "{what} still open after 30 s"
        );
        println!("{what} closed after {:?}", t.elapsed());
    }
}
