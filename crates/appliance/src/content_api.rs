//! The content API on the store: audit history (POST/GET /api/audit), recordings
//! (GET /api/recordings; PUT streamed, GET with Range, DELETE /api/recordings/{id}) and the
//! configuration (GET/PUT /api/config). While the volume is locked every endpoint answers 503
//! with the reason.

use std::io::{Read, Seek, SeekFrom};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use atrest_store::{Change, Error as StoreError, NewEvent, Order, Store, Timestamp, Value as Cfg};

use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, Content};

/// Largest recording accepted by one PUT: 64 GiB (the volume's free space is the real bound).
pub const MAX_RECORDING: u64 = 64 << 30;
/// Largest single audit POST body (events are at most 64 KiB of text each).
pub const MAX_AUDIT_BATCH: usize = 1000;
/// Bytes per piece of a streamed download.
const DOWNLOAD_PIECE: usize = 256 << 10;
/// Pieces buffered between the store and the network, per transfer.
const PIPE_DEPTH: usize = 4;

fn store(state: &AppState) -> ApiResult<Store> {
    match state.content() {
        Content::Ready(s) => Ok(s),
        Content::Locked(why) => Err(ApiError::unavailable(why)),
        Content::Detached => Err(ApiError::unavailable(
            "no content volume is attached to this appliance; start `atrest serve` without \
             --no-volume",
        )),
    }
}

/// The store for a write: refused (423) while the content is read-only ([`crate::readonly`]).
fn writable_store(state: &AppState) -> ApiResult<Store> {
    let s = store(state)?;
    crate::readonly::check_writable(state)?;
    Ok(s)
}

/// Maps a store error to a status and the store's sentence.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::bad_request(m),
        StoreError::NotFound(m) => ApiError::not_found(m),
        e @ (StoreError::Full { .. } | StoreError::DiskFull { .. }) => {
            tracing::warn!("content store: {e}");
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        e @ StoreError::DiskIo { .. } => {
            tracing::error!("content store: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        e @ StoreError::Interrupted => ApiError::unavailable(e.to_string()),
        e @ (StoreError::NoStore { .. } | StoreError::TooSmall(_)) => {
            ApiError::unavailable(e.to_string())
        }
        e @ (StoreError::Corrupt { .. } | StoreError::Decode(_)) => {
            tracing::error!("content store: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        e => ApiError::internal("the content store", e),
    }
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(what, e))?
        .map_err(store_error)
}

fn time_text(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(t.unix_micros() as i128 * 1000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_time(field: &str, s: &str) -> ApiResult<Timestamp> {
    let d = time::OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        ApiError::bad_request(format!(
            "`{field}` is not an RFC 3339 time; give e.g. 2026-01-31T12:00:00Z"
        ))
    })?;
    Ok(Timestamp(
        i64::try_from(d.unix_timestamp_nanos() / 1000)
            .map_err(|_| ApiError::bad_request(format!("`{field}` is out of range")))?,
    ))
}

// ---- audit ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditIn {
    session: String,
    kind: String,
    text: String,
    actor: Option<String>,
    time: Option<String>,
}

/// POST /api/audit: one event (an object) or several (an array), appended in order.
pub async fn audit_post(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not JSON ({e}); send {{\"session\", \"kind\", \"text\"}} or an array of them"
        ))
    })?;
    let items = match v {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        _ => {
            return Err(ApiError::bad_request(
                "send an event {\"session\", \"kind\", \"text\"} or an array of them",
            ));
        }
    };
    if items.is_empty() || items.len() > MAX_AUDIT_BATCH {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_AUDIT_BATCH} events per request"
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, it) in items.into_iter().enumerate() {
        let e: AuditIn = serde_json::from_value(it).map_err(|e| {
            ApiError::bad_request(format!(
                "event {i} is not valid ({e}); it needs session, kind and text (actor and time \
                 are optional)"
            ))
        })?;
        let time = match &e.time {
            Some(t) => parse_time("time", t)?,
            None => Timestamp::now(),
        };
        events.push(NewEvent {
            time,
            session: e.session,
            actor: e.actor.unwrap_or_else(|| "api".into()),
            kind: e.kind,
            text: e.text,
        });
    }
    let s = writable_store(&state)?;
    let range = blocking("appending to the audit history", move || {
        s.audit().append_batch(&events)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"first_seq": range.start, "last_seq": range.end.saturating_sub(1), "count": range.end - range.start}),
        ),
    ))
}

