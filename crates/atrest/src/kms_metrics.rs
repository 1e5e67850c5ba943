//! `atrest kms serve --metrics-listen HOST:PORT`: plain HTTP, unauthenticated, for monitoring:
//!
//! - `GET /metrics`: the server's counters and objects ([`atrest_kms::metrics`]), Prometheus
//!   text format 0.0.4;
//! - `GET /healthz`: 200 `ok` while the process answers;
//! - `GET /readyz`: 200 `ready` while the KMIP listener serves, 503 `stopping` once a stop was
//!   asked.
//!
//! It runs on its own thread with a small async runtime, beside the KMIP server's threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atrest_kms::engine::Engine;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Ctx {
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
}

async fn metrics(State(c): State<Ctx>) -> impl IntoResponse {
    let e = c.engine.clone();
    let text = tokio::task::spawn_blocking(move || {
        atrest_kms::metrics::render(e.metrics(), &e.object_counts())
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

async fn readyz(State(c): State<Ctx>) -> impl IntoResponse {
    if c.stop.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Binds `addr` and serves the metrics there on a thread of its own until `stop` is set;
/// returns the bound address.
pub fn start(
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for metrics on {addr} ({e}); choose another --metrics-listen"
        )
    })?;
    l.set_nonblocking(true)?;
    let local = l.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ctx {
            engine,
            stop: stop.clone(),
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let h = std::thread::Builder::new()
        .name("kms-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("cannot set up the metrics listener: {e}");
                        return;
                    }
                };
                let shutdown = async move {
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::warn!("the metrics server stopped: {e}");
                }
            });
        })?;
    Ok((local, h))
}
