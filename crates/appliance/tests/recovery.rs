//! The recovery key in the appliance, in process with the bundled KMIP server: a Rekey started by
//! the scheduled rotation (nobody there to be shown a new key) removes the recovery key in its
//! start commit, audits it and says so; the administrator's Rekey renews it and answers it once;
//! a wrong recovery key on a locked appliance does not stop it retrying the KMIP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use atrest_appliance::content::{Clock, RotationTick};
use atrest_appliance::embedded;
use atrest_appliance::state::Content;
use atrest_appliance::workflow::{Backoff, State as WfState};
use atrest_appliance::{VolumeBackend, app};
use axum::http::StatusCode;
use common::{Kms, Run, audit_texts, request, wait_for};
use serde_json::json;

/// One start: the recovery tests' clock and retry backoff, the rotation looked at hourly (only
/// the test's ticks count).
fn start_with(data: &Path, clock: Clock, kms: Kms, backoff: Duration) -> Run {
    common::start(data, kms, |v| {
        v.backoff = Backoff {
            initial: backoff,
            max: backoff * 2,
        };
        v.rotation_check_interval = Duration::from_secs(3600);
        v.clock = clock;
    })
}

fn start(data: &Path, clock: Clock) -> Run {
    start_with(data, clock, Kms::Bundled, Duration::from_secs(30))
}

fn run_audit_texts(run: &Run) -> Vec<String> {
    let Content::Ready(store) = run.state.content() else {
        panic!("the store is not ready");
    };
    audit_texts(&store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_removes_the_recovery_key_and_the_admins_rekey_renews_it() {
    let dir = tempfile::tempdir().unwrap();
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let run = start(
        dir.path(),
        Clock::new(move || {
            time::OffsetDateTime::now_utc() + time::Duration::seconds(o.load(Ordering::SeqCst))
        }),
    );
    let app = app(run.state.clone());
    let (s, v) = request(
        &app,
        None,
        "POST",
        "/api/session",
        Some(json!({"username": "admin", "password": run.password()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = v["token"].as_str().unwrap().to_owned();
    let t = Some(t.as_str());
    // Not while plain.
    let (s, v) = request(
        &app,
        t,
        "POST",
        "/api/encryption/recovery-key",
        Some(json!({"password": run.password()})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap().contains("plain"), "{v}");
    let (s, v) = request(&app, t, "POST", "/api/encryption/test", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = request(&app, t, "POST", "/api/encryption/encrypt", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    run.wait_encrypted("encrypted");

    // The administrator's Rekey renews it: a new key in the answer, audited.
    let (s, v) = request(
        &app,
        t,
        "POST",
        "/api/encryption/recovery-key",
        Some(json!({"password": run.password()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r1 = v["recovery_key"].as_str().unwrap().to_owned();
    let (s, v) = request(&app, t, "POST", "/api/encryption/rekey", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let r2 = v["recovery_key"]
        .as_str()
        .expect("a renewed recovery key")
        .to_owned();
    assert_ne!(r1, r2);
    run.wait_encrypted("the Rekey finished");
    let (_, v) = request(&app, t, "GET", "/api/encryption/recovery-key", None).await;
    assert_eq!(v["enabled"], true, "{v}");
    assert!(v["notice"].is_null(), "{v}");

    // The scheduled rotation has nobody to show a new key to: it removes it.
    let (s, v) = request(
        &app,
        t,
        "PUT",
        "/api/encryption/policy",
        Some(json!({"old_keys": "keep", "rotation_interval_seconds": 60})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    offset.store(3600, Ordering::SeqCst);
    assert_eq!(run.volume.rotation_tick(), RotationTick::Started);
    run.wait_encrypted("the scheduled Rekey finished");
    let (_, v) = request(&app, t, "GET", "/api/encryption/recovery-key", None).await;
    assert_eq!(v["enabled"], false, "{v}");
    assert!(
        v["notice"]
            .as_str()
            .unwrap()
            .contains("removed the recovery key"),
        "{v}"
    );
    let texts = run_audit_texts(&run);
    for op in [
        "recovery-key-add",
        "recovery-key-renew",
        "recovery-key-remove",
    ] {
        assert!(
            texts
                .iter()
                .any(|x| x.contains(&format!("operation={op}")) && x.contains("result=ok")),
            "{op}: {texts:?}"
        );
    }
    assert!(texts.iter().all(|x| !x.contains(&r1) && !x.contains(&r2)));
    // Making a new one clears the notice.
    let (s, _) = request(
        &app,
        t,
        "POST",
        "/api/encryption/recovery-key",
        Some(json!({"password": run.password()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = request(&app, t, "GET", "/api/encryption/recovery-key", None).await;
    assert_eq!(v["enabled"], true, "{v}");
    assert!(v["notice"].is_null(), "{v}");

    let mut run = run;
    run.volume.shutdown();
    if let Some(k) = run.kms.take() {
        k.stop();
    }

    // Restarted with the KMIP server away: locked. A wrong recovery key does not stop the
    // appliance from retrying the KMIP server, which unlocks it by itself once it is back.
    let run = start_with(
        dir.path(),
        Clock::system(),
        Kms::NotStarted,
        Duration::from_millis(200),
    );
    let app = atrest_appliance::app(run.state.clone());
    let (s, v) = request(
        &app,
        None,
        "POST",
        "/api/session",
        Some(json!({"username": "admin", "password": run.password()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = v["token"].as_str().unwrap().to_owned();
    let t = Some(t.as_str());
    wait_for("locked", || run.state.workflow().state == WfState::Locked);
    let other = "000000-000000-000000-000000-000000-000000-000000-000011";
    let (s, v) = request(
        &app,
        t,
        "POST",
        "/api/encryption/unlock",
        Some(json!({"recovery_key": other})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let before = run.volume.unlock_attempts();
    wait_for("the KMIP server is still retried", || {
        run.volume.unlock_attempts() > before + 2
    });
    assert_eq!(run.state.workflow().state, WfState::Locked);
    let k = embedded::start(dir.path()).unwrap();
    run.wait_encrypted("unlocked by itself");
    run.volume.shutdown();
    k.stop();
}
