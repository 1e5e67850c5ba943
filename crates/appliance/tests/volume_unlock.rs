//! The content volume against the bundled KMIP server, in process: Encrypt while the store keeps
//! serving, unlock at the next start, locked while no KMIP server answers and unlocked by
//! itself when one is back, a conversion stopped half-way resumed, a revoked key refused at
//! start and raising an alert (or locking) while unlocked, and the audit trail of it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use atrest_appliance::app;
use atrest_appliance::content::KeyPolicy;
use atrest_appliance::embedded;
use atrest_appliance::state::Content;
use atrest_appliance::workflow::State as WfState;
use atrest_kmip::client::Timeouts;
use atrest_kmip::message::{Attributes, RevocationReasonCode};
use atrest_kmip::ttlv::Value as KmipValue;
use atrest_store::Value as CfgValue;
use axum::http::StatusCode;
use common::{
    Kms, Run, audit_texts, get, key_client, post, post_json, send_json, start, token, wait_for,
};
use serde_json::{Value, json};

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
    run.wait_encrypted("the volume is unlocked");
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
    run.wait_encrypted("the volume is unlocked");
    let store = run.store();

    // Rekey, then decrypt, online.
    let app = app(run.state.clone());
    let pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap();
    let t = token(&app, pw.trim()).await;
    let (s, v) = post(&app, &t, "/api/encryption/rekey").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let new_id = v["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, key_id);
    run.wait_encrypted("the rekey finished");
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
    run.wait_unlock_failed();
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
    run.wait_encrypted("the volume unlocked by itself");
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
    run.wait_encrypted("the encryption finished");
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
    run.wait_unlock_failed();
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
    run.wait_encrypted("the volume is unlocked");
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
    run.wait_encrypted("the volume is unlocked");
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
    run.wait_unlock_failed();
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
    run.wait_encrypted("unlocked by itself");
    run.stop();
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
    run.wait_encrypted("unlocked");
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
