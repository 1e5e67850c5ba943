//! The content API through `app(state)` with `oneshot`: audit history, configuration and
//! recordings on a plain content volume, with their negative cases, and 503 with the reason
//! when the volume is locked or missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use atrest_appliance::content::{DataVolume, VolumeOptions};
use atrest_appliance::state::Content;
use atrest_appliance::{AppConfig, AppState, app};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use common::send;
use serde_json::{Value, json};

struct Fx {
    _dir: tempfile::TempDir,
    state: AppState,
    app: Router,
    token: String,
    _volume: Option<DataVolume>,
}

async fn fixture(with_volume: bool) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut c = AppConfig::new(&data);
    c.pbkdf2_iterations = 1000;
    let opened = AppState::open(c).unwrap();
    let state = opened.state;
    let volume = with_volume.then(|| {
        let mut v = VolumeOptions::new(&data);
        v.size = 40 << 20;
        v.key_check_interval = Duration::from_secs(3600);
        DataVolume::attach(&state, v).unwrap()
    });
    let app = app(state.clone());
    let pw = opened.generated_password.unwrap().to_string();
    let token = common::token(&app, &pw).await;
    Fx {
        _dir: dir,
        state,
        app,
        token,
        _volume: volume,
    }
}

impl Fx {
    fn req(&self, method: &str, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
    }
    async fn json(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.req(method, uri);
        let body = match body {
            Some(v) => {
                r = r.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let (s, _, b) = send(&self.app, r.body(body).unwrap()).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
    async fn raw(&self, method: &str, uri: &str, body: &'static str) -> (StatusCode, Value) {
        let (s, _, b) = send(
            &self.app,
            self.req(method, uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

fn err(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
}

#[tokio::test]
async fn audit_append_and_query() {
    let f = fixture(true).await;
    let (s, v) = f
        .json(
            "POST",
            "/api/audit",
            Some(json!({"session": "s1", "kind": "login", "text": "alice logged in", "time": "2026-01-01T10:00:00Z"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["count"], 1);
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"session": "s2", "kind": "command", "text": format!("ran command number{i}"), "actor": "bob", "time": format!("2026-01-02T10:00:0{i}Z")}))
        .collect();
    let (s, v) = f
        .json("POST", "/api/audit", Some(Value::Array(batch)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["count"], 5);

    let (s, v) = f
        .json("GET", "/api/audit?session=s2&limit=2&order=oldest", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 5);
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["events"][0]["text"], "ran command number0");
    assert_eq!(v["events"][0]["actor"], "bob");
    assert_eq!(v["next_offset"], 2);
    let (_, v) = f
        .json(
            "GET",
            "/api/audit?session=s2&limit=2&offset=4&order=oldest",
            None,
        )
        .await;
    assert_eq!(v["events"][0]["text"], "ran command number4");
    assert_eq!(v["next_offset"], Value::Null);
    let (_, v) = f.json("GET", "/api/audit?q=alice", None).await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["events"][0]["session"], "s1");
    assert_eq!(v["events"][0]["time"], "2026-01-01T10:00:00Z");
    let (_, v) = f
        .json(
            "GET",
            "/api/audit?from=2026-01-02T10:00:01Z&to=2026-01-02T10:00:03Z",
            None,
        )
        .await;
    assert_eq!(v["total"], 2, "{v}");
    assert_eq!(v["events"][0]["text"], "ran command number2");

    for (body, want) in [
        ("not json", "not JSON"),
        ("[]", "1 to 1000"),
        ("42", "send an event"),
        (r#"{"session": "s", "kind": "k"}"#, "event 0 is not valid"),
        (
            r#"{"session": "s", "kind": "k", "text": "t", "extra": 1}"#,
            "event 0 is not valid",
        ),
        (
            r#"{"session": "s", "kind": "k", "text": "t", "time": "yesterday"}"#,
            "RFC 3339",
        ),
        (r#"{"session": "", "kind": "k", "text": "t"}"#, "session"),
    ] {
        let (s, v) = f.raw("POST", "/api/audit", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(err(&v).contains(want), "{body}: {v}");
    }
    for (q, want) in [
        ("limit=0", "limit must be"),
        ("limit=1001", "limit must be"),
        ("order=sideways", "order"),
        ("from=never", "RFC 3339"),
        ("from=2026-01-03T00:00:00Z&to=2026-01-01T00:00:00Z", "after"),
        ("colour=red", "parameters are"),
        ("offset=-1", "parameters are"),
    ] {
        let (s, v) = f.json("GET", &format!("/api/audit?{q}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(err(&v).contains(want), "{q}: {v}");
    }
}

#[tokio::test]
async fn config_get_and_put() {
    let f = fixture(true).await;
    let (s, v) = f.json("GET", "/api/config", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["settings"], json!({}));
    let (s, v) = f
        .json(
            "PUT",
            "/api/config",
            Some(json!({"ntp.server": "pool.ntp.org", "retention.days": 30, "ratio": 0.5, "tls.strict": true, "logo": {"base64": "AAEC"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["settings"]["retention.days"], 30);
    assert_eq!(v["settings"]["ratio"], 0.5);
    assert_eq!(v["settings"]["logo"]["base64"], "AAEC");
    let (s, v) = f
        .json(
            "PUT",
            "/api/config",
            Some(json!({"ratio": null, "retention.days": 31})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["settings"].get("ratio").is_none());
    let (_, v) = f.json("GET", "/api/config", None).await;
    assert_eq!(v["settings"]["retention.days"], 31);
    assert_eq!(v["settings"]["tls.strict"], true);

    let long_key = "k".repeat(300);
    for (body, want) in [
        (json!([1, 2]), "send an object"),
        (json!({}), "empty"),
        (json!({"a": [1]}), "not a setting"),
        (json!({"a": {"base64": "***"}}), "not a setting"),
        (json!({"a": {"other": 1}}), "not a setting"),
        (json!({long_key: 1}), "key"),
    ] {
        let (s, v) = f.json("PUT", "/api/config", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(err(&v).contains(want), "{body}: {v}");
    }
    let (s, v) = f.raw("PUT", "/api/config", "{").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Nothing of a refused change was applied.
    let (_, v) = f.json("GET", "/api/config", None).await;
    assert_eq!(v["settings"].as_object().unwrap().len(), 4, "{v}");
}

#[tokio::test]
async fn recordings_streamed_ranged_deleted() {
    let f = fixture(true).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // A chunked upload: the body arrives in pieces of uneven size.
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(77_777)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(pieces));
    let (s, _, b) = send(
        &f.app,
        f.req("PUT", "/api/recordings/rec-1.cast?session=s1")
            .body(body)
            .unwrap(),
    )
    .await;
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["size"], data.len());
    assert_eq!(v["sha256"], hex::encode(openssl::sha::sha256(&data)));

    let (s, h, b) = send(
        &f.app,
        f.req("GET", "/api/recordings/rec-1.cast")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(h[header::CONTENT_LENGTH], data.len().to_string().as_str());
    assert!(b == data);

    for (range, start, end) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=1048570-1048600", 1_048_570, 1_048_600),
        ("bytes=2999990-", 2_999_990, 2_999_999),
        ("bytes=-5", 2_999_995, 2_999_999),
        ("bytes=2999999-9999999", 2_999_999, 2_999_999),
    ] {
        let (s, h, b) = send(
            &f.app,
            f.req("GET", "/api/recordings/rec-1.cast")
                .header(header::RANGE, range)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            h[header::CONTENT_RANGE],
            format!("bytes {start}-{end}/{}", data.len()).as_str()
        );
        assert!(b == data[start..=end], "{range}");
    }
    for range in [
        "bytes=3000000-",
        "bytes=5-2",
        "bytes=0-1,4-5",
        "lines=1-2",
        "bytes=-0",
    ] {
        let (s, h, b) = send(
            &f.app,
            f.req("GET", "/api/recordings/rec-1.cast")
                .header(header::RANGE, range)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(h[header::CONTENT_RANGE], "bytes */3000000");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(err(&v).contains("bytes=0-1023"), "{v}");
    }

    let (s, v) = f.json("GET", "/api/recordings", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["recordings"][0]["id"], "rec-1.cast");
    assert_eq!(v["recordings"][0]["session"], "s1");

    // Negative cases.
    let (s, v) = f.json("GET", "/api/recordings/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = f.json("PUT", "/api/recordings/x", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("session"), "{v}");
    let (s, v) = f
        .json("PUT", "/api/recordings/bad%20id?session=s", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("not valid"), "{v}");
    let (s, v) = f.json("GET", "/api/recordings/..", None).await;
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
        "{s} {v}"
    );
    let (s, v) = f
        .json("PUT", "/api/recordings/x?session=s&other=1", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, b) = send(
        &f.app,
        f.req("PUT", "/api/recordings/huge?session=s")
            .header(header::CONTENT_LENGTH, (1u64 << 40).to_string())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&b)
    );
    // A body larger than the volume, streamed without a length: refused, nothing kept.
    let big = futures_util::stream::iter(
        (0..60).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 1 << 20]))),
    );
    let (s, _, b) = send(
        &f.app,
        f.req("PUT", "/api/recordings/huge?session=s")
            .body(Body::from_stream(big))
            .unwrap(),
    )
    .await;
    assert!(
        s == StatusCode::PAYLOAD_TOO_LARGE || s == StatusCode::INSUFFICIENT_STORAGE,
        "{s} {}",
        String::from_utf8_lossy(&b)
    );
    let (s, _) = f.json("GET", "/api/recordings/huge", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = f.json("DELETE", "/api/recordings/rec-1.cast", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = f.json("DELETE", "/api/recordings/rec-1.cast", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = f.json("GET", "/api/recordings/rec-1.cast", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn content_needs_an_unlocked_volume() {
    let ops = [
        ("GET", "/api/audit"),
        ("POST", "/api/audit"),
        ("GET", "/api/config"),
        ("PUT", "/api/config"),
        ("GET", "/api/recordings"),
        ("GET", "/api/recordings/a"),
        ("PUT", "/api/recordings/a?session=s"),
        ("DELETE", "/api/recordings/a"),
    ];
    let bodies = |m: &str| {
        (m == "POST" || m == "PUT").then(|| json!({"session": "s", "kind": "k", "text": "t"}))
    };
    let f = fixture(false).await;
    for (m, u) in ops {
        let (s, v) = f.json(m, u, bodies(m)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{m} {u}: {v}");
        assert!(err(&v).contains("no content volume"), "{v}");
    }
    let f = fixture(true).await;
    f.state.set_content(Content::Locked(
        "the content volume is locked: kmip.example: connection refused".into(),
    ));
    for (m, u) in ops {
        let (s, v) = f.json(m, u, bodies(m)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{m} {u}: {v}");
        assert!(err(&v).contains("connection refused"), "{v}");
    }
}

#[tokio::test]
async fn one_appliance_per_volume() {
    let f = fixture(true).await;
    let data = f.state.data_dir().to_path_buf();
    let other = AppState::open(AppConfig::new(&data)).unwrap().state;
    let e = DataVolume::attach(&other, VolumeOptions::new(&data)).unwrap_err();
    assert!(e.contains("in use by another atrest appliance"), "{e}");
}
