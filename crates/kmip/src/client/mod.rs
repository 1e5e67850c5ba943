//! A KMIP client over mutual TLS.
//!
//! - One TLS connection at a time, kept open between operations; each request is one batch
//!   item carrying the Username/Password Credential when one is configured.
//! - Version negotiation: Discover Versions listing 2.1 … 1.0 (sent under a 1.1 header, the
//!   first version that has the operation); the first version the server lists is used. A
//!   server that rejects Discover Versions is spoken to in 1.0. `ClientConfig::version` pins
//!   a version and skips the negotiation.
//! - Several servers: tried in order starting from the last one that answered. A transport
//!   failure (DNS, TCP, TLS, timeout, garbage) moves on to the next server. Once a request
//!   that changes state (Create, Activate, Register, Revoke, Destroy) has been sent, it is not
//!   sent again elsewhere: the first server may have carried it out.
//! - Timeouts: connect (per address), read (per socket read), and one deadline for the whole
//!   operation including failover.
//! - Bounded: a response larger than `max_response_len` is refused from its 8-byte header,
//!   before anything is buffered.
//!
//! Layout: `config.rs` (what the client is told), `exchange.rs` (request bytes and response
//! classification: pure functions, tested without TLS), `transport.rs` (TCP/TLS I/O),
//! `operations.rs` (one method per KMIP operation), `tls.rs` (trust, identity, handshake
//! failures) and `error.rs`. Errors say what failed and what is wrong at the server or in the
//! settings; what to change in a front end (a flag, a page field) is the front end's to say.

mod config;
mod error;
mod exchange;
mod operations;
mod tls;
mod transport;

use std::fmt;
use std::time::{Duration, Instant};

use openssl::ssl::{HandshakeError, SslConnector};

pub use config::{
    ClientConfig, DEFAULT_MAX_RESPONSE_LEN, DEFAULT_PORT, ServerAddr, Timeouts, parse_env,
};
pub use error::{ClientError, TlsProblem};
pub use exchange::{classify_response, request_bytes};
pub use tls::{Identity, TLS12_CIPHERS};
pub use transport::{ConnectionInfo, days_left, tcp_connect};

use crate::message::{Operation, ProtocolVersion, RequestPayload, ResponsePayload};
use crate::ttlv::Limits;
use transport::{Conn, ExchangeError, connection_info, exchange, is_eof, is_timeout, remaining};

/// A KMIP client. Not shared between threads; wrap it in a mutex to share.
pub struct Client {
    config: ClientConfig,
    connector: SslConnector,
    conn: Option<Conn>,
    /// The server to try first: the last one that answered.
    preferred: usize,
    limits: Limits,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.config.servers)
            .field("connected", &self.conn.as_ref().map(|c| &c.info.server))
            .finish()
    }
}

/// Told of every operation a [`Client`] completes: the server that answered (or the first one
/// tried, when none did), the operation, how long it took (failover included) and whether it
/// succeeded. For metrics; nothing of the request or the answer is passed.
pub type Observer = dyn Fn(&ServerAddr, Operation, Duration, bool) + Send + Sync;

static OBSERVER: std::sync::OnceLock<Box<Observer>> = std::sync::OnceLock::new();

/// Installs the process's [`Observer`]; false when one is installed already (it stays).
pub fn set_observer(observer: Box<Observer>) -> bool {
    OBSERVER.set(observer).is_ok()
}

