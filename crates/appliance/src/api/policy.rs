//! The key policy (what happens to retired keys, the rotation interval) and the actions on
//! old keys (revoke, destroy).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::login::ClientAddr;
use crate::state::AppState;

use super::account::require_password;
use super::status_json;

/// PUT /api/encryption/policy: what happens to retired keys, and the rotation interval.
pub(super) async fn policy_put(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let p: crate::keylife::Policy = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the policy is not understood ({e}); send JSON {{\"old_keys\": \"keep\"|\"revoke\"|\
             \"destroy\", \"destroy_after_days\": N, \"rotation_interval_seconds\": N or null, \
             \"on_deactivated\": \"wait\"|\"rekey\"}}"
        ))
    })?;
    p.check().map_err(ApiError::invalid)?;
    let before = state.keylife().get().policy;
    state
        .keylife()
        .update(|l| l.policy = p.clone())
        .map_err(|e| ApiError::internal("saving the key policy", e))?;
    state.audit(
        "admin",
        "admin",
        format!(
            "key policy changed: old_keys={:?} destroy_after_days={} rotation_interval_seconds={} \
             on_deactivated={} (was old_keys={:?} destroy_after_days={} \
             rotation_interval_seconds={})",
            p.old_keys,
            p.destroy_after_days,
            p.rotation_interval_seconds
                .map_or("off".to_string(), |s| s.to_string()),
            p.on_deactivated.as_str(),
            before.old_keys,
            before.destroy_after_days,
            before
                .rotation_interval_seconds
                .map_or("off".to_string(), |s| s.to_string()),
        )
        .to_lowercase(),
    );
    // A policy that retires keys applies to the old keys at once.
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        crate::keylife::apply_policy(&st);
        crate::readonly::apply_policy(&st);
    })
    .await
    .map_err(|e| ApiError::internal("applying the key policy", e))?;
    Ok(Json(status_json(&state)))
}

fn old_key_error(e: crate::keylife::ActionError) -> ApiError {
    use crate::keylife::ActionError;
    match e {
        ActionError::NotFound(m) => ApiError::not_found(m),
        ActionError::Kmip(m) => ApiError::new(StatusCode::BAD_GATEWAY, m),
        ActionError::Save(m) => ApiError::internal("saving the key life record", m),
    }
}

/// POST /api/encryption/old-keys/{id}/revoke.
pub(super) async fn old_key_revoke(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || crate::keylife::revoke(&st, &id, "admin"))
        .await
        .map_err(|e| ApiError::internal("revoking the old key", e))?
        .map_err(old_key_error)?;
    Ok(Json(status_json(&state)))
}

/// POST /api/encryption/old-keys/{id}/destroy: crypto-shredding, takes the admin password.
pub(super) async fn old_key_destroy(
    State(state): State<AppState>,
    peer: ClientAddr,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    // Unknown ids answer 404 before the password is checked.
    if !state.keylife().get().old_keys.iter().any(|k| k.id == id) {
        return Err(ApiError::not_found(format!(
            "{id:?} is not an old key of this volume (see old_keys in GET /api/encryption); the \
             key in use cannot be destroyed here"
        )));
    }
    require_password(
        &state,
        &peer,
        &body,
        "Destroying an old key (data and backups made under it become unreadable)",
    )
    .await?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || crate::keylife::destroy(&st, &id, "admin"))
        .await
        .map_err(|e| ApiError::internal("destroying the old key", e))?
        .map_err(old_key_error)?;
    Ok(Json(status_json(&state)))
}
