//! `atrest serve --syslog tcp://HOST:PORT`: the events of a login, a Save and Test and an
//! Encrypt reach a receiver the test runs, as RFC 5424 messages in octet-counted frames, in
//! order, including those sent while the receiver was not yet listening.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atrest_testkit::appliance::{Appliance, Launch, Stderr};
use atrest_testkit::process::free_port;
use openssl::ssl::SslMethod;
use serde_json::{Value, json};

/// Reads one octet-counted frame.
fn frame(r: &mut impl Read) -> String {
    let mut len = Vec::new();
    let mut b = [0u8; 1];
    loop {
        r.read_exact(&mut b).expect("a frame");
        if b[0] == b' ' {
            break;
        }
        assert!(b[0].is_ascii_digit() && len.len() < 8, "bad frame length");
        len.push(b[0]);
    }
    let n: usize = String::from_utf8(len).unwrap().parse().unwrap();
    let mut msg = vec![0u8; n];
    r.read_exact(&mut msg).unwrap();
    String::from_utf8(msg).unwrap()
}

/// Checks one RFC 5424 message strictly; returns (MSGID, MSG).
fn check_5424(m: &str) -> (String, String) {
    let (pri, rest) = m
        .strip_prefix('<')
        .and_then(|r| r.split_once('>'))
        .expect(m);
    let pri: u8 = pri.parse().expect(m);
    assert_eq!(pri / 8, 10, "facility authpriv: {m}");
    assert!([4, 5, 6].contains(&(pri % 8)), "{m}");
    let f: Vec<&str> = rest.splitn(7, ' ').collect();
    assert_eq!(f.len(), 7, "{m}");
    assert_eq!(f[0], "1", "version: {m}");
    let ts = f[1];
    assert!(
        ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
        "timestamp: {m}"
    );
    for (field, max) in [(f[2], 255), (f[3], 48), (f[4], 128), (f[5], 32)] {
        assert!(
            !field.is_empty()
                && field.len() <= max
                && field.bytes().all(|b| (33..=126).contains(&b)),
            "header field {field:?}: {m}"
        );
    }
    assert_eq!(f[3], "atrest");
    let sd_msg = f[6];
    assert!(sd_msg.starts_with("[atrest@32473 kind=\""), "{m}");
    let end = sd_msg.find("\"] ").expect(m);
    let msg = sd_msg[end + 3..]
        .strip_prefix('\u{feff}')
        .expect("BOM before the UTF-8 text");
    assert!(!msg.contains('\n'));
    (f[5].to_owned(), msg.to_owned())
}

