//! `atrest serve --metrics-listen` as a process: /healthz, /readyz and a strictly checked
//! /metrics through a plain start, an Encrypt with the bundled KMIP server (values match the
//! API), a restart without the key server (/readyz 503 `locked`, the failure class per server)
//! and the unlock once the key server is back (/readyz 200); and both servers, `atrest serve`
//! and `atrest kms serve --metrics-listen`, scraped during a conversion, their numbers matching
//! each other and the API. `promtool check metrics` reads every scrape (installed by
//! scripts/test; required under ATREST_REQUIRE_PEERS=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;

use atrest_testkit::Peer;
use atrest_testkit::appliance::{Appliance, Launch, Stderr};
use atrest_testkit::exposition::{self, get};
use atrest_testkit::https::wait_until;
use atrest_testkit::process::{kms_port, kms_serve_command, metrics_addr, spawn_until};
use serde_json::json;

fn start(data: &Path, extra: &[&str]) -> Appliance {
    Launch::new(env!("CARGO_BIN_EXE_atrest"), data)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--volume-size", "32M", "--convert-chunk", "1M"])
        .args(["--unlock-retry-max", "1"])
        .args(extra)
        .stderr(Stderr::Null)
        .start()
}

#[test]
fn metrics_and_readiness_through_encrypt_restart_and_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("appliance");
    // Paced (16 MiB at 2 MiB/s), so that the checks below see the conversion under way on a
    // loaded machine too.
    let app = start(&data, &["--embedded-kms", "--convert-rate", "2M"]);
    assert_eq!(get(&app.metrics(), "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&app.metrics(), "/readyz"), (200, "ready\n".into()));
    let e = app.scrape();
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "plain")]),
        1.0
    );
    assert!(e.value("atrest_store_capacity_bytes", &[]) > 0.0);

    let t = app.login();
    let r = app.api("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    app.api("POST", "/api/encryption/encrypt", Some(&t), None);
    // During the conversion: the numbers are the API's.
    wait_until("progress is reported", || {
        let e = app.scrape();
        e.value("atrest_conversion_done_bytes", &[]) > 0.0
    });
    let e = app.scrape();
    let st = app.api("GET", "/api/encryption", Some(&t), None);
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "encrypting")]),
        1.0
    );
    assert_eq!(
        e.value("atrest_conversion_total_bytes", &[]),
        st["progress"]["total_bytes"].as_u64().unwrap() as f64
    );
    assert!(
        e.value("atrest_conversion_done_bytes", &[])
            <= e.value("atrest_conversion_total_bytes", &[])
    );
    let server = st["servers"][0].as_str().unwrap().to_owned();
    for op in ["Create", "Activate", "Get"] {
        assert!(
            e.value(
                "atrest_kmip_operation_duration_seconds_count",
                &[("server", &server), ("operation", op)]
            ) >= 1.0,
            "{op}"
        );
    }
    assert!(
        e.find(
            "atrest_certificate_expiry_seconds",
            &[("certificate", "server")]
        )
        .len()
            == 1
    );
    assert!(
        e.value(
            "atrest_certificate_expiry_seconds",
            &[("certificate", "ca")]
        ) > 0.0
    );
    assert!(
        e.value(
            "atrest_http_requests_total",
            &[("route", "/api/encryption/encrypt"), ("status", "202")]
        ) == 1.0
    );
    assert_eq!(get(&app.metrics(), "/readyz").0, 200);
    wait_until("encrypted", || {
        app.api("GET", "/api/encryption", Some(&t), None)["state"] == "encrypted"
    });
    drop(app);

    // Without the key server: locked, not ready, and why per server.
    let app = start(&data, &[]);
    assert_eq!(get(&app.metrics(), "/readyz"), (503, "locked\n".into()));
    wait_until("an unlock attempt failed", || {
        !app.scrape().find("atrest_unlock_failure", &[]).is_empty()
    });
    let e = app.scrape();
    assert!(e.value("atrest_unlock_attempts_total", &[]) >= 1.0);
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "locked")]),
        1.0
    );
    let failures = e.find("atrest_unlock_failure", &[]);
    assert!(
        failures
            .iter()
            .any(|s| s.label("server") == Some(&server) && s.label("class") == Some("tcp-refused")),
        "{failures:?}"
    );
    assert_eq!(get(&app.metrics(), "/readyz").0, 503);

    // The key server comes back on its port: unlocked, ready.
    let (_kms, _) = spawn_until(
        kms_serve_command(env!("CARGO_BIN_EXE_atrest"), &data.join("kms"), &server)
            .stderr(Stdio::null()),
        kms_port,
    );
    wait_until("ready after the unlock", || {
        get(&app.metrics(), "/readyz") == (200, "ready\n".into())
    });
    let e = app.scrape();
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "encrypted")]),
        1.0
    );
    assert!(e.find("atrest_unlock_failure", &[]).is_empty());
    assert!(e.value("atrest_store_used_bytes", &[]) > 0.0);
}

