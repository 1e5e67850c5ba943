//! What a [`Client`](super::Client) is told: servers, trust and identity, credentials,
//! timeouts, limits; and the env-file shape client settings are exchanged in.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::Identity;
use crate::message::{Password, ProtocolVersion};

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
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
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
    /// The client's certificate and private key.
    pub identity: Identity,
    /// The Username of the request's Credential; without it no Credential is sent.
    pub username: Option<String>,
    /// The Password of the Credential.
    pub password: Option<Password>,
    /// A pinned protocol version (no Discover Versions).
    pub version: Option<ProtocolVersion>,
    /// Timeouts (connect, each read or write, whole operation).
    pub timeouts: Timeouts,
    /// The largest response accepted, in bytes (also sent as Maximum Response Size).
    pub max_response_len: usize,
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
