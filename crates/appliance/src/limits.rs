//! Bounds on what clients may hold: connections (a cap, a header-read deadline, an idle
//! timeout, HTTP/2 keep-alive pings), uploads (a cap, a body-progress deadline) and how a
//! refusal is delivered while the client is still sending its body.
//!
//! The defaults and their meaning are documented in docs/workflow.md ("Limits and timeouts").

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The limits and timeouts of `atrest serve`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Request headers must arrive whole within this (HTTP/1.1; it also bounds the wait for the
    /// next request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no request under way for this long is closed (both protocols; also
    /// bounds a TLS handshake that does not complete).
    pub idle_timeout: Duration,
    /// HTTP/2: a ping after this much silence while a request is under way; no answer within
    /// the same time closes the connection (a peer that vanished).
    pub keepalive_interval: Duration,
    /// Recording uploads under way at once; more are answered 503 with `Retry-After`.
    pub max_uploads: usize,
    /// An upload whose body stops arriving for this long is dropped (408) and not published.
    pub body_timeout: Duration,
    /// How long SIGTERM waits for requests under way (uploads being committed among them)
    /// before the rest are cut off, unpublished.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            max_uploads: 16,
            body_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Seconds a client refused for lack of upload slots is asked to wait.
pub const UPLOAD_RETRY_AFTER: u64 = 5;
/// Body bytes read and thrown away after a refusal, so that a client that sends its whole body
/// before it reads the answer still gets the answer.
pub const DRAIN_BYTES: u64 = 8 << 20;
/// The longest that draining may take.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

// ---- uploads ----

/// The upload slots: one permit per upload under way.
#[derive(Debug, Clone)]
pub struct Uploads {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Uploads {
    /// `max` upload slots (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Uploads {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot, or 503 with `Retry-After` when all are taken.
    pub fn try_start(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} recording uploads are already under way, the most this appliance takes \
                     at once; send this one again in {UPLOAD_RETRY_AFTER} seconds",
                    self.max
                ),
            )
        })
    }

    /// Waits (at most `grace`) until no upload is under way; returns how many still were.
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, self.slots.acquire_many(all)).await {
            Ok(Ok(p)) => {
                drop(p);
                0
            }
            _ => self.max - self.slots.available_permits(),
        }
    }
}

/// Adds `Retry-After` to a 503 refusal for lack of upload slots.
pub fn busy(e: ApiError) -> Response {
    let mut res = e.into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(UPLOAD_RETRY_AFTER));
    res
}

// ---- refusals delivered whatever the body ----

struct Shared {
    body: Body,
    done: bool,
    polled: bool,
}

/// A request body that the refusal layer can finish reading after the handler gave up on it.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<Shared>>);

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut g = self.0.lock();
        if g.done {
            return Poll::Ready(None);
        }
        g.polled = true;
        let r = Pin::new(&mut g.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            g.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let g = self.0.lock();
        g.done || g.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.lock().body.size_hint()
    }
}

