//! Metrics and health checks on their own plain-HTTP address (`--metrics-listen`, off by
//! default): `GET /metrics` (Prometheus text exposition 0.0.4), `GET /healthz` (the process
//! answers) and `GET /readyz` (200 only while the content is unlocked and usable; 503 with one
//! word otherwise). None of them needs a login and none reveals more than its numbers: no key
//! id, no key material, no password, no address of a client.
//!
//! The exposition is written here rather than with a metrics crate: the gauges are read from
//! the same typed status GET /api/encryption serves at each scrape (nothing to keep in step),
//! the few counters and one histogram family are a page of code, and the text format is small
//! and stable; a registry crate would add a second model of the same state.
//!
//! Every metric is listed in docs/operations.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State as AxumState};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;

use crate::state::{AppState, Content};
use crate::status::EncryptionStatus;
use crate::workflow::State;

/// Upper bounds (seconds) of the KMIP latency buckets.
pub const KMIP_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters the appliance keeps (the gauges are read from the status at each scrape).
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route template, status) → requests.
    http: Mutex<BTreeMap<(String, u16), u64>>,
    login_failures: AtomicU64,
    login_throttled: AtomicU64,
}

impl Metrics {
    /// A wrong admin password (or user name) was refused.
    pub fn login_failed(&self) {
        self.login_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A login attempt was refused unchecked because its source is locked out.
    pub fn login_throttled(&self) {
        self.login_throttled.fetch_add(1, Ordering::Relaxed);
    }

    fn request(&self, route: &str, status: u16) {
        *self
            .http
            .lock()
            .entry((route.to_owned(), status))
            .or_default() += 1;
    }
}

#[derive(Debug, Clone)]
struct Histogram {
    buckets: [u64; KMIP_BUCKETS.len()],
    count: u64,
    sum: f64,
    errors: u64,
}

/// KMIP operations by (server, operation): the client reports them process-wide.
fn kmip() -> &'static Mutex<BTreeMap<(String, String), Histogram>> {
    static KMIP: OnceLock<Mutex<BTreeMap<(String, String), Histogram>>> = OnceLock::new();
    KMIP.get_or_init(Default::default)
}

/// Server certificates seen by Save and Test: server → (days left then, when).
fn server_certs() -> &'static Mutex<BTreeMap<String, (i32, Instant)>> {
    static CERTS: OnceLock<Mutex<BTreeMap<String, (i32, Instant)>>> = OnceLock::new();
    CERTS.get_or_init(Default::default)
}

