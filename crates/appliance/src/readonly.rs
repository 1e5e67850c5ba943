//! Read-only content: the volume opened with a key the KMIP server no longer holds Active.
//!
//! NIST SP 800-57 lets a Deactivated key process (decrypt) the data it protected, never protect
//! new data. So when the key that protects the volume is Deactivated (revoked for a reason other
//! than compromise) the appliance still unlocks, but read-only:
//!
//! - the content is readable (GET /api/config, /api/audit, /api/recordings …);
//! - every content write (PUT /api/config, POST /api/audit, PUT and DELETE /api/recordings/{id})
//!   answers 423 Locked with a sentence saying why and what to do: Rekey;
//! - GET /api/encryption shows `read_only` (key, state, since when, why, what next) and the page
//!   a banner beside the Rekey button;
//! - with the key policy `"on_deactivated": "rekey"` a Rekey to a new key starts at once;
//!   with `"wait"` (the default) the administrator starts it.
//!
//! A Compromised key is used the same way, but only after the administrator confirms it with the
//! admin password (`POST /api/encryption/read-only/confirm`); until then the volume stays locked
//! and says so. A confirmation lasts until the appliance stops. A Destroyed key is gone: nothing
//! opens the volume but a recovery key, if one was added.
//!
//! While read-only the audit history is not appended (it lives on the volume): the appliance's
//! own events go to the syslog receivers and the process log at once, and wait in memory
//! (at most [`crate::state::MAX_QUEUED_AUDIT`]) until the Rekey (or Decrypt) that ends the
//! read-only state finished; then they are appended, sealed under the new key.

use atrest_keys::Accept;
use atrest_kmip::message::State as KeyState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Why the content is read-only (GET /api/encryption `read_only`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadOnlyView {
    /// The key that protects the data and may only decrypt now.
    pub key_id: String,
    /// Its state on the KMIP server: `Deactivated` or `Compromised`.
    pub key_state: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// What the administrator reads: why, and what to do.
    pub reason: String,
    /// `started` when a Rekey runs to end it, `wait` when it waits for the administrator.
    pub rekey: String,
}

/// A Compromised key that waits for the administrator's confirmation before the volume opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confirmation {
    /// The KMIP unique identifier of the Compromised key.
    pub key_id: String,
    /// What the administrator reads: why the content stays locked, and how to confirm.
    pub reason: String,
}

/// What the appliance keeps about read-only use of its volume key.
#[derive(Debug, Default)]
pub struct ReadOnlyState {
    current: Mutex<Option<ReadOnlyView>>,
    /// Compromised keys the administrator confirmed (until the appliance stops).
    confirmed: Mutex<Vec<String>>,
    /// The Compromised key the last unlock attempt refused.
    waiting: Mutex<Option<Confirmation>>,
}

impl ReadOnlyState {
    /// Why the content is read-only, or None when it is writable.
    pub fn get(&self) -> Option<ReadOnlyView> {
        self.current.lock().clone()
    }

    /// The Compromised key that waits for a confirmation, if any.
    pub fn waiting(&self) -> Option<Confirmation> {
        self.waiting.lock().clone()
    }

    /// What an unlock accepts for key `uid`: Deactivated always (read-only), Compromised once
    /// the administrator confirmed it.
    pub fn accept_for(&self, uid: &str) -> Accept {
        if self.confirmed.lock().iter().any(|c| c == uid) {
            Accept::Compromised
        } else {
            Accept::Deactivated
        }
    }

    /// Records that the unlock refused the Compromised key `uid` until confirmed (an attempt
    /// that began before the confirmation changes nothing).
    pub fn note_compromised(&self, uid: &str) {
        if self.confirmed.lock().iter().any(|c| c == uid) {
            return;
        }
        *self.waiting.lock() = Some(Confirmation {
            key_id: uid.to_owned(),
            reason: format!(
                "the KMIP server reports the volume key {uid:?} as Compromised: someone may \
                 know it. The content stays locked until the administrator confirms that it may \
                 be read with this key (read-only, to Rekey to a new key at once): POST \
                 /api/encryption/read-only/confirm with the admin password, or Confirm on \
                 Storage > Encryption"
            ),
        });
    }

    fn confirm(&self) -> Option<String> {
        let w = self.waiting.lock().take()?;
        let mut c = self.confirmed.lock();
        if !c.contains(&w.key_id) {
            c.push(w.key_id.clone());
        }
        Some(w.key_id)
    }

    fn set(&self, v: Option<ReadOnlyView>) {
        *self.current.lock() = v;
    }

    /// Forgets the Compromised key that waited: the volume opened.
    pub fn opened(&self) {
        self.waiting.lock().take();
    }
}

fn reason(key_id: &str, st: &str, rekey: bool) -> String {
    format!(
        "the volume key {key_id:?} is {st} on the KMIP server, so it may still decrypt the data \
         it protected but never protect new data; {}",
        if rekey {
            "a Rekey to a new key was started by the key policy (on_deactivated: rekey) and \
             makes the content writable again when it finishes"
        } else {
            "press Rekey on Storage > Encryption (or POST /api/encryption/rekey) to move the data \
             to a new key, which makes the content writable again"
        }
    )
}

/// The sentence of a refused write.
pub fn refusal(v: &ReadOnlyView) -> String {
    format!(
        "the content is read-only: {}; nothing was written",
        v.reason
    )
}

impl AppState {
    /// The read-only state of the content ([`crate::readonly`]).
    pub fn read_only(&self) -> &ReadOnlyState {
        &self.inner.read_only
    }

