//! The life of the content volume's keys, in process: old keys retired by policy on the PyKMIP
//! peer, scheduled rotation with the scheduler's clock moved by the test, and a move to another
//! KMIP server that survives a restart in the middle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use atrest_appliance::app;
use atrest_appliance::content::{Clock, RotationTick, VolumeOptions};
use atrest_appliance::workflow::{Backoff, State as WfState};
use atrest_kmip::message::RevocationReasonCode;
use atrest_store::Store;
use axum::http::StatusCode;
use common::{Kms, audit_texts, key_client, post, post_json, send_json, start, token, wait_for};
use serde_json::json;

/// The state of `uid` on the KMIP server of `data`'s settings; None when the server no longer
/// has it.
fn key_state(data: &Path, uid: &str) -> Option<String> {
    key_client(data)
        .get_attributes(uid, &["State"])
        .ok()
        .and_then(|a| a.state())
        .map(|s| s.to_string())
}

/// Retiring old keys against the PyKMIP peer: Rekey under policy `revoke` leaves the old key
/// Deactivated and the volume unlocking with the new one; under `destroy` the old key is
/// Destroyed; Destroy by hand takes the admin password and only old keys are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_keys_are_retired_by_policy_on_pykmip() {
    let Some(peer) = std::env::var_os("ATREST_PYKMIP_EC_ENV") else {
        atrest_testkit::ec_peer();
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = start(&data, Kms::NotStarted, |_| {});
    let u = atrest_appliance::kmip_config::update_from_env_file(Path::new(&peer)).unwrap();
    let settings = atrest_appliance::kmip_config::KmipSettings::apply(None, u).unwrap();
    run.state.set_kmip(settings).unwrap();
    let app = app(run.state.clone());
    let pw = run.generated_password.clone().unwrap();
    let t = token(&app, &pw).await;
    let k1 = run.test_and_encrypt(&app, &t).await;

    // Policy checks: a rotation under 60 s is refused.
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/policy",
        json!({"old_keys": "revoke", "rotation_interval_seconds": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at least 60"), "{v}");
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/policy",
        json!({"old_keys": "revoke", "destroy_after_days": 0, "rotation_interval_seconds": null}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["policy"]["old_keys"], "revoke");

    let (s, v) = post(&app, &t, "/api/encryption/rekey").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let k2 = v["key_id"].as_str().unwrap().to_owned();
    wait_for("the old key is retired", || {
        let st = atrest_appliance::api::status_json(&run.state);
        st["old_keys"].as_array().is_some_and(|a| {
            a.iter()
                .any(|k| k["id"] == k1.as_str() && k["state"] == "Deactivated")
        })
    });
    assert_eq!(key_state(&data, &k1).as_deref(), Some("Deactivated"));
    assert_eq!(key_state(&data, &k2).as_deref(), Some("Active"));
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=retire") && t.contains(&k1)),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=revoke") && t.contains(&k1) && t.contains("result=ok")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("key policy changed")),
        "{texts:?}"
    );

    // The key in use, or any id that is not an old key, cannot be destroyed here; a wrong
    // password is refused.
    let (s, v) = post_json(
        &app,
        &t,
        &format!("/api/encryption/old-keys/{k2}/destroy"),
        json!({"password": pw}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = post_json(
        &app,
        &t,
        &format!("/api/encryption/old-keys/{k1}/destroy"),
        json!({"password": "not the password"}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(key_state(&data, &k1).as_deref(), Some("Deactivated"));
    run.stop();

    // The volume unlocks with the new key; the record survives the restart.
    let run = start(&data, Kms::NotStarted, |_| {});
    run.wait_encrypted("unlocked with the new key");
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["key_id"], k2.as_str());
    assert_eq!(st["policy"]["old_keys"], "revoke");
    let app = atrest_appliance::app(run.state.clone());
    let t = token(&app, &pw).await;

    // Policy destroy: the next Rekey destroys the retired key (after revoking it).
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/policy",
        json!({"old_keys": "keep", "destroy_after_days": 0, "rotation_interval_seconds": null}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = post(&app, &t, "/api/encryption/rekey").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let k3 = v["key_id"].as_str().unwrap().to_owned();
    wait_for("k2 is retired", || {
        let st = atrest_appliance::api::status_json(&run.state);
        st["old_keys"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k["id"] == k2.as_str()))
            && st["state"] == "encrypted"
    });
    // keep: still Active, and the page warns.
    assert_eq!(key_state(&data, &k2).as_deref(), Some("Active"));
    let st = atrest_appliance::api::status_json(&run.state);
    assert!(
        st["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&k2)),
        "{st}"
    );
    // Destroy by hand, with the password: revoked first, then destroyed.
    let (s, v) = post_json(
        &app,
        &t,
        &format!("/api/encryption/old-keys/{k2}/destroy"),
        json!({"password": pw}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(key_state(&data, &k2).as_deref(), Some("Active"));
    assert_ne!(key_state(&data, &k2).as_deref(), Some("Deactivated"));
    // Policy destroy applies at once to the Deactivated k1.
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/policy",
        json!({"old_keys": "destroy", "destroy_after_days": 0, "rotation_interval_seconds": null}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let states: Vec<(String, String)> = v["old_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(k1.clone(), "Destroyed".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(k2.clone(), "Destroyed".into())),
        "{states:?}"
    );
    for k in [&k1, &k2] {
        let s = key_state(&data, k);
        assert!(
            s.is_none() || s.as_deref() == Some("Destroyed"),
            "{k}: {s:?}"
        );
    }
    assert_eq!(key_state(&data, &k3).as_deref(), Some("Active"));
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=destroy") && t.contains(&k1) && t.contains("result=ok")),
        "{texts:?}"
    );
    run.stop();
    // Leave nothing Active on the shared peer.
    let mut c = key_client(&data);
    let _ = c.revoke(&k3, RevocationReasonCode::CESSATION_OF_OPERATION, None);
    let _ = c.destroy(&k3);
}

fn rotations(store: &Store, result: &str) -> usize {
    audit_texts(store)
        .iter()
        .filter(|t| t.contains("operation=rotate") && t.contains(&format!("result={result}")))
        .count()
}

/// Scheduled rotation with the scheduler's clock moved by the test (its own looks are an hour
/// apart, so only the test's ticks count): nothing while the key is young, nothing while another
/// conversion runs, one Rekey when due and only one, failures retried after the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_fires_once_when_due_and_never_during_a_conversion() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let mut run = start(dir.path(), Kms::Bundled, move |v| {
        // About 2 s per conversion of the 40 MiB volume: long enough to look during one.
        v.max_rate = Some(16 << 20);
        v.rotation_check_interval = Duration::from_secs(3600);
        v.backoff = Backoff {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(60),
        };
        v.clock = Clock::new(move || {
            time::OffsetDateTime::now_utc() + time::Duration::seconds(o.load(Ordering::SeqCst))
        });
    });
    let app = app(run.state.clone());
    let t = token(&app, run.generated_password.as_deref().unwrap()).await;
    let (s, v) = post(&app, &t, "/api/encryption/test").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = post(&app, &t, "/api/encryption/encrypt").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let first = v["key_id"].as_str().unwrap().to_owned();
    assert!(matches!(
        run.volume.rotation_tick(),
        RotationTick::Off | RotationTick::Busy(_)
    ));
    run.wait_encrypted("encrypted");
    assert_eq!(run.volume.rotation_tick(), RotationTick::Off);
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/policy",
        json!({"old_keys": "keep", "rotation_interval_seconds": 60}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rot = &v["volume"]["rotation"];
    assert_eq!(rot["interval_seconds"], 60, "{v}");
    assert!(rot["key_age_seconds"].is_u64(), "{v}");
    assert!(rot["next_rotation_at"].is_string(), "{v}");
    assert!(rot["key_created"].is_string(), "{v}");
    // A young key is left alone.
    assert_eq!(run.volume.rotation_tick(), RotationTick::NotDue);

    // Due, but the administrator's Rekey runs: the scheduler waits.
    let (s, v) = post(&app, &t, "/api/encryption/rekey").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let manual = v["key_id"].as_str().unwrap().to_owned();
    offset.store(3600, Ordering::SeqCst);
    assert!(
        matches!(run.volume.rotation_tick(), RotationTick::Busy(_)),
        "{:?}",
        run.state.workflow()
    );
    run.wait_encrypted("the administrator's Rekey finished");
    assert_eq!(
        run.state.workflow().key_id.as_deref(),
        Some(manual.as_str())
    );
    let store = run.store();
    assert_eq!(rotations(&store, "started"), 0);

    // Due now (by the moved clock): one Rekey, and a second look right after starts none.
    assert_eq!(run.volume.rotation_tick(), RotationTick::Started);
    assert!(matches!(
        run.volume.rotation_tick(),
        RotationTick::Busy(_) | RotationTick::NotDue
    ));
    wait_for("the scheduled Rekey finished", || {
        let w = run.state.workflow();
        w.state == WfState::Encrypted && w.key_id.as_deref() != Some(manual.as_str())
    });
    let rotated = run.state.workflow().key_id.unwrap();
    assert_ne!(rotated, first);
    assert_eq!(run.volume.rotation_tick(), RotationTick::NotDue);
    assert_eq!(run.volume.rotation_tick(), RotationTick::NotDue);
    assert_eq!(
        run.state.workflow().key_id.as_deref(),
        Some(rotated.as_str())
    );
    assert_eq!(rotations(&store, "started"), 1);
    assert_eq!(rotations(&store, "failed"), 0);
    // The conversion reports Finished before it records the key it retired.
    wait_for("the rotated key is recorded as an old key", || {
        run.state.keylife().get().old_keys.len() == 2
    });
    let old: Vec<String> = run
        .state
        .keylife()
        .get()
        .old_keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(old, vec![first.clone(), manual.clone()]);

    // The KMIP server is away when the next rotation is due: failed, audited, retried only
    // after the backoff.
    run.kms.take().unwrap().stop();
    offset.store(3600 * 3, Ordering::SeqCst);
    let r = run.volume.rotation_tick();
    assert!(
        matches!(&r, RotationTick::Failed(m) if m.contains("tried again")),
        "{r:?}"
    );
    assert_eq!(run.volume.rotation_tick(), RotationTick::Waiting);
    let v = atrest_appliance::api::status_json(&run.state);
    assert!(
        v["volume"]["rotation"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("scheduled rotation")),
        "{v}"
    );
    offset.store(3600 * 3 + 31, Ordering::SeqCst);
    assert!(matches!(
        run.volume.rotation_tick(),
        RotationTick::Failed(_)
    ));
    assert_eq!(rotations(&store, "failed"), 2);
    assert_eq!(run.state.workflow().state, WfState::Encrypted);
    assert_eq!(
        run.state.workflow().key_id.as_deref(),
        Some(rotated.as_str())
    );
    run.stop();
}

/// Move to these settings, from the EC PyKMIP peer to the RSA one, with a restart in the middle
/// (the old key comes from the old server through the previous settings, the new one from the
/// new server), the old key revoked on the old server by policy, then a restart that needs only
/// the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_another_kmip_server_survives_a_restart_in_the_middle() {
    let (Some(ec), Some(rsa)) = (
        std::env::var_os("ATREST_PYKMIP_EC_ENV"),
        std::env::var_os("ATREST_PYKMIP_RSA_ENV"),
    ) else {
        atrest_testkit::ec_peer();
        return;
    };
    let settings_of = |env: &std::ffi::OsString| {
        let u = atrest_appliance::kmip_config::update_from_env_file(Path::new(env)).unwrap();
        atrest_appliance::kmip_config::KmipSettings::apply(None, u).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = |v: &mut VolumeOptions| v.max_rate = Some(8 << 20);
    let run = start(&data, Kms::NotStarted, slow);
    run.state.set_kmip(settings_of(&ec)).unwrap();
    let app = app(run.state.clone());
    let pw = run.generated_password.clone().unwrap();
    let t = token(&app, &pw).await;
    let (s, v) = post(&app, &t, "/api/encryption/test").await;
    assert_eq!(v["ok"], true, "{s} {v}");
    // Nothing to move to yet: the settings hold nothing or the key already.
    let (s, v) = post(&app, &t, "/api/encryption/move").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = post(&app, &t, "/api/encryption/encrypt").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let k1 = v["key_id"].as_str().unwrap().to_owned();
    run.wait_encrypted("encrypted");
    let (s, v) = post(&app, &t, "/api/encryption/move").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already"), "{v}");
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/policy",
        json!({"old_keys": "revoke"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Save and Test the new server's settings: the old ones are kept for the old key.
    run.state.set_kmip(settings_of(&rsa)).unwrap();
    assert!(data.join("kmip-previous").exists());
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["move"]["allowed"], false, "{st}");
    let (s, v) = post(&app, &t, "/api/encryption/test").await;
    assert_eq!(v["ok"], true, "{s} {v}");
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["move"]["allowed"], true, "{st}");
    // Every byte (not only the space in use, which is nearly none here): long enough to restart
    // in the middle, and the choice survives the restart.
    let (s, v) = post_json(&app, &t, "/api/encryption/move", json!({"full": true})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // (Ids are per server: PyKMIP's may be equal on both.)
    let k2 = v["key_id"].as_str().unwrap().to_owned();
    let ec_server = settings_of(&ec).servers[0].to_string();
    wait_for("the move is under way", || {
        run.state
            .workflow()
            .progress
            .is_some_and(|p| p.done_bytes > 0)
    });
    assert_eq!(run.state.workflow().state, WfState::Rekeying);
    run.stop();

    // Restart in the middle: both keys, each from its own server; the move resumes.
    let run = start(&data, Kms::NotStarted, |_| {});
    wait_for("the move finished", || {
        let w = run.state.workflow();
        w.state == WfState::Encrypted && w.key_id.as_deref() == Some(k2.as_str())
    });
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&format!("server={ec_server} operation=get"))
                && t.contains(&format!("key_id={k1} "))
                && t.contains("result=ok")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=move") && t.contains("result=started")),
        "{texts:?}"
    );
    wait_for("the old key is revoked on the old server", || {
        run.state
            .keylife()
            .get()
            .old_keys
            .iter()
            .any(|k| k.id == k1 && k.state == "Deactivated")
    });
    wait_for("the previous settings are forgotten", || {
        !data.join("kmip-previous").exists()
    });
    run.stop();

    // The old server is out of the picture: its settings are gone and the header names only
    // the new server; to be sure nothing reaches it, any previous settings point at a closed
    // port.
    let mut gone = settings_of(&ec);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    gone.servers = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    gone.save(&atrest_appliance::state::previous_dir(&data))
        .unwrap();
    let run = start(&data, Kms::NotStarted, |_| {});
    run.wait_encrypted("unlocked from the new server");
    assert_eq!(run.state.workflow().key_id.as_deref(), Some(k2.as_str()));
    run.stop();
}
