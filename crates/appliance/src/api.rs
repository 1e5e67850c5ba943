//! The router: web pages and the REST API under /api/, behind one authentication layer.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::auth::{self, Authenticated, SessionKind};
use crate::error::{ApiError, ApiResult};
use crate::kmip_config::{KmipSettings, KmipUpdate};
use crate::login::{self, ClientAddr, Purpose};
use crate::state::AppState;
use crate::status::{EncryptionStatus, SettingsView};
use crate::workflow::{Request as WfRequest, State as WfState};
use crate::{content_api, kmip_test, openapi, pages};

/// Largest request body: 2 MiB (the KMIP form with its uploads fits well within it).
pub const MAX_BODY: usize = 2 << 20;
/// Largest form body read to find the CSRF field.
const MAX_FORM_BODY: usize = 64 * 1024;

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

async fn security_headers(req: Request, next: Next) -> Response {
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
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
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

// ---- login ----

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

async fn api_login(
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

async fn api_logout(
    Extension(t): Extension<SessionToken>,
    State(state): State<AppState>,
) -> StatusCode {
    state.sessions().close(&t.0);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: Zeroizing<String>,
}

async fn page_login(
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

async fn page_logout(
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

async fn change_password(
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

// ---- encryption ----

/// GET /api/encryption's answer as JSON (the typed [`EncryptionStatus`], serialized).
pub fn status_json(state: &AppState) -> Value {
    serde_json::to_value(EncryptionStatus::of(state)).unwrap_or(Value::Null)
}

async fn encryption_status(State(state): State<AppState>) -> Json<EncryptionStatus> {
    Json(EncryptionStatus::of(&state))
}

async fn kmip_get(State(state): State<AppState>) -> ApiResult<Json<SettingsView>> {
    let k = state.kmip().ok_or_else(|| {
        ApiError::not_found(
            "no KMIP settings are saved yet; PUT /api/encryption/kmip or fill in Storage > \
             Encryption",
        )
    })?;
    Ok(Json(k.view()))
}

/// The JSON form of PUT /api/encryption/kmip.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KmipJson {
    servers: Option<Vec<String>>,
    port: Option<u16>,
    server_name: Option<String>,
    username: Option<String>,
    password: Option<Zeroizing<String>>,
    passphrase: Option<Zeroizing<String>>,
    ca_pem: Option<String>,
    client_cert_pem: Option<String>,
    client_key_pem: Option<Zeroizing<String>>,
    client_p12_base64: Option<String>,
}

fn update_from_json(j: KmipJson) -> ApiResult<KmipUpdate> {
    if j.client_cert_pem.is_some() && j.client_p12_base64.is_some() {
        return Err(ApiError::bad_request(
            "give either client_cert_pem (with client_key_pem) or client_p12_base64, not both",
        ));
    }
    let p12 = match j.client_p12_base64 {
        Some(b) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| {
                    ApiError::bad_request(
                        "client_p12_base64 is not base64; encode the PKCS#12 file with base64",
                    )
                })?,
        ),
        None => None,
    };
    Ok(KmipUpdate {
        servers: j.servers,
        port: j.port,
        server_name: j.server_name,
        username: j.username,
        password: j.password,
        passphrase: j.passphrase,
        ca: j.ca_pem.map(String::into_bytes),
        client_cert: p12.or(j.client_cert_pem.map(String::into_bytes)),
        client_key: j
            .client_key_pem
            .map(|k| Zeroizing::new(k.as_bytes().to_vec())),
        source: None,
    })
}

async fn update_from_multipart(mut m: Multipart) -> ApiResult<KmipUpdate> {
    let mut u = KmipUpdate::default();
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            e.status(),
            format!(
                "the form could not be read ({}); send it again",
                e.body_text()
            ),
        )
    };
    while let Some(field) = m.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        let data = Zeroizing::new(field.bytes().await.map_err(bad)?.to_vec());
        let text = || -> ApiResult<String> {
            String::from_utf8(data.to_vec())
                .map(|s| s.trim().to_owned())
                .map_err(|_| ApiError::bad_request(format!("the field {name} is not text")))
        };
        match name.as_str() {
            "csrf_token" => {}
            "hosts" | "servers" => {
                let t = text()?;
                u.servers = Some(
                    t.split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "port" => {
                let t = text()?;
                if !t.is_empty() {
                    u.port = Some(t.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "the port `{t}` is not a number 1-65535; KMIP uses 5696"
                        ))
                    })?);
                }
            }
            "server_name" => u.server_name = Some(text()?),
            "username" => u.username = Some(text()?),
            "password" => {
                let t = Zeroizing::new(text()?);
                if !t.is_empty() {
                    u.password = Some(t);
                }
            }
            "passphrase" => {
                let t = Zeroizing::new(text()?);
                if !t.is_empty() {
                    u.passphrase = Some(t);
                }
            }
            "ca" if !data.is_empty() => u.ca = Some(data.to_vec()),
            "client_cert" if !data.is_empty() => u.client_cert = Some(data.to_vec()),
            "client_key" if !data.is_empty() => u.client_key = Some(data.clone()),
            "ca" | "client_cert" | "client_key" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field `{other}`; see GET /api/openapi.json"
                )));
            }
        }
    }
    Ok(u)
}

