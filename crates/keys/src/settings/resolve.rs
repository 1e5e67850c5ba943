//! Resolution: the sources merged by precedence, checked, and the files and secrets they name
//! read into [`Settings`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use atrest_kmip::client::{
    ClientConfig, DEFAULT_MAX_RESPONSE_LEN, DEFAULT_PORT, Identity, ServerAddr, Timeouts,
};
use atrest_kmip::message::{Password, ProtocolVersion};
use zeroize::Zeroizing;

use super::{EnvFile, Layer, SettingsError, read_file, read_secret};

/// Where to look for settings, highest precedence first (see the module's documentation).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Flags from the command line. `Some` for a command-line front end: errors then name the
    /// flags, `--config` and `--env-file`.
    pub flags: Option<Layer>,
    /// A TOML settings file.
    pub config_file: Option<PathBuf>,
    /// A client env file.
    pub env_file: Option<PathBuf>,
    /// Whether [`PASSPHRASE_VAR`](super::PASSPHRASE_VAR) and
    /// [`PASSWORD_VAR`](super::PASSWORD_VAR) are looked at.
    pub environment: bool,
    /// Servers to use when no other source gives any.
    pub fallback_servers: Vec<String>,
}

/// The settings whose absence is an error, with their name in each source.
#[derive(Debug, Clone, Copy)]
enum Setting {
    Servers,
    Ca,
    ClientCert,
    ClientKey,
}

impl Setting {
    fn what(self) -> &'static str {
        match self {
            Setting::Servers => "no KMIP server given",
            Setting::Ca => {
                "no CA certificate given (the PEM CA that issued the KMIP server's certificate)"
            }
            Setting::ClientCert => "no client certificate given (PEM or PKCS#12)",
            Setting::ClientKey => "no private key given for the PEM client certificate",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Setting::Servers => "--server HOST[:PORT]",
            Setting::Ca => "--ca FILE",
            Setting::ClientCert => "--client-cert FILE",
            Setting::ClientKey => "--client-key FILE",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Setting::Servers => "servers",
            Setting::Ca => "ca",
            Setting::ClientCert => "client_cert",
            Setting::ClientKey => "client_key",
        }
    }

    fn var(self) -> &'static str {
        match self {
            Setting::Servers => "KMIP_HOST",
            Setting::Ca => "KMIP_CA",
            Setting::ClientCert => "KMIP_CLIENT_P12 or KMIP_CLIENT_CERT",
            Setting::ClientKey => "KMIP_CLIENT_KEY",
        }
    }
}

impl Sources {
    /// An env file alone (the appliance's bundled KMIP server, the test peers).
    pub fn env_file(path: &Path) -> Sources {
        Sources {
            env_file: Some(path.to_owned()),
            ..Sources::default()
        }
    }

    /// Every source read and merged into one layer, nothing it names read yet.
    pub fn layer(&self) -> Result<Layer, SettingsError> {
        let mut layer = self.flags.clone().unwrap_or_default();
        if let Some(p) = &self.config_file {
            layer = layer.or(Layer::from_toml_file(p)?);
        }
        if let Some(p) = &self.env_file {
            layer = layer.or(EnvFile::read(p)?.layer());
        }
        if self.environment {
            layer = layer.or(Layer::from_environment());
        }
        Ok(layer.or(Layer {
            servers: self.fallback_servers.clone(),
            ..Layer::default()
        }))
    }

    /// Resolves the settings: [`Self::layer`], then [`Self::resolve_layer`].
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        self.resolve_layer(self.layer()?)
    }

    /// Checks `layer` (made from these sources, perhaps adjusted) and reads the files and
    /// secrets it names.
    pub fn resolve_layer(&self, layer: Layer) -> Result<Settings, SettingsError> {
        if layer.servers.is_empty() {
            return Err(self.missing(Setting::Servers));
        }
        let servers = layer
            .servers
            .iter()
            .map(|s| parse_server(s, DEFAULT_PORT).map_err(SettingsError::new))
            .collect::<Result<Vec<_>, _>>()?;
        let ca_path = layer.ca.ok_or_else(|| self.missing(Setting::Ca))?;
        let ca_pem = read_file(&ca_path, "CA certificate")?;
        let cert_path = layer
            .client_cert
            .ok_or_else(|| self.missing(Setting::ClientCert))?;
        let client_cert = read_file(&cert_path, "client certificate")?;
        let client_key = if is_pem(&client_cert) {
            match layer.client_key {
                Some(k) => Some(Zeroizing::new(read_file(&k, "client key")?)),
                None if has_private_key(&client_cert) => None,
                None => {
                    return Err(SettingsError::new(format!(
                        "the client certificate {} has no private key in it; {}",
                        cert_path.display(),
                        self.advice(Setting::ClientKey)
                    )));
                }
            }
        } else {
            None
        };
        let passphrase = layer
            .passphrase
            .map(|s| read_secret(s, "passphrase file"))
            .transpose()?;
        let password = layer
            .password
            .map(|s| read_secret(s, "password file"))
            .transpose()?;
        let version = layer
            .kmip_version
            .map(|v| v.parse::<ProtocolVersion>().map_err(SettingsError::new))
            .transpose()?;
        let timeouts = match layer.timeout {
            Some(t) if t.is_finite() && t > 0.0 && t <= 3600.0 => {
                Timeouts::uniform(Duration::from_secs_f64(t))
            }
            Some(t) => {
                return Err(SettingsError::new(format!(
                    "the timeout {t} is out of range; give seconds between 0 and 3600{}",
                    if self.flags.is_some() {
                        " (--timeout, or `timeout` in the --config file)"
                    } else {
                        ""
                    }
                )));
            }
            None => Timeouts::default(),
        };
        Ok(Settings {
            servers,
            server_name: layer.server_name,
            ca_pem,
            client_cert,
            client_key,
            passphrase,
            username: layer.username,
            password,
            version,
            timeouts,
        })
    }

    fn missing(&self, s: Setting) -> SettingsError {
        SettingsError::new(format!("{}; {}", s.what(), self.advice(s)))
    }

    /// How to give `s`, in the words of the sources offered.
    fn advice(&self, s: Setting) -> String {
        let mut ways = Vec::new();
        if self.flags.is_some() {
            ways.push(s.flag().to_owned());
        }
        match &self.config_file {
            Some(p) => ways.push(format!("`{}` in {}", s.key(), p.display())),
            None if self.flags.is_some() => ways.push(format!("`{}` in --config FILE", s.key())),
            None => {}
        }
        match &self.env_file {
            Some(p) => ways.push(format!("{} in {}", s.var(), p.display())),
            None if self.flags.is_some() => ways.push(format!("{} in --env-file FILE", s.var())),
            None => {}
        }
        match ways.len() {
            0 => "give it in the settings".to_owned(),
            1 => format!("set {}", ways[0]),
            n => format!("use {} or {}", ways[..n - 1].join(", "), ways[n - 1]),
        }
    }
}

