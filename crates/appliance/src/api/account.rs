//! The admin account: logging in and out (API token or browser session, through the login
//! throttle), changing the password, and asking for it again before destructive actions.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::auth::{self, SessionKind};
use crate::error::{ApiError, ApiResult};
use crate::login::{self, ClientAddr, Purpose};
use crate::pages;
use crate::state::AppState;

use super::SessionToken;

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: Zeroizing<String>,
}

/// Checks a login through the throttle ([`crate::login`]): `Ok(false)` for a wrong user name
/// or password, `Err` (429, 503) when it was not checked.
async fn check_login(
    state: &AppState,
    peer: ClientAddr,
    username: String,
    password: Zeroizing<String>,
    purpose: Purpose,
) -> Result<bool, ApiError> {
    login::check_password(state, peer.0, Some(username), password, purpose).await
}

fn login_refused() -> ApiError {
    ApiError::unauthorized_with(
        "wrong username or password; the first password is in DIR/initial-admin-password on the \
         appliance until it is changed",
    )
}

impl ApiError {
    fn unauthorized_with(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
}

pub(super) async fn api_login(
    State(state): State<AppState>,
    peer: ClientAddr,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b: LoginBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "send JSON {\"username\": \"admin\", \"password\": \"...\"} with Content-Type \
             application/json",
        )
    })?;
    if !check_login(&state, peer, b.username, b.password, Purpose::ApiLogin).await? {
        return Err(login_refused());
    }
    let token = state.sessions().open(SessionKind::Api);
    Ok(Json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_after_idle_seconds": auth::SESSION_IDLE.as_secs(),
        "expires_after_seconds": auth::SESSION_ABSOLUTE.as_secs(),
        "password_change_required": state.admin().is_initial(),
    })))
}

pub(super) async fn api_logout(
    Extension(t): Extension<SessionToken>,
    State(state): State<AppState>,
) -> StatusCode {
    state.sessions().close(&t.0);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: Zeroizing<String>,
}

pub(super) async fn page_login(
    State(state): State<AppState>,
    peer: ClientAddr,
    Form(f): Form<LoginForm>,
) -> Response {
    let refused = match check_login(&state, peer, f.username, f.password, Purpose::WebLogin).await {
        Ok(true) => None,
        Ok(false) => Some(login_refused()),
        Err(e) => Some(e),
    };
    if let Some(e) = refused {
        let mut res = (e.status, pages::login_html(Some(&e.message))).into_response();
        if let Some(secs) = e.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return res;
    }
    let token = state.sessions().open(SessionKind::Browser);
    let mut res = Redirect::to("/storage/encryption").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&token)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

pub(super) async fn page_logout(
    Extension(t): Extension<SessionToken>,
    State(state): State<AppState>,
) -> Response {
    state.sessions().close(&t.0);
    let mut res = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

#[derive(Deserialize)]
struct PasswordChange {
    current_password: Zeroizing<String>,
    new_password: Zeroizing<String>,
}

pub(super) async fn change_password(
    State(state): State<AppState>,
    peer: ClientAddr,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b: PasswordChange = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "send JSON {\"current_password\": \"...\", \"new_password\": \"...\"}",
        )
    })?;
    // The current password goes through the login throttle like every other password check,
    // so a session cannot be used to guess it at full speed.
    state
        .verify_admin_password(peer.0, b.current_password.clone())
        .await
        .map_err(|e| {
            if e.status == StatusCode::FORBIDDEN {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the current password is wrong; nothing was changed",
                )
            } else {
                e
            }
        })?;
    let s = state.clone();
    tokio::task::spawn_blocking(move || {
        s.admin()
            .change_password(&b.current_password, &b.new_password)
    })
    .await
    .map_err(|e| ApiError::internal("changing the password", e))??;
    // Every session ends, this one included: log in again with the new password.
    state.sessions().close_all();
    tracing::info!("admin password changed");
    Ok(Json(json!({
        "changed": true,
        "message": "password changed; every session was logged out, log in again with the new password",
    })))
}

#[derive(Deserialize)]
struct PasswordBody {
    password: Zeroizing<String>,
}

/// Destructive actions (Decrypt, resuming a decryption) take the admin password again: JSON
/// `{"password": "..."}`; 403 with a sentence when it is missing or wrong.
pub(crate) async fn require_password(
    state: &AppState,
    peer: &ClientAddr,
    body: &[u8],
    what: &str,
) -> ApiResult<()> {
    let b: PasswordBody = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{what} needs the admin password again: send JSON {{\"password\": \"...\"}}"),
        )
    })?;
    // Through the login throttle: 403 when wrong, 429 when the address is throttled.
    state
        .verify_admin_password(peer.0, b.password)
        .await
        .map_err(|e| {
            tracing::warn!(peer = %peer.0, "{what} refused: {}", e.message);
            ApiError {
                message: format!("{what} refused: {}; nothing was changed", e.message),
                ..e
            }
        })
}