async fn kmip_put(State(state): State<AppState>, req: Request) -> ApiResult<Json<SettingsView>> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let update = if ct.starts_with("multipart/form-data") {
        let m = Multipart::from_request(req, &state).await.map_err(|e| {
            ApiError::bad_request(format!("{}; send multipart/form-data", e.body_text()))
        })?;
        update_from_multipart(m).await?
    } else if ct.starts_with("application/json") {
        let body = to_bytes(req.into_body(), super::api::MAX_BODY)
            .await
            .map_err(|_| {
                ApiError::too_large(format!(
                    "the request is larger than {} bytes; upload smaller files",
                    MAX_BODY
                ))
            })?;
        let j: KmipJson = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the JSON body is not valid KMIP settings ({e}); see GET /api/openapi.json"
            ))
        })?;
        update_from_json(j)?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the KMIP settings as application/json or multipart/form-data",
        ));
    };
    let mut update = update;
    update.source = Some(crate::kmip_config::Source::Manual);
    if state.workflow().state != WfState::Plain {
        tracing::info!("KMIP settings changed while the volume is encrypted");
    }
    let old = state.kmip();
    let new = tokio::task::spawn_blocking(move || KmipSettings::apply(old.as_ref(), update))
        .await
        .map_err(|e| ApiError::internal("checking the KMIP settings", e))??;
    state
        .set_kmip(new.clone())
        .map_err(|e| ApiError::internal("saving the KMIP settings", e))?;
    tracing::info!(servers = ?new.servers, "KMIP settings saved");
    if let Some(b) = state.backend() {
        b.retry_now();
    }
    Ok(Json(new.view()))
}

async fn kmip_test_run(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let Some(settings) = state.kmip() else {
        return Err(ApiError::conflict(
            "no KMIP settings are saved yet; save them first (PUT /api/encryption/kmip or Save \
             and Test Changes)",
        ));
    };
    let Ok(_guard) = state.inner.test_lock.try_lock() else {
        return Err(ApiError::conflict(
            "a test of the KMIP settings is already running; wait for its result",
        ));
    };
    let timeouts = state.config().kmip_timeouts;
    let st = state.clone();
    let report = tokio::task::spawn_blocking(move || {
        let report = kmip_test::run(&settings, timeouts);
        for srv in &report.servers {
            let result = match srv
                .steps
                .iter()
                .find(|s| s.status == kmip_test::StepStatus::Failed)
            {
                None => {
                    "passed (connection, certificates, version, test key life cycle)".to_string()
                }
                Some(f) => format!(
                    "failed at {} ({}): {}",
                    f.name,
                    f.class.as_deref().unwrap_or("-"),
                    f.detail
                ),
            };
            st.audit_key(&srv.server, "test", None, &result);
        }
        report
    })
    .await
    .map_err(|e| ApiError::internal("testing the KMIP settings", e))?;
    tracing::info!(ok = report.ok, summary = %report.summary, "KMIP settings tested");
    state.set_last_test(report.clone());
    Ok(Json(serde_json::to_value(&report).unwrap_or(Value::Null)))
}

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

async fn encrypt(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let full = full_of(&body)?;
    start(&state, WfRequest::Encrypt, Some(full)).await
}

async fn rekey(State(state): State<AppState>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let full = full_of(&body)?;
    // The administrator is there: a recovery key is renewed and answered once (not removed).
    crate::recovery::arm_renewal(&state);
    crate::recovery::with_renewed(start(&state, WfRequest::Rekey, Some(full)).await, &state)
}

/// Move to these settings: a Rekey onto the KMIP server(s) of the saved settings, once they
/// passed Save and Test; the old key is retired on the old server (previous settings).
async fn move_volume(
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

async fn decrypt(
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
async fn resume(
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
async fn volume_grow(State(state): State<AppState>) -> ApiResult<Json<Value>> {
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

/// PUT /api/encryption/policy: what happens to retired keys, and the rotation interval.
async fn policy_put(State(state): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
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
async fn old_key_revoke(
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
async fn old_key_destroy(
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

async fn openapi_doc() -> Json<Value> {
    Json(openapi::document())
}

/// The session of a request (set by the authentication layer).
pub fn session_of(req_ext: &axum::http::Extensions) -> Option<&Authenticated> {
    req_ext.get::<Authenticated>()
}
