//! The page and GET /api/encryption warn when the client certificate or the CA expires within
//! 30 days, and not before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atrest_appliance::{AppConfig, AppState, app};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use tower::ServiceExt;

fn key() -> PKey<Private> {
    let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
}

fn cert(cn: &str, days: u32, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(
        &BigNum::from_u32(days + 7)
            .unwrap()
            .to_asn1_integer()
            .unwrap(),
    )
    .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap())
        .unwrap();
    match issuer {
        Some((ic, ik)) => {
            b.set_issuer_name(ic.subject_name()).unwrap();
            b.sign(ik, MessageDigest::sha256()).unwrap();
        }
        None => {
            b.set_issuer_name(&name).unwrap();
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.sign(key, MessageDigest::sha256()).unwrap();
        }
    }
    b.build()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let s = res.status();
    (
        s,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

async fn warnings_for(ca_days: u32, client_days: u32) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = AppConfig::new(dir.path().join("data"));
    c.pbkdf2_iterations = 1000;
    let opened = AppState::open(c).unwrap();
    let app = app(opened.state.clone());
    let pw = opened.generated_password.unwrap().to_string();
    let token = common::token(&app, &pw).await;
    let ca_key = key();
    let ca = cert("Test CA", ca_days, &ca_key, None);
    let client_key = key();
    let client = cert("appliance", client_days, &client_key, Some((&ca, &ca_key)));
    let settings = json!({
        "servers": ["kmip.example"],
        "ca_pem": String::from_utf8(ca.to_pem().unwrap()).unwrap(),
        "client_cert_pem": String::from_utf8(client.to_pem().unwrap()).unwrap(),
        "client_key_pem": String::from_utf8(client_key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
    });
    let auth = format!("Bearer {token}");
    let (s, b) = send(
        &app,
        Request::put("/api/encryption/kmip")
            .header(header::AUTHORIZATION, &auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(settings.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (_, b) = send(
        &app,
        Request::get("/api/encryption")
            .header(header::AUTHORIZATION, &auth)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let st: Value = serde_json::from_slice(&b).unwrap();
    let warnings = st["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect();
    // The page shows the same warnings: log in with the browser form and fetch it.
    let (_, page) = {
        let res = app
            .clone()
            .oneshot(
                Request::post("/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(format!(
                        "username=admin&password={}",
                        opened_password(dir.path())
                    )))
                    .unwrap(),
            )
            .await
            .unwrap();
        let cookie = res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        send(
            &app,
            Request::get("/storage/encryption")
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    };
    (warnings, String::from_utf8(page).unwrap())
}

fn opened_password(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("data/initial-admin-password"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn certificates_expiring_within_30_days_are_warned_about() {
    let (w, page) = warnings_for(12, 20).await;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter()
            .any(|w| w.contains("client certificate expires in")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.contains("CA certificate expires in")),
        "{w:?}"
    );
    assert!(
        w.iter().all(|w| w.contains("upload a renewed one")),
        "{w:?}"
    );
    assert!(
        page.contains("Warning: the client certificate expires in"),
        "{page}"
    );
    assert!(
        page.contains("Warning: the server CA certificate expires in"),
        "{page}"
    );

    let (w, page) = warnings_for(400, 45).await;
    assert!(w.is_empty(), "{w:?}");
    assert!(!page.contains("Warning:"), "{page}");
}
