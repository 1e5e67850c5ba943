//! The network side: TLS 1.2/1.3 with mutual authentication (OpenSSL), one thread per
//! connection up to a bound, framing of TTLV messages with size limits and timeouts, and a
//! graceful stop.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atrest_kmip::message::ProtocolVersion;
use atrest_kmip::ttlv::{self, HEADER_LEN};
use openssl::ssl::{
    SslAcceptor, SslFiletype, SslMethod, SslMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;

use crate::datadir::DataDir;
use crate::engine::{self, Engine, Session};
use crate::error::{KmsError, Result};
use crate::pki;

/// TLS 1.2 suites offered, strongest first: forward-secret AEAD suites, then the CBC-SHA256/384
/// suites the KMIP 1.x profiles name (including the RSA key-exchange ones they make mandatory).
/// TLS 1.3 suites are OpenSSL's defaults.
pub const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:\
ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256:\
ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:\
AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256";

/// Settings of the listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: String,
    /// Most connections served at once; more are closed at once (and logged).
    pub max_connections: usize,
    /// Longest wait for a TLS handshake to finish.
    pub handshake_timeout: Duration,
    /// Longest wait for the next request on an open connection.
    pub idle_timeout: Duration,
    /// Longest wait for the rest of a request once its first bytes arrived.
    pub read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:5696".into(),
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
        }
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
        let active = Arc::new(AtomicUsize::new(0));
        let live: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let next_id = AtomicU64::new(0);
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            if !wait_readable(&self.listener, 200) {
                threads.retain(|t| !t.is_finished());
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
            if active.load(Ordering::SeqCst) >= self.config.max_connections {
                tracing::warn!(%peer, max = self.config.max_connections, "too many connections; closing the new one");
                drop(stream);
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let id = next_id.fetch_add(1, Ordering::SeqCst);
            if let Ok(c) = stream.try_clone() {
                live.lock().unwrap_or_else(|e| e.into_inner()).insert(id, c);
            }
            let (acceptor, engine, config, t_active, t_live, stop) = (
                self.acceptor.clone(),
                self.engine.clone(),
                self.config.clone(),
                active.clone(),
                live.clone(),
                self.stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("kms-conn-{id}"))
                .spawn(move || {
                    serve_connection(&acceptor, &engine, &config, stream, peer, &stop);
                    t_live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    t_active.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a connection thread");
                    live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
            threads.retain(|t| !t.is_finished());
        }
        tracing::info!(connections = active.load(Ordering::SeqCst), "stopping");
        // Wake connections waiting for a request; one in the middle of a request finishes it.
        for s in live.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = s.shutdown(Shutdown::Read);
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

/// Waits up to `ms` for the listener to have a connection to accept.
fn wait_readable(l: &TcpListener, ms: i32) -> bool {
    let mut fds = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fds` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    n > 0
}

enum ReadOutcome {
    Message(Vec<u8>),
    /// The peer closed the connection (or it timed out idle) between messages.
    Closed,
    /// The framing is broken; answer with this and close.
    Refuse(String),
}

fn read_message(
    s: &mut SslStream<TcpStream>,
    engine: &Engine,
    config: &ServerConfig,
) -> ReadOutcome {
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
                got += n;
                let _ = s.get_ref().set_read_timeout(Some(config.read_timeout));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
    let len = match ttlv::message_len(&header, engine.limits()) {
        Ok(l) => l,
        Err(e) => return ReadOutcome::Refuse(format!("bad message header: {e}")),
    };
    let mut buf = vec![0u8; len];
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
) {
    let _ = stream.set_read_timeout(Some(config.handshake_timeout));
    let _ = stream.set_write_timeout(Some(config.read_timeout));
    let _ = stream.set_nodelay(true);
    let mut s = match acceptor.accept(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let fingerprint = s
        .ssl()
        .peer_certificate()
        .and_then(|c| pki::fingerprint(&c).ok());
    tracing::debug!(%peer, version = s.ssl().version_str(), cipher = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"), "connected");
    let mut session = Session::new(peer.to_string(), fingerprint);
    loop {
        match read_message(&mut s, engine, config) {
            ReadOutcome::Closed => break,
            ReadOutcome::Refuse(why) => {
                tracing::warn!(%peer, reason = %why, "refusing a request; closing the connection");
                let resp = engine::invalid_message(ProtocolVersion::V1_0, why);
                let _ = s.write_all(&resp);
                break;
            }
            ReadOutcome::Message(m) => {
                let resp = engine.handle(&mut session, &m);
                if s.write_all(&resp).and_then(|_| s.flush()).is_err() {
                    break;
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    let _ = s.shutdown();
}

/// Sets `stop` on SIGTERM and SIGINT.
pub fn stop_on_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| KmsError::Config(format!("installing a signal handler: {e}")))?;
    }
    Ok(())
}
