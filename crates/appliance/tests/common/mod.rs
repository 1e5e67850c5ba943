//! What the in-process appliance tests share: one start of the appliance (state, content
//! volume, KMIP server), requests to the router, login, waiting, the audit history's texts;
//! [`admin`] has the fixtures of the admin API and page tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod admin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use atrest_appliance::content::{DataVolume, VolumeOptions};
use atrest_appliance::embedded::{self, EmbeddedKms};
use atrest_appliance::state::Content;
use atrest_appliance::workflow::{Backoff, State as WfState};
use atrest_appliance::{AppConfig, AppState, VolumeBackend};
use atrest_kmip::client::{Client, Timeouts};
use atrest_store::{Query, Store};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Polls `f` every 50 ms until it holds; panics naming `what` after a minute.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gave up waiting until {what}");
}

/// One request to the router: the status, the headers and the raw answer.
pub async fn send(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

/// One request to the router, with an optional Bearer token and JSON body (bytes): the
/// status and the raw answer.
pub async fn raw(
    app: &axum::Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    };
    let (s, _, b) = send(app, req.unwrap()).await;
    (s, b)
}

/// [`raw`] with a JSON body and answer (`Null` when the answer is not JSON).
pub async fn request(
    app: &axum::Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (s, b) = raw(
        app,
        token,
        method,
        uri,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// GET `uri` with `token`: the status and the JSON answer.
pub async fn get(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, Value) {
    request(app, Some(token), "GET", uri, None).await
}

/// POST `uri` with `token` and no body.
pub async fn post(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, Value) {
    request(app, Some(token), "POST", uri, None).await
}

/// POST `uri` with `token` and a JSON body.
pub async fn post_json(
    app: &axum::Router,
    token: &str,
    uri: &str,
    body: Value,
) -> (StatusCode, Value) {
    request(app, Some(token), "POST", uri, Some(body)).await
}

/// `method` `uri` with `token` and a JSON body.
pub async fn send_json(
    app: &axum::Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Value,
) -> (StatusCode, Value) {
    request(app, Some(token), method, uri, Some(body)).await
}

/// Logs in as the admin, which must succeed: the API token.
pub async fn token(app: &axum::Router, password: &str) -> String {
    let (s, v) = request(
        app,
        None,
        "POST",
        "/api/session",
        Some(json!({"username": "admin", "password": password})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// Every text of the audit history, oldest first.
pub fn audit_texts(store: &Store) -> Vec<String> {
    store
        .audit()
        .query(&Query {
            limit: 1000,
            ..Query::default()
        })
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.text)
        .collect()
}

/// A KMIP client for the server of the settings saved in `data`.
pub fn key_client(data: &Path) -> Client {
    let s = AppState::open(config(data)).unwrap().state;
    Client::new(s.kmip().unwrap().client_config(Timeouts::default())).unwrap()
}

/// The appliance's settings for tests: a fast admin password hash, 5 s KMIP timeouts.
pub fn config(data: &Path) -> AppConfig {
    let mut c = AppConfig::new(data);
    c.pbkdf2_iterations = 1000;
    c.kmip_timeouts = Timeouts::uniform(Duration::from_secs(5));
    c
}

/// The content volume's options for tests: 40 MiB, 1 MiB chunks on one thread, fast key
/// digests, 5 s KMIP timeouts, retries after 100-300 ms, the key state checked hourly.
pub fn volume_options(data: &Path) -> VolumeOptions {
    let mut v = VolumeOptions::new(data);
    v.size = 40 << 20;
    v.chunk_size = 1 << 20;
    v.threads = 1;
    v.digest_iterations = 1000;
    v.timeouts = Timeouts::uniform(Duration::from_secs(5));
    v.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(300),
    };
    v.key_check_interval = Duration::from_secs(3600);
    v
}

/// Where the KMIP server of a start comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kms {
    /// None is started: the settings are those a previous start saved, if any.
    NotStarted,
    /// The bundled server, started beside the appliance (`atrest serve --embedded-kms`) and
    /// filled into the settings.
    Bundled,
    /// A PyKMIP peer named by the env file in this variable, put into the settings unless
    /// there are some.
    Peer(&'static str),
}

/// One start of the appliance: state, content volume, KMIP server.
pub struct Run {
    pub data: PathBuf,
    pub state: AppState,
    pub volume: DataVolume,
    pub kms: Option<EmbeddedKms>,
    /// The admin password generated at this start (the first one).
    pub generated_password: Option<String>,
}

/// Starts the appliance on `data` with the KMIP server `kms` and the content volume's
/// [`volume_options`] changed by `tweak`.
pub fn start(data: &Path, kms: Kms, tweak: impl FnOnce(&mut VolumeOptions)) -> Run {
    let opened = AppState::open(config(data)).unwrap();
    let state = opened.state;
    let kms = match kms {
        Kms::NotStarted => None,
        Kms::Bundled => {
            let k = embedded::start(data).unwrap();
            embedded::prefill(&state, &k.env_file).unwrap();
            Some(k)
        }
        Kms::Peer(var) => {
            if state.kmip().is_none() {
                let env = std::env::var_os(var).unwrap();
                let u =
                    atrest_appliance::kmip_config::update_from_env_file(Path::new(&env)).unwrap();
                let s = atrest_appliance::kmip_config::KmipSettings::apply(None, u).unwrap();
                state.set_kmip(s).unwrap();
            }
            None
        }
    };
    let mut opts = volume_options(data);
    tweak(&mut opts);
    let volume = DataVolume::attach(&state, opts).unwrap();
    Run {
        data: data.to_owned(),
        state,
        volume,
        kms,
        generated_password: opened.generated_password.map(|p| p.to_string()),
    }
}

/// The admin password the first start generated (its file in `data`).
pub fn password(data: &Path) -> String {
    std::fs::read_to_string(data.join("initial-admin-password"))
        .unwrap()
        .trim()
        .to_owned()
}

impl Run {
    /// Stops the content volume and the bundled KMIP server.
    pub fn stop(mut self) {
        self.volume.shutdown();
        if let Some(k) = self.kms.take() {
            k.stop();
        }
    }

    /// The content store, which must be ready.
    pub fn store(&self) -> Store {
        match self.state.content() {
            Content::Ready(s) => s,
            other => panic!("the store is not ready: {other:?}"),
        }
    }

    /// Waits until the volume is unlocked and no conversion runs (Encrypted); `what` names the
    /// wait when it gives up.
    pub fn wait_encrypted(&self, what: &str) {
        wait_for(what, || self.state.workflow().state == WfState::Encrypted);
    }

    /// Waits until an unlock attempt failed (the workflow holds its reasons).
    pub fn wait_unlock_failed(&self) {
        wait_for("an unlock attempt failed", || {
            !self.state.workflow().lock_reasons.is_empty()
        });
    }

    /// Save and Test, which must pass, then Encrypt, waited for until it finished: the key id.
    pub async fn test_and_encrypt(&self, app: &axum::Router, token: &str) -> String {
        let (s, v) = post(app, token, "/api/encryption/test").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], true, "{v}");
        let (s, v) = post(app, token, "/api/encryption/encrypt").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let key_id = v["key_id"].as_str().unwrap().to_owned();
        self.wait_encrypted("encrypted");
        key_id
    }

    /// The admin password: generated at this start, else the first start's.
    pub fn password(&self) -> String {
        self.generated_password
            .clone()
            .unwrap_or_else(|| password(&self.data))
    }
}
