//! Every endpoint through `app(state)` with `oneshot`, no socket: authentication, CSRF, the
//! KMIP settings (good and bad uploads), the step-by-step test against an in-process bundled
//! KMIP server and an unreachable host, the Encrypt gate, limits and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use atrest_appliance::state::EventSink;
use atrest_appliance::workflow::{Event, Request as WfRequest, State as WfState};
use atrest_appliance::{AppConfig, AppState, VolumeBackend, app};
use atrest_kmip::client::{ClientConfig, Timeouts};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    state: AppState,
    password: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = AppConfig::new(&data);
    config.pbkdf2_iterations = 1000;
    config.kmip_timeouts = Timeouts::uniform(std::time::Duration::from_secs(5));
    let opened = AppState::open(config).unwrap();
    let password = opened.generated_password.unwrap().to_string();
    Fixture {
        _dir: dir,
        data,
        state: opened.state,
        password,
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

async fn api_token(app: &Router, password: &str) -> String {
    let (s, _, b) = send(
        app,
        req("POST", "/api/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"username": "admin", "password": password}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    json_of(&b)["token"].as_str().unwrap().to_owned()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn call(
    app: &Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = req(method, uri).header(header::AUTHORIZATION, bearer(token));
    let body = match body {
        Some(v) => {
            r = r.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let (s, _, b) = send(app, r.body(body).unwrap()).await;
    let v = if b.is_empty() {
        Value::Null
    } else {
        json_of(&b)
    };
    (s, v)
}

/// A PKI from the bundled KMIP server's first start: CA, client certificate, key, PKCS#12.
struct Pki {
    _dir: tempfile::TempDir,
    kms_dir: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Pki {
    fn new() -> Pki {
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
    fn var(&self, k: &str) -> String {
        self.env.iter().find(|(n, _)| n == k).unwrap().1.clone()
    }
    fn file(&self, k: &str) -> Vec<u8> {
        std::fs::read(self.var(k)).unwrap()
    }
    fn text(&self, k: &str) -> String {
        String::from_utf8(self.file(k)).unwrap()
    }
    fn p12_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.file("KMIP_CLIENT_P12"))
    }
    /// Settings for a server on `port`.
    fn settings(&self, port: u16) -> Value {
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
    fn serve(&self) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
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

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn everything_but_login_needs_auth() {
    let f = fixture();
    let app = app(f.state.clone());
    for (u, m) in atrest_appliance::openapi::operations() {
        if u == "/api/session" && m == "post" {
            continue;
        }
        let (s, _, b) = send(
            &app,
            req(&m.to_uppercase(), &u.replace("{id}", "x"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {u}");
        assert!(json_of(&b)["error"].as_str().unwrap().contains("log in"));
    }
    let (s, h, _) = send(
        &app,
        req("GET", "/storage/encryption")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(s.is_redirection());
    assert_eq!(h[header::LOCATION], "/login");
    let (s, _, b) = send(&app, req("GET", "/login").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("name=\"password\""));
    // A bad token, a token of the wrong kind and a wrong password.
    let (s, _) = call(&app, "nope", "GET", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, b) = send(
        &app,
        req("POST", "/api/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"username":"admin","password":"wrong"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        json_of(&b)["error"]
            .as_str()
            .unwrap()
            .contains("wrong username or password")
    );
    let (s, _, _) = send(
        &app,
        req("POST", "/api/session").body(Body::from("x")).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // With a token: allowed; logging out ends it.
    let t = api_token(&app, &f.password).await;
    let (s, v) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "plain");
    let (s, _) = call(&app, &t, "DELETE", "/api/session", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// Logs a browser in: (cookie header value, CSRF token).
async fn browser_login(app: &Router, password: &str) -> (String, String) {
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

#[tokio::test]
async fn browser_session_needs_csrf_for_changes() {
    let f = fixture();
    let app = app(f.state.clone());
    let (s, _, b) = send(
        &app,
        req("POST", "/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("username=admin&password=wrong"))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&b).contains("wrong username or password"));
    let (cookie, csrf) = browser_login(&app, &f.password).await;
    // Reading needs no token.
    let (s, _, _) = send(
        &app,
        req("GET", "/api/encryption")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Changing without it: 403, with a wrong one: 403, with it: passes the check.
    for token in [None, Some("0000")] {
        let mut r = req("POST", "/api/encryption/test").header(header::COOKIE, &cookie);
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        let (s, _, b) = send(&app, r.body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(json_of(&b)["error"].as_str().unwrap().contains("CSRF"));
    }
    let (s, _, b) = send(
        &app,
        req("POST", "/api/encryption/test")
            .header(header::COOKIE, &cookie)
            .header("x-csrf-token", &csrf)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "nothing saved yet");
    assert!(
        json_of(&b)["error"]
            .as_str()
            .unwrap()
            .contains("no KMIP settings")
    );
    // A bearer token is not accepted as a cookie, nor a cookie as a bearer token.
    let (s, _, _) = send(
        &app,
        req("GET", "/api/encryption")
            .header(
                header::AUTHORIZATION,
                bearer(cookie.split('=').nth(1).unwrap()),
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Logout: a form post with the token field.
    let (s, _, _) = send(
        &app,
        req("POST", "/logout")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("csrf_token=bad"))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, h, _) = send(
        &app,
        req("POST", "/logout")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf_token={csrf}")))
            .unwrap(),
    )
    .await;
    assert!(s.is_redirection());
    assert!(
        h[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (s, _, _) = send(
        &app,
        req("GET", "/api/encryption")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn password_change() {
    let f = fixture();
    let app = app(f.state.clone());
    let initial = f.data.join("initial-admin-password");
    assert_eq!(mode(&initial), 0o600);
    let t = api_token(&app, &f.password).await;
    let (s, v) = call(
        &app,
        &t,
        "POST",
        "/api/account/password",
        Some(json!({"current_password": "wrong", "new_password": "a long new password"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("current password is wrong")
    );
    let (s, v) = call(
        &app,
        &t,
        "POST",
        "/api/account/password",
        Some(json!({"current_password": f.password, "new_password": "short"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("at least"));
    let (s, _) = call(
        &app,
        &t,
        "POST",
        "/api/account/password",
        Some(json!({"current_password": f.password, "new_password": "a long new password"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!initial.exists());
    let (s, _) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "sessions end with a password change"
    );
    api_token(&app, "a long new password").await;
}

#[tokio::test]
async fn kmip_settings_validated_and_kept_secret() {
    let f = fixture();
    let pki = Pki::new();
    let app = app(f.state.clone());
    let t = api_token(&app, &f.password).await;
    let (s, v) = call(&app, &t, "GET", "/api/encryption/kmip", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("no KMIP settings"));

    // Bad uploads, each refused with its status and (where given) its sentence.
    type Upload = fn(&Pki) -> Value;
    let bad: [(&str, Upload, StatusCode, &str); 7] = [
        (
            "a CA that is not a certificate",
            |pki| {
                let mut v = pki.settings(5696);
                v["ca_pem"] =
                    json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "server CA file is not a certificate",
        ),
        (
            "a wrong PKCS#12 passphrase",
            |pki| {
                let mut v = pki.settings(5696);
                v["passphrase"] = json!("not the passphrase");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong passphrase",
        ),
        (
            "a PKCS#12 that is garbage",
            |pki| {
                let mut v = pki.settings(5696);
                v["client_p12_base64"] = json!("aGVsbG8=");
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "PKCS#12",
        ),
        (
            "a PEM certificate without its key",
            |pki| {
                let mut v = pki.settings(5696);
                v.as_object_mut().unwrap().remove("client_p12_base64");
                v["client_cert_pem"] = json!(pki.text("KMIP_CLIENT_CERT"));
                v
            },
            StatusCode::BAD_REQUEST,
            "private key",
        ),
        (
            "a PEM certificate with a key that is not its own (the CA's certificate instead)",
            |pki| {
                let mut v = pki.settings(5696);
                v.as_object_mut().unwrap().remove("client_p12_base64");
                v["client_cert_pem"] = json!(pki.text("KMIP_CA"));
                v["client_key_pem"] = json!(pki.text("KMIP_CLIENT_KEY"));
                v
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "key belongs to the certificate",
        ),
        (
            "unknown fields",
            |_| json!({"servers": ["h"], "bogus": 1}),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "a bad host name",
            |pki| {
                let mut v = pki.settings(5696);
                v["servers"] = json!(["bad host name"]);
                v
            },
            StatusCode::BAD_REQUEST,
            "",
        ),
    ];
    for (name, upload, status, says) in bad {
        let (s, v) = call(&app, &t, "PUT", "/api/encryption/kmip", Some(upload(&pki))).await;
        assert_eq!(s, status, "{name}: {v}");
        if !says.is_empty() {
            assert!(
                v["error"].as_str().unwrap().contains(says),
                "{name}: expected {says:?} in {v}"
            );
        }
    }
    // Nothing was saved by the failures.
    assert!(!f.data.join("kmip/settings.json").exists());

    // Good settings: saved 0600, secrets never returned.
    let (s, v) = call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(pki.settings(5696)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["password_set"], true);
    assert_eq!(v["passphrase_set"], true);
    assert_eq!(v["client_format"], "pkcs12");
    assert!(
        v["client_certificate"]["subject"]
            .as_str()
            .unwrap()
            .contains("appliance")
    );
    for p in ["settings.json", "ca.pem", "client.p12"] {
        assert_eq!(mode(&f.data.join("kmip").join(p)), 0o600, "{p}");
    }
    let secrets = [
        pki.var("KMIP_PASSWORD"),
        pki.var("KMIP_CLIENT_P12_PASSPHRASE"),
    ];
    for (m, u) in [("GET", "/api/encryption/kmip"), ("GET", "/api/encryption")] {
        let (_, _, b) = send(
            &app,
            req(m, u)
                .header(header::AUTHORIZATION, bearer(&t))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let text = String::from_utf8_lossy(&b);
        for sec in &secrets {
            assert!(!text.contains(sec.as_str()), "{u} leaks a secret");
        }
    }
    // A partial update keeps the rest (and the uploads).
    let (s, v) = call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(json!({"servers": ["a.example", "b.example:6000"], "port": 5697})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["servers"][0]["port"], 5697);
    assert_eq!(v["servers"][1]["port"], 6000);
    assert_eq!(v["password_set"], true);
    // The same through the browser form (multipart).
    let (cookie, csrf) = browser_login(&app, &f.password).await;
    let boundary = "XyZbOuNdArY";
    let mut body = Vec::new();
    let mut part = |name: &str, file: Option<&str>, data: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(fname) => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{fname}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes()),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part("hosts", None, b"127.0.0.1");
    part("port", None, b"5696");
    part("server_name", None, b"localhost");
    part("ca", Some("ca.pem"), &pki.file("KMIP_CA"));
    part(
        "client_cert",
        Some("client.pem"),
        &pki.file("KMIP_CLIENT_CERT"),
    );
    part(
        "client_key",
        Some("client.key"),
        &pki.file("KMIP_CLIENT_KEY"),
    );
    part("passphrase", None, b"");
    part("username", None, b"appliance");
    part("password", None, b"");
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let multipart = |body: Vec<u8>, csrf: Option<&str>| {
        let mut r = req("PUT", "/api/encryption/kmip")
            .header(header::COOKIE, &cookie)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            );
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.body(Body::from(body)).unwrap()
    };
    let (s, _, _) = send(&app, multipart(body.clone(), None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, b) = send(&app, multipart(body, Some(&csrf))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(v["client_format"], "pem");
    assert_eq!(v["servers"][0]["port"], 5696);
    assert_eq!(mode(&f.data.join("kmip/client-key.pem")), 0o600);
    assert!(!f.data.join("kmip/client.p12").exists());
    // Upload limits: a CA over the per-file limit, a body over the request limit.
    let mut big = pki.settings(5696);
    big["ca_pem"] = json!("A".repeat(300 * 1024));
    let (s, v) = call(&app, &t, "PUT", "/api/encryption/kmip", Some(big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let huge = json!({"ca_pem": "A".repeat(3 << 20)});
    let (s, _) = call(&app, &t, "PUT", "/api/encryption/kmip", Some(huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, _) = send(
        &app,
        req("PUT", "/api/encryption/kmip")
            .header(header::AUTHORIZATION, bearer(&t))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[derive(Default)]
struct FakeVolume {
    started: Mutex<Vec<WfRequest>>,
}

impl VolumeBackend for FakeVolume {
    fn start(&self, req: WfRequest, _kmip: ClientConfig, events: EventSink) -> Result<(), String> {
        self.started.lock().unwrap().push(req);
        events(Event::Started {
            conversion: WfState::Encrypting,
            key_id: Some("key-1".into()),
            servers: vec!["127.0.0.1:5696".into()],
            cipher: Some("aes-xts-plain64".into()),
        });
        Ok(())
    }
}

#[tokio::test]
async fn test_steps_and_the_encrypt_gate() {
    let f = fixture();
    let pki = Pki::new();
    let app = app(f.state.clone());
    let t = api_token(&app, &f.password).await;
    let reason = |v: &Value| v["error"].as_str().unwrap_or_default().to_owned();

    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(reason(&v).contains("no KMIP settings are saved"), "{v}");

    // Unreachable host: the TCP step fails, the rest is skipped, Encrypt stays refused.
    let (s, _) = call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(pki.settings(closed_port())),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(reason(&v).contains("not been tested"), "{v}");
    let (s, r) = call(&app, &t, "POST", "/api/encryption/test", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["ok"], false);
    let steps = &r["servers"][0]["steps"];
    assert_eq!(steps[0]["name"], "tcp");
    assert_eq!(steps[0]["status"], "failed");
    assert_eq!(steps[0]["class"], "tcp-refused");
    assert!(
        steps[0]["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    assert!(
        steps.as_array().unwrap()[1..]
            .iter()
            .all(|s| s["status"] == "skipped")
    );
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        reason(&v).contains("last test of the KMIP settings failed")
            && reason(&v).contains("TCP connect"),
        "{v}"
    );
    let (_, st) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(st["encrypt"]["allowed"], false);
    assert_eq!(st["last_test"]["ok"], false);

    // An untrusted CA: the TLS step fails with its class.
    let (port, stop) = pki.serve();
    let other = Pki::new();
    let mut wrong_ca = pki.settings(port);
    wrong_ca["ca_pem"] = json!(other.text("KMIP_CA"));
    call(&app, &t, "PUT", "/api/encryption/kmip", Some(wrong_ca)).await;
    let (_, r) = call(&app, &t, "POST", "/api/encryption/test", None).await;
    let tls = &r["servers"][0]["steps"][1];
    assert_eq!(tls["status"], "failed", "{r}");
    assert_eq!(tls["class"], "tls-untrusted");

    // The right settings: every step passes; Encrypt is allowed until the settings change.
    let (s, _) = call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(pki.settings(port)),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, r) = call(&app, &t, "POST", "/api/encryption/test", None).await;
    assert_eq!(r["ok"], true, "{r}");
    let names: Vec<&str> = r["servers"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "tcp",
            "tls",
            "certificates",
            "kmip-version",
            "create",
            "activate",
            "get",
            "get-attributes",
            "revoke",
            "destroy"
        ]
    );
    assert!(
        r["servers"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "ok"),
        "{r}"
    );
    let (_, st) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(st["encrypt"]["allowed"], true, "{st}");
    assert_eq!(st["last_test_current"], true);
    // No data volume attached: the request is valid but cannot run.
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // Changed settings need a new test.
    call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(json!({"username": "someone-else"})),
    )
    .await;
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(reason(&v).contains("changed since the last test"), "{v}");
    call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(json!({"username": pki.var("KMIP_USERNAME")})),
    )
    .await;
    let (s, v) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["encrypt"]["allowed"], true,
        "the same settings again are the tested ones"
    );
    // With a volume: Encrypt starts, and cannot start twice.
    let fake = Arc::new(FakeVolume::default());
    f.state.set_backend(fake.clone());
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "encrypting");
    assert_eq!(v["key_id"], "key-1");
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(reason(&v).contains("encrypting"), "{v}");
    // Decrypt takes the admin password again: missing or wrong is 403, before any state check.
    let (s, v) = call(&app, &t, "POST", "/api/encryption/decrypt", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(reason(&v).contains("admin password"), "{v}");
    let (s, v) = call(
        &app,
        &t,
        "POST",
        "/api/encryption/decrypt",
        Some(json!({"password": "not-it"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(reason(&v).contains("wrong"), "{v}");
    let (s, v) = call(
        &app,
        &t,
        "POST",
        "/api/encryption/decrypt",
        Some(json!({"password": f.password})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        fake.started.lock().unwrap().as_slice(),
        &[WfRequest::Encrypt]
    );
    // The page shows the same.
    let (cookie, _) = browser_login(&app, &f.password).await;
    let (_, _, b) = send(
        &app,
        req("GET", "/storage/encryption")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let page = String::from_utf8(b).unwrap();
    assert!(page.contains(r#"<td id="state">encrypting</td>"#));
    assert!(page.contains("key-1"));
    assert!(page.contains("Save and Test Changes"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[tokio::test]
async fn page_shows_fields_and_disabled_encrypt() {
    let f = fixture();
    let app = app(f.state.clone());
    let (cookie, _) = browser_login(&app, &f.password).await;
    let (_, h, b) = send(
        &app,
        req("GET", "/storage/encryption")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let page = String::from_utf8(b).unwrap();
    for needle in [
        "id=\"hosts\"",
        "id=\"port\"",
        "name=\"ca\"",
        "name=\"client_cert\"",
        "name=\"passphrase\"",
        "id=\"kmip-username\"",
        "id=\"kmip-password\"",
        "id=\"save-test\"",
        "<button id=\"encrypt\" disabled>",
        "id=\"initial-password\"",
    ] {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("script-src 'self'") && csp.contains("style-src 'self'"));
    assert!(
        h[header::STRICT_TRANSPORT_SECURITY]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
    // No inline script or style: the CSP would block it.
    assert!(
        !page.contains("<script>") && !page.contains("<style"),
        "inline code"
    );
    assert!(
        !page.contains(" style=") && !page.contains(" onclick="),
        "inline code"
    );
    assert!(page.contains(r#"<script src="/assets/admin.js"></script>"#));
    assert!(
        !page.contains("embedded-kms-banner"),
        "no banner without the bundled KMS"
    );
    // The assets are served without a login.
    for (path, ty) in [
        ("/assets/admin.js", "text/javascript"),
        ("/assets/admin.css", "text/css"),
    ] {
        let (s, h, b) = send(&app, req("GET", path).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ty));
        assert!(!b.is_empty());
    }
}

#[tokio::test]
async fn openapi_matches_the_routes() {
    let f = fixture();
    let app = app(f.state.clone());
    let t = api_token(&app, &f.password).await;
    let (s, doc) = call(&app, &t, "GET", "/api/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc, atrest_appliance::openapi::document());
    // Every documented operation is routed: with a valid token it never answers 404 or 405.
    let ops = atrest_appliance::openapi::operations();
    for (u, m) in &ops {
        let t2 = api_token(&app, &f.password).await;
        let (s, v) = call(&app, &t2, &m.to_uppercase(), &u.replace("{id}", "x"), None).await;
        let unrouted = s == StatusCode::METHOD_NOT_ALLOWED
            || v["error"]
                .as_str()
                .is_some_and(|e| e.contains("no such API endpoint"));
        assert!(!unrouted, "{m} {u}: {s}");
    }
    // Every routed API operation is documented; others are 404/405.
    let routed = [
        ("post", "/api/session"),
        ("delete", "/api/session"),
        ("post", "/api/account/password"),
        ("get", "/api/encryption"),
        ("get", "/api/encryption/kmip"),
        ("put", "/api/encryption/kmip"),
        ("post", "/api/encryption/test"),
        ("post", "/api/encryption/encrypt"),
        ("post", "/api/encryption/rekey"),
        ("post", "/api/encryption/move"),
        ("post", "/api/encryption/decrypt"),
        ("post", "/api/encryption/resume"),
        ("post", "/api/encryption/read-only/confirm"),
        ("put", "/api/encryption/policy"),
        ("post", "/api/volume/grow"),
        ("get", "/api/encryption/recovery-key"),
        ("post", "/api/encryption/recovery-key"),
        ("delete", "/api/encryption/recovery-key"),
        ("post", "/api/encryption/unlock"),
        ("post", "/api/encryption/old-keys/{id}/revoke"),
        ("post", "/api/encryption/old-keys/{id}/destroy"),
        ("get", "/api/openapi.json"),
        ("post", "/api/audit"),
        ("get", "/api/audit"),
        ("get", "/api/audit/verify"),
        ("get", "/api/config"),
        ("put", "/api/config"),
        ("get", "/api/recordings"),
        ("get", "/api/recordings/{id}"),
        ("put", "/api/recordings/{id}"),
        ("delete", "/api/recordings/{id}"),
    ];
    for (m, u) in routed {
        assert!(
            ops.iter().any(|(ou, om)| om == m && ou == u),
            "{m} {u} is not documented"
        );
    }
    assert_eq!(ops.len(), routed.len());
    let (s, v) = call(&app, &t, "GET", "/api/nothing-here", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("openapi.json"));
    let (s, _) = call(&app, &t, "DELETE", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn embedded_prefill_then_test_passes() {
    let f = fixture();
    let k = atrest_appliance::embedded::start(&f.data).unwrap();
    assert!(atrest_appliance::embedded::prefill(&f.state, &k.env_file).unwrap());
    assert!(
        !atrest_appliance::embedded::prefill(&f.state, &k.env_file).unwrap(),
        "unchanged"
    );
    let app = app(f.state.clone());
    let t = api_token(&app, &f.password).await;
    let (_, r) = call(&app, &t, "POST", "/api/encryption/test", None).await;
    assert_eq!(r["ok"], true, "{r}");
    let (_, st) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(st["settings"]["source"], "embedded");
    assert_eq!(st["encrypt"]["allowed"], true);
    // The bundled server's weakness is said: API warnings and a banner on the page.
    assert_eq!(st["embedded_kms"], true);
    assert!(
        st["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("same disk as the volume")),
        "{st}"
    );
    let (cookie, _) = browser_login(&app, &f.password).await;
    let (_, _, b) = send(
        &app,
        req("GET", "/storage/encryption")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let page = String::from_utf8(b).unwrap();
    assert!(page.contains("id=\"embedded-kms-banner\""), "{page}");
    // Settings entered by hand are not overwritten.
    let (s, v) = call(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        Some(json!({"servers": ["kmip.example"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["source"], "manual");
    let (_, st) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(st["embedded_kms"], false);
    assert!(!atrest_appliance::embedded::prefill(&f.state, &k.env_file).unwrap());
    assert_eq!(f.state.kmip().unwrap().servers[0].host, "kmip.example");
    k.stop();
}

#[tokio::test]
async fn a_failed_conversion_offers_resume() {
    let f = fixture();
    f.state.apply(Event::Started {
        conversion: WfState::Encrypting,
        key_id: Some("k-1".into()),
        servers: vec!["kmip.example:5696".into()],
        cipher: Some("aes-xts-plain64".into()),
    });
    f.state
        .apply(Event::Progress(atrest_appliance::workflow::Progress::new(
            3 << 20,
            12 << 20,
            Some(2.0 * 1048576.0),
        )));
    let app = app(f.state.clone());
    let (cookie, _) = browser_login(&app, &f.password).await;
    let page = |cookie: String| {
        let app = app.clone();
        async move {
            let (_, _, b) = send(
                &app,
                req("GET", "/storage/encryption")
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            String::from_utf8(b).unwrap()
        }
    };
    let p = page(cookie.clone()).await;
    assert!(
        p.contains("25.0% — 3.0 MiB of 12.0 MiB, 2.0 MiB/s, about 5 s left"),
        "{p}"
    );
    assert!(!p.contains("id=\"resume\""));
    let t = api_token(&app, &f.password).await;
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("25% done"), "{v}");

    f.state.apply(Event::Failed(
        "the conversion stopped: disk full; it resumes at the next start".into(),
    ));
    let p = page(cookie).await;
    assert!(
        p.contains("id=\"resume\" data-url=\"/api/encryption/encrypt\""),
        "{p}"
    );
    assert!(p.contains("disk full"), "{p}");
    // Asking again passes the workflow's checks (and stops here at the missing settings).
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no KMIP settings are saved"),
        "{v}"
    );
    let (s, _) = call(
        &app,
        &t,
        "POST",
        "/api/encryption/decrypt",
        Some(json!({"password": f.password})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // Resume of the stopped encryption: the same path as asking again.
    let (s, v) = call(&app, &t, "POST", "/api/encryption/resume", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no KMIP settings are saved"),
        "{v}"
    );
}