    /// Makes the content read-only because the key `key_id` is in `key_state` on the KMIP
    /// server (audited, logged). `rekey`: whether a Rekey is started for it.
    pub fn enter_read_only(&self, key_id: &str, key_state: KeyState, rekey: bool) {
        let st = key_state.to_string();
        let reason = reason(key_id, &st, rekey);
        let was = self.read_only().get();
        let view = ReadOnlyView {
            key_id: key_id.to_owned(),
            key_state: st.clone(),
            since: was
                .as_ref()
                .filter(|w| w.key_id == key_id)
                .map_or_else(crate::now_rfc3339, |w| w.since.clone()),
            reason,
            rekey: if rekey { "started" } else { "wait" }.into(),
        };
        if was.as_ref() == Some(&view) {
            return;
        }
        self.read_only().set(Some(view));
        if was.is_none() {
            tracing::warn!(key_id, key_state = %st, "content is read-only: the volume key is no longer Active");
            self.audit_key(
                "-",
                "read-only",
                Some(key_id),
                &format!(
                    "ok (opened read-only: the key is {st}; content writes are refused until a \
                     Rekey)"
                ),
            );
        }
    }

    /// Ends the read-only state (a Rekey or Decrypt moved the data off the key): writes are
    /// accepted again and the audit events kept meanwhile are appended.
    pub fn leave_read_only(&self, why: &str) {
        let Some(v) = self.read_only().get() else {
            return;
        };
        self.read_only().set(None);
        tracing::info!(key_id = %v.key_id, "content writable again: {why}");
        self.audit_key(
            "-",
            "read-only",
            Some(&v.key_id),
            &format!("ended ({why}); content writes are accepted again"),
        );
        self.flush_queued_audit();
    }
}

/// Starts a Rekey to a new key on the saved KMIP settings (the policy `on_deactivated: rekey`);
/// audited either way.
pub fn start_rekey(state: &AppState) -> Result<(), String> {
    let key = state.read_only().get().map(|v| v.key_id);
    let r = (|| {
        let k = state
            .kmip()
            .ok_or("no KMIP settings are saved; fill in Storage > Encryption, then press Rekey")?;
        let b = state
            .backend()
            .ok_or("no data volume is attached to this appliance")?;
        b.start(
            crate::workflow::Request::Rekey,
            k.client_config(state.config().kmip_timeouts),
            state.event_sink(),
        )
    })();
    let server = state
        .kmip()
        .and_then(|k| k.servers.first().map(|s| s.to_string()))
        .unwrap_or_else(|| "-".into());
    match &r {
        Ok(()) => state.audit_key(
            &server,
            "rekey",
            key.as_deref(),
            "started (key policy on_deactivated: rekey; the key is no longer Active)",
        ),
        Err(e) => {
            tracing::warn!("the Rekey the key policy asks for could not start: {e}");
            state.audit_key(
                &server,
                "rekey",
                key.as_deref(),
                &format!("failed (key policy on_deactivated: rekey): {e}; press Rekey"),
            );
        }
    }
    r
}

/// Applies `on_deactivated` to read-only content: with `rekey`, starts the Rekey that waits.
pub fn apply_policy(state: &AppState) {
    let Some(v) = state.read_only().get() else {
        return;
    };
    if state.keylife().get().policy.on_deactivated != crate::keylife::OnDeactivated::Rekey
        || v.rekey == "started"
        || state.workflow().state != crate::workflow::State::Encrypted
    {
        return;
    }
    if start_rekey(state).is_ok() {
        state.read_only().set(Some(ReadOnlyView {
            rekey: "started".into(),
            reason: reason(&v.key_id, &v.key_state, true),
            ..v
        }));
    }
}

/// Refuses a content write while the content is read-only: 423 with the sentence.
pub fn check_writable(state: &AppState) -> ApiResult<()> {
    match state.read_only().get() {
        Some(v) => Err(ApiError::new(StatusCode::LOCKED, refusal(&v))),
        None => Ok(()),
    }
}

/// The body of POST /api/encryption/read-only/confirm.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmJson {
    password: Zeroizing<String>,
}

/// POST /api/encryption/read-only/confirm: the administrator confirms, with the admin password,
/// that the volume may be opened read-only with its Compromised key (to Rekey it). 202 with the
/// key id; 403 for a wrong password; 409 when no Compromised key waits.
pub async fn confirm(
    State(state): State<AppState>,
    peer: crate::login::ClientAddr,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let j: ConfirmJson = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "confirming the use of a Compromised key takes the admin password: send \
             {\"password\": \"...\"}",
        )
    })?;
    if state.read_only().waiting().is_none() {
        return Err(ApiError::conflict(
            "no Compromised volume key waits for a confirmation: the volume is not held locked \
             by one (see GET /api/encryption)",
        ));
    }
    state
        .verify_admin_password(peer.0, j.password)
        .await
        .map_err(|e| ApiError {
            message: format!(
                "confirming the use of a Compromised key refused: {}; nothing was changed",
                e.message
            ),
            ..e
        })?;
    let Some(uid) = state.read_only().confirm() else {
        return Err(ApiError::conflict(
            "no Compromised volume key waits for a confirmation any more",
        ));
    };
    state.audit_key(
        "-",
        "confirm-compromised",
        Some(&uid),
        "ok (admin confirmed: open read-only with the Compromised key, to Rekey)",
    );
    if let Some(b) = state.backend() {
        b.retry_now();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"key_id": uid, "confirmed": true})),
    ))
}
