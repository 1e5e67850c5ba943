//! Access to the admin API and pages through `app(state)` with `oneshot`, no socket:
//! authentication, the browser session's CSRF token, the password change, the page's fields and
//! security headers, and the OpenAPI document against the routes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atrest_appliance::app;
use axum::body::Body;
use axum::http::{StatusCode, header};
use common::admin::{bearer, browser_login, call, fixture, json_of, mode, page_with_headers, req};
use common::{send, token};
use serde_json::json;

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
    let t = token(&app, &f.password).await;
    let (s, v) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "plain");
    let (s, _) = call(&app, &t, "DELETE", "/api/session", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&app, &t, "GET", "/api/encryption", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
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
    let t = token(&app, &f.password).await;
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
    token(&app, "a long new password").await;
}

#[tokio::test]
async fn page_shows_fields_and_disabled_encrypt() {
    let f = fixture();
    let app = app(f.state.clone());
    let (cookie, _) = browser_login(&app, &f.password).await;
    let (h, page) = page_with_headers(&app, &cookie).await;
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
    let t = token(&app, &f.password).await;
    let (s, doc) = call(&app, &t, "GET", "/api/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc, atrest_appliance::openapi::document());
    // Every documented operation is routed: with a valid token it never answers 404 or 405.
    let ops = atrest_appliance::openapi::operations();
    for (u, m) in &ops {
        let t2 = token(&app, &f.password).await;
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
