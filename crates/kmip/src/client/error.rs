//! What can go wrong talking to a KMIP server, classified so that a person can act on it.
//!
//! Every message names what failed and ends with what to do next. No error ever carries key
//! material or a password.

use std::fmt;
use std::time::Duration;

use crate::message::{Operation, ResultReason};

use super::ServerAddr;

/// Which TLS problem stopped the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsProblem {
    /// The server's certificate does not chain to the configured CA.
    ServerCertUntrusted,
    /// The server's certificate is valid but not for the name (or IP) we connected to.
    NameMismatch {
        /// The host name or IP address connected to.
        expected: String,
    },
    /// The server's certificate has expired (or is not valid yet).
    ServerCertExpired,
    /// The server refused our client certificate (alert unknown_ca, bad_certificate,
    /// certificate_unknown, unsupported_certificate, certificate_required, access_denied).
    ClientCertRejected {
        /// The TLS alert the server sent.
        alert: String,
    },
    /// No cipher suite or protocol version in common (alert handshake_failure,
    /// insufficient_security or protocol_version), or the server demanded something we lack.
    NoCommonCipher {
        /// The TLS alert the server sent.
        alert: String,
    },
    /// Anything else, with OpenSSL's reason.
    Other,
}

/// An error from the KMIP client.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The client settings are unusable (unreadable file, bad passphrase, no server, …).
    Config(String),
    /// The host name did not resolve.
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        detail: String,
    },
    /// Nothing listens at the address (connection refused).
    ConnectRefused {
        /// The server tried.
        server: ServerAddr,
    },
    /// The TCP connection did not complete in time.
    ConnectTimeout {
        /// The server tried.
        server: ServerAddr,
        /// The connect timeout that ran out.
        after: Duration,
    },
    /// Another TCP error.
    Connect {
        /// The server tried.
        server: ServerAddr,
        /// The operating system's error.
        detail: String,
    },
    /// The TLS handshake failed.
    Tls {
        /// The server tried.
        server: ServerAddr,
        /// The problem, classified.
        problem: TlsProblem,
        /// OpenSSL's error.
        detail: String,
    },
    /// The server did not answer in time.
    Timeout {
        /// The server tried.
        server: ServerAddr,
        /// What was not answered, as the end of a sentence ("to the request", "during the TLS
        /// handshake").
        during: &'static str,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The server closed the connection without answering.
    Closed {
        /// The server tried.
        server: ServerAddr,
        /// What was not answered, as the end of a sentence ("before answering", "to the TLS
        /// handshake").
        during: &'static str,
    },
    /// The server answered with something that is not a valid KMIP response.
    Protocol {
        /// The server that answered.
        server: ServerAddr,
        /// What is wrong with the answer.
        detail: String,
    },
    /// The server rejected the credentials (Result Reason Authentication Not Successful).
    Authentication {
        /// The server that answered.
        server: ServerAddr,
        /// The server's Result Message.
        message: Option<String>,
    },
    /// No protocol version in common, or the server refused the version.
    Version {
        /// The server that answered.
        server: ServerAddr,
        /// Which version was refused, or that none was in common.
        detail: String,
    },
    /// The server processed the operation and failed it.
    Operation {
        /// The server that answered.
        server: ServerAddr,
        /// The operation that failed.
        operation: Operation,
        /// The Result Reason.
        reason: Option<ResultReason>,
        /// The Result Message.
        message: Option<String>,
    },
    /// Every configured server failed; each one's error in order.
    AllServersFailed(Vec<ClientError>),
}

impl ClientError {
    /// Whether the failure (or, for [`ClientError::AllServersFailed`], one of them) is a
    /// protocol version the server would not speak: the front end may offer a way to pin one.
    pub fn is_version_mismatch(&self) -> bool {
        match self {
            ClientError::Version { .. } => true,
            ClientError::AllServersFailed(all) => all.iter().any(ClientError::is_version_mismatch),
            _ => false,
        }
    }

