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

mod error;
mod tls;

use std::fmt;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, HandshakeError, SslConnector, SslStream};
use zeroize::Zeroizing;

pub use error::{ClientError, TlsProblem};
pub use tls::{Identity, TLS12_CIPHERS};

use crate::message::{
    Attributes, Credential, KeyBlock, ObjectType, Operation, Password, ProtocolVersion,
    QueryFunction, QueryResponse, RequestBatchItem, RequestHeader, RequestMessage, RequestPayload,
    ResponseMessage, ResponsePayload, ResultReason, ResultStatus, RevocationReason,
    RevocationReasonCode, usage,
};
use crate::ttlv::{self, HEADER_LEN, Limits, Value};

/// Reads the `export NAME=value` lines of a client settings env file (the shape `atrest kms
/// serve` writes as `client.env` and the PyKMIP test peer writes as `env`). A value in single
/// quotes is unquoted as a shell would (`'\''` stands for one quote); other lines are ignored.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map(|v| v.replace("'\\''", "'"))
                .unwrap_or_else(|| v.to_owned());
            (k.to_owned(), v)
        })
        .collect()
}

/// The IANA port of KMIP over TLS.
pub const DEFAULT_PORT: u16 = 5696;

/// A KMIP server address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ServerAddr {
    type Err = String;
    /// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 5696.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("`{s}` is not a server address ({why}): use HOST or HOST:PORT");
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad("text after `]`")),
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port must be 1-65535"))?,
        };
        Ok(ServerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

/// Timeouts of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect, per resolved address.
    pub connect: Duration,
    /// Any single read or write on the socket (the TLS handshake included).
    pub read: Duration,
    /// One whole operation: connecting, negotiating, failover and the exchange.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(10),
            operation: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// All three derived from one figure: connect and read at most that, the whole operation
    /// three times it (room to fail over).
    pub fn uniform(t: Duration) -> Self {
        Timeouts {
            connect: t,
            read: t,
            operation: t * 3,
        }
    }
}

/// Largest response the client accepts by default: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_LEN: usize = 1 << 20;

/// Everything the client needs to reach a KMIP server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Servers in order of preference.
    pub servers: Vec<ServerAddr>,
    /// The name to verify in the server certificate instead of each server's host.
    pub server_name: Option<String>,
    /// PEM of the CA certificate(s) to trust; nothing else is trusted.
    pub ca_pem: Vec<u8>,
    pub identity: Identity,
    pub username: Option<String>,
    pub password: Option<Password>,
    /// A pinned protocol version (no Discover Versions).
    pub version: Option<ProtocolVersion>,
    pub timeouts: Timeouts,
    pub max_response_len: usize,
}

/// What the TLS connection to the current server looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub server: ServerAddr,
    pub tls_version: String,
    pub cipher: String,
    pub server_subject: String,
    pub server_not_after: String,
    /// Days until the server certificate expires (negative once expired).
    pub server_days_left: Option<i32>,
    pub client_not_after: String,
    pub client_days_left: Option<i32>,
    pub protocol_version: ProtocolVersion,
    /// The versions the server listed in Discover Versions during negotiation (empty when the
    /// version was pinned, or the server does not know Discover Versions).
    pub server_versions: Vec<ProtocolVersion>,
}

struct Conn {
    server: usize,
    stream: SslStream<TcpStream>,
    version: ProtocolVersion,
    info: ConnectionInfo,
    /// Whether the connection has already carried an operation (a reused connection may have
    /// been closed by the server while idle).
    used: bool,
}

