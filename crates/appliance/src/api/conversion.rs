//! The workflow's actions: Encrypt, Rekey, Move, Decrypt and Resume, and growing the volume.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::login::ClientAddr;
use crate::state::AppState;
use crate::workflow::{Request as WfRequest, State as WfState};

use super::account::require_password;
use super::status_json;

/// The optional body of Encrypt, Rekey, Move and Decrypt: `{"full": true}` also overwrites
/// the free space; without it (or with `false`) only the space the content store has in use is
/// converted. Other fields (Decrypt's password) are read elsewhere.
fn full_of(body: &[u8]) -> ApiResult<bool> {
    #[derive(Deserialize)]
    struct Scope {
        #[serde(default)]
        full: bool,
    }
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(false);
    }
    serde_json::from_slice::<Scope>(body)
        .map(|s| s.full)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not JSON {{\"full\": true|false}} ({e}); send no body to convert \
                 only the space in use; nothing was started"
            ))
        })
}

/// Starts `req`; `full` sets whether it also overwrites the free space (None: as recorded, for
/// a Resume).
async fn start(
    state: &AppState,
    req: WfRequest,
    full: Option<bool>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    state.check(req).map_err(ApiError::conflict)?;
    let kmip = state.kmip().ok_or_else(|| {
        ApiError::conflict("no KMIP settings are saved; fill in Storage > Encryption first")
    })?;
    let backend = state.backend().ok_or_else(|| {
        ApiError::unavailable(
            "no data volume is attached to this appliance; start it with a data directory that \
             holds one",
        )
    })?;
    let config = kmip.client_config(state.config().kmip_timeouts);
    let sink = state.event_sink();
    tokio::task::spawn_blocking(move || {
        if let Some(full) = full {
            backend.set_full_conversion(full)?;
        }
        backend.start(req, config, sink)
    })
    .await
    .map_err(|e| ApiError::internal("starting the conversion", e))?
    .map_err(ApiError::conflict)?;
    Ok((StatusCode::ACCEPTED, Json(status_json(state))))
}

pub(super) async fn encrypt(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let full = full_of(&body)?;
    start(&state, WfRequest::Encrypt, Some(full)).await
}

pub(super) async fn rekey(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let full = full_of(&body)?;
    // The administrator is there: a recovery key is renewed and answered once (not removed).
    crate::recovery::arm_renewal(&state);
    crate::recovery::with_renewed(start(&state, WfRequest::Rekey, Some(full)).await, &state)
}

/// Move to these settings: a Rekey onto the KMIP server(s) of the saved settings, once they
/// passed Save and Test; the old key is retired on the old server (previous settings).
pub(super) async fn move_volume(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let full = full_of(&body)?;
    crate::status::move_gate(&state).map_err(ApiError::conflict)?;
    let from = state.workflow().servers.join(",");
    let to = state
        .kmip()
        .map(|k| {
            k.servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let key = state.workflow().key_id;
    crate::recovery::arm_renewal(&state);
    let r =
        crate::recovery::with_renewed(start(&state, WfRequest::Rekey, Some(full)).await, &state);
    state.audit_key(
        &to,
        "move",
        key.as_deref(),
        &match &r {
            Ok(_) => format!("started (from {from} to {to})"),
            Err(e) => format!("failed (from {from} to {to}): {}", e.message),
        },
    );
    r
}

pub(super) async fn decrypt(
    State(state): State<AppState>,
    peer: ClientAddr,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_password(
        &state,
        &peer,
        &body,
        "Decrypt (it writes the content volume back in plaintext)",
    )
    .await?;
    start(&state, WfRequest::Decrypt, Some(full_of(&body)?)).await
}

/// Resume: of a conversion that stopped on an error, or of a volume held locked because its
/// header failed its authentication (the administrator accepts the header as it is). Resuming
/// a decryption takes the admin password again.
pub(super) async fn resume(
    State(state): State<AppState>,
    peer: ClientAddr,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let wf = state.workflow();
    if wf.state == WfState::Decrypting || wf.pending == Some(WfState::Decrypting) {
        require_password(&state, &peer, &body, "Resuming a decryption").await?;
    }
    match wf.state {
        WfState::Locked => {
            let backend = state.backend().ok_or_else(|| {
                ApiError::unavailable("no data volume is attached to this appliance")
            })?;
            let sink = state.event_sink();
            tokio::task::spawn_blocking(move || backend.resume(sink))
                .await
                .map_err(|e| ApiError::internal("resuming", e))?
                .map_err(ApiError::conflict)?;
            Ok((StatusCode::ACCEPTED, Json(status_json(&state))))
        }
        WfState::Encrypting => start(&state, WfRequest::Encrypt, None).await,
        WfState::Rekeying => start(&state, WfRequest::Rekey, None).await,
        WfState::Decrypting => start(&state, WfRequest::Decrypt, None).await,
        s => Err(ApiError::conflict(format!(
            "there is nothing to resume: the volume is {}",
            s.as_str()
        ))),
    }
}

/// POST /api/volume/grow: extends the data segment to the size of its device, after the disk or
/// image grew; the content store uses the new space at once. Refused (409) while locked or
/// during a conversion.
pub(super) async fn volume_grow(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let backend = state
        .backend()
        .ok_or_else(|| ApiError::unavailable("no data volume is attached to this appliance"))?;
    let (old, new) = tokio::task::spawn_blocking(move || backend.grow())
        .await
        .map_err(|e| ApiError::internal("growing the volume", e))?
        .map_err(ApiError::conflict)?;
    Ok(Json(json!({
        "grown": new > old,
        "old_data_size": old,
        "data_size": new,
    })))
}