/// `atrest serve` against `atrest kms serve --metrics-listen` on its own: both scraped during
/// the Encrypt, both pass promtool, and the numbers agree: the key server's Create and
/// Destroy counts are the appliance's KMIP operation counts, and it holds one Active key, the
/// one GET /api/encryption names.
#[test]
fn both_servers_scraped_during_a_conversion_agree_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let kms_dir = dir.path().join("kms");
    let (kms, _) = spawn_until(
        kms_serve_command(env!("CARGO_BIN_EXE_atrest"), &kms_dir, "127.0.0.1:0")
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stderr(Stdio::null()),
        kms_port,
    );
    let kms_metrics = metrics_addr(&kms.output);
    assert_eq!(get(&kms_metrics, "/readyz"), (200, "ready\n".into()));
    let kms_scrape = || exposition::scrape(&kms_metrics);
    let env = Peer::from_file(&kms_dir.join("client.env"));
    let read = |k: &str| std::fs::read_to_string(env.path(k)).unwrap();
    let server = format!("{}:{}", env.v("KMIP_HOST"), env.v("KMIP_PORT"));

    let data = dir.path().join("appliance");
    let app = start(&data, &["--convert-rate", "2M"]);
    let t = app.login();
    app.api(
        "PUT",
        "/api/encryption/kmip",
        Some(&t),
        Some(&json!({
            "servers": [server],
            "ca_pem": read("KMIP_CA"),
            "client_cert_pem": read("KMIP_CLIENT_CERT"),
            "client_key_pem": read("KMIP_CLIENT_KEY"),
            "username": env.v("KMIP_USERNAME"),
            "password": env.v("KMIP_PASSWORD"),
        })),
    );
    let r = app.api("POST", "/api/encryption/test", Some(&t), None);
    assert_eq!(r["ok"], true, "{r}");
    app.api("POST", "/api/encryption/encrypt", Some(&t), None);
    wait_until("progress is reported", || {
        app.scrape().value("atrest_conversion_done_bytes", &[]) > 0.0
    });
    let e = app.scrape();
    let k = kms_scrape();
    let st = app.api("GET", "/api/encryption", Some(&t), None);
    assert_eq!(st["state"], "encrypting", "{st}");
    assert_eq!(
        e.value("atrest_encryption_state", &[("state", "encrypting")]),
        1.0
    );
    assert_eq!(
        e.value("atrest_conversion_total_bytes", &[]),
        st["progress"]["total_bytes"].as_u64().unwrap() as f64
    );
    let server = st["servers"][0].as_str().unwrap().to_owned();
    for op in ["Create", "Destroy", "Activate"] {
        let sent = e.value(
            "atrest_kmip_operation_duration_seconds_count",
            &[("server", &server), ("operation", op)],
        );
        let failed = e
            .find(
                "atrest_kmip_operation_errors_total",
                &[("server", &server), ("operation", op)],
            )
            .first()
            .map_or(0.0, |s| s.value);
        let answered = k
            .find(
                "atrest_kms_operations_total",
                &[("operation", op), ("result", "success")],
            )
            .first()
            .map_or(0.0, |s| s.value);
        assert!(sent >= 1.0, "{op}");
        assert_eq!(sent - failed, answered, "{op}");
    }
    // Save and Test's key is destroyed again; the volume key is the one Active key.
    assert!(st["key_id"].as_str().is_some_and(|k| !k.is_empty()), "{st}");
    assert_eq!(
        k.value(
            "atrest_kms_objects",
            &[("type", "Symmetric Key"), ("state", "Active")]
        ),
        1.0
    );
    assert_eq!(
        k.value(
            "atrest_kms_objects",
            &[("type", "Symmetric Key"), ("state", "Destroyed")]
        ),
        1.0
    );
    assert!(k.value("atrest_kms_connections_total", &[("result", "accepted")]) >= 1.0);
    wait_until("encrypted", || {
        app.api("GET", "/api/encryption", Some(&t), None)["state"] == "encrypted"
    });
}
