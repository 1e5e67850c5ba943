//! GET /metrics, /healthz and /readyz through `metrics::router`, no socket: the exposition is
//! read strictly and counts the HTTPS requests and refused logins made through `app(state)`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use atrest_appliance::{AppConfig, AppState, app, metrics};
use atrest_testkit::exposition;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn send(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String, String) {
    let mut r = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        r = r.header(header::CONTENT_TYPE, "application/json");
    }
    let res = app
        .clone()
        .oneshot(r.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let b = res.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8(b.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_count_requests_and_refused_logins_and_readyz_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AppConfig::new(dir.path().join("data"));
    config.pbkdf2_iterations = 1000;
    let state: AppState = AppState::open(config).unwrap().state;
    let https = app(state.clone());
    let m = metrics::router(state.clone());

    let (s, _, _) = send(&https, "GET", "/api/encryption", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(
        &https,
        "POST",
        "/api/session",
        r#"{"username":"admin","password":"not-the-password"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    send(&https, "GET", "/no/such/page", "").await;

    let (s, ct, text) = send(&m, "GET", "/metrics", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ct, metrics::CONTENT_TYPE);
    let e = exposition::parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "plain")]),
        1.0
    );
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "locked")]),
        0.0
    );
    assert_eq!(
        e.value(
            "atrest_http_requests_total",
            &[("route", "/api/encryption"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        e.value(
            "atrest_http_requests_total",
            &[("route", "/api/session"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        e.find("atrest_http_requests_total", &[("route", "unmatched")])
            .len(),
        1,
        "{text}"
    );
    assert_eq!(e.value("atrest_login_failures_total", &[]), 1.0);
    assert_eq!(e.value("atrest_login_throttled_sources", &[]), 0.0);
    for family in [
        "atrest_conversion_done_bytes",
        "atrest_unlock_attempts_total",
        "atrest_key_check_ok",
        "atrest_certificate_expiry_seconds",
        "atrest_store_capacity_bytes",
        "atrest_kmip_operation_duration_seconds",
        "atrest_login_throttled_total",
    ] {
        assert!(e.types.contains_key(family), "{family} missing:\n{text}");
    }
    // Nothing secret or identifying in it.
    assert!(!text.contains("not-the-password"));

    let (s, _, body) = send(&m, "GET", "/healthz", "").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
    // No volume is attached to this state: not ready, in one word.
    let (s, _, body) = send(&m, "GET", "/readyz", "").await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "detached\n")
    );
    // The metrics address serves nothing else.
    let (s, _, _) = send(&m, "GET", "/api/encryption", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
