//! The client's I/O: TCP with per-address and whole-operation deadlines, reads bounded by
//! both, TLS failures told apart (timeout, closed, alert), and what a connection looks like.
//! Request building and response classification are in `exchange.rs`, which does no I/O.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslStream};
use zeroize::Zeroizing;

use super::exchange::{self, Classified};
use super::{ClientConfig, ClientError, ServerAddr, tls};
use crate::message::{Operation, ProtocolVersion, RequestPayload, ResponsePayload};
use crate::ttlv::{self, HEADER_LEN, Limits};

/// What the TLS connection to the current server looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The server connected to.
    pub server: ServerAddr,
    /// The TLS version, as OpenSSL names it ("TLSv1.3").
    pub tls_version: String,
    /// The cipher suite, as OpenSSL names it.
    pub cipher: String,
    /// The server certificate's subject entries, comma-separated.
    pub server_subject: String,
    /// The end of the server certificate's validity, as OpenSSL prints it.
    pub server_not_after: String,
    /// Days until the server certificate expires (negative once expired).
    pub server_days_left: Option<i32>,
    /// The end of the client certificate's validity, as OpenSSL prints it.
    pub client_not_after: String,
    /// Days until the client certificate expires (negative once expired).
    pub client_days_left: Option<i32>,
    /// The KMIP version negotiated (or pinned).
    pub protocol_version: ProtocolVersion,
    /// The versions the server listed in Discover Versions during negotiation (empty when the
    /// version was pinned, or the server does not know Discover Versions).
    pub server_versions: Vec<ProtocolVersion>,
}

pub(super) struct Conn {
    pub(super) server: usize,
    pub(super) stream: SslStream<TcpStream>,
    pub(super) version: ProtocolVersion,
    pub(super) info: ConnectionInfo,
    /// Whether the connection has already carried an operation (a reused connection may have
    /// been closed by the server while idle).
    pub(super) used: bool,
}

/// How one exchange on one connection failed.
pub(super) enum ExchangeError {
    /// Nothing reached the server, or the server certainly did not act on it.
    NotSent(ClientError),
    /// The request was sent; the server may have carried it out.
    Sent(ClientError),
    /// The server answered: the answer is final.
    Answered(ClientError),
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

pub(super) fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub(super) fn is_timeout(e: &openssl::ssl::Error) -> bool {
    e.io_error()
        .is_some_and(|io| matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
        || (e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE)
}

pub(super) fn is_eof(e: &openssl::ssl::Error) -> bool {
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

/// Whole days from now until `t` (negative once past), for certificate expiry.
pub fn days_left(t: &openssl::asn1::Asn1TimeRef) -> Option<i32> {
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
    now.diff(t).ok().map(|d| d.days)
}

pub(super) fn connection_info(
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

/// A TLS alert the server sent before closing, if one is waiting to be read (read for at most
/// 200 ms): the problem it names and OpenSSL's text.
fn pending_alert(conn: &mut Conn) -> Option<(super::TlsProblem, String)> {
    let _ = conn
        .stream
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));
    let mut byte = [0u8; 1];
    match conn.stream.ssl_read(&mut byte) {
        Err(e) if !is_timeout(&e) => {
            let detail = tls::ssl_detail(&e);
            match tls::classify_alert(&detail) {
                super::TlsProblem::Other => None,
                problem => Some((problem, detail)),
            }
        }
        _ => None,
    }
}

/// One request/response exchange on an open connection: the request built and the answer
/// classified by `exchange.rs`, sent and read here within the deadline.
pub(super) fn exchange(
    conn: &mut Conn,
    payload: &RequestPayload,
    deadline: Instant,
    limits: &Limits,
    config: &ClientConfig,
) -> Result<ResponsePayload, ExchangeError> {
    let operation = payload.operation().unwrap_or(Operation::QUERY);
    let server = conn.info.server.clone();
    let version = exchange::request_version(operation, conn.version, config);
    let bytes = exchange::request_bytes(payload, version, config);
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
            // Under TLS 1.3 a server that refuses the client certificate does so after the
            // handshake, with an alert, and closes: the write may fail before the alert is
            // read. Read it, so the error names the refusal, not only the closed connection.
            _ => match pending_alert(conn) {
                Some((problem, detail)) => ClientError::Tls {
                    server,
                    problem,
                    detail,
                },
                None => ClientError::Closed {
                    server,
                    during: "while the request was sent",
                },
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
    match exchange::classify_response(&buf, &server, operation, version, limits) {
        Ok(p) => {
            conn.used = true;
            Ok(p)
        }
        Err(Classified::Refused(e)) => {
            conn.used = true;
            Err(ExchangeError::Answered(e))
        }
        Err(Classified::Garbled(e)) => Err(ExchangeError::Sent(e)),
    }
}
