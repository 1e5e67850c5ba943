//! The layers every request passes: the security headers of every answer, and the
//! authentication (a bearer token for the API, a session cookie for the pages, with the CSRF
//! check on browser requests that change state).

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::auth::{self, SessionKind};
use crate::error::ApiError;
use crate::state::AppState;

/// Largest form body read to find the CSRF field.
const MAX_FORM_BODY: usize = 64 * 1024;

pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The appliance only speaks HTTPS: browsers should never try plain HTTP for it.
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn is_public(method: &Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&Method::GET, "/login")
            | (&Method::POST, "/login")
            | (&Method::POST, "/api/session")
            | (&Method::GET, "/assets/admin.css")
            | (&Method::GET, "/assets/admin.js")
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Looks the request's session up; checks CSRF on browser requests that change state.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if is_public(req.method(), &path) {
        return next.run(req).await;
    }
    let is_api = path.starts_with("/api/");
    let found = if let Some(t) = bearer(req.headers()) {
        match state.sessions().get(t) {
            Some(a) if a.kind == SessionKind::Api => Some((a, t.to_owned())),
            _ => None,
        }
    } else {
        req.headers()
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::cookie_token)
            .and_then(|t| {
                state
                    .sessions()
                    .get(t)
                    .filter(|a| a.kind == SessionKind::Browser)
                    .map(|a| (a, t.to_owned()))
            })
    };
    let Some((session, token)) = found else {
        return if is_api || req.method() != Method::GET {
            ApiError::unauthorized().into_response()
        } else {
            Redirect::to("/login").into_response()
        };
    };
    let mut req = req;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if session.kind == SessionKind::Browser && !safe {
        let header_ok = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| auth::same_token(v, &session.csrf));
        if !header_ok {
            // A plain HTML form: the token is the `csrf_token` field.
            let is_form = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if !is_form {
                return ApiError::csrf().into_response();
            }
            let (parts, body) = req.into_parts();
            let Ok(bytes) = to_bytes(body, MAX_FORM_BODY).await else {
                return ApiError::too_large("the form is too large").into_response();
            };
            let field_ok = form_urlencoded_field(&bytes, "csrf_token")
                .is_some_and(|v| auth::same_token(&v, &session.csrf));
            if !field_ok {
                return ApiError::csrf().into_response();
            }
            req = Request::from_parts(parts, Body::from(bytes));
        }
    }
    req.extensions_mut().insert(session);
    req.extensions_mut().insert(SessionToken(token));
    next.run(req).await
}

/// The raw token of the request's session.
#[derive(Debug, Clone)]
pub struct SessionToken(pub String);

/// The value of field `name` in an `application/x-www-form-urlencoded` body.
fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
