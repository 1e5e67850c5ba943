//! The one error type of the web admin and the REST API: a status and a sentence for a person.
//!
//! Every message says what failed and what to do next. Messages never carry key material,
//! passphrases or passwords; internal details go to the log, not to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// What failed and what to do next, for a person.
    pub message: String,
    /// Seconds to send in `Retry-After` (429 and 503 answers that know when to come back).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status` and `message`, without `Retry-After`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with a `Retry-After` of `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no valid session or token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "log in first: POST /api/session with {\"username\", \"password\"} and send the \
             returned token as `Authorization: Bearer TOKEN`, or log in on the web page",
        )
    }

    /// 403: a browser request that changes state without the CSRF token.
    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "the request has no valid CSRF token; reload the page and try again (API clients: \
             use `Authorization: Bearer TOKEN` instead of the browser cookie)",
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request is valid but the appliance is not in a state to do it.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 413: an upload or body over its limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 422: the settings were understood but are unusable (bad certificate, wrong passphrase).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 503: the content is not available (the volume is locked or busy).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: something failed on the appliance. The detail goes to the log only.
    pub fn internal(what: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!("{what}: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed on the appliance; see the appliance log, then try again"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
