//! The recovery key (break-glass) on the appliance: off by default; the administrator enables
//! it (admin password again) and sees it once; with it, a locked appliance unlocks without any
//! KMIP server. It is a standard LUKS2 passphrase keyslot of the content volume
//! (docs/volume-format.md, "Recovery keyslot"), so stock cryptsetup opens the volume with it too.
//!
//! - `GET /api/encryption/recovery-key`: whether there is one, what it means (the trade-off);
//! - `POST /api/encryption/recovery-key` `{"password"}`: makes one (replacing the previous
//!   one), answers `{"recovery_key": "..."}` once;
//! - `DELETE /api/encryption/recovery-key` `{"password"}`: removes it (its keyslot area is
//!   wiped);
//! - `POST /api/encryption/unlock` `{"recovery_key"}` while locked: unlocks with it;
//! - Rekey (the page's, Move): a new recovery key in the same header commit, answered once in
//!   the Rekey's answer (`recovery_key`); the scheduled rotation has nobody to show it to, so
//!   it removes the recovery key and says so (audit, and a notice here).
//!
//! Every step is audited (`operation=recovery-key-…`, also to syslog); the key never is.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use atrest_volume::{
    EncryptOptions, KeyMaterial, KeyReference, RecoveryKdf, RecoveryKey, State as VolState,
    UnlockedVolume,
};

use crate::content::DataVolume;
use crate::error::{ApiError, ApiResult};
use crate::login::ClientAddr;
use crate::state::AppState;

/// What the page and GET /api/encryption/recovery-key say about the trade-off.
pub const TRADE_OFF: &str = "A recovery key lets you read the content without any KMIP server \
     (with this appliance, `atrest volume unlock|export --recovery-key-file`, or stock \
     `cryptsetup`), for when every KMIP server or its key is lost. It is also a second way in: \
     whoever holds it and a copy of the disk reads the data, whatever the KMIP server says \
     (revoking or destroying the key there no longer locks them out). Keep it offline, like a \
     spare key to a safe. It is shown once; Rekey makes a new one, Remove takes it off the \
     volume (a copy of the disk made before still opens with it until the next Rekey).";

/// What the recovery key does on the volume.
#[derive(Debug)]
pub enum Op {
    /// Whether there is one.
    Status,
    /// Make one (replacing the one there is).
    Add,
    /// Remove it.
    Remove,
    /// Unlock the locked volume with it.
    Unlock(RecoveryKey),
    /// The next Rekey is the administrator's: it renews the recovery key.
    ArmRenewal,
    /// The recovery key the last Rekey made, once (and disarms).
    TakeRenewed,
}

/// The answer of an [`Op`].
#[derive(Debug)]
pub enum Outcome {
    /// `Status`.
    Status {
        /// The volume has a recovery key.
        enabled: bool,
        /// A recovery key can be made now (encrypted, unlocked, no conversion).
        can_add: bool,
        /// What the last Rekey did to the recovery key, when it removed it.
        notice: Option<String>,
    },
    /// `Add`: the new key, and whether it replaced one.
    Added(RecoveryKey, bool),
    /// `Remove`: whether there was one.
    Removed(bool),
    /// `Unlock`.
    Unlocked,
    /// `ArmRenewal`.
    Armed,
    /// `TakeRenewed`.
    Renewed(Option<RecoveryKey>),
}

/// Why not, for a person.
#[derive(Debug)]
pub enum Refusal {
    /// The request is malformed (400).
    Bad(String),
    /// The recovery key opens nothing (403).
    Wrong(String),
    /// Not in this state (409).
    Conflict(String),
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Bad(m) => ApiError::bad_request(m),
            Refusal::Wrong(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            Refusal::Conflict(m) => ApiError::conflict(m),
        }
    }
}

/// The recovery key's part of a Rekey.
#[derive(Debug, Default)]
pub struct RekeyRecovery {
    /// The next Rekey renews the recovery key (an administrator's Rekey); otherwise it removes
    /// it (the scheduled rotation).
    renew: bool,
    /// The recovery key the last Rekey made, until its answer takes it.
    renewed: Option<RecoveryKey>,
    /// What the last Rekey did: `Some(true)` renewed, `Some(false)` removed.
    last: Option<bool>,
    /// Shown on the page after a Rekey removed the recovery key.
    notice: Option<String>,
}

fn volume(state: &AppState) -> Result<std::sync::Arc<dyn crate::state::VolumeBackend>, Refusal> {
    state
        .backend()
        .ok_or_else(|| Refusal::Conflict("no data volume is attached to this appliance".into()))
}

fn vol_err(e: atrest_volume::Error) -> Refusal {
    match e {
        atrest_volume::Error::RecoveryKey(m) => {
            Refusal::Wrong(format!("{m}; nothing was read or written with it"))
        }
        atrest_volume::Error::Usage(m) => Refusal::Bad(m),
        other => Refusal::Conflict(other.to_string()),
    }
}