/// How one exchange on one connection failed.
enum ExchangeError {
    /// Nothing reached the server, or the server certainly did not act on it.
    NotSent(ClientError),
    /// The request was sent; the server may have carried it out.
    Sent(ClientError),
    /// The server answered: the answer is final.
    Answered(ClientError),
}

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

    /// The protocol version in use with the current server, if connected.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.as_ref().map(|c| c.version)
    }

    /// Discover Versions: the versions the server supports among those atrest speaks.
    pub fn discover_versions(&mut self) -> Result<Vec<ProtocolVersion>, ClientError> {
        match self.call(RequestPayload::DiscoverVersions {
            versions: ProtocolVersion::SUPPORTED.to_vec(),
        })? {
            ResponsePayload::DiscoverVersions { versions } => Ok(versions),
            _ => Err(self.unexpected(Operation::DISCOVER_VERSIONS)),
        }
    }

    /// Query: supported operations and object types, vendor identification, server information.
    pub fn query(&mut self) -> Result<QueryResponse, ClientError> {
        match self.call(RequestPayload::Query {
            functions: vec![
                QueryFunction::QUERY_OPERATIONS,
                QueryFunction::QUERY_OBJECTS,
                QueryFunction::QUERY_SERVER_INFORMATION,
            ],
        })? {
            ResponsePayload::Query(q) => Ok(q),
            _ => Err(self.unexpected(Operation::QUERY)),
        }
    }

    /// Create: a new AES key of `bits` (128, 192, 256, or 512 where the server allows it) for
    /// encryption and decryption, optionally named. Returns its Unique Identifier. The key is
    /// Pre-Active until [`Client::activate`].
    pub fn create_aes_key(&mut self, bits: i32, name: Option<&str>) -> Result<String, ClientError> {
        self.create_aes_key_in_group(bits, name, None)
    }

    /// Create, as [`Client::create_aes_key`], with an Object Group as well when `group` is
    /// given. A server that fails the Create with the group (it does not support the attribute)
    /// is asked again without it, so the key is made either way.
    pub fn create_aes_key_in_group(
        &mut self,
        bits: i32,
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<String, ClientError> {
        match self.create_aes_key_with(bits, name, group) {
            Err(ClientError::Operation { .. }) if group.is_some() => {
                self.create_aes_key_with(bits, name, None)
            }
            r => r,
        }
    }

    fn create_aes_key_with(
        &mut self,
        bits: i32,
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut attributes = Attributes::new()
            .with("Cryptographic Algorithm", Value::Enumeration(3))
            .with("Cryptographic Length", Value::Integer(bits))
            .with(
                "Cryptographic Usage Mask",
                Value::Integer(usage::ENCRYPT | usage::DECRYPT),
            );
        if let Some(n) = name {
            attributes.push("Name", Attributes::name_value(n));
        }
        if let Some(g) = group {
            attributes.push("Object Group", Value::TextString(g.to_owned()));
        }
        match self.call(RequestPayload::Create {
            object_type: ObjectType::SYMMETRIC_KEY,
            attributes,
        })? {
            ResponsePayload::Create {
                unique_identifier, ..
            } => Ok(unique_identifier),
            _ => Err(self.unexpected(Operation::CREATE)),
        }
    }

    /// Register: stores an AES key the client supplies. Returns its Unique Identifier.
    pub fn register_aes_key(
        &mut self,
        material: Zeroizing<Vec<u8>>,
        name: Option<&str>,
    ) -> Result<String, ClientError> {
        let bits = (material.len() * 8) as i32;
        let mut attributes = Attributes::new().with(
            "Cryptographic Usage Mask",
            Value::Integer(usage::ENCRYPT | usage::DECRYPT),
        );
        if let Some(n) = name {
            attributes.push("Name", Attributes::name_value(n));
        }
        let mut kb = KeyBlock::raw_aes(material);
        kb.length = Some(bits);
        match self.call(RequestPayload::Register {
            object_type: ObjectType::SYMMETRIC_KEY,
            attributes,
            object: crate::message::ManagedObject::SymmetricKey(kb),
        })? {
            ResponsePayload::Register { unique_identifier } => Ok(unique_identifier),
            _ => Err(self.unexpected(Operation::REGISTER)),
        }
    }

    /// Activate: Pre-Active → Active.
    pub fn activate(&mut self, uid: &str) -> Result<(), ClientError> {
        match self.call(RequestPayload::Activate {
            unique_identifier: Some(uid.to_owned()),
        })? {
            ResponsePayload::Activate { .. } => Ok(()),
            _ => Err(self.unexpected(Operation::ACTIVATE)),
        }
    }

    /// Get: the key block of a symmetric key (or secret data). Refuses a wrapped key.
    pub fn get_key(&mut self, uid: &str) -> Result<KeyBlock, ClientError> {
        let resp = self.call(RequestPayload::Get {
            unique_identifier: Some(uid.to_owned()),
            key_format_type: None,
        })?;
        let server = self.current_server();
        match resp {
            ResponsePayload::Get { object, .. } => match object.key_block() {
                Some(kb) if kb.wrapped => Err(ClientError::Protocol {
                    server,
                    detail: format!(
                        "object {uid} came back wrapped; configure the server to return it \
                         unwrapped to this client"
                    ),
                }),
                Some(kb) => Ok(kb.clone()),
                None => Err(ClientError::Protocol {
                    server,
                    detail: format!("object {uid} is not a symmetric key"),
                }),
            },
            _ => Err(self.unexpected(Operation::GET)),
        }
    }

    /// Get Attributes: the named attributes (all when `names` is empty).
    pub fn get_attributes(&mut self, uid: &str, names: &[&str]) -> Result<Attributes, ClientError> {
        match self.call(RequestPayload::GetAttributes {
            unique_identifier: Some(uid.to_owned()),
            names: names.iter().map(|s| s.to_string()).collect(),
        })? {
            ResponsePayload::GetAttributes { attributes, .. } => Ok(attributes),
            _ => Err(self.unexpected(Operation::GET_ATTRIBUTES)),
        }
    }

    /// Get Attribute List: the names of the object's attributes.
    pub fn get_attribute_list(&mut self, uid: &str) -> Result<Vec<String>, ClientError> {
        match self.call(RequestPayload::GetAttributeList {
            unique_identifier: Some(uid.to_owned()),
        })? {
            ResponsePayload::GetAttributeList { names, .. } => Ok(names),
            _ => Err(self.unexpected(Operation::GET_ATTRIBUTE_LIST)),
        }
    }

    /// Locate: the identifiers of objects matching every given attribute.
    pub fn locate(
        &mut self,
        attributes: Attributes,
        maximum_items: Option<i32>,
    ) -> Result<Vec<String>, ClientError> {
        match self.call(RequestPayload::Locate {
            maximum_items,
            offset_items: None,
            attributes,
        })? {
            ResponsePayload::Locate {
                unique_identifiers, ..
            } => Ok(unique_identifiers),
            _ => Err(self.unexpected(Operation::LOCATE)),
        }
    }

    /// Revoke with a reason (Cessation of Operation, Key Compromise, …).
    pub fn revoke(
        &mut self,
        uid: &str,
        code: RevocationReasonCode,
        message: Option<&str>,
    ) -> Result<(), ClientError> {
        let compromise_date = (code == RevocationReasonCode::KEY_COMPROMISE)
            .then(|| time::OffsetDateTime::now_utc().unix_timestamp());
        match self.call(RequestPayload::Revoke {
            unique_identifier: Some(uid.to_owned()),
            reason: RevocationReason {
                code,
                message: message.map(str::to_owned),
            },
            compromise_date,
        })? {
            ResponsePayload::Revoke { .. } => Ok(()),
            _ => Err(self.unexpected(Operation::REVOKE)),
        }
    }

    /// Destroy.
    pub fn destroy(&mut self, uid: &str) -> Result<(), ClientError> {
        match self.call(RequestPayload::Destroy {
            unique_identifier: Some(uid.to_owned()),
        })? {
            ResponsePayload::Destroy { .. } => Ok(()),
            _ => Err(self.unexpected(Operation::DESTROY)),
        }
    }

    fn current_server(&self) -> ServerAddr {
        self.conn
            .as_ref()
            .map(|c| c.info.server.clone())
            .unwrap_or_else(|| self.config.servers[self.preferred].clone())
    }

    fn unexpected(&self, op: Operation) -> ClientError {
        ClientError::Protocol {
            server: self.current_server(),
            detail: format!("the answer to {op} carries another operation's payload"),
        }
    }
}