/// GET /api/audit's query: filters (session, time range, words), order and page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    session: Option<String>,
    from: Option<String>,
    to: Option<String>,
    q: Option<String>,
    order: Option<String>,
    offset: Option<u64>,
    limit: Option<usize>,
}

/// GET /api/audit: one page of matching events, newest first unless `order=oldest`.
pub async fn audit_get(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; the parameters are session, from, to (RFC 3339), q (words), order \
             (newest|oldest), offset and limit (1-{})",
            e.body_text(),
            atrest_store::audit::MAX_PAGE
        ))
    })?;
    let limit = q.limit.unwrap_or(atrest_store::audit::DEFAULT_PAGE);
    if limit == 0 || limit > atrest_store::audit::MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            atrest_store::audit::MAX_PAGE
        )));
    }
    let order = match q.order.as_deref() {
        None | Some("newest") => Order::NewestFirst,
        Some("oldest") => Order::OldestFirst,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order `{o}` is unknown; use newest or oldest"
            )));
        }
    };
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?;
    let to = q.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::bad_request("`from` is after `to`; swap them"));
    }
    let offset = q.offset.unwrap_or(0);
    let query = atrest_store::Query {
        session: q.session.filter(|s| !s.is_empty()),
        from,
        to,
        words: q.q.filter(|s| !s.trim().is_empty()),
        order,
        offset,
        limit,
    };
    let s = store(&state)?;
    let page = blocking("querying the audit history", move || {
        s.audit().query(&query)
    })
    .await?;
    let events: Vec<Value> = page
        .events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "time": time_text(e.time),
                "session": e.session,
                "actor": e.actor,
                "kind": e.kind,
                "text": e.text,
                "hash": hex::encode(e.hash),
            })
        })
        .collect();
    let next = offset + events.len() as u64;
    Ok(Json(json!({
        "total": page.total,
        "offset": offset,
        "limit": limit,
        "next_offset": (next < page.total).then_some(next),
        "events": events,
    })))
}

// ---- configuration ----

fn cfg_to_json(v: &Cfg) -> Value {
    match v {
        Cfg::Bool(b) => json!(b),
        Cfg::Int(i) => json!(i),
        Cfg::Float(f) => json!(f),
        Cfg::Text(s) => json!(s),
        Cfg::Bytes(b) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)}),
    }
}

fn cfg_from_json(key: &str, v: Value) -> ApiResult<Option<Cfg>> {
    let bad = || {
        ApiError::bad_request(format!(
            "the value of `{key}` is not a setting: use true/false, a number, text, \
             {{\"base64\": \"...\"}} for bytes, or null to remove it"
        ))
    };
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => Cfg::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cfg::Int(i),
            None => Cfg::Float(n.as_f64().ok_or_else(bad)?),
        },
        Value::String(s) => Cfg::Text(s),
        Value::Object(o) if o.len() == 1 => {
            let b = o.get("base64").and_then(Value::as_str).ok_or_else(bad)?;
            Cfg::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| bad())?,
            )
        }
        _ => return Err(bad()),
    }))
}

fn settings_json(list: Vec<(String, Cfg)>) -> Value {
    let mut m = Map::new();
    for (k, v) in list {
        m.insert(k, cfg_to_json(&v));
    }
    json!({ "settings": m })
}

