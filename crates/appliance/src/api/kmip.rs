//! The KMIP settings: reading them, saving them (JSON, or the page's multipart form with
//! its uploads), and Save and Test.

use axum::Json;
use axum::body::to_bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::kmip_config::{KmipSettings, KmipUpdate};
use crate::kmip_test;
use crate::state::AppState;
use crate::status::SettingsView;
use crate::workflow::State as WfState;

use super::MAX_BODY;

pub(super) async fn kmip_get(State(state): State<AppState>) -> ApiResult<Json<SettingsView>> {
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

pub(super) async fn kmip_put(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<SettingsView>> {
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
        let body = to_bytes(req.into_body(), MAX_BODY).await.map_err(|_| {
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

pub(super) async fn kmip_test_run(State(state): State<AppState>) -> ApiResult<Json<Value>> {
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