#[test]
fn events_reach_the_receiver_in_order_including_those_sent_while_it_was_away() {
    // A port for the receiver, not listening yet.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let app = Launch::new(env!("CARGO_BIN_EXE_atrest"), &data)
        .args(["--embedded-kms", "--volume-size", "32M"])
        .args(["--syslog", &format!("tcp://127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .stderr(Stderr::Null)
        .start();

    // While the receiver is away: a login, Save and Test, Encrypt.
    let pw = app.password();
    let t = app.login();
    let r = app.api("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    app.api("POST", "/api/encryption/encrypt", Some(&t), None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.api("GET", "/api/encryption", Some(&t), None)["state"] != "encrypted" {
        assert!(Instant::now() < deadline, "the encryption did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The receiver comes up: everything arrives, in order.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut got = Vec::new();
    while !got
        .iter()
        .any(|(id, m): &(String, String)| id == "volume" && m.contains("encrypt"))
    {
        let m = frame(&mut conn);
        got.push(check_5424(&m));
        assert!(got.len() < 1000, "{got:?}");
    }
    let pos = |what: &dyn Fn(&(String, String)) -> bool| {
        got.iter()
            .position(what)
            .unwrap_or_else(|| panic!("missing in {got:?}"))
    };
    let login = pos(&|(id, m)| id == "admin-login" && m.contains("accepted"));
    let test = pos(&|(id, m)| id == "key-operation" && m.contains("operation=test"));
    let create = pos(&|(_, m)| m.contains("operation=") && m.contains("created, activated"));
    let done = got.len() - 1;
    assert!(login < test && test < create && create < done, "{got:?}");
    // Nothing secret in any of them.
    assert!(!got.iter().any(|(_, m)| m.contains(pw.trim())));
}

/// A CA and a certificate for 127.0.0.1 signed by it (openssl CLI); returns (ca, cert, key).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.crt"],
        &["-subj", "/CN=syslog test CA", "-days", "2"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "rx.key",
            "-out",
            "rx.csr",
            "-subj",
            "/CN=receiver",
        ],
    ]
    .concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "rx.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "rx.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.crt"), dir.join("rx.crt"), dir.join("rx.key"))
}

/// A TLS syslog receiver on `port`: every frame, checked as RFC 5424, goes to the channel as
/// (MSGID, MSG); dropping it closes the listener and the connection.
struct Receiver {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(
        port: u16,
        cert: &Path,
        key: &Path,
        tx: std::sync::mpsc::Sender<(String, String)>,
    ) -> Receiver {
        use openssl::ssl::{SslAcceptor, SslFiletype};
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_private_key_file(key, SslFiletype::PEM).unwrap();
        b.set_certificate_chain_file(cert).unwrap();
        let acceptor = b.build();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !st.load(Ordering::SeqCst) {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                tcp.set_nonblocking(false).unwrap();
                tcp.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let Ok(mut s) = acceptor.accept(tcp) else {
                    continue;
                };
                let mut buf: Vec<u8> = Vec::new();
                while !st.load(Ordering::SeqCst) {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                    // Whole frames out of the buffer.
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let n: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + n {
                            break;
                        }
                        let m = String::from_utf8(buf[sp + 1..sp + 1 + n].to_vec()).unwrap();
                        buf.drain(..sp + 1 + n);
                        let _ = tx.send(check_5424(&m));
                    }
                }
                let _ = s.shutdown();
            }
        });
        Receiver {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `atrest serve` with a tls:// receiver and the JSON process log (its stderr lines in
/// [`Appliance::stderr`]).
fn serve_tls(data: &Path, port: u16, ca: &Path) -> Appliance {
    Launch::new(env!("CARGO_BIN_EXE_atrest"), data)
        .args(["--embedded-kms", "--volume-size", "48M"])
        .args(["--convert-rate", "2M", "--convert-chunk", "1M"])
        .args([
            "--syslog",
            &format!("tls://127.0.0.1:{port}"),
            "--syslog-ca",
        ])
        .arg(ca)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stderr::Piped)
        .start()
}

/// Over TLS (the receiver's certificate checked against --syslog-ca): the receiver gets the
/// events of an Encrypt in order, including those sent while it was down, kept on disk across
/// a restart of the appliance in the middle of the conversion; the process log is JSON.
#[test]
fn a_tls_receiver_gets_an_encrypts_events_in_order_across_its_absence_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let port = free_port();
    let data = dir.path().join("appliance");
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = Receiver::start(port, &cert, &key, tx.clone());
    let mut app = serve_tls(&data, port, &ca);
    let log = app.stderr();
    let t = app.login();
    let r = app.api("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    let mut got: Vec<(String, String)> = Vec::new();
    let take_until = |got: &mut Vec<(String, String)>, what: &dyn Fn(&(String, String)) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !got.iter().any(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => got.push(m),
                Err(_) => panic!("gave up waiting; got {got:?}"),
            }
        }
    };
    take_until(&mut got, &|(_, m)| m.contains("operation=test"));
    let before = got.len();

    // The receiver goes away; Encrypt starts (every byte, so that it lasts); the appliance
    // restarts in the middle.
    drop(receiver);
    std::thread::sleep(Duration::from_millis(300));
    app.api(
        "POST",
        "/api/encryption/encrypt",
        Some(&t),
        Some(&json!({"full": true})),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = app.api("GET", "/api/encryption", Some(&t), None);
        if st["progress"]["done_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    app.terminate(Duration::from_secs(30));
    let spool: Vec<_> = std::fs::read_dir(data.join("syslog"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        spool.iter().any(|e| e.metadata().unwrap().len() > 0),
        "nothing spooled on disk: {spool:?}"
    );
    let json_lines = log.lock().unwrap().clone();
    assert!(!json_lines.is_empty());
    for l in &json_lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    let app = app.restart();
    let t = app.login();
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.api("GET", "/api/encryption", Some(&t), None)["state"] != "encrypted" {
        assert!(Instant::now() < deadline, "the encryption did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The receiver is back: the rest arrives, in order, the spooled events first.
    let _receiver = Receiver::start(port, &cert, &key, tx);
    take_until(&mut got, &|(id, m)| {
        id == "volume" && m.contains("finished")
    });
    let after = &got[before..];
    let pos = |what: &dyn Fn(&(String, String)) -> bool| {
        after
            .iter()
            .position(what)
            .unwrap_or_else(|| panic!("missing in {after:?}"))
    };
    let create = pos(&|(_, m)| m.contains("operation=create") && m.contains("created, activated"));
    let get_at_restart = pos(&|(_, m)| m.contains("operation=get") && m.contains("result=ok"));
    let finished = pos(&|(id, m)| id == "volume" && m.contains("finished"));
    assert!(
        create < get_at_restart && get_at_restart < finished,
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|(_, m)| m.contains("operation=create"))
            .count(),
        1,
        "{after:?}"
    );
    // Sent: the spool is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(data.join("syslog"))
        .unwrap()
        .flatten()
        .any(|e| e.metadata().unwrap().len() > 0)
    {
        assert!(Instant::now() < deadline, "the spool was not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(app);
}
