//! A volume key that is no longer Active: revoke it, restart, and the content opens read-only
//! (readable, every write refused with 423 and a sentence, the state shown), until a Rekey to a
//! new key brings the appliance back to normal; against the bundled KMIP server (the
//! `--embedded-kms` path) and the PyKMIP peers. A Compromised key is used only after the
//! administrator confirmed it with the admin password; the key policy `on_deactivated: rekey`
//! starts the Rekey at once. The audit history is not appended while read-only and verifies
//! after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use atrest_appliance::content::{DataVolume, VolumeOptions};
use atrest_appliance::state::Content;
use atrest_appliance::workflow::State as WfState;
use atrest_appliance::{AppState, VolumeBackend, app};
use atrest_kmip::client::{Client, Timeouts};
use atrest_kmip::message::RevocationReasonCode;
use axum::http::StatusCode;
use common::{Kms, Run, audit_texts, password, raw, request, token, wait_for};
use serde_json::{Value, json};

/// One start, with the appliance named `readonly-test`.
fn start(data: &Path, kms: Kms) -> Run {
    common::start(data, kms, |v| v.appliance_name = "readonly-test".into())
}

fn key_client(state: &AppState) -> Client {
    Client::new(state.kmip().unwrap().client_config(Timeouts::default())).unwrap()
}