/// Starts timing KMIP operations (once per process; later calls do nothing).
pub fn observe_kmip() {
    atrest_kmip::client::set_observer(Box::new(|server, op, took, ok| {
        let op = op.name().unwrap_or("other").to_owned();
        let mut m = kmip().lock();
        let h = m.entry((server.to_string(), op)).or_insert(Histogram {
            buckets: [0; KMIP_BUCKETS.len()],
            count: 0,
            sum: 0.0,
            errors: 0,
        });
        let secs = took.as_secs_f64();
        for (b, le) in h.buckets.iter_mut().zip(KMIP_BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        if !ok {
            h.errors += 1;
        }
    }));
}

/// Save and Test saw `server`'s certificate with `days_left`.
pub fn note_server_certificate(server: &str, days_left: Option<i32>) {
    if let Some(d) = days_left {
        server_certs()
            .lock()
            .insert(server.to_owned(), (d, Instant::now()));
    }
}

/// Counts every request of the HTTPS router by its route template (never the raw path, so the
/// label set stays bounded) and answer status.
pub async fn count_requests(
    AxumState(state): AxumState<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    state.metrics().request(&route, resp.status().as_u16());
    resp
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

const STATES: [State; 6] = [
    State::Plain,
    State::Encrypting,
    State::Encrypted,
    State::Locked,
    State::Rekeying,
    State::Decrypting,
];

/// The whole exposition now.
pub fn render(state: &AppState) -> String {
    let st = EncryptionStatus::of(state);
    let mut o = Out(String::new());

    o.family(
        "atrest_encryption_state",
        "gauge",
        "1 for the state Storage > Encryption is in, 0 for the others.",
    );
    for s in STATES {
        let v = if s == st.state { 1.0 } else { 0.0 };
        o.sample("atrest_encryption_state", &[("state", s.as_str())], v);
    }

    let p = st.progress.as_ref();
    o.family(
        "atrest_conversion_done_bytes",
        "gauge",
        "Bytes converted by the conversion under way (0 when none is).",
    );
    o.sample(
        "atrest_conversion_done_bytes",
        &[],
        p.map_or(0.0, |p| p.done_bytes as f64),
    );
    o.family(
        "atrest_conversion_total_bytes",
        "gauge",
        "Bytes the conversion under way converts in all (0 when none is).",
    );
    o.sample(
        "atrest_conversion_total_bytes",
        &[],
        p.map_or(0.0, |p| p.total_bytes as f64),
    );
    o.family(
        "atrest_conversion_rate_bytes_per_second",
        "gauge",
        "Current rate of the conversion under way (0 when none is or not yet measured).",
    );
    o.sample(
        "atrest_conversion_rate_bytes_per_second",
        &[],
        p.and_then(|p| p.bytes_per_second).unwrap_or(0.0),
    );

    o.family(
        "atrest_content_read_only",
        "gauge",
        "1 while the content is read-only (the volume key is Deactivated or Compromised), else 0.",
    );
    o.sample(
        "atrest_content_read_only",
        &[],
        if st.read_only.is_some() { 1.0 } else { 0.0 },
    );

    let vol = st.volume.clone().unwrap_or_default();
    o.family(
        "atrest_unlock_attempts_total",
        "counter",
        "Attempts to fetch the volume key while locked, since the start.",
    );
    o.sample(
        "atrest_unlock_attempts_total",
        &[],
        vol.unlock_attempts as f64,
    );
    o.family(
        "atrest_unlock_failure",
        "gauge",
        "While locked: 1 per server with the class of its last failure to give the key.",
    );
    for r in &st.lock_reasons {
        o.sample(
            "atrest_unlock_failure",
            &[("server", &r.server), ("class", &r.class)],
            1.0,
        );
    }

    o.family(
        "atrest_key_check_ok",
        "gauge",
        "1 when the last check found the volume key Active on the KMIP server, 0 when not \
         (absent before the first check).",
    );
    if let Some(k) = &vol.key_check {
        o.sample("atrest_key_check_ok", &[], if k.ok { 1.0 } else { 0.0 });
    }

    o.family(
        "atrest_certificate_expiry_seconds",
        "gauge",
        "Seconds until a certificate expires, to the day (negative: expired): the KMIP CA and \
         client certificate saved, and each server's certificate as Save and Test last saw it.",
    );
    if let Some(k) = state.kmip() {
        for (what, c) in [("ca", k.ca_summary()), ("client", k.client_summary())] {
            if let Some(d) = c.and_then(|c| c.days_left) {
                o.sample(
                    "atrest_certificate_expiry_seconds",
                    &[("certificate", what), ("server", "")],
                    d as f64 * 86_400.0,
                );
            }
        }
    }
    for (server, (days, at)) in server_certs().lock().iter() {
        let elapsed = at.elapsed().as_secs() / 86_400;
        o.sample(
            "atrest_certificate_expiry_seconds",
            &[("certificate", "server"), ("server", server)],
            (*days as i64 - elapsed as i64) as f64 * 86_400.0,
        );
    }

    o.family(
        "atrest_store_capacity_bytes",
        "gauge",
        "Bytes the content store can hold (absent while it is not open).",
    );
    if let Some(s) = vol.space {
        o.sample("atrest_store_capacity_bytes", &[], s.capacity as f64);
    }
    o.family(
        "atrest_store_used_bytes",
        "gauge",
        "Bytes the content store uses (absent while it is not open).",
    );
    if let Some(s) = vol.space {
        o.sample("atrest_store_used_bytes", &[], s.used as f64);
    }

    o.family(
        "atrest_kmip_operation_duration_seconds",
        "histogram",
        "KMIP operations the appliance sent, by server and operation, failover included.",
    );
    let k = kmip().lock().clone();
    for ((server, op), h) in &k {
        let l = [("server", server.as_str()), ("operation", op.as_str())];
        for (n, le) in h.buckets.iter().zip(KMIP_BUCKETS) {
            let le = number(le);
            o.sample(
                "atrest_kmip_operation_duration_seconds_bucket",
                &[l[0], l[1], ("le", &le)],
                *n as f64,
            );
        }
        o.sample(
            "atrest_kmip_operation_duration_seconds_bucket",
            &[l[0], l[1], ("le", "+Inf")],
            h.count as f64,
        );
        o.sample("atrest_kmip_operation_duration_seconds_sum", &l, h.sum);
        o.sample(
            "atrest_kmip_operation_duration_seconds_count",
            &l,
            h.count as f64,
        );
    }
    o.family(
        "atrest_kmip_operation_errors_total",
        "counter",
        "KMIP operations that failed, by server and operation.",
    );
    for ((server, op), h) in &k {
        o.sample(
            "atrest_kmip_operation_errors_total",
            &[("server", server), ("operation", op)],
            h.errors as f64,
        );
    }

    let m = state.metrics();
    o.family(
        "atrest_login_failures_total",
        "counter",
        "Admin logins (and re-entered passwords) refused for a wrong user name or password.",
    );
    o.sample(
        "atrest_login_failures_total",
        &[],
        m.login_failures.load(Ordering::Relaxed) as f64,
    );
    o.family(
        "atrest_login_throttled_total",
        "counter",
        "Login attempts refused unchecked (429) because their source was locked out.",
    );
    o.sample(
        "atrest_login_throttled_total",
        &[],
        m.login_throttled.load(Ordering::Relaxed) as f64,
    );
    o.family(
        "atrest_login_throttled_sources",
        "gauge",
        "Source addresses locked out now after wrong passwords.",
    );
    o.sample(
        "atrest_login_throttled_sources",
        &[],
        state.login_throttle().locked_out() as f64,
    );

    o.family(
        "atrest_http_requests_total",
        "counter",
        "HTTPS requests answered, by route template and status.",
    );
    for ((route, status), n) in m.http.lock().iter() {
        o.sample(
            "atrest_http_requests_total",
            &[("route", route), ("status", &status.to_string())],
            *n as f64,
        );
    }
    o.0
}

/// Why the content is not ready, in one word; `None` when it is.
pub fn not_ready(state: &AppState) -> Option<&'static str> {
    match state.content() {
        // The store opens just before the state says unlocked: ready once both are.
        Content::Ready(_) if state.workflow().state == crate::workflow::State::Locked => {
            Some("locked")
        }
        // Readable, but every write is refused until a Rekey (crate::readonly).
        Content::Ready(_) if state.read_only().get().is_some() => Some("read-only"),
        Content::Ready(_) => None,
        Content::Locked(_) => Some("locked"),
        Content::Detached => Some("detached"),
    }
}

async fn metrics(AxumState(state): AxumState<AppState>) -> Response {
    let text = tokio::task::spawn_blocking(move || render(&state))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(AxumState(state): AxumState<AppState>) -> Response {
    match not_ready(&state) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// The router of the metrics address.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Binds the metrics address.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen for metrics on {addr} ({e}); choose another --metrics-listen")
    })?;
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot set up the metrics listener: {e}"))?;
    Ok(l)
}

/// Serves the metrics address until `shutdown` completes.
pub async fn serve(
    state: AppState,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot set up the metrics listener: {e}"))?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("the metrics server stopped: {e}"))
}