/// Resolved settings: what the KMIP client needs, read from the files the sources named.
#[derive(Clone)]
pub struct Settings {
    /// The servers, in failover order.
    pub servers: Vec<ServerAddr>,
    /// The name to verify in the server certificate instead of each server's host.
    pub server_name: Option<String>,
    /// The PEM CA certificate(s) to trust.
    pub ca_pem: Vec<u8>,
    /// The client certificate file: PEM (perhaps with its key) or PKCS#12 (DER).
    pub client_cert: Vec<u8>,
    /// The PEM private key, when it came in a file of its own.
    pub client_key: Option<Zeroizing<Vec<u8>>>,
    /// The passphrase of the PKCS#12 file or of the encrypted key.
    pub passphrase: Option<Zeroizing<String>>,
    /// The KMIP username.
    pub username: Option<String>,
    /// The KMIP password.
    pub password: Option<Zeroizing<String>>,
    /// A pinned protocol version.
    pub version: Option<ProtocolVersion>,
    /// Connect, read and operation timeouts.
    pub timeouts: Timeouts,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("servers", &self.servers)
            .field("server_name", &self.server_name)
            .field("pkcs12", &self.is_pkcs12())
            .field("username", &self.username)
            .field("version", &self.version)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Whether the client certificate is a PKCS#12 file (else PEM).
    pub fn is_pkcs12(&self) -> bool {
        !is_pem(&self.client_cert)
    }

    /// The client identity: PKCS#12, or PEM with its key (inside the certificate file when no
    /// key file was given).
    pub fn identity(&self) -> Identity {
        if self.is_pkcs12() {
            Identity::Pkcs12 {
                der: self.client_cert.clone(),
                passphrase: self.passphrase.clone().unwrap_or_default(),
            }
        } else {
            Identity::Pem {
                cert_chain: self.client_cert.clone(),
                key: self
                    .client_key
                    .clone()
                    .unwrap_or_else(|| Zeroizing::new(self.client_cert.clone())),
                passphrase: self.passphrase.clone(),
            }
        }
    }

    /// The KMIP client's configuration.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            servers: self.servers.clone(),
            server_name: self.server_name.clone(),
            ca_pem: self.ca_pem.clone(),
            identity: self.identity(),
            username: self.username.clone(),
            password: self.password.as_ref().map(|p| Password::new(p.to_string())),
            version: self.version,
            timeouts: self.timeouts,
            max_response_len: DEFAULT_MAX_RESPONSE_LEN,
        }
    }
}

/// Parses one `HOST[:PORT]` entry, giving a bare host `default_port`; refuses what cannot be a
/// host name or IP address.
pub fn parse_server(s: &str, default_port: u16) -> Result<ServerAddr, String> {
    let s = s.trim();
    let explicit = if s.starts_with('[') {
        s.contains("]:")
    } else {
        s.matches(':').count() == 1
    };
    let mut addr = ServerAddr::from_str(s)?;
    if !explicit {
        addr.port = default_port;
    }
    if addr.host.len() > 253
        || addr
            .host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c))
    {
        return Err(format!(
            "`{s}` is not a host name or IP address; enter a name such as kmip.example.com"
        ));
    }
    Ok(addr)
}

/// Whether a certificate or key file is PEM (else DER: PKCS#12 or a DER certificate).
pub fn is_pem(b: &[u8]) -> bool {
    b.trim_ascii_start().starts_with(b"-----BEGIN")
}

/// Whether a PEM file holds a private key.
pub fn has_private_key(b: &[u8]) -> bool {
    b.windows(11).any(|w| w == b"PRIVATE KEY")
}
