//! The network side: TLS 1.2/1.3 with mutual authentication (OpenSSL), one thread per
//! connection, framing of TTLV messages with size limits, and a graceful stop.
//!
//! Hostile clients: only authenticated connections (TLS handshake done with a client
//! certificate of the CA) count against [`ServerConfig::max_connections`]; connections still in
//! the handshake have their own caps, in total and per source address, where a stale handshake
//! gives way to a new connection ([`PREEMPT_AFTER`]); and every phase has a whole deadline
//! (handshake, each request, each response, idle time), enforced by the accept loop, which
//! cuts the socket — no trickle of bytes extends one.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atrest_kmip::message::ProtocolVersion;
use atrest_kmip::ttlv::{self, HEADER_LEN};
use openssl::ssl::{
    SslAcceptor, SslFiletype, SslMethod, SslMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::datadir::DataDir;
use crate::engine::{self, Engine, Session};
use crate::error::{KmsError, Result};
use crate::metrics::ConnResult;
use crate::pki;

/// TLS 1.2 suites offered, strongest first: forward-secret AEAD suites, then the CBC-SHA256/384
/// suites the KMIP 1.x profiles name (including the RSA key-exchange ones they make mandatory).
/// TLS 1.3 suites are OpenSSL's defaults.
pub const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:\
ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256:\
ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:\
AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256";

/// Default for [`ServerConfig::max_connections`]: authenticated connections served at once.
/// Stops: a registered client (or a stolen identity) opening threads without bound. Only
/// connections whose TLS handshake finished with a client certificate of the CA count, so
/// unauthenticated sockets can never use these slots up.
pub const MAX_CONNECTIONS: usize = 256;

/// Default for [`ServerConfig::max_pending`]: connections still in the TLS handshake (no client
/// certificate checked yet), every source together. Stops: sockets that never authenticate
/// exhausting threads and file descriptors.
pub const MAX_PENDING: usize = 128;

/// Default for [`ServerConfig::max_pending_per_source`]: connections in the TLS handshake from
/// one source address (IPv6: one /64). Stops: one host — a local user, say — taking every
/// pre-authentication slot.
pub const MAX_PENDING_PER_SOURCE: usize = 16;

/// When a pre-authentication cap is reached, a handshake pending at least this long is dropped
/// to make room for the new connection (the oldest of the source holding the most), instead of
/// turning the new one away. Stops: slow-trickle sockets holding the slots so that real clients
/// — which finish a handshake in milliseconds — are locked out. A handshake younger than this is
/// never dropped for another, so a flood of new connections cannot cut real handshakes short.
pub const PREEMPT_AFTER: Duration = Duration::from_secs(1);

/// Default for [`ServerConfig::handshake_timeout`]: the whole TLS handshake, from accept to
/// done. Stops: a socket that trickles a byte now and then to stay in the handshake forever
/// (a per-read timeout would be reset by every byte).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`ServerConfig::message_timeout`]: a whole request, from its first byte to its
/// last (and likewise the whole response write). Stops: a slow-loris client holding a
/// connection and its thread by sending a message one byte at a time.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`ServerConfig::idle_timeout`]: an authenticated connection between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Stack of each connection thread. Small, because with every page locked in memory
/// (`mlockall`) each thread's stack is resident.
const CONNECTION_STACK: usize = 512 * 1024;

/// How often deadlines are enforced.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Settings of the listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The address to listen on (`host:port`; port 0 picks a free port).
    pub listen: String,
    /// Most authenticated connections served at once; one more is closed right after its
    /// handshake (and logged).
    pub max_connections: usize,
    /// Most connections in the TLS handshake, all sources together (see [`MAX_PENDING`]).
    pub max_pending: usize,
    /// Most connections in the TLS handshake from one source (see [`MAX_PENDING_PER_SOURCE`]).
    pub max_pending_per_source: usize,
    /// Deadline of the whole TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for the next request on an open connection.
    pub idle_timeout: Duration,
    /// Deadline of a whole request once its first byte arrived (and of a whole response).
    pub message_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:5696".into(),
            max_connections: MAX_CONNECTIONS,
            max_pending: MAX_PENDING,
            max_pending_per_source: MAX_PENDING_PER_SOURCE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            message_timeout: MESSAGE_TIMEOUT,
        }
    }
}

/// The key a source is counted under: the IPv4 address, or the IPv6 /64.
fn source_of(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        ip => ip,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the TLS handshake: not authenticated yet.
    Handshake,
    /// Authenticated, waiting for the next request.
    Idle,
    /// Reading a request or writing its response.
    Message,
    /// Running a request (no deadline: the server's own work).
    Working,
}