/// GET /api/audit/verify: walks the whole hash chain (and checks its seal under the volume
/// key when encrypted): `{"ok", "events", "sealed", "first_bad": null | {"seq", "reason"},
/// "checked_at"}`. A broken history is also raised in GET /api/encryption's warnings.
pub async fn audit_verify(
    State(state): State<AppState>,
) -> ApiResult<Json<crate::status::AuditCheck>> {
    let s = store(&state)?;
    let check = blocking("checking the audit history", move || {
        crate::status::AuditCheck::of(&s)
    })
    .await?;
    if let Some(b) = state.backend() {
        b.note_audit_check(check.clone());
    }
    Ok(Json(check))
}

/// GET /api/config: every key of the configuration and its value.
pub async fn config_get(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let s = store(&state)?;
    let list = blocking("reading the configuration", move || s.config().list()).await?;
    Ok(Json(settings_json(list)))
}

/// PUT /api/config: `{"key": value, ...}` applied at once (null removes a key).
pub async fn config_put(State(state): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not JSON ({e}); send an object {{\"key\": value, ...}}"
        ))
    })?;
    let Value::Object(o) = v else {
        return Err(ApiError::bad_request(
            "send an object {\"key\": value, ...}; null removes a key",
        ));
    };
    if o.is_empty() {
        return Err(ApiError::bad_request(
            "the object is empty: name at least one key",
        ));
    }
    let mut changes = Vec::with_capacity(o.len());
    for (k, v) in o {
        changes.push(match cfg_from_json(&k, v)? {
            Some(v) => Change::Set(k, v),
            None => Change::Delete(k),
        });
    }
    let s = writable_store(&state)?;
    let list = blocking("changing the configuration", move || {
        s.config().apply(&changes)?;
        s.config().list()
    })
    .await?;
    Ok(Json(settings_json(list)))
}

// ---- recordings ----

fn info_json(i: &atrest_store::RecordingInfo) -> Value {
    json!({
        "id": i.id,
        "session": i.session,
        "size": i.size,
        "sha256": i.sha256_hex(),
        "created": time_text(i.created),
    })
}

/// GET /api/recordings.
pub async fn recordings_list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let s = store(&state)?;
    let list = blocking("listing the recordings", move || s.recordings().list()).await?;
    Ok(Json(json!({
        "recordings": list.iter().map(info_json).collect::<Vec<_>>()
    })))
}

/// PUT /api/recordings/{id}'s query: the session the recording belongs to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    session: Option<String>,
}

/// Body bytes gathered before they are handed to the store (one blocking call per piece).
const UPLOAD_PIECE: usize = 256 << 10;

/// An upload under way and its slot. Dropped unfinished — the client went away, the body
/// stalled, a shutdown cut the request off — it is cancelled (nothing is published), on a
/// blocking thread since cancelling writes to the store.
struct Active {
    up: Option<atrest_store::Upload>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Active {
    fn drop(&mut self) {
        let (up, slot) = (self.up.take(), self.slot.take());
        if up.is_none() {
            return;
        }
        let cancel = move || {
            drop(up);
            drop(slot);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(cancel);
            }
            Err(_) => cancel(),
        }
    }
}

impl Active {
    /// Hands `piece` to the store on a blocking thread.
    async fn write(mut self, piece: Vec<u8>) -> ApiResult<Active> {
        let (a, r) = tokio::task::spawn_blocking(move || {
            let r = match self.up.as_mut() {
                Some(u) => u.write(&piece),
                None => Ok(()),
            };
            (self, r)
        })
        .await
        .map_err(|e| ApiError::internal("storing the recording", e))?;
        r.map_err(store_error)?;
        Ok(a)
    }

    /// Publishes the recording (the whole body arrived).
    async fn finish(mut self) -> ApiResult<atrest_store::RecordingInfo> {
        tokio::task::spawn_blocking(move || {
            let up = self.up.take();
            let r = up.map(|u| u.finish());
            drop(self);
            r
        })
        .await
        .map_err(|e| ApiError::internal("storing the recording", e))?
        .ok_or_else(|| ApiError::internal("storing the recording", "no upload"))?
        .map_err(store_error)
    }
}