    /// Whether another server might do better (transport-level failures), as opposed to an
    /// answer from a working server or a local configuration problem.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Resolve { .. }
                | ClientError::ConnectRefused { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Connect { .. }
                | ClientError::Tls { .. }
                | ClientError::Timeout { .. }
                | ClientError::Closed { .. }
                | ClientError::Protocol { .. }
        )
    }

    /// The Result Reason, when a server failed the operation.
    pub fn result_reason(&self) -> Option<ResultReason> {
        match self {
            ClientError::Operation { reason, .. } => *reason,
            ClientError::Authentication { .. } => Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL),
            ClientError::AllServersFailed(all) => all.iter().find_map(|e| e.result_reason()),
            _ => None,
        }
    }

    /// A short machine-readable class: "config", "dns", "tcp-refused", "tcp-timeout", "tcp",
    /// "tls-untrusted", "tls-name", "tls-expired", "tls-client-cert", "tls-cipher", "tls",
    /// "timeout", "closed", "protocol", "authentication", "version", "operation",
    /// "all-servers-failed".
    pub fn class(&self) -> &'static str {
        match self {
            ClientError::Config(_) => "config",
            ClientError::Resolve { .. } => "dns",
            ClientError::ConnectRefused { .. } => "tcp-refused",
            ClientError::ConnectTimeout { .. } => "tcp-timeout",
            ClientError::Connect { .. } => "tcp",
            ClientError::Tls { problem, .. } => match problem {
                TlsProblem::ServerCertUntrusted => "tls-untrusted",
                TlsProblem::NameMismatch { .. } => "tls-name",
                TlsProblem::ServerCertExpired => "tls-expired",
                TlsProblem::ClientCertRejected { .. } => "tls-client-cert",
                TlsProblem::NoCommonCipher { .. } => "tls-cipher",
                TlsProblem::Other => "tls",
            },
            ClientError::Timeout { .. } => "timeout",
            ClientError::Closed { .. } => "closed",
            ClientError::Protocol { .. } => "protocol",
            ClientError::Authentication { .. } => "authentication",
            ClientError::Version { .. } => "version",
            ClientError::Operation { .. } => "operation",
            ClientError::AllServersFailed(_) => "all-servers-failed",
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Config(m) => write!(f, "{m}"),
            ClientError::Resolve { host, detail } => write!(
                f,
                "cannot resolve KMIP server name `{host}` ({detail}); check the host name and \
                 the appliance's DNS settings"
            ),
            ClientError::ConnectRefused { server } => write!(
                f,
                "{server}: connection refused, nothing listens on that port; check the host and \
                 port (KMIP uses 5696) and that the KMIP server is running"
            ),
            ClientError::ConnectTimeout { server, after } => write!(
                f,
                "{server}: no TCP connection after {:.1} s; check the address, routing and \
                 firewalls between the appliance and the KMIP server",
                after.as_secs_f64()
            ),
            ClientError::Connect { server, detail } => write!(
                f,
                "{server}: TCP connection failed ({detail}); check the address and the network"
            ),
            ClientError::Tls {
                server,
                problem,
                detail,
            } => match problem {
                TlsProblem::ServerCertUntrusted => write!(
                    f,
                    "{server}: TLS handshake failed: the server's certificate is not signed by \
                     the configured CA ({detail}); upload the CA certificate that issued the \
                     KMIP server's certificate"
                ),
                TlsProblem::NameMismatch { expected } => write!(
                    f,
                    "{server}: TLS handshake failed: the server's certificate is not valid for \
                     `{expected}` ({detail}); connect with a name listed in the certificate's \
                     subject alternative names, or reissue the server certificate"
                ),
                TlsProblem::ServerCertExpired => write!(
                    f,
                    "{server}: TLS handshake failed: the server's certificate has expired or is \
                     not yet valid ({detail}); renew the KMIP server's certificate or check the \
                     appliance's clock"
                ),
                TlsProblem::ClientCertRejected { alert } => write!(
                    f,
                    "{server}: the server rejected the client certificate (TLS alert {alert}); \
                     upload a client certificate issued by a CA the KMIP server trusts, with the \
                     clientAuth extended key usage, and register it on the server"
                ),
                TlsProblem::NoCommonCipher { alert } => write!(
                    f,
                    "{server}: TLS handshake failed: no common TLS version or cipher suite (TLS \
                     alert {alert}); the server must offer TLS 1.2 or 1.3 with a suite such as \
                     ECDHE-ECDSA-AES128-GCM-SHA256 or AES128-SHA256, or it requires a client \
                     certificate the client does not have"
                ),
                TlsProblem::Other => write!(
                    f,
                    "{server}: TLS handshake failed ({detail}); check that the port speaks \
                     TLS (KMIP uses 5696) and the certificates"
                ),
            },
            ClientError::Timeout {
                server,
                during,
                after,
            } => write!(
                f,
                "{server}: no answer {during} within {:.1} s; the server is overloaded or the \
                 port belongs to something that is not a KMIP server; check the server or raise \
                 the timeout",
                after.as_secs_f64()
            ),
            ClientError::Closed { server, during } => write!(
                f,
                "{server}: the server closed the connection {during} without a KMIP answer; it \
                 may have rejected the client certificate or the request; check the server's log"
            ),
            ClientError::Protocol { server, detail } => write!(
                f,
                "{server}: the answer is not a valid KMIP response ({detail}); check that the \
                 host and port belong to a KMIP server"
            ),
            ClientError::Authentication { server, message } => {
                write!(f, "{server}: KMIP authentication failed")?;
                if let Some(m) = message {
                    write!(f, " ({m})")?;
                }
                f.write_str(
                    "; check the KMIP username and password, and that the client certificate \
                     belongs to that user on the server",
                )
            }
            ClientError::Version { server, detail } => write!(
                f,
                "{server}: no KMIP protocol version in common ({detail}); atrest speaks KMIP \
                 1.0-1.4 and 2.0-2.1"
            ),
            ClientError::Operation {
                server,
                operation,
                reason,
                message,
            } => {
                write!(f, "{server}: KMIP {operation} failed")?;
                if let Some(r) = reason {
                    write!(f, ": {r}")?;
                }
                if let Some(m) = message {
                    write!(f, " ({m})")?;
                }
                f.write_str("; ")?;
                f.write_str(operation_hint(*reason))
            }
            ClientError::AllServersFailed(all) => {
                write!(f, "no KMIP server could be used: ")?;
                for (i, e) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

fn operation_hint(reason: Option<ResultReason>) -> &'static str {
    match reason {
        Some(ResultReason::ITEM_NOT_FOUND) | Some(ResultReason::OBJECT_NOT_FOUND) => {
            "check the unique identifier, and that this client's identity owns the object"
        }
        Some(ResultReason::PERMISSION_DENIED) => {
            "the server's policy denies this to this client: the object may belong to another \
             user, or its state does not allow the operation (an Active key must be revoked \
             before it is destroyed)"
        }
        Some(ResultReason::OBJECT_DESTROYED) => {
            "the key was destroyed on the server; data encrypted with it cannot be recovered \
             without a backup of the key"
        }
        Some(ResultReason::WRONG_KEY_LIFECYCLE_STATE) | Some(ResultReason::ILLEGAL_OPERATION) => {
            "the object's state does not allow this operation; check its State with \
             Get Attributes"
        }
        Some(ResultReason::OPERATION_NOT_SUPPORTED) | Some(ResultReason::FEATURE_NOT_SUPPORTED) => {
            "the server does not support this; check its supported operations with \
             `atrest kmip query`"
        }
        _ => "see the server's reason above and its log",
    }
}

impl std::error::Error for ClientError {}