struct Conn {
    source: IpAddr,
    peer: SocketAddr,
    /// A handle on the socket, to cut it when a deadline passes or the slot is taken.
    stream: TcpStream,
    phase: Phase,
    started: Instant,
    deadline: Option<Instant>,
    /// Cut by the server; no longer counted against any cap.
    dropped: bool,
}

impl Conn {
    fn cut(&mut self, why: &str) {
        if !self.dropped {
            self.dropped = true;
            let _ = self.stream.shutdown(Shutdown::Both);
            tracing::debug!(peer = %self.peer, reason = why, "closing a connection");
        }
    }

    fn counts_pending(&self) -> bool {
        self.phase == Phase::Handshake && !self.dropped
    }
}

/// Every open connection, for the caps and the deadlines.
#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
}

type Shared = Arc<Mutex<Table>>;

/// Why a new connection was turned away.
enum Admission {
    Admitted,
    Refused(&'static str),
}

impl Table {
    /// Admits a connection from `source` within the pre-authentication caps, dropping the
    /// oldest stale handshake of the busiest source when a cap is reached.
    fn admit(&mut self, source: IpAddr, config: &ServerConfig, now: Instant) -> Admission {
        let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
        let mut pending = 0;
        for c in self.conns.values().filter(|c| c.counts_pending()) {
            pending += 1;
            *per_source.entry(c.source).or_default() += 1;
        }
        let mine = per_source.get(&source).copied().unwrap_or(0);
        let victim_source = if mine >= config.max_pending_per_source.max(1) {
            source
        } else if pending >= config.max_pending.max(1) {
            match per_source.iter().max_by_key(|(_, n)| **n) {
                Some((s, _)) => *s,
                None => return Admission::Admitted,
            }
        } else {
            return Admission::Admitted;
        };
        let victim = self
            .conns
            .values_mut()
            .filter(|c| c.counts_pending() && c.source == victim_source)
            .filter(|c| now.duration_since(c.started) >= PREEMPT_AFTER)
            .min_by_key(|c| c.started);
        match victim {
            Some(v) => {
                v.cut("its handshake slot went to a new connection");
                Admission::Admitted
            }
            None if victim_source == source => {
                Admission::Refused("too many handshakes from this address")
            }
            None => Admission::Refused("too many handshakes in progress"),
        }
    }

    /// Cuts connections whose deadline passed.
    fn sweep(&mut self, now: Instant) {
        for c in self.conns.values_mut() {
            if !c.dropped
                && let Some(d) = c.deadline
                && d <= now
            {
                let why = match c.phase {
                    Phase::Handshake => "the TLS handshake did not finish in time",
                    Phase::Message => "a message did not arrive (or leave) in time",
                    Phase::Idle | Phase::Working => "idle for too long",
                };
                if c.phase == Phase::Handshake || c.phase == Phase::Message {
                    tracing::info!(peer = %c.peer, reason = why, "closing a connection");
                }
                c.cut(why);
            }
        }
    }
}

/// A connection thread's handle on its entry in the table.
struct Slot {
    id: u64,
    table: Shared,
}

impl Slot {
    fn set(&self, phase: Phase, deadline: Option<Duration>) {
        if let Some(c) = self.table.lock().conns.get_mut(&self.id) {
            c.phase = phase;
            c.deadline = deadline.map(|d| Instant::now() + d);
        }
    }