/// PUT /api/recordings/{id}?session=S: the body is streamed into the store (chunked transfer
/// or a Content-Length); the recording appears only when the whole body arrived and was
/// committed, and only then replaces the older version. Whatever cuts the request short (the
/// client, a stalled body, a shutdown) publishes nothing.
pub async fn recording_put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    match put(state, id, query, req).await {
        Ok(info) => (StatusCode::CREATED, Json(info_json(&info))).into_response(),
        Err(r) => r,
    }
}

async fn put(
    state: AppState,
    id: String,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<atrest_store::RecordingInfo, Response> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("{}; the only parameter is session", e.body_text()))
            .into_response()
    })?;
    atrest_store::recordings::check_id(&id).map_err(|e| store_error(e).into_response())?;
    let session = q.session.unwrap_or_default();
    if session.is_empty() {
        return Err(ApiError::bad_request(
            "name the recording's session: PUT /api/recordings/ID?session=SESSION",
        )
        .into_response());
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let s = writable_store(&state).map_err(IntoResponse::into_response)?;
    let capacity = s.space().capacity;
    let limit = MAX_RECORDING.min(capacity);
    let too_large = || {
        ApiError::too_large(format!(
            "the recording is larger than {limit} bytes, the most this appliance stores; \
             split it or move the content to a bigger volume"
        ))
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large().into_response());
    }
    let slot = state.uploads().try_start().map_err(crate::limits::busy)?;
    let body_timeout = state.config().limits.body_timeout;
    let r = async move {
        let up = blocking("starting the upload", move || {
            s.recordings().upload(&id, &session)
        })
        .await?;
        let mut active = Active {
            up: Some(up),
            slot: Some(slot),
        };
        let mut body = req.into_body();
        let mut piece: Vec<u8> = Vec::new();
        let mut total = 0u64;
        loop {
            let frame = match tokio::time::timeout(body_timeout, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "no data of the upload arrived for {} seconds; nothing of it was \
                             kept: send the recording again",
                            body_timeout.as_secs()
                        ),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_request(format!(
                        "the upload was cut off ({e}); nothing of it was kept: send the \
                         recording again"
                    )));
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if total > limit {
                return Err(too_large());
            }
            piece.extend_from_slice(&data);
            if piece.len() >= UPLOAD_PIECE {
                active = active.write(std::mem::take(&mut piece)).await?;
            }
        }
        if !piece.is_empty() {
            active = active.write(piece).await?;
        }
        // The whole body arrived: publish.
        active.finish().await
    };
    r.await.map_err(IntoResponse::into_response)
}

/// A parsed `Range: bytes=...` header (one range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `a-b` or `a-`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Parses a Range header; `None` when it is not a single byte range (answered 416).
pub fn parse_range(v: &str) -> Option<RangeSpec> {
    let spec = v.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') || spec.len() > 64 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(num(b)?)),
        (false, true) => Some(RangeSpec::From(num(a)?, None)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (b >= a).then_some(RangeSpec::From(a, Some(b)))
        }
        (true, true) => None,
    }
}

/// The inclusive byte range of `spec` in a recording of `size` bytes, if satisfiable.
pub fn resolve_range(spec: RangeSpec, size: u64) -> Option<(u64, u64)> {
    match spec {
        RangeSpec::From(a, b) => {
            if a >= size {
                return None;
            }
            Some((a, b.map_or(size - 1, |b| b.min(size - 1))))
        }
        RangeSpec::Suffix(0) => None,
        RangeSpec::Suffix(n) => {
            if size == 0 {
                return None;
            }
            Some((size.saturating_sub(n), size - 1))
        }
    }
}

fn header_text(v: String) -> HeaderValue {
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
}