/// Reads and drops what is left of a body: at most [`DRAIN_BYTES`] within [`DRAIN_TIME`].
/// Returns whether the body ended.
async fn drain(mut body: SharedBody) -> bool {
    let run = async {
        let mut n = 0u64;
        while let Some(f) = body.frame().await {
            let Ok(f) = f else { return false };
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
                if n > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, run).await.unwrap_or(false)
}

/// Middleware: a refusal (4xx/5xx) answered before the request body was read reaches the
/// client on both protocols. What is left of the body is drained (bounded) before the answer
/// goes out; an HTTP/1.1 connection whose body was not read to its end says
/// `Connection: close` and is closed after the answer.
pub async fn deliver_refusals(req: Request, next: Next) -> Response {
    let version = req.version();
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let shared = SharedBody(Arc::new(Mutex::new(Shared {
        body,
        done: false,
        polled: false,
    })));
    let req = Request::from_parts(parts, Body::new(shared.clone()));
    let mut res = json_refusal(next.run(req).await).await;
    if shared.is_end_stream() || !(res.status().is_client_error() || res.status().is_server_error())
    {
        return res;
    }
    // A client waiting for "100 Continue" has not sent its body and will not: answer at once.
    let untouched = expects_continue && !shared.0.lock().polled;
    let ended = !untouched && drain(shared.clone()).await;
    if !ended && version <= Version::HTTP_11 {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A refusal made by the framework as plain text (a body over the limit, a malformed
/// header) is given the API's JSON shape, with a sentence that says what to do.
async fn json_refusal(res: Response) -> Response {
    let status = res.status();
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(plain && (status.is_client_error() || status.is_server_error())) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "the request body is over {} bytes, the most this endpoint takes; send less (a \
             recording goes to PUT /api/recordings/ID, streamed)",
            crate::api::MAX_BODY
        )
    } else {
        format!("{}; check the request and send it again", text.trim())
    };
    let mut res = ApiError::new(status, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            res.headers_mut().insert(k.clone(), v.clone());
        }
    }
    res
}

// ---- connections ----

/// What one connection is doing, shared by its stream and its service.
#[derive(Debug)]
struct ConnState {
    /// Requests under way (their response bodies not yet sent or dropped).
    active: AtomicUsize,
    /// When the last request ended (milliseconds since `epoch`).
    last_end_ms: AtomicU64,
    epoch: Instant,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    fn new(c: Arc<ConnState>) -> Self {
        c.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(c)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.last_end_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that counts as a request under way until it is sent or dropped.
struct GuardedBody {
    inner: Body,
    _guard: ActiveGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The service of one connection, counting its requests under way.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    conn: Arc<ConnState>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Tracked<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = Response> + Send,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let guard = ActiveGuard::new(self.conn.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|b| {
                Body::new(GuardedBody {
                    inner: b,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A TCP stream that holds a connection slot and is failed once its connection stays without a
/// request under way for the idle timeout.
pub struct Guarded {
    inner: TcpStream,
    conn: Arc<ConnState>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Guarded {
    /// Err when the connection has been idle too long; otherwise arms the timer for the next
    /// check.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = self.conn.now_ms();
            let idle_ms = self.idle.as_millis() as u64;
            let next = if self.conn.active.load(Ordering::Acquire) > 0 {
                idle_ms
            } else {
                let since = now.saturating_sub(self.conn.last_end_ms.load(Ordering::Acquire));
                if since >= idle_ms {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for too long",
                    ));
                }
                idle_ms - since
            };
            let at = tokio::time::Instant::now() + Duration::from_millis(next.max(10));
            self.timer.as_mut().reset(at);
        }
        Ok(())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.poll_idle(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The acceptor under TLS: takes a connection slot (or closes the connection at once), and
/// ties the stream's idle timer to the requests of its service.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    slots: Arc<Semaphore>,
    idle: Duration,
    refused: Arc<AtomicU64>,
}

impl ConnectionLimits {
    /// The connection slots (`max_connections`, at least one) and idle timeout of `limits`.
    pub fn new(limits: &Limits) -> Self {
        ConnectionLimits {
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            idle: limits.idle_timeout,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for ConnectionLimits {
    type Stream = Guarded;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Guarded, Tracked<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            // Say so once per 1000 refusals, not once per connection.
            if self
                .refused
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
            {
                tracing::warn!(
                    "connection refused: all connection slots are taken (--max-connections)"
                );
            }
            return std::future::ready(Err(io::Error::other("too many connections")));
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnState {
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let guarded = Guarded {
            inner: stream,
            conn: conn.clone(),
            idle: self.idle,
            timer: Box::pin(tokio::time::sleep(self.idle)),
            _slot: slot,
        };
        std::future::ready(Ok((
            guarded,
            Tracked {
                inner: service,
                conn,
            },
        )))
    }
}

/// Sets the protocol timeouts of the HTTP server.
pub fn configure_http(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &Limits,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_interval);
}

/// Raises the soft limit on open files to the hard limit, so that many connections do not
/// starve the volume and the KMIP client of descriptors. Returns the limit in force.
#[allow(unsafe_code)]
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
