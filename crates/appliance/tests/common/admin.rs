//! The admin API and page tests' fixtures: the appliance's state without a content volume,
//! calls with a token, a browser's login and page, and a PKI for KMIP settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use atrest_appliance::AppState;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{config, raw, send};

/// The appliance's state on a fresh data directory, and the generated admin password.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub state: AppState,
    pub password: String,
}

/// A first start of the appliance's state (no content volume) with the tests' [`config`].
pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opened = AppState::open(config(&data)).unwrap();
    let password = opened.generated_password.unwrap().to_string();
    Fixture {
        _dir: dir,
        data,
        state: opened.state,
        password,
    }
}

/// The JSON of an answer; panics with the text when it is not JSON.
pub fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

/// A request builder for `method` `uri`.
pub fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

/// The Authorization header's value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One API call with `token` and an optional JSON body: the status and the JSON answer
/// (`Null` when empty; panics when it is something else than JSON).
pub async fn call(
    app: &Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|v| v.to_string().into_bytes());
    let (s, b) = raw(app, Some(token), method, uri, body).await;
    let v = if b.is_empty() {
        Value::Null
    } else {
        json_of(&b)
    };
    (s, v)
}

/// Logs a browser in: (cookie header value, CSRF token).
pub async fn browser_login(app: &Router, password: &str) -> (String, String) {
    let form = format!("username=admin&password={}", password);
    let (s, h, _) = send(
        app,
        req("POST", "/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap(),
    )
    .await;
    assert!(s.is_redirection(), "{s}");
    let set = h[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Strict"));
    // `__Host-`: only accepted when Secure, Path=/ and without Domain.
    assert!(set.starts_with("__Host-") && set.contains("Path=/") && !set.contains("Domain"));
    let cookie = set.split(';').next().unwrap().to_owned();
    let (s, _, b) = send(
        app,
        req("GET", "/storage/encryption")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let page = String::from_utf8(b).unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (cookie, csrf)
}

/// Storage > Encryption as the browser with `cookie` sees it: the headers and the page.
pub async fn page_with_headers(app: &Router, cookie: &str) -> (axum::http::HeaderMap, String) {
    let (_, h, b) = send(
        app,
        req("GET", "/storage/encryption")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    (h, String::from_utf8(b).unwrap())
}

/// Storage > Encryption as the browser with `cookie` sees it.
pub async fn page(app: &Router, cookie: &str) -> String {
    page_with_headers(app, cookie).await.1
}

/// A PKI from the bundled KMIP server's first start: CA, client certificate, key, PKCS#12.
pub struct Pki {
    _dir: tempfile::TempDir,
    kms_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let kms_dir = dir.path().join("kms");
        let d = atrest_kms::datadir::DataDir::new(&kms_dir);
        d.open_or_init(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let env_path = d.write_client_env("127.0.0.1", 5696).unwrap();
        let env = atrest_kms::datadir::parse_env(&std::fs::read_to_string(env_path).unwrap());
        Pki {
            _dir: dir,
            kms_dir,
            env,
        }
    }
    pub fn var(&self, k: &str) -> String {
        self.env.iter().find(|(n, _)| n == k).unwrap().1.clone()
    }
    pub fn file(&self, k: &str) -> Vec<u8> {
        std::fs::read(self.var(k)).unwrap()
    }
    pub fn text(&self, k: &str) -> String {
        String::from_utf8(self.file(k)).unwrap()
    }
    pub fn p12_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.file("KMIP_CLIENT_P12"))
    }
    /// Settings for a server on `port`.
    pub fn settings(&self, port: u16) -> Value {
        json!({
            "servers": [format!("127.0.0.1:{port}")],
            "server_name": "localhost",
            "ca_pem": self.text("KMIP_CA"),
            "client_p12_base64": self.p12_b64(),
            "passphrase": self.var("KMIP_CLIENT_P12_PASSPHRASE"),
            "username": self.var("KMIP_USERNAME"),
            "password": self.var("KMIP_PASSWORD"),
        })
    }
    /// Runs the bundled KMIP server on this PKI on 127.0.0.1:0.
    pub fn serve(&self) -> (u16, Arc<AtomicBool>) {
        let d = atrest_kms::datadir::DataDir::new(&self.kms_dir);
        let engine = Arc::new(atrest_kms::open_engine(&d).unwrap());
        let server = atrest_kms::server::Server::bind(
            &d,
            engine,
            atrest_kms::server::ServerConfig {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let port = server.local_addr().unwrap().port();
        let stop = server.stop_flag();
        std::thread::spawn(move || server.run());
        (port, stop)
    }
}

/// The permission bits of `p`.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
