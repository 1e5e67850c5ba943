//! One HTTPS request to a running `atrest serve` (or `atrest kms serve`'s metrics), trusting
//! only the certificate it made in its data directory: the one way the process tests talk to
//! the appliance.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::{Value, json};

/// How long one request may wait for its answer (a conversion may hold the machine busy).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// `method path` on `127.0.0.1:port` over TLS trusting only `ca`, with an optional Bearer
/// `token` and a raw `body` of `content_type` (no Content-Type when the body is empty). The
/// status and the body: JSON when it parses, else a string; `Null` when empty. A server that
/// answers and closes before the whole body is sent (an early refusal) is read all the same.
pub fn request(
    ca: &Path,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    content_type: &str,
) -> (u16, Value) {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    let connector = b.build();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut cfg = connector.configure().unwrap();
    cfg.set_verify_hostname(false);
    cfg.param_mut()
        .set_ip("127.0.0.1".parse().unwrap())
        .unwrap();
    let mut s = cfg.connect("127.0.0.1", tcp).expect("TLS to the appliance");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, v)
}

/// [`request`] with an optional JSON body.
pub fn json(
    ca: &Path,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    request(
        ca,
        port,
        method,
        path,
        token,
        body.as_bytes(),
        "application/json",
    )
}

/// [`json()`](fn@json) that must succeed (2xx): the answer's JSON.
pub fn api(
    ca: &Path,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Value {
    let (s, v) = json(ca, port, method, path, token, body);
    assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    v
}

/// Logs in as the admin with the generated password in `data`'s `initial-admin-password`
/// (the certificate in `data`/tls): the API token.
pub fn login(data: &Path, port: u16) -> String {
    let pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap();
    let v = api(
        &data.join("tls/cert.pem"),
        port,
        "POST",
        "/api/session",
        None,
        Some(&json!({"username": "admin", "password": pw.trim()})),
    );
    v["token"].as_str().unwrap().to_owned()
}

/// The body of a chunked HTTP/1.1 response.
pub fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || n > after.len() {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after two minutes.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting until {what}");
}
