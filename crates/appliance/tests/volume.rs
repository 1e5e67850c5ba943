//! The content volume against the bundled KMIP server, in process: Encrypt while the store keeps
//! serving, unlock at the next start, locked while no KMIP server answers and unlocked by
//! itself when one is back, a conversion stopped half-way resumed, a revoked key refused at
//! start and raising an alert (or locking) while unlocked, and the audit trail of it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use atrest_appliance::content::{Clock, KeyPolicy, RotationTick, VolumeOptions};
use atrest_appliance::embedded;
use atrest_appliance::state::Content;
use atrest_appliance::workflow::{Backoff, State as WfState};
use atrest_appliance::{AppState, app};
use atrest_kmip::client::{Client, Timeouts};
use atrest_kmip::message::{Attributes, RevocationReasonCode};
use atrest_kmip::ttlv::Value as KmipValue;
use atrest_store::{Store, Value as CfgValue};
use axum::http::StatusCode;
use common::{Kms, Run, audit_texts, config, request, start, token, wait_for};
use serde_json::{Value, json};

async fn post(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, Value) {
    request(app, Some(token), "POST", uri, None).await
}

async fn post_json(app: &axum::Router, token: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    request(app, Some(token), "POST", uri, Some(body)).await
}

async fn send_json(
    app: &axum::Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Value,
) -> (StatusCode, Value) {
    request(app, Some(token), method, uri, Some(body)).await
}

/// First start, Save and Test, Encrypt with the store in use throughout; returns the key id.
async fn encrypt(data: &Path) -> (Run, String) {
    let run = start(data, Kms::Bundled, |_| {});
    let app = app(run.state.clone());
    let t = token(&app, run.generated_password.as_deref().unwrap()).await;
    assert_eq!(run.state.workflow().state, WfState::Plain);
    run.store()
        .config()
        .set("before", CfgValue::Text("plain".into()))
        .unwrap();
    let (s, v) = post(&app, &t, "/api/encryption/test").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let (s, v) = post(&app, &t, "/api/encryption/encrypt").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let key_id = v["key_id"].as_str().unwrap().to_owned();
    // The content store keeps working while the volume is converted.
    let store = run.store();
    let mut i = 0u32;
    while run.state.workflow().state == WfState::Encrypting {
        store
            .config()
            .set(&format!("during-{i}"), CfgValue::Int(i as i64))
            .unwrap();
        store
            .recordings()
            .put(&format!("r{i}"), "s", &vec![i as u8; 100_000])
            .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
        assert!(i < 100_000);
    }
    assert_eq!(run.state.workflow().state, WfState::Encrypted);
    let (s, st) = post(&app, &t, "/api/encryption/encrypt").await;
    assert_eq!(s, StatusCode::CONFLICT, "{st}");
    let status = atrest_appliance::api::status_json(&run.state);
    assert_eq!(status["volume"]["last_conversion"]["percent"], 100.0);
    assert_eq!(status["volume"]["volume"]["state"], "encrypted");
    assert!(status["cipher"].as_str().unwrap().contains("XTS-AES-128"));
    let texts = audit_texts(&store);
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=test") && t.contains("result=passed")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("operation=create")
            && t.contains(&key_id)
            && t.contains("result=ok")),
        "{texts:?}"
    );
    for n in 0..i {
        assert_eq!(
            store.config().get(&format!("during-{n}")).unwrap(),
            Some(CfgValue::Int(n as i64))
        );
    }
    (run, key_id)
}

fn key_client(data: &Path) -> Client {
    let s = AppState::open(config(data)).unwrap().state;
    Client::new(s.kmip().unwrap().client_config(Timeouts::default())).unwrap()
}

/// The keys the appliance's KMIP server finds by Name.
fn located(data: &Path, name: &str) -> Vec<String> {
    key_client(data)
        .locate(
            Attributes::new().with("Name", Attributes::name_value(name)),
            None,
        )
        .unwrap()
}