/// One argon2id run at a time (each takes its memory cost): a second request waits for none.
static KDF_BUSY: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn kdf_slot() -> Result<parking_lot::MutexGuard<'static, ()>, Refusal> {
    KDF_BUSY.try_lock().ok_or_else(|| {
        Refusal::Conflict(
            "another recovery key operation is running; try again in a few seconds".into(),
        )
    })
}

/// Runs `op` on the appliance's data volume (the `VolumeBackend::recovery` of
/// [`DataVolume`]).
pub fn run(dv: &DataVolume, op: Op) -> Result<Outcome, Refusal> {
    let state = dv_state(dv)?;
    let key_id = || dv.volume_info().and_then(|i| i.key_id);
    match op {
        Op::ArmRenewal => {
            dv.with_rekey_recovery(|r| r.renew = true);
            Ok(Outcome::Armed)
        }
        Op::TakeRenewed => Ok(Outcome::Renewed(dv.with_rekey_recovery(|r| {
            r.renew = false;
            r.renewed.take()
        }))),
        Op::Status => {
            let info = dv.volume_info();
            let enabled = info.as_ref().is_some_and(|i| i.recovery_key);
            let can_add = dv
                .open_volume()
                .is_some_and(|uv| uv.state() == VolState::Encrypted);
            Ok(Outcome::Status {
                enabled,
                can_add,
                notice: dv.with_rekey_recovery(|r| r.notice.clone()),
            })
        }
        Op::Add => {
            let uv = unlocked(dv)?;
            let _kdf = kdf_slot()?;
            let replaced = uv.has_recovery_key();
            let r = uv.add_recovery_key(&RecoveryKdf::from_env());
            let id = key_id();
            match r {
                Ok(rk) => {
                    state.audit_key(
                        "-",
                        "recovery-key-add",
                        id.as_deref(),
                        if replaced {
                            "ok (a new recovery keyslot; the previous recovery key no longer \
                             opens the volume; shown once to the administrator)"
                        } else {
                            "ok (a recovery keyslot was added; shown once to the administrator)"
                        },
                    );
                    dv.with_rekey_recovery(|r| r.notice = None);
                    Ok(Outcome::Added(rk, replaced))
                }
                Err(e) => {
                    state.audit_key(
                        "-",
                        "recovery-key-add",
                        id.as_deref(),
                        &format!("failed: {e}"),
                    );
                    Err(vol_err(e))
                }
            }
        }
        Op::Remove => {
            let uv = unlocked(dv)?;
            let r = uv.remove_recovery_key();
            let id = key_id();
            match r {
                Ok(had) => {
                    state.audit_key(
                        "-",
                        "recovery-key-remove",
                        id.as_deref(),
                        if had {
                            "ok (the recovery keyslot was removed and its area wiped)"
                        } else {
                            "ok (there was none)"
                        },
                    );
                    Ok(Outcome::Removed(had))
                }
                Err(e) => {
                    state.audit_key(
                        "-",
                        "recovery-key-remove",
                        id.as_deref(),
                        &format!("failed: {e}"),
                    );
                    Err(vol_err(e))
                }
            }
        }
        Op::Unlock(rk) => {
            let _kdf = kdf_slot()?;
            let r = dv.unlock_with_keys(|vol| vol.keys_from_recovery_key(&rk).map_err(vol_err));
            let id = key_id();
            match &r {
                Ok(()) => state.audit_key(
                    "-",
                    "recovery-key-unlock",
                    id.as_deref(),
                    "ok (unlocked with the recovery key; no KMIP server was asked)",
                ),
                Err(Refusal::Wrong(m) | Refusal::Conflict(m) | Refusal::Bad(m)) => state.audit_key(
                    "-",
                    "recovery-key-unlock",
                    id.as_deref(),
                    &format!("failed: {m}"),
                ),
            }
            r.map(|()| Outcome::Unlocked)
        }
    }
}

fn dv_state(dv: &DataVolume) -> Result<AppState, Refusal> {
    dv.app_state()
        .ok_or_else(|| Refusal::Conflict("the appliance is stopping".into()))
}

fn unlocked(dv: &DataVolume) -> Result<UnlockedVolume, Refusal> {
    let uv = dv.open_volume().ok_or_else(|| {
        Refusal::Conflict(
            "the content volume is locked: unlock it first (its key from the KMIP server, or the \
             recovery key)"
                .into(),
        )
    })?;
    match uv.state() {
        VolState::Encrypted => Ok(uv),
        VolState::Plain => Err(Refusal::Conflict(
            "the content volume is plain: a recovery key protects an encrypted volume; encrypt \
             it first"
                .into(),
        )),
        s => Err(Refusal::Conflict(format!(
            "the content volume is {}: change the recovery key once the conversion has finished",
            s.as_str()
        ))),
    }
}