/// Resolves `server` and opens a TCP connection to the first of its addresses that accepts,
/// each attempt bounded by `per_address` and all of them by `deadline`. Returns the stream and
/// the address it reached; failures are classified (name resolution, refused, timed out).
pub fn tcp_connect(
    server: &ServerAddr,
    per_address: Duration,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ClientError> {
    let addrs: Vec<SocketAddr> = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|e| ClientError::Resolve {
            host: server.host.clone(),
            detail: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve {
            host: server.host.clone(),
            detail: "no address".into(),
        });
    }
    let mut last = None;
    for a in &addrs {
        let budget = per_address.min(remaining(deadline));
        if budget.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(a, budget) {
            Ok(s) => return Ok((s, *a)),
            Err(e) => last = Some((e, budget)),
        }
    }
    let server = server.clone();
    Err(match last {
        Some((e, budget)) => match e.kind() {
            ErrorKind::ConnectionRefused => ClientError::ConnectRefused { server },
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ClientError::ConnectTimeout {
                server,
                after: budget,
            },
            _ => ClientError::Connect {
                server,
                detail: e.to_string(),
            },
        },
        None => ClientError::ConnectTimeout {
            server,
            after: per_address,
        },
    })
}

fn collapse(mut errors: Vec<ClientError>) -> ClientError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        ClientError::AllServersFailed(errors)
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn credential(config: &ClientConfig) -> Option<Credential> {
    config
        .username
        .as_ref()
        .map(|u| Credential::UsernamePassword {
            username: u.clone(),
            password: config.password.clone(),
        })
}

