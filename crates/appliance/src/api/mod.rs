//! The router: web pages and the REST API under /api/, behind one authentication layer.
//!
//! The handlers live by concern: `layers` (security headers, authentication), `account`
//! (login, logout, the admin password), `kmip` (the KMIP settings and their test),
//! `conversion` (Encrypt, Rekey, Move, Decrypt, Resume, grow) and `policy` (the key policy
//! and old keys).

mod account;
mod conversion;
mod kmip;
mod layers;
mod policy;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::state::AppState;
use crate::status::EncryptionStatus;
use crate::{content_api, openapi, pages};

pub(crate) use account::require_password;
use account::{api_login, api_logout, change_password, page_login, page_logout};
use conversion::{decrypt, encrypt, move_volume, rekey, resume, volume_grow};
use kmip::{kmip_get, kmip_put, kmip_test_run};
pub use layers::SessionToken;
use layers::{authenticate, security_headers};
use policy::{old_key_destroy, old_key_revoke, policy_put};

/// Largest request body: 2 MiB (the KMIP form with its uploads fits well within it).
pub const MAX_BODY: usize = 2 << 20;

/// The whole appliance.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/session", post(api_login).delete(api_logout))
        .route("/api/account/password", post(change_password))
        .route("/api/encryption", get(encryption_status))
        .route("/api/encryption/kmip", get(kmip_get).put(kmip_put))
        .route("/api/encryption/test", post(kmip_test_run))
        .route("/api/encryption/encrypt", post(encrypt))
        .route("/api/encryption/rekey", post(rekey))
        .route("/api/encryption/move", post(move_volume))
        .route("/api/encryption/decrypt", post(decrypt))
        .route("/api/encryption/resume", post(resume))
        .route(
            "/api/encryption/read-only/confirm",
            post(crate::readonly::confirm),
        )
        .route("/api/encryption/policy", axum::routing::put(policy_put))
        .route("/api/volume/grow", post(volume_grow))
        .route(
            "/api/encryption/recovery-key",
            get(crate::recovery::api_status)
                .post(crate::recovery::api_add)
                .delete(crate::recovery::api_remove),
        )
        .route("/api/encryption/unlock", post(crate::recovery::api_unlock))
        .route("/api/encryption/old-keys/{id}/revoke", post(old_key_revoke))
        .route(
            "/api/encryption/old-keys/{id}/destroy",
            post(old_key_destroy),
        )
        .route("/api/openapi.json", get(openapi_doc))
        .route(
            "/api/audit",
            get(content_api::audit_get).post(content_api::audit_post),
        )
        .route("/api/audit/verify", get(content_api::audit_verify))
        .route(
            "/api/config",
            get(content_api::config_get).put(content_api::config_put),
        )
        .route("/api/recordings", get(content_api::recordings_list))
        .route(
            "/api/recordings/{id}",
            get(content_api::recording_get)
                .put(content_api::recording_put)
                .delete(content_api::recording_delete),
        );
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/storage/encryption") }))
        .route("/login", get(pages::login_page).post(page_login))
        .route("/logout", post(page_logout))
        .route("/storage/encryption", get(pages::encryption_page))
        .route("/assets/admin.css", get(pages::admin_css))
        .route("/assets/admin.js", get(pages::admin_js));
    Router::new()
        .merge(api)
        .merge(pages)
        .route("/api/{*rest}", axum::routing::any(api_not_found))
        .fallback(page_not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(crate::limits::deliver_refusals))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ))
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("no such API endpoint; see GET /api/openapi.json for the list")
}

async fn page_not_found() -> Response {
    (StatusCode::NOT_FOUND, pages::not_found()).into_response()
}

/// GET /api/encryption's answer as JSON (the typed [`EncryptionStatus`], serialized).
pub fn status_json(state: &AppState) -> Value {
    serde_json::to_value(EncryptionStatus::of(state)).unwrap_or(Value::Null)
}

async fn encryption_status(State(state): State<AppState>) -> Json<EncryptionStatus> {
    Json(EncryptionStatus::of(&state))
}

async fn openapi_doc() -> Json<Value> {
    Json(openapi::document())
}

/// The session of a request (set by the authentication layer).
pub fn session_of(req_ext: &axum::http::Extensions) -> Option<&Authenticated> {
    req_ext.get::<Authenticated>()
}
