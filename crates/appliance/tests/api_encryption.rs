//! Encryption through the admin API and pages with `app(state)` and `oneshot`, no socket: the
//! KMIP settings (good and bad uploads, kept secret), the step-by-step test against an
//! in-process bundled KMIP server and an unreachable host, the Encrypt gate, the bundled
//! server's settings filled in, and Resume of a failed conversion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use atrest_appliance::state::EventSink;
use atrest_appliance::workflow::{Event, Request as WfRequest, State as WfState};
use atrest_appliance::{VolumeBackend, app};
use atrest_kmip::client::ClientConfig;
use atrest_testkit::process::free_port;
use axum::body::Body;
use axum::http::{StatusCode, header};
use common::admin::{Pki, bearer, browser_login, call, fixture, json_of, mode, page, req};
use common::{send, token};
use serde_json::{Value, json};

#[tokio::test]
async fn kmip_settings_validated_and_kept_secret() {
    let f = fixture();
    let pki = Pki::new();
    let app = app(f.state.clone());
    let t = token(&app, &f.password).await;
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
    let t = token(&app, &f.password).await;
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
        Some(pki.settings(free_port())),
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
    let page = page(&app, &cookie).await;
    assert!(page.contains(r#"<td id="state">encrypting</td>"#));
    assert!(page.contains("key-1"));
    assert!(page.contains("Save and Test Changes"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
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
    let t = token(&app, &f.password).await;
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
    let page = page(&app, &cookie).await;
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
    let p = page(&app, &cookie).await;
    assert!(
        p.contains("25.0% — 3.0 MiB of 12.0 MiB, 2.0 MiB/s, about 5 s left"),
        "{p}"
    );
    assert!(!p.contains("id=\"resume\""));
    let t = token(&app, &f.password).await;
    let (s, v) = call(&app, &t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("25% done"), "{v}");

    f.state.apply(Event::Failed(
        "the conversion stopped: disk full; it resumes at the next start".into(),
    ));
    let p = page(&app, &cookie).await;
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