fn no_copy_of(needle: &[u8], dir: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        // The bundled server's own key store holds the key by design; everything else must not.
        if f.components().any(|c| c.as_os_str() == "kms") {
            continue;
        }
        for n in [needle, &needle[..16], &needle[16..]] {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{} holds key bytes",
                f.display()
            );
        }
        let hex = hex::encode(needle);
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&hex),
            "{} holds the key in hex",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_online_then_unlock_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, key_id) = encrypt(&data).await;
    let material = key_client(&data)
        .get_key(&key_id)
        .unwrap()
        .material
        .to_vec();
    run.stop();

    // No copy of the key anywhere in the data directory or the volume.
    assert_eq!(material.len(), 32);
    no_copy_of(&material, &data);

    let run = start(&data, Kms::Bundled, |_| {});
    wait_for("the volume is unlocked", || {
        run.state.workflow().state == WfState::Encrypted
    });
    let store = run.store();
    assert_eq!(
        store.config().get("before").unwrap(),
        Some(CfgValue::Text("plain".into()))
    );
    let texts = audit_texts(&store);
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=get") && t.contains(&key_id) && t.contains("result=ok")),
        "{texts:?}"
    );
    assert!(texts.iter().all(|t| !t.contains(&hex::encode(&material))));

    // The key is named for a KMS administrator: atrest/<host name>/<volume uuid>/1, in the
    // Object Group atrest/<host name>.
    let status = atrest_appliance::api::status_json(&run.state);
    let uuid = status["volume"]["volume"]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let host = atrest_keys::host_name();
    assert_eq!(
        located(&data, &format!("atrest/{host}/{uuid}/1")),
        vec![key_id.clone()]
    );
    run.stop();
    // Another appliance name from here on; the generation follows the current key's.
    let run = start(&data, Kms::Bundled, |o| o.appliance_name = "shelf-2".into());
    wait_for("the volume is unlocked", || {
        run.state.workflow().state == WfState::Encrypted
    });
    let store = run.store();

    // Rekey, then decrypt, online.
    let app = app(run.state.clone());
    let pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap();
    let t = token(&app, pw.trim()).await;
    let (s, v) = post(&app, &t, "/api/encryption/rekey").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let new_id = v["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, key_id);
    wait_for("the rekey finished", || {
        run.state.workflow().state == WfState::Encrypted
    });
    assert_eq!(
        located(&data, &format!("atrest/shelf-2/{uuid}/2")),
        vec![new_id.clone()]
    );
    let group = key_client(&data)
        .locate(
            Attributes::new().with(
                "Object Group",
                KmipValue::TextString("atrest/shelf-2".into()),
            ),
            None,
        )
        .unwrap();
    assert_eq!(group, vec![new_id.clone()]);
    let (s, v) = post_json(
        &app,
        &t,
        "/api/encryption/decrypt",
        json!({"password": pw.trim()}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_for("the decryption finished", || {
        run.state.workflow().state == WfState::Plain
    });
    assert_eq!(
        store.config().get("during-0").unwrap(),
        Some(CfgValue::Int(0))
    );
    let texts = audit_texts(&store);
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=rekey") && t.contains(&new_id)),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("operation=decrypt")),
        "{texts:?}"
    );
    run.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_without_a_server_then_unlocks_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, key_id) = encrypt(&data).await;
    run.stop();

    // No KMIP server: the appliance starts locked and says why, per server.
    let run = start(&data, Kms::NotStarted, |_| {});
    wait_for("an unlock attempt failed", || {
        !run.state.workflow().lock_reasons.is_empty()
    });
    let w = run.state.workflow();
    assert_eq!(w.state, WfState::Locked);
    assert_eq!(w.key_id.as_deref(), Some(key_id.as_str()));
    assert_eq!(w.lock_reasons[0].class, "tcp-refused", "{w:?}");
    assert!(w.lock_reasons[0].reason.contains("connection refused"));
    match run.state.content() {
        Content::Locked(why) => assert!(why.contains("connection refused"), "{why}"),
        other => panic!("{other:?}"),
    }
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["state"], "locked");
    assert!(
        st["lock_reasons"][0]["server"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // The server comes back (on its old port): the appliance unlocks by itself.
    let kms = embedded::start(&data).unwrap();
    wait_for("the volume unlocked by itself", || {
        run.state.workflow().state == WfState::Encrypted
    });
    assert!(run.volume.unlock_attempts() >= 2);
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|t| t.contains("operation=get") && t.contains("result=failed (tcp-refused)")),
        "{texts:?}"
    );
    run.stop();
    kms.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_conversion_resumes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = start(&data, Kms::Bundled, |o| o.chunk_size = 1 << 20);
    let app = app(run.state.clone());
    let t = token(&app, run.generated_password.as_deref().unwrap()).await;
    assert_eq!(
        post(&app, &t, "/api/encryption/test").await.0,
        StatusCode::OK
    );
    let (s, v) = post(&app, &t, "/api/encryption/encrypt").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // Stop at once: the conversion stops after its current chunk.
    run.stop();
    let run = start(&data, Kms::Bundled, |_| {});
    wait_for("the encryption finished", || {
        run.state.workflow().state == WfState::Encrypted
    });
    run.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_raises_an_alert_locks_and_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, key_id) = encrypt(&data).await;
    key_client(&data)
        .revoke(&key_id, RevocationReasonCode::KEY_COMPROMISE, None)
        .unwrap();
    // Policy "alert": an alert, the volume stays unlocked.
    run.volume.check_key_state();
    let st = atrest_appliance::api::status_json(&run.state);
    let alert = st["volume"]["alerts"][0].as_str().unwrap().to_owned();
    assert!(
        alert.contains(&key_id) && alert.contains("no longer Active"),
        "{alert}"
    );
    assert_eq!(st["state"], "encrypted");
    let texts = audit_texts(&run.store());
    assert!(
        texts.iter().any(|t| t.contains("operation=check-state")),
        "{texts:?}"
    );
    run.stop();

    // At start the key is refused with a clear message.
    let run = start(&data, Kms::Bundled, |o| o.key_policy = KeyPolicy::Lock);
    wait_for("an unlock attempt failed", || {
        !run.state.workflow().lock_reasons.is_empty()
    });
    let w = run.state.workflow();
    assert_eq!(w.state, WfState::Locked);
    // Compromised: refused until the administrator confirms (tests/readonly.rs).
    assert_eq!(w.lock_reasons[0].class, "compromised", "{w:?}");
    assert!(w.lock_reasons[0].reason.contains("not Active"), "{w:?}");
    run.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_policy_locks_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, key_id) = encrypt(&data).await;
    run.stop();
    let run = start(&data, Kms::Bundled, |o| o.key_policy = KeyPolicy::Lock);
    wait_for("the volume is unlocked", || {
        run.state.workflow().state == WfState::Encrypted
    });
    // Compromised: locked, and it stays locked until the administrator confirms (a Deactivated
    // key makes the content read-only instead: tests/readonly.rs).
    key_client(&data)
        .revoke(&key_id, RevocationReasonCode::KEY_COMPROMISE, None)
        .unwrap();
    run.volume.check_key_state();
    assert_eq!(run.state.workflow().state, WfState::Locked);
    match run.state.content() {
        Content::Locked(why) => assert!(why.contains("no longer Active"), "{why}"),
        other => panic!("{other:?}"),
    }
    wait_for("the unlock refused the Compromised key", || {
        run.state
            .workflow()
            .lock_reasons
            .iter()
            .any(|r| r.class == "compromised")
    });
    assert_eq!(run.state.workflow().state, WfState::Locked);
    assert!(run.state.read_only().waiting().is_some());
    run.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_fails_over_and_gives_a_reason_per_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, key_id) = encrypt(&data).await;
    let kms_addr = run.kms.as_ref().unwrap().addr;
    // Two servers: the first one listens nowhere.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap();
    let app = app(run.state.clone());
    let t = token(&app, pw.trim()).await;
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        json!({"servers": [format!("127.0.0.1:{closed}"), kms_addr.to_string()]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    drop(app);
    run.stop();

    // The first server fails, the second gives the key.
    let run = start(&data, Kms::Bundled, |_| {});
    wait_for("the volume is unlocked", || {
        run.state.workflow().state == WfState::Encrypted
    });
    let texts = audit_texts(&run.store());
    assert!(
        texts.iter().any(
            |t| t.contains(&format!("server=127.0.0.1:{closed} operation=get"))
                && t.contains("tcp-refused")
        ),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&format!("server={kms_addr} operation=get"))
                && t.contains(&key_id)
                && t.contains("result=ok")),
        "{texts:?}"
    );
    run.stop();

    // Neither answers: one reason per server, and the content says why.
    let run = start(&data, Kms::NotStarted, |_| {});
    wait_for("an unlock attempt failed", || {
        !run.state.workflow().lock_reasons.is_empty()
    });
    let w = run.state.workflow();
    let servers: Vec<&str> = w.lock_reasons.iter().map(|r| r.server.as_str()).collect();
    assert_eq!(
        servers,
        [format!("127.0.0.1:{closed}"), kms_addr.to_string()],
        "{w:?}"
    );
    match run.state.content() {
        Content::Locked(why) => {
            assert!(
                why.contains(&kms_addr.to_string()) && why.contains("retries"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    run.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_server_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, _) = encrypt(&data).await;
    // A server that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap();
    let app = app(run.state.clone());
    let t = token(&app, pw.trim()).await;
    let (s, v) = send_json(
        &app,
        &t,
        "PUT",
        "/api/encryption/kmip",
        json!({"servers": [hang_addr.to_string()]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    drop(app);
    run.stop();

    let run = start(&data, Kms::NotStarted, |o| {
        o.timeouts = Timeouts::uniform(Duration::from_secs(60));
    });
    let (conn, _) = hang.accept().unwrap();
    // The unlock attempt is under way (it waits for the hanging server): the status answers.
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["state"], "locked");
    assert_eq!(st["lock_reasons"], json!([]), "{st}");
    assert_eq!(st["volume"]["volume"]["state"], "encrypted", "{st}");
    // The server goes away: the attempt ends with its reason.
    drop(conn);
    drop(hang);
    wait_for("the attempt failed", || {
        !run.state.workflow().lock_reasons.is_empty()
    });
    let w = run.state.workflow();
    assert_eq!(w.lock_reasons[0].server, hang_addr.to_string(), "{w:?}");
    run.stop();
}

/// Removes the header MAC from both copies, as a header written by an atrest without header
/// authentication looks (checksums fixed).
fn strip_header_mac(image: &Path) {
    use atrest_volume::luks2::fix_checksum;
    let mut img = std::fs::read(image).unwrap();
    for off in [0usize, 16384] {
        let copy = &mut img[off..off + 16384];
        let end = copy[4096..].iter().position(|&b| b == 0).unwrap();
        let mut v: Value = serde_json::from_slice(&copy[4096..4096 + end]).unwrap();
        v["tokens"]
            .as_object_mut()
            .unwrap()
            .retain(|_, t| t["type"] != "atrest-header-mac");
        let text = serde_json::to_vec(&v).unwrap();
        copy[4096..].fill(0);
        copy[4096..4096 + text.len()].copy_from_slice(&text);
        fix_checksum(copy);
    }
    std::fs::write(image, img).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_without_authentication_waits_for_the_admins_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, _key_id) = encrypt(&data).await;
    let pw = run.generated_password.clone().unwrap();
    run.stop();
    strip_header_mac(&data.join("volume.img"));
    let before = std::fs::read(data.join("volume.img")).unwrap();
    let run = start(&data, Kms::Bundled, |_| {});
    wait_for("held locked by the header", || {
        atrest_appliance::api::status_json(&run.state)["volume"]["hold"]["class"] == "header-auth"
    });
    // It stays locked: the unlock loop does not retry, nothing is written.
    std::thread::sleep(Duration::from_millis(1500));
    let w = run.state.workflow();
    assert_eq!(w.state, WfState::Locked);
    assert!(
        w.lock_reasons[0]
            .reason
            .contains("carries no authentication code"),
        "{w:?}"
    );
    assert!(std::fs::read(data.join("volume.img")).unwrap() == before);
    // The administrator's Resume accepts the header, signs it, unlocks.
    let app = app(run.state.clone());
    let t = token(&app, &pw).await;
    let (s, v) = post(&app, &t, "/api/encryption/resume").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(run.state.workflow().state, WfState::Encrypted);
    assert_eq!(
        run.store().config().get("before").unwrap(),
        Some(CfgValue::Text("plain".into()))
    );
    let texts = audit_texts(&run.store());
    assert!(
        texts
            .iter()
            .any(|t| t.contains("accepted the content volume header")),
        "{texts:?}"
    );
    run.stop();
    // Signed: the next start unlocks by itself.
    let run = start(&data, Kms::Bundled, |_| {});
    wait_for("unlocked by itself", || {
        run.state.workflow().state == WfState::Encrypted
    });
    run.stop();
}

async fn get(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, Value) {
    request(app, Some(token), "GET", uri, None).await
}

/// The audit history is checked at start and by GET /api/audit/verify; on an encrypted volume
/// it is sealed under a key derived from the volume key, so a rewrite that recomputes every
/// hash (what someone with the store's pages but not the key could do) is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_audit_history_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (run, _key_id) = encrypt(&data).await;
    let pw = run.generated_password.clone().unwrap();
    let app = app(run.state.clone());
    let t = token(&app, &pw).await;
    let (s, v) = get(&app, &t, "/api/audit/verify").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sealed"], true, "{v}");
    assert!(v["events"].as_u64().unwrap() > 0, "{v}");
    assert!(v["first_bad"].is_null());
    // Every hash recomputed from event 1 to the head: only the seal tells.
    atrest_store::testing::rewrite_audit_history(&run.store(), 1, "nothing happened").unwrap();
    let (_, v) = get(&app, &t, "/api/audit/verify").await;
    assert_eq!(v["ok"], false, "{v}");
    let reason = v["first_bad"]["reason"].as_str().unwrap();
    assert!(reason.contains("seal"), "{v}");
    let (_, st) = get(&app, &t, "/api/encryption").await;
    assert!(
        st["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("audit history failed its check")),
        "{st}"
    );
    run.stop();
    // Checked again at the next start: the alert is back without asking.
    let run = start(&data, Kms::Bundled, |_| {});
    wait_for("unlocked", || {
        run.state.workflow().state == WfState::Encrypted
    });
    let st = atrest_appliance::api::status_json(&run.state);
    assert_eq!(st["volume"]["audit"]["ok"], false, "{st}");
    assert!(
        st["warnings"]
            .to_string()
            .contains("audit history failed its check"),
        "{st}"
    );
    run.stop();
}

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
    let (s, v) = post(&app, &t, "/api/encryption/test").await;
    assert_eq!(v["ok"], true, "{s} {v}");
    let (s, v) = post(&app, &t, "/api/encryption/encrypt").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let k1 = v["key_id"].as_str().unwrap().to_owned();
    wait_for("encrypted", || {
        run.state.workflow().state == WfState::Encrypted
    });

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
    wait_for("unlocked with the new key", || {
        run.state.workflow().state == WfState::Encrypted
    });
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
    wait_for("encrypted", || {
        run.state.workflow().state == WfState::Encrypted
    });
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
    wait_for("the administrator's Rekey finished", || {
        run.state.workflow().state == WfState::Encrypted
    });
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
    wait_for("encrypted", || {
        run.state.workflow().state == WfState::Encrypted
    });
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
    wait_for("unlocked from the new server", || {
        run.state.workflow().state == WfState::Encrypted
    });
    assert_eq!(run.state.workflow().key_id.as_deref(), Some(k2.as_str()));
    run.stop();
}