/// First start: Save and Test, Encrypt, then some content; returns the key id.
async fn encrypted(data: &Path, kms: Kms) -> (Run, String) {
    let run = start(data, kms);
    let app = app(run.state.clone());
    let t = token(&app, &password(data)).await;
    let key_id = run.test_and_encrypt(&app, &t).await;
    let (s, v) = request(
        &app,
        Some(&t),
        "PUT",
        "/api/config",
        Some(json!({"greeting": "before the revoke"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = raw(
        &app,
        Some(&t),
        "PUT",
        "/api/recordings/r1?session=s1",
        Some(vec![7u8; 200_000]),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    (run, key_id)
}

/// Every content write answers 423 with a sentence naming the key and Rekey; reads work.
async fn writes_refused_reads_work(app: &axum::Router, t: &str, key_id: &str) {
    let (s, v) = request(app, Some(t), "GET", "/api/config", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["settings"]["greeting"], "before the revoke", "{v}");
    let (s, b) = raw(app, Some(t), "GET", "/api/recordings/r1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, vec![7u8; 200_000]);
    let (s, v) = request(app, Some(t), "GET", "/api/audit?limit=5", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let writes: [(&str, &str, Option<Vec<u8>>); 4] = [
        (
            "PUT",
            "/api/config",
            Some(json!({"greeting": "after"}).to_string().into_bytes()),
        ),
        (
            "POST",
            "/api/audit",
            Some(
                json!({"session": "s1", "kind": "note", "text": "x"})
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "PUT",
            "/api/recordings/r2?session=s1",
            Some(vec![1u8; 1000]),
        ),
        ("DELETE", "/api/recordings/r1", None),
    ];
    for (m, uri, body) in writes {
        let (s, b) = raw(app, Some(t), m, uri, body).await;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        assert_eq!(s, StatusCode::LOCKED, "{m} {uri}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("read-only") && e.contains(key_id) && e.contains("Rekey"),
            "{m} {uri}: {e}"
        );
    }
    // Nothing was written.
    let (_, v) = request(app, Some(t), "GET", "/api/config", None).await;
    assert_eq!(v["settings"]["greeting"], "before the revoke", "{v}");
    let (s, _) = raw(app, Some(t), "GET", "/api/recordings/r2", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// After the Rekey: writable again, the audit history verifies and holds the events of the
/// read-only time, appended afterwards.
async fn back_to_normal(run: &Run, app: &axum::Router, t: &str, old: &str) -> String {
    wait_for("the Rekey finished and the content is writable", || {
        run.state.workflow().state == WfState::Encrypted && run.state.read_only().get().is_none()
    });
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["read_only"], Value::Null, "{st}");
    let new = st["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let (s, v) = request(
        app,
        Some(t),
        "PUT",
        "/api/config",
        Some(json!({"greeting": "after the rekey"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = request(app, Some(t), "GET", "/api/audit/verify", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let texts = audit_texts(&run.store());
    for want in [
        "operation=read-only",
        "opened read-only",
        "content writes are accepted again",
    ] {
        assert!(
            texts.iter().any(|x| x.contains(want) && x.contains(old)),
            "{want}: {texts:?}"
        );
    }
    new
}

/// Revoke (Deactivate) the volume key, restart: readable, writes refused, Rekey by hand brings
/// the appliance back to normal; a restart after that unlocks normally.
async fn deactivated_then_rekey(kms: Kms) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, k1) = encrypted(&data, kms).await;
    key_client(&run.state)
        .revoke(&k1, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    run.stop();

    let run = start(&data, kms);
    run.wait_encrypted("unlocked read-only");
    let app = app(run.state.clone());
    let t = token(&app, &password(&data)).await;
    let (_, st) = request(&app, Some(&t), "GET", "/api/encryption", None).await;
    assert_eq!(st["state"], "encrypted", "{st}");
    assert_eq!(st["read_only"]["key_id"], k1.as_str(), "{st}");
    assert_eq!(st["read_only"]["key_state"], "Deactivated", "{st}");
    assert_eq!(st["read_only"]["rekey"], "wait", "{st}");
    // The page says so, beside the Rekey button.
    let (s, page) = raw(&app, Some(&t), "GET", "/storage/encryption", None).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("id=\"read-only\"") && page.contains("id=\"rekey\""),
        "{page}"
    );
    writes_refused_reads_work(&app, &t, &k1).await;
    // Monitoring sees it: /readyz 503 "read-only", the gauge at 1.
    let metrics = atrest_appliance::metrics::router(run.state.clone());
    let (s, b) = raw(&metrics, None, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&b).contains("read-only"));
    let (_, b) = raw(&metrics, None, "GET", "/metrics", None).await;
    assert!(String::from_utf8_lossy(&b).contains("\natrest_content_read_only 1\n"));

    let (s, v) = request(&app, Some(&t), "POST", "/api/encryption/rekey", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let k2 = back_to_normal(&run, &app, &t, &k1).await;
    let (s, _) = raw(&metrics, None, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = raw(&metrics, None, "GET", "/metrics", None).await;
    assert!(String::from_utf8_lossy(&b).contains("\natrest_content_read_only 0\n"));
    run.stop();

    let run = start(&data, kms);
    run.wait_encrypted("unlocked");
    assert!(run.state.read_only().get().is_none());
    assert_eq!(run.state.workflow().key_id.as_deref(), Some(k2.as_str()));
    let mut c = key_client(&run.state);
    if matches!(kms, Kms::Peer(_)) {
        // Leave nothing Active on the shared peer.
        for k in [&k1, &k2] {
            let _ = c.revoke(k, RevocationReasonCode::CESSATION_OF_OPERATION, None);
            let _ = c.destroy(k);
        }
    }
    run.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_key_opens_read_only_until_rekey_bundled_kms() {
    deactivated_then_rekey(Kms::Bundled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_key_opens_read_only_until_rekey_pykmip_ec() {
    if atrest_testkit::ec_peer().is_none() {
        return;
    }
    deactivated_then_rekey(Kms::Peer("ATREST_PYKMIP_EC_ENV")).await;
}

/// With `on_deactivated: rekey` the Rekey starts at the unlock that found the key Deactivated,
/// and the appliance comes back to normal by itself (RSA-keyed PyKMIP peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_rekeys_a_deactivated_key_at_once_pykmip_rsa() {
    if atrest_testkit::peer("ATREST_PYKMIP_RSA_ENV").is_none() {
        return;
    }
    let kms = Kms::Peer("ATREST_PYKMIP_RSA_ENV");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, k1) = encrypted(&data, kms).await;
    let app = app(run.state.clone());
    let t = token(&app, &password(&data)).await;
    let (s, v) = request(
        &app,
        Some(&t),
        "PUT",
        "/api/encryption/policy",
        Some(json!({"old_keys": "keep", "on_deactivated": "rekey"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["policy"]["on_deactivated"], "rekey", "{v}");
    key_client(&run.state)
        .revoke(&k1, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    drop(app);
    run.stop();

    let run = start(&data, kms);
    let app = atrest_appliance::app(run.state.clone());
    let t = token(&app, &password(&data)).await;
    let k2 = back_to_normal(&run, &app, &t, &k1).await;
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|x| x.contains("operation=rekey") && x.contains("on_deactivated: rekey")),
        "{texts:?}"
    );
    let (_, v) = request(&app, Some(&t), "GET", "/api/config", None).await;
    assert_eq!(v["settings"]["greeting"], "after the rekey", "{v}");
    let mut c = key_client(&run.state);
    for k in [&k1, &k2] {
        let _ = c.revoke(k, RevocationReasonCode::CESSATION_OF_OPERATION, None);
        let _ = c.destroy(k);
    }
    run.stop();
}

/// A Compromised key keeps the volume locked until the administrator confirms with the admin
/// password; then read-only, and the policy set to `rekey` starts the Rekey at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_key_opens_read_only_only_after_the_admin_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, k1) = encrypted(&data, Kms::Bundled).await;
    key_client(&run.state)
        .revoke(&k1, RevocationReasonCode::KEY_COMPROMISE, None)
        .unwrap();
    run.stop();

    let run = start(&data, Kms::Bundled);
    wait_for("the unlock refused the Compromised key", || {
        run.state
            .workflow()
            .lock_reasons
            .iter()
            .any(|r| r.class == "compromised")
    });
    let app = app(run.state.clone());
    let t = token(&app, &password(&data)).await;
    let (_, st) = request(&app, Some(&t), "GET", "/api/encryption", None).await;
    assert_eq!(st["state"], "locked", "{st}");
    assert_eq!(st["compromised_key"]["key_id"], k1.as_str(), "{st}");
    assert_eq!(st["read_only"], Value::Null, "{st}");
    let (s, _) = request(&app, Some(&t), "GET", "/api/config", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, page) = raw(&app, Some(&t), "GET", "/storage/encryption", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page).contains("id=\"compromised-go\""));

    // No password, a wrong one: refused, still locked.
    let (s, v) = request(
        &app,
        Some(&t),
        "POST",
        "/api/encryption/read-only/confirm",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = request(
        &app,
        Some(&t),
        "POST",
        "/api/encryption/read-only/confirm",
        Some(json!({"password": "not-the-password"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(run.state.workflow().state, WfState::Locked);

    let (s, v) = request(
        &app,
        Some(&t),
        "POST",
        "/api/encryption/read-only/confirm",
        Some(json!({"password": password(&data)})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    run.wait_encrypted("unlocked read-only");
    let (_, st) = request(&app, Some(&t), "GET", "/api/encryption", None).await;
    assert_eq!(st["read_only"]["key_state"], "Compromised", "{st}");
    assert_eq!(st["compromised_key"], Value::Null, "{st}");
    writes_refused_reads_work(&app, &t, &k1).await;

    // Setting the policy to rekey starts the Rekey that waited.
    let (s, v) = request(
        &app,
        Some(&t),
        "PUT",
        "/api/encryption/policy",
        Some(json!({"old_keys": "keep", "on_deactivated": "rekey"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    back_to_normal(&run, &app, &t, &k1).await;
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|x| x.contains("operation=confirm-compromised") && x.contains(&k1)),
        "{texts:?}"
    );
    run.stop();
}

/// While unlocked, the key check that finds the key Deactivated makes the content read-only at
/// once, under the key-check policy `lock` too (a Deactivated key may still decrypt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_check_makes_the_content_read_only_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, k1) = encrypted(&data, Kms::Bundled).await;
    run.stop();
    let mut run = start(&data, Kms::Bundled);
    // Restarted with the `lock` key-check policy.
    run.volume.shutdown();
    let mut v = VolumeOptions::new(&data);
    v.size = 40 << 20;
    v.digest_iterations = 1000;
    v.timeouts = Timeouts::uniform(Duration::from_secs(5));
    v.key_check_interval = Duration::from_secs(3600);
    v.key_policy = atrest_appliance::content::KeyPolicy::Lock;
    run.volume = DataVolume::attach(&run.state, v).unwrap();
    run.wait_encrypted("unlocked");
    assert!(run.state.read_only().get().is_none());
    key_client(&run.state)
        .revoke(&k1, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    run.volume.check_key_state();
    assert_eq!(run.state.workflow().state, WfState::Encrypted);
    let ro = run.state.read_only().get().expect("read-only");
    assert_eq!(
        (ro.key_id.as_str(), ro.key_state.as_str()),
        (k1.as_str(), "Deactivated")
    );
    let app = app(run.state.clone());
    let t = token(&app, &password(&data)).await;
    writes_refused_reads_work(&app, &t, &k1).await;
    let st = atrest_appliance::api::status_json(&run.state);
    assert!(
        st["volume"]["alerts"][0]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{st}"
    );
    run.stop();
}

/// A Destroyed key is gone: the volume stays locked and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_key_keeps_the_volume_locked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, k1) = encrypted(&data, Kms::Bundled).await;
    let mut c = key_client(&run.state);
    c.revoke(&k1, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    c.destroy(&k1).unwrap();
    run.stop();
    let run = start(&data, Kms::Bundled);
    run.wait_unlock_failed();
    assert_eq!(run.state.workflow().state, WfState::Locked);
    assert!(run.state.read_only().get().is_none());
    assert!(run.state.read_only().waiting().is_none());
    assert!(matches!(run.state.content(), Content::Locked(_)));
    run.stop();
}