    /// After the handshake: takes an authenticated slot, or `false` when all are in use.
    fn authenticated(&self, config: &ServerConfig) -> bool {
        let mut t = self.table.lock();
        let used = t
            .conns
            .values()
            .filter(|c| !c.dropped && c.phase != Phase::Handshake)
            .count();
        let Some(c) = t.conns.get_mut(&self.id) else {
            return false;
        };
        if c.dropped {
            return false;
        }
        if used >= config.max_connections.max(1) {
            return false;
        }
        c.phase = Phase::Idle;
        c.deadline = Some(Instant::now() + config.idle_timeout);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().conns.remove(&self.id);
    }
}

/// A bound listener with its TLS setup and engine.
pub struct Server {
    listener: TcpListener,
    acceptor: Arc<SslAcceptor>,
    engine: Arc<Engine>,
    config: ServerConfig,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The TLS acceptor for a data directory: both server identities, client certificates
/// required and checked against the directory's CA.
pub fn acceptor(dir: &DataDir) -> Result<SslAcceptor> {
    let e = || KmsError::crypto("setting up TLS");
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(e())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(e())?;
    b.set_cipher_list(TLS12_CIPHERS).map_err(e())?;
    b.set_private_key_file(dir.server_key(), SslFiletype::PEM)
        .map_err(KmsError::crypto("loading the server key (pki/server.key)"))?;
    b.set_certificate_chain_file(dir.server_cert())
        .map_err(KmsError::crypto(
            "loading the server certificate (pki/server.crt)",
        ))?;
    if dir.server_rsa_cert().exists() {
        b.set_private_key_file(dir.server_rsa_key(), SslFiletype::PEM)
            .map_err(KmsError::crypto(
                "loading the RSA server key (pki/server-rsa.key)",
            ))?;
        b.set_certificate_file(dir.server_rsa_cert(), SslFiletype::PEM)
            .map_err(KmsError::crypto(
                "loading the RSA server certificate (pki/server-rsa.crt)",
            ))?;
    }
    b.check_private_key().map_err(KmsError::crypto(
        "the server key does not match its certificate",
    ))?;
    b.set_ca_file(dir.ca_cert())
        .map_err(KmsError::crypto("loading the CA certificate (pki/ca.crt)"))?;
    let ca = X509::from_pem(
        &std::fs::read(dir.ca_cert()).map_err(KmsError::io("reading", &dir.ca_cert()))?,
    )
    .map_err(KmsError::crypto("reading the CA certificate (pki/ca.crt)"))?;
    let mut names = openssl::stack::Stack::new().map_err(e())?;
    names
        .push(ca.subject_name().to_owned().map_err(e())?)
        .map_err(e())?;
    b.set_client_ca_list(names);
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    b.set_mode(SslMode::AUTO_RETRY);
    Ok(b.build())
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port).
    pub fn bind(dir: &DataDir, engine: Arc<Engine>, config: ServerConfig) -> Result<Server> {
        let acceptor = Arc::new(acceptor(dir)?);
        let listener = TcpListener::bind(&config.listen).map_err(|e| {
            KmsError::Config(format!(
                "cannot listen on {}: {e}; pick another address or port with --listen",
                config.listen
            ))
        })?;
        Ok(Server {
            listener,
            acceptor,
            engine,
            config,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| KmsError::Config(format!("reading the listening address: {e}")))
    }

    /// Setting this flag stops [`Server::run`] (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Serves until the stop flag is set; then stops accepting, lets requests in progress
    /// finish (up to a few seconds) and returns.
    pub fn run(self) -> Result<()> {
        let shared: Shared = Arc::default();
        let mut next_id: u64 = 0;
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut last_sweep = Instant::now();
        let mut refused = Refusals::default();
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now.duration_since(last_sweep) >= SWEEP_EVERY {
                shared.lock().sweep(now);
                last_sweep = now;
                threads.retain(|t| !t.is_finished());
                refused.flush(now, false);
            }
            if !wait_readable(&self.listener, SWEEP_EVERY.as_millis() as i32) {
                continue;
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e)
                    if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let source = source_of(&peer);
            let now = Instant::now();
            let Ok(handle) = stream.try_clone() else {
                continue;
            };
            let id = next_id;
            next_id += 1;
            {
                let mut t = shared.lock();
                if let Admission::Refused(why) = t.admit(source, &self.config, now) {
                    drop(t);
                    self.engine.metrics().connection(ConnResult::Refused);
                    refused.add(peer, why, now);
                    drop(stream);
                    continue;
                }
                t.conns.insert(
                    id,
                    Conn {
                        source,
                        peer,
                        stream: handle,
                        phase: Phase::Handshake,
                        started: now,
                        deadline: Some(now + self.config.handshake_timeout),
                        dropped: false,
                    },
                );
            }
            let slot = Slot {
                id,
                table: shared.clone(),
            };
            let (acceptor, engine, config, stop) = (
                self.acceptor.clone(),
                self.engine.clone(),
                self.config.clone(),
                self.stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("kms-conn-{id}"))
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    serve_connection(&acceptor, &engine, &config, stream, peer, &stop, &slot);
                    drop(slot);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The closure (and its slot) was dropped: the entry is gone.
                    tracing::error!(error = %e, "cannot start a connection thread");
                }
            }
        }
        refused.flush(Instant::now(), true);
        tracing::info!(connections = shared.lock().conns.len(), "stopping");
        // Wake connections waiting for a request; one in the middle of a request finishes it.
        for c in shared.lock().conns.values() {
            let _ = c.stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

/// Connections turned away before authentication, logged as they start and then summed up
/// at most every [`Refusals::EVERY`], so that a flood cannot flood the log.
#[derive(Default)]
struct Refusals {
    count: usize,
    last: Option<(SocketAddr, &'static str)>,
    logged_at: Option<Instant>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn add(&mut self, peer: SocketAddr, why: &'static str, now: Instant) {
        if self
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= Self::EVERY)
            && self.count == 0
        {
            tracing::warn!(%peer, reason = why, "refusing a connection before authentication");
            self.logged_at = Some(now);
            return;
        }
        self.count += 1;
        self.last = Some((peer, why));
    }

    fn flush(&mut self, now: Instant, force: bool) {
        if self.count == 0 {
            return;
        }
        if !force
            && self
                .logged_at
                .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return;
        }
        if let Some((peer, why)) = self.last {
            tracing::warn!(
                refused = self.count,
                last_peer = %peer,
                last_reason = why,
                "refused connections before authentication (pre-authentication caps reached)"
            );
        }
        self.count = 0;
        self.last = None;
        self.logged_at = Some(now);
    }
}

/// Waits up to `ms` for the listener to have a connection to accept.
fn wait_readable(l: &TcpListener, ms: i32) -> bool {
    let mut fds = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fds` is one valid pollfd for the duration of the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    n > 0
}

enum ReadOutcome {
    /// A whole request; it may carry key material (Register), so it is zeroed when dropped.
    Message(Zeroizing<Vec<u8>>),
    /// The peer closed the connection (or it timed out idle) between messages.
    Closed,
    /// The framing is broken; answer with this and close.
    Refuse(String),
}

fn read_message(
    s: &mut SslStream<TcpStream>,
    engine: &Engine,
    config: &ServerConfig,
    slot: &Slot,
) -> ReadOutcome {
    // Per-read timeouts only back the whole deadlines up (the accept loop enforces those).
    let _ = s.get_ref().set_read_timeout(Some(config.idle_timeout));
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match s.read(&mut header[got..]) {
            Ok(0) => {
                return if got == 0 {
                    ReadOutcome::Closed
                } else {
                    ReadOutcome::Refuse("the connection closed in the middle of a message".into())
                };
            }
            Ok(n) => {
                if got == 0 {
                    slot.set(Phase::Message, Some(config.message_timeout));
                    let _ = s.get_ref().set_read_timeout(Some(config.message_timeout));
                }
                got += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
    let len = match ttlv::message_len(&header, engine.limits()) {
        Ok(l) => l,
        Err(e) => return ReadOutcome::Refuse(format!("bad message header: {e}")),
    };
    let mut buf = Zeroizing::new(vec![0u8; len]);
    buf[..HEADER_LEN].copy_from_slice(&header);
    if let Err(e) = s.read_exact(&mut buf[HEADER_LEN..]) {
        return ReadOutcome::Refuse(format!("reading the message body: {e}"));
    }
    ReadOutcome::Message(buf)
}

fn serve_connection(
    acceptor: &SslAcceptor,
    engine: &Engine,
    config: &ServerConfig,
    stream: TcpStream,
    peer: SocketAddr,
    stop: &AtomicBool,
    slot: &Slot,
) {
    let _ = stream.set_read_timeout(Some(config.handshake_timeout));
    let _ = stream.set_write_timeout(Some(config.message_timeout));
    let _ = stream.set_nodelay(true);
    let mut s = match acceptor.accept(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            engine.metrics().connection(ConnResult::TlsFailed);
            return;
        }
    };
    if !slot.authenticated(config) {
        tracing::warn!(%peer, max = config.max_connections, "too many connections; closing the new one");
        engine.metrics().connection(ConnResult::OverLimit);
        let _ = s.shutdown();
        return;
    }
    engine.metrics().connection(ConnResult::Accepted);
    engine.metrics().open(true);
    let _open = OpenGuard(engine.metrics());
    let fingerprint = s
        .ssl()
        .peer_certificate()
        .and_then(|c| pki::fingerprint(&c).ok());
    tracing::debug!(%peer, version = s.ssl().version_str(), cipher = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"), "connected");
    let mut session = Session::new(peer.to_string(), fingerprint);
    loop {
        match read_message(&mut s, engine, config, slot) {
            ReadOutcome::Closed => break,
            ReadOutcome::Refuse(why) => {
                tracing::warn!(%peer, reason = %why, "refusing a request; closing the connection");
                let resp = engine::invalid_message(ProtocolVersion::V1_0, why);
                slot.set(Phase::Message, Some(config.message_timeout));
                let _ = s.write_all(&resp);
                break;
            }
            ReadOutcome::Message(m) => {
                slot.set(Phase::Working, None);
                let resp = engine.handle(&mut session, &m);
                slot.set(Phase::Message, Some(config.message_timeout));
                if s.write_all(&resp).and_then(|_| s.flush()).is_err() {
                    break;
                }
                slot.set(Phase::Idle, Some(config.idle_timeout));
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    let _ = s.shutdown();
}

/// Counts the end of an authenticated connection however its thread leaves.
struct OpenGuard<'a>(&'a crate::metrics::Metrics);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open(false);
    }
}

/// Sets `stop` on SIGTERM and SIGINT.
pub fn stop_on_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| KmsError::Config(format!("installing a signal handler: {e}")))?;
    }
    Ok(())
}