impl Client {
    /// Checks the settings and loads the identity; connects lazily, at the first operation.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.servers.is_empty() {
            return Err(ClientError::Config(
                "no KMIP server is configured; give at least one HOST[:PORT]".into(),
            ));
        }
        let connector = tls::connector(&config.ca_pem, &config.identity)?;
        let limits = Limits {
            max_message_len: config.max_response_len,
            // Servers put vendor data in Query answers; tolerate odd tags in responses.
            any_tag_prefix: true,
            ..Limits::default()
        };
        Ok(Client {
            config,
            connector,
            conn: None,
            preferred: 0,
            limits,
        })
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The current connection, if one is open.
    pub fn connection_info(&self) -> Option<&ConnectionInfo> {
        self.conn.as_ref().map(|c| &c.info)
    }

    /// Closes the connection (the next operation reconnects).
    pub fn disconnect(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.stream.shutdown();
        }
    }

    /// Connects (if needed) and negotiates the protocol version; returns the connection's
    /// details.
    pub fn connect(&mut self) -> Result<ConnectionInfo, ClientError> {
        if self.conn.is_none() {
            let deadline = Instant::now() + self.config.timeouts.operation;
            let n = self.config.servers.len();
            let mut errors = Vec::new();
            for k in 0..n {
                let idx = (self.preferred + k) % n;
                match self.open(idx, deadline) {
                    Ok(c) => {
                        self.preferred = idx;
                        self.conn = Some(c);
                        break;
                    }
                    Err(e) if e.is_transport() => errors.push(e),
                    Err(e) => return Err(e),
                }
            }
            if self.conn.is_none() {
                return Err(collapse(errors));
            }
        }
        self.conn
            .as_ref()
            .map(|c| c.info.clone())
            .ok_or_else(|| ClientError::Config("not connected".into()))
    }

    /// Sends one operation and returns its Response Payload (failover included).
    pub fn call(&mut self, payload: RequestPayload) -> Result<ResponsePayload, ClientError> {
        let Some(observer) = OBSERVER.get() else {
            return self.call_inner(payload);
        };
        let operation = payload.operation();
        let started = Instant::now();
        let result = self.call_inner(payload);
        if let (Some(op), Some(server)) = (operation, self.config.servers.get(self.preferred)) {
            observer(server, op, started.elapsed(), result.is_ok());
        }
        result
    }

    fn call_inner(&mut self, payload: RequestPayload) -> Result<ResponsePayload, ClientError> {
        let operation = payload.operation().ok_or_else(|| {
            ClientError::Config("the client cannot send an operation it does not model".into())
        })?;
        let read_only = matches!(
            operation,
            Operation::DISCOVER_VERSIONS
                | Operation::QUERY
                | Operation::GET
                | Operation::GET_ATTRIBUTES
                | Operation::GET_ATTRIBUTE_LIST
                | Operation::LOCATE
        );
        let deadline = Instant::now() + self.config.timeouts.operation;
        let n = self.config.servers.len();
        let mut errors = Vec::new();
        let start = self.conn.as_ref().map_or(self.preferred, |c| c.server);
        let mut k = 0;
        while k < n {
            let idx = (start + k) % n;
            if self.conn.as_ref().is_none_or(|c| c.server != idx) {
                self.disconnect();
                match self.open(idx, deadline) {
                    Ok(c) => self.conn = Some(c),
                    Err(e) if e.is_transport() => {
                        errors.push(e);
                        k += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                k += 1;
                continue;
            };
            let reused = conn.used;
            match exchange(conn, &payload, deadline, &self.limits, &self.config) {
                Ok(p) => {
                    self.preferred = idx;
                    return Ok(p);
                }
                Err(ExchangeError::Answered(e)) => {
                    self.preferred = idx;
                    return Err(e);
                }
                Err(ExchangeError::NotSent(e)) => {
                    self.disconnect();
                    // A reused connection the server closed while idle: reconnect to the same
                    // server once.
                    if reused && matches!(e, ClientError::Closed { .. }) {
                        continue;
                    }
                    errors.push(e);
                }
                Err(ExchangeError::Sent(e)) => {
                    self.disconnect();
                    if !read_only {
                        errors.push(e);
                        return Err(collapse(errors));
                    }
                    errors.push(e);
                }
            }
            k += 1;
        }
        Err(collapse(errors))
    }

    fn open(&self, idx: usize, deadline: Instant) -> Result<Conn, ClientError> {
        let server = self.config.servers[idx].clone();
        let t = &self.config.timeouts;
        let (tcp, _) = tcp_connect(&server, t.connect, deadline)?;
        let _ = tcp.set_nodelay(true);
        let io_budget = t
            .read
            .min(remaining(deadline))
            .max(Duration::from_millis(1));
        let _ = tcp.set_read_timeout(Some(io_budget));
        let _ = tcp.set_write_timeout(Some(io_budget));
        let name = self
            .config
            .server_name
            .clone()
            .unwrap_or_else(|| server.host.clone());
        let config = self.connector.configure().map_err(|e| ClientError::Tls {
            server: server.clone(),
            problem: TlsProblem::Other,
            detail: e.to_string(),
        })?;
        let stream = match config.connect(&name, tcp) {
            Ok(s) => s,
            Err(HandshakeError::Failure(mid)) => {
                let detail = tls::ssl_detail(mid.error());
                if is_timeout(mid.error()) {
                    return Err(ClientError::Timeout {
                        server,
                        during: "to the TLS handshake",
                        after: io_budget,
                    });
                }
                if is_eof(mid.error()) {
                    return Err(ClientError::Closed {
                        server,
                        during: "during the TLS handshake",
                    });
                }
                let problem = tls::classify_handshake(mid.ssl().verify_result(), &detail, &name);
                return Err(ClientError::Tls {
                    server,
                    problem,
                    detail,
                });
            }
            Err(HandshakeError::WouldBlock(_)) => {
                return Err(ClientError::Timeout {
                    server,
                    during: "to the TLS handshake",
                    after: io_budget,
                });
            }
            Err(HandshakeError::SetupFailure(e)) => {
                return Err(ClientError::Tls {
                    server,
                    problem: TlsProblem::Other,
                    detail: e.to_string(),
                });
            }
        };
        let info = connection_info(&server, &stream, ProtocolVersion::V1_0);
        let mut conn = Conn {
            server: idx,
            stream,
            version: self.config.version.unwrap_or(ProtocolVersion::V1_1),
            info,
            used: false,
        };
        if self.config.version.is_none() {
            let (version, listed) = self.negotiate(&mut conn, deadline)?;
            conn.version = version;
            conn.info.server_versions = listed;
        }
        conn.info.protocol_version = conn.version;
        Ok(conn)
    }

    /// The version to use and the versions the server listed.
    fn negotiate(
        &self,
        conn: &mut Conn,
        deadline: Instant,
    ) -> Result<(ProtocolVersion, Vec<ProtocolVersion>), ClientError> {
        let payload = RequestPayload::DiscoverVersions {
            versions: ProtocolVersion::SUPPORTED.to_vec(),
        };
        let server = conn.info.server.clone();
        match exchange(conn, &payload, deadline, &self.limits, &self.config) {
            Ok(ResponsePayload::DiscoverVersions { versions }) => versions
                .iter()
                .copied()
                .find(|v| ProtocolVersion::SUPPORTED.contains(v))
                .map(|v| (v, versions.clone()))
                .ok_or_else(|| ClientError::Version {
                    server,
                    detail: "the server's Discover Versions answer lists none of them".into(),
                }),
            Ok(_) => Err(ClientError::Protocol {
                server,
                detail: "Discover Versions was answered with another operation's payload".into(),
            }),
            // The server does not know Discover Versions: KMIP 1.0.
            Err(ExchangeError::Answered(ClientError::Operation { .. })) => {
                Ok((ProtocolVersion::V1_0, Vec::new()))
            }
            Err(
                ExchangeError::Answered(e) | ExchangeError::Sent(e) | ExchangeError::NotSent(e),
            ) => Err(e),
        }
    }
}

fn collapse(mut errors: Vec<ClientError>) -> ClientError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        ClientError::AllServersFailed(errors)
    }
}