/// Starts a Rekey of `uv` to the new key: the recovery key is renewed when the administrator
/// asked for the Rekey ([`arm_renewal`]), removed otherwise, in the header commit that starts
/// the Rekey; no keyslot ever opens a retired key.
pub(crate) fn begin_rekey(
    dv: &DataVolume,
    uv: &UnlockedVolume,
    key: KeyMaterial,
    reference: KeyReference,
    opts: &EncryptOptions,
) -> atrest_volume::Result<()> {
    let renew = dv.with_rekey_recovery(|r| std::mem::take(&mut r.renew));
    let had = uv.has_recovery_key();
    if had && renew {
        let _kdf = KDF_BUSY.lock();
        let rk =
            uv.begin_rekey_renewing_recovery(key, reference, opts, &RecoveryKdf::from_env())?;
        dv.with_rekey_recovery(|r| {
            r.renewed = rk;
            r.last = Some(true);
            r.notice = None;
        });
    } else {
        uv.begin_rekey(key, reference, opts)?;
        dv.with_rekey_recovery(|r| r.last = had.then_some(false));
    }
    Ok(())
}

/// Audits what [`begin_rekey`] did to the recovery key (the new key `uid` is being rekeyed to).
pub(crate) fn audit_rekey(dv: &DataVolume, state: &AppState, uid: &str) {
    match dv.with_rekey_recovery(|r| r.last.take()) {
        Some(true) => state.audit_key(
            "-",
            "recovery-key-renew",
            Some(uid),
            "ok (the Rekey made a new recovery key, shown once to the administrator; the \
             previous one no longer opens the volume)",
        ),
        Some(false) => {
            let text = "the Rekey removed the recovery key (it opened the old key only, and a \
                        scheduled rotation has nobody to show a new one to): make a new one";
            state.audit_key(
                "-",
                "recovery-key-remove",
                Some(uid),
                &format!("ok ({text})"),
            );
            dv.with_rekey_recovery(|r| {
                r.notice = Some(format!("{} at {}.", capitalise(text), crate::now_rfc3339()))
            });
        }
        None => {}
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The next Rekey is the administrator's: it renews the recovery key.
pub fn arm_renewal(state: &AppState) {
    if let Some(b) = state.backend() {
        let _ = b.recovery(Op::ArmRenewal);
    }
}

/// Adds the renewed recovery key (once) to a Rekey's answer.
pub fn with_renewed(
    r: ApiResult<(StatusCode, Json<Value>)>,
    state: &AppState,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let renewed = match state.backend().map(|b| b.recovery(Op::TakeRenewed)) {
        Some(Ok(Outcome::Renewed(rk))) => rk,
        _ => None,
    };
    match (r, renewed) {
        (Ok((s, Json(mut v))), Some(rk)) => {
            if let Value::Object(m) = &mut v {
                m.insert(
                    "recovery_key".into(),
                    Value::String(rk.expose().to_string()),
                );
            }
            Ok((s, Json(v)))
        }
        (r, _) => r,
    }
}

async fn blocking(state: &AppState, op: Op) -> Result<Outcome, ApiError> {
    let backend = volume(state)?;
    tokio::task::spawn_blocking(move || backend.recovery(op))
        .await
        .map_err(|e| ApiError::internal("the recovery key operation", e))?
        .map_err(ApiError::from)
}

/// GET /api/encryption/recovery-key.
pub async fn api_status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    match blocking(&state, Op::Status).await? {
        Outcome::Status {
            enabled,
            can_add,
            notice,
        } => Ok(Json(json!({
            "enabled": enabled,
            "can_add": can_add,
            "notice": notice,
            "trade_off": TRADE_OFF,
        }))),
        _ => Err(ApiError::internal("the recovery key status", "unexpected")),
    }
}

/// POST /api/encryption/recovery-key `{"password"}`: answers the new key once.
pub async fn api_add(
    State(state): State<AppState>,
    peer: ClientAddr,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    crate::api::require_password(
        &state,
        &peer,
        &body,
        "Making a recovery key (it opens the volume without the KMIP server)",
    )
    .await?;
    match blocking(&state, Op::Add).await? {
        Outcome::Added(rk, replaced) => Ok(Json(json!({
            "recovery_key": rk.expose(),
            "replaced": replaced,
            "trade_off": TRADE_OFF,
        }))),
        _ => Err(ApiError::internal("making the recovery key", "unexpected")),
    }
}

/// DELETE /api/encryption/recovery-key `{"password"}`.
pub async fn api_remove(
    State(state): State<AppState>,
    peer: ClientAddr,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    crate::api::require_password(&state, &peer, &body, "Removing the recovery key").await?;
    match blocking(&state, Op::Remove).await? {
        Outcome::Removed(had) => Ok(Json(json!({"removed": had}))),
        _ => Err(ApiError::internal(
            "removing the recovery key",
            "unexpected",
        )),
    }
}

#[derive(Deserialize)]
struct UnlockBody {
    recovery_key: Zeroizing<String>,
}

/// POST /api/encryption/unlock `{"recovery_key"}` while locked.
pub async fn api_unlock(State(state): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let b: UnlockBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "send JSON {\"recovery_key\": \"...\"}: the recovery key as it was shown (8 groups \
             of 6 digits)",
        )
    })?;
    let rk =
        RecoveryKey::parse(&b.recovery_key).map_err(|e| ApiError::bad_request(e.to_string()))?;
    blocking(&state, Op::Unlock(rk)).await?;
    Ok(Json(crate::api::status_json(&state)))
}