fn is_timeout(e: &openssl::ssl::Error) -> bool {
    e.io_error()
        .is_some_and(|io| matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
        || (e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE)
}

fn is_eof(e: &openssl::ssl::Error) -> bool {
    e.code() == ErrorCode::ZERO_RETURN
        || (e.code() == ErrorCode::SYSCALL
            && e.ssl_error().is_none_or(|s| s.errors().is_empty())
            && e.io_error().is_none_or(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                )
            }))
        || tls::ssl_detail(e).contains("unexpected eof")
}

fn days_left(t: &openssl::asn1::Asn1TimeRef) -> Option<i32> {
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
    now.diff(t).ok().map(|d| d.days)
}

fn connection_info(
    server: &ServerAddr,
    stream: &SslStream<TcpStream>,
    version: ProtocolVersion,
) -> ConnectionInfo {
    let ssl = stream.ssl();
    let peer = ssl.peer_certificate();
    let subject = peer
        .as_ref()
        .map(|c| {
            c.subject_name()
                .entries()
                .filter_map(|e| e.data().to_string().ok())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let own = ssl.certificate();
    ConnectionInfo {
        server: server.clone(),
        tls_version: ssl.version_str().to_owned(),
        cipher: ssl
            .current_cipher()
            .map(|c| c.name().to_owned())
            .unwrap_or_default(),
        server_subject: subject,
        server_not_after: peer
            .as_ref()
            .map(|c| c.not_after().to_string())
            .unwrap_or_default(),
        server_days_left: peer.as_ref().and_then(|c| days_left(c.not_after())),
        client_not_after: own.map(|c| c.not_after().to_string()).unwrap_or_default(),
        client_days_left: own.and_then(|c| days_left(c.not_after())),
        protocol_version: version,
        server_versions: Vec::new(),
    }
}

/// Reads exactly `buf.len()` bytes, classifying failures.
fn read_exact(
    conn: &mut Conn,
    buf: &mut [u8],
    deadline: Instant,
    read_timeout: Duration,
) -> Result<(), ClientError> {
    let server = &conn.info.server;
    let mut filled = 0;
    while filled < buf.len() {
        let budget = read_timeout.min(remaining(deadline));
        if budget.is_zero() {
            return Err(ClientError::Timeout {
                server: server.clone(),
                during: "to the request",
                after: read_timeout,
            });
        }
        let _ = conn.stream.get_ref().set_read_timeout(Some(budget));
        match conn.stream.ssl_read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(ClientError::Closed {
                    server: server.clone(),
                    during: "before answering",
                });
            }
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) => {
                return Err(ClientError::Timeout {
                    server: server.clone(),
                    during: "to the request",
                    after: budget,
                });
            }
            Err(e) if is_eof(&e) => {
                return Err(ClientError::Closed {
                    server: server.clone(),
                    during: "before answering",
                });
            }
            Err(e) => {
                let detail = tls::ssl_detail(&e);
                return Err(ClientError::Tls {
                    server: server.clone(),
                    problem: tls::classify_alert(&detail),
                    detail,
                });
            }
        }
    }
    Ok(())
}