/// GET /api/recordings/{id}, with `Range: bytes=a-b` for a part (206).
pub async fn recording_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    atrest_store::recordings::check_id(&id).map_err(store_error)?;
    let s = store(&state)?;
    let id2 = id.clone();
    let s2 = s.clone();
    let info = blocking("reading the recording", move || s2.recordings().info(&id2))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "there is no recording {id:?}; GET /api/recordings lists them"
            ))
        })?;
    let size = info.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => {
            let spec = parse_range(r);
            match spec.and_then(|sp| resolve_range(sp, size)) {
                Some(r) => Some(r),
                None => {
                    let mut res = ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        format!(
                            "the range `{r}` is not one satisfiable byte range of this \
                             {size}-byte recording; ask for e.g. bytes=0-1023"
                        ),
                    )
                    .into_response();
                    res.headers_mut().insert(
                        header::CONTENT_RANGE,
                        header_text(format!("bytes */{size}")),
                    );
                    return Ok(res);
                }
            }
        }
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(PIPE_DEPTH);
    // The status goes out only once the recording opened and its first piece was read and
    // checked: a failing read is answered with its error, never a 200 with a wrong body.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<ApiResult<()>>();
    tokio::task::spawn_blocking(move || {
        let mut r = match s.recordings().open(&id) {
            Ok(r) => r,
            Err(e) => {
                let _ = first_tx.send(Err(store_error(e)));
                return;
            }
        };
        let mut first = Some(first_tx);
        let fail = |first: &mut Option<tokio::sync::oneshot::Sender<ApiResult<()>>>,
                    e: std::io::Error| {
            tracing::error!("reading recording {id:?}: {e}");
            match first.take() {
                Some(f) => {
                    let _ = f.send(Err(read_error(e)));
                }
                None => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        };
        if let Err(e) = r.seek(SeekFrom::Start(start)) {
            return fail(&mut first, e);
        }
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(DOWNLOAD_PIECE);
            let mut buf = vec![0u8; n];
            if let Err(e) = r.read_exact(&mut buf) {
                return fail(&mut first, e);
            }
            left -= n as u64;
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // the client went away
            }
        }
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
    });
    first_rx
        .await
        .map_err(|e| ApiError::internal("reading the recording", e))??;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut res = Response::new(Body::from_stream(stream));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, header_text(len.to_string()));
    h.insert(
        header::ETAG,
        header_text(format!("\"{}\"", info.sha256_hex())),
    );
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            header_text(format!("bytes {start}-{end}/{size}")),
        );
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(res)
}

/// A failed read of a recording: the store's sentence with its status.
fn read_error(e: std::io::Error) -> ApiError {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<StoreError>() {
            Ok(se) => store_error(*se),
            Err(other) => ApiError::internal("reading the recording", other),
        },
        None => ApiError::internal("reading the recording", "an I/O error"),
    }
}

/// DELETE /api/recordings/{id}.
pub async fn recording_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    atrest_store::recordings::check_id(&id).map_err(store_error)?;
    let s = writable_store(&state)?;
    let id2 = id.clone();
    let existed = blocking("deleting the recording", move || {
        s.recordings().delete(&id2)
    })
    .await?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "there is no recording {id:?}; GET /api/recordings lists them"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeSpec::From(0, Some(9))));
        assert_eq!(parse_range("bytes=5-"), Some(RangeSpec::From(5, None)));
        assert_eq!(parse_range("bytes=-3"), Some(RangeSpec::Suffix(3)));
        for bad in [
            "bytes=",
            "bytes=-",
            "bytes=9-2",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=a-b",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
        assert_eq!(
            resolve_range(RangeSpec::From(0, Some(99)), 10),
            Some((0, 9))
        );
        assert_eq!(resolve_range(RangeSpec::From(10, None), 10), None);
        assert_eq!(resolve_range(RangeSpec::Suffix(3), 10), Some((7, 9)));
        assert_eq!(resolve_range(RangeSpec::Suffix(30), 10), Some((0, 9)));
        assert_eq!(resolve_range(RangeSpec::Suffix(0), 10), None);
        assert_eq!(resolve_range(RangeSpec::From(0, None), 0), None);
    }
}
