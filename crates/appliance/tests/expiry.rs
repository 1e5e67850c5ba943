//! The page and GET /api/encryption warn when the client certificate or the CA expires within
//! 30 days, and not before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atrest_appliance::app;
use axum::http::StatusCode;
use common::admin::{browser_login, call, fixture, page};
use common::token;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509, X509NameBuilder};
use serde_json::json;

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

async fn warnings_for(ca_days: u32, client_days: u32) -> (Vec<String>, String) {
    let f = fixture();
    let app = app(f.state.clone());
    let token = token(&app, &f.password).await;
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
    let (s, v) = call(&app, &token, "PUT", "/api/encryption/kmip", Some(settings)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, st) = call(&app, &token, "GET", "/api/encryption", None).await;
    let warnings = st["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect();
    // The page shows the same warnings: log in with the browser form and fetch it.
    let (cookie, _) = browser_login(&app, &f.password).await;
    (warnings, page(&app, &cookie).await)
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