/// One request/response exchange on an open connection.
fn exchange(
    conn: &mut Conn,
    payload: &RequestPayload,
    deadline: Instant,
    limits: &Limits,
    config: &ClientConfig,
) -> Result<ResponsePayload, ExchangeError> {
    let max_response_len = config.max_response_len;
    let credential = credential(config);
    let operation = payload.operation().unwrap_or(Operation::QUERY);
    let server = conn.info.server.clone();
    let version = if operation == Operation::DISCOVER_VERSIONS && config.version.is_none() {
        // The first version with Discover Versions: every server that has it parses 1.1.
        ProtocolVersion::V1_1
    } else {
        conn.version
    };
    let request = RequestMessage {
        header: RequestHeader {
            protocol_version: version,
            maximum_response_size: Some(max_response_len.min(i32::MAX as usize) as i32),
            authentication: credential,
            time_stamp: None,
            batch_count: 1,
        },
        items: vec![RequestBatchItem {
            operation,
            id: None,
            payload: payload.clone(),
        }],
    };
    let bytes = Zeroizing::new(request.to_item().to_bytes());
    let write_budget = config.timeouts.read.min(remaining(deadline));
    let _ = conn
        .stream
        .get_ref()
        .set_write_timeout(Some(write_budget.max(Duration::from_millis(1))));
    if let Err(e) = conn
        .stream
        .write_all(&bytes)
        .and_then(|_| conn.stream.flush())
    {
        let err = match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                server,
                during: "to the request (sending)",
                after: write_budget,
            },
            _ => ClientError::Closed {
                server,
                during: "while the request was sent",
            },
        };
        return Err(ExchangeError::NotSent(err));
    }
    let read_timeout = config.timeouts.read;
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = read_exact(conn, &mut header, deadline, read_timeout) {
        // The server closed without a byte of answer: on a reused connection this is an idle
        // close before the request was read.
        return Err(match e {
            ClientError::Closed { .. } if conn.used => ExchangeError::NotSent(e),
            e => ExchangeError::Sent(e),
        });
    }
    let total = ttlv::message_len(&header, limits).map_err(|e| {
        ExchangeError::Sent(ClientError::Protocol {
            server: server.clone(),
            detail: match e.kind {
                ttlv::DecodeErrorKind::TooLarge { length, max } => format!(
                    "the server announced a response of {length} bytes, over the limit of {max}"
                ),
                _ => format!("the first bytes of the answer are not TTLV: {}", e.kind),
            },
        })
    })?;
    let mut buf = Zeroizing::new(vec![0u8; total]);
    buf[..HEADER_LEN].copy_from_slice(&header);
    read_exact(conn, &mut buf[HEADER_LEN..], deadline, read_timeout)
        .map_err(ExchangeError::Sent)?;
    let item = ttlv::decode(&buf, limits).map_err(|e| {
        ExchangeError::Sent(ClientError::Protocol {
            server: server.clone(),
            detail: e.to_string(),
        })
    })?;
    let response = ResponseMessage::from_item(&item).map_err(|e| {
        ExchangeError::Sent(ClientError::Protocol {
            server: server.clone(),
            detail: format!("malformed Response Message: {e}"),
        })
    })?;
    conn.used = true;
    let Some(bi) = response.items.into_iter().next() else {
        return Err(ExchangeError::Sent(ClientError::Protocol {
            server,
            detail: "the response has no batch item".into(),
        }));
    };
    if bi.status != ResultStatus::SUCCESS {
        let err = match bi.reason {
            Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL) => ClientError::Authentication {
                server,
                message: bi.message,
            },
            Some(r) if r.0 == 0x3F => ClientError::Version {
                server,
                detail: format!(
                    "the server refused protocol version {version}{}",
                    bi.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            },
            reason => ClientError::Operation {
                server,
                operation,
                reason,
                message: bi.message,
            },
        };
        return Err(ExchangeError::Answered(err));
    }
    match bi.payload {
        Some(p) => Ok(p),
        None => Err(ExchangeError::Answered(ClientError::Protocol {
            server,
            detail: format!("the successful answer to {operation} has no payload"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        let a: ServerAddr = "kmip.example".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("kmip.example", 5696));
        let a: ServerAddr = "10.0.0.1:15696".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.1", 15696));
        let a: ServerAddr = "[::1]:7".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7));
        assert_eq!(a.to_string(), "[::1]:7");
        let a: ServerAddr = "::1".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 5696));
        assert!("host:0".parse::<ServerAddr>().is_err());
        assert!("host:99999".parse::<ServerAddr>().is_err());
        assert!(":5696".parse::<ServerAddr>().is_err());
    }
}
