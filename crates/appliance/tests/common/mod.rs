//! What the in-process appliance tests share: requests to the router, login, waiting, the
//! audit history's texts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

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
    let res = app.clone().oneshot(req.unwrap()).await.unwrap();
    let s = res.status();
    (
        s,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
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

/// Logs in as the admin: the API token.
pub async fn token(app: &axum::Router, password: &str) -> String {
    let (_, v) = request(
        app,
        None,
        "POST",
        "/api/session",
        Some(json!({"username": "admin", "password": password})),
    )
    .await;
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
