//! `atrest serve --syslog tcp://HOST:PORT`: the events of a login, a Save and Test and an
//! Encrypt reach a receiver the test runs, as RFC 5424 messages in octet-counted frames, in
//! order, including those sent while the receiver was not yet listening.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::{Value, json};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api(
    data: &Path,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(data.join("tls/cert.pem")).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut cfg = b.build().configure().unwrap();
    cfg.set_verify_hostname(false);
    cfg.param_mut()
        .set_ip("127.0.0.1".parse().unwrap())
        .unwrap();
    let mut s = cfg.connect("127.0.0.1", tcp).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 20"), "{method} {path}: {head}\n{rest}");
    serde_json::from_str(rest).unwrap_or(Value::Null)
}

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
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    let mut child = Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-kms",
            "--volume-size",
            "32M",
        ])
        .args(["--syslog", &format!("tcp://127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _app = Proc(child);
    let https = loop {
        let l = lines.next().expect("the appliance started").unwrap();
        if let Some(r) = l.strip_prefix("atrest appliance listening on https://127.0.0.1:") {
            break r.trim_end_matches('/').parse::<u16>().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    // While the receiver is away: a login, Save and Test, Encrypt.
    let pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap();
    let t = api(
        &data,
        https,
        "POST",
        "/api/session",
        None,
        Some(json!({"username": "admin", "password": pw.trim()})),
    );
    let t = t["token"].as_str().unwrap().to_owned();
    let r = api(&data, https, "POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    api(
        &data,
        https,
        "POST",
        "/api/encryption/encrypt",
        Some(&t),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while api(&data, https, "GET", "/api/encryption", Some(&t), None)["state"] != "encrypted" {
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
