//! KMIP connection settings, resolved one way for every front end.
//!
//! A setting may come from five sources. For each setting on its own, the first source in this
//! list that gives it wins:
//!
//! 1. **flags** on the command line (`atrest kmip`, `atrest volume …`: `--server`, `--ca`, …);
//! 2. the **TOML settings file** (`--config FILE`): the flags' names with underscores
//!    (`servers`, `server_name`, `ca`, `client_cert`, `client_key`, `passphrase_file`,
//!    `username`, `password_file`, `kmip_version`, `timeout`); paths are relative to the file;
//! 3. a **client env file** (`--env-file FILE`): `export NAME=value` lines as `atrest kms serve`
//!    writes `DIR/client.env` and the PyKMIP test peer writes its `env` (`KMIP_HOST`,
//!    `KMIP_PORT`, `KMIP_SERVER_NAME`, `KMIP_CA`, `KMIP_CLIENT_P12` with
//!    `KMIP_CLIENT_P12_PASSPHRASE` or else `KMIP_CLIENT_CERT` with `KMIP_CLIENT_KEY`,
//!    `KMIP_USERNAME`, `KMIP_PASSWORD`);
//! 4. the **environment**: `ATREST_KMIP_PASSPHRASE` and `ATREST_KMIP_PASSWORD` (secrets only);
//! 5. **fallback servers** given by the caller (the servers a volume's header names), for the
//!    servers only.
//!
//! The servers are one setting: a list from a higher source replaces, never extends, a lower
//! one. Secrets (the passphrase of the client identity, the KMIP password) are read from files
//! or the environment, never taken from the command line itself.
//!
//! [`Sources`] names where to look, [`Sources::resolve`] reads what the settings name (the CA,
//! the client identity, the secrets) into one [`Settings`] value, and
//! [`Settings::client_config`] is what the KMIP client takes. The CLI gives all five sources; the
//! appliance fills in its Storage > Encryption settings from an env file (the bundled KMIP
//! server's `client.env`) and keeps what the administrator enters itself; tests read the
//! PyKMIP peers' env files through [`EnvFile`].
//!
//! Errors ([`SettingsError`]) say which setting or file failed and how to fix it, in the words
//! of the sources the caller offers; they never include a secret or key material.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use atrest_kmip::client::{
    ClientConfig, DEFAULT_MAX_RESPONSE_LEN, DEFAULT_PORT, Identity, ServerAddr, Timeouts,
};
use atrest_kmip::message::{Password, ProtocolVersion};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Largest settings, env, certificate, key or secret file read: 1 MiB.
pub const MAX_FILE: u64 = 1 << 20;

/// The environment variable holding the client identity's passphrase.
pub const PASSPHRASE_VAR: &str = "ATREST_KMIP_PASSPHRASE";
/// The environment variable holding the KMIP password.
pub const PASSWORD_VAR: &str = "ATREST_KMIP_PASSWORD";

/// Why the settings could not be resolved: one sentence naming the setting or file and what to
/// do. It never holds a secret's value or key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(String);

impl SettingsError {
    fn new(message: impl Into<String>) -> Self {
        SettingsError(message.into())
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

/// A secret setting: a file holding it, or its value (from an env file or the environment).
#[derive(Clone)]
pub enum Secret {
    /// A file whose text is the secret (one trailing line break is dropped).
    File(PathBuf),
    /// The secret itself.
    Value(Zeroizing<String>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::File(p) => f.debug_tuple("File").field(p).finish(),
            Secret::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// The settings one source gives; what it does not give is `None` (or empty).
#[derive(Debug, Clone, Default)]
pub struct Layer {
    /// `HOST[:PORT]` entries, in failover order (a bare host gets port 5696).
    pub servers: Vec<String>,
    /// The name to verify in the server certificate, when it differs from the host.
    pub server_name: Option<String>,
    /// The PEM CA certificate(s) that issued the server's certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate: PEM (with its key inside or in `client_key`) or PKCS#12.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key, when not inside `client_cert`.
    pub client_key: Option<PathBuf>,
    /// The passphrase of the PKCS#12 file or of the encrypted key.
    pub passphrase: Option<Secret>,
    /// The KMIP username (Credential in every request header).
    pub username: Option<String>,
    /// The KMIP password.
    pub password: Option<Secret>,
    /// A pinned KMIP version ("1.0" … "2.1") instead of negotiating.
    pub kmip_version: Option<String>,
    /// Seconds to wait for a connection or an answer.
    pub timeout: Option<f64>,
}

impl Layer {
    /// This layer over `lower`: each setting from `self` when it gives it, else from `lower`.
    pub fn or(self, lower: Layer) -> Layer {
        Layer {
            servers: if self.servers.is_empty() {
                lower.servers
            } else {
                self.servers
            },
            server_name: self.server_name.or(lower.server_name),
            ca: self.ca.or(lower.ca),
            client_cert: self.client_cert.or(lower.client_cert),
            client_key: self.client_key.or(lower.client_key),
            passphrase: self.passphrase.or(lower.passphrase),
            username: self.username.or(lower.username),
            password: self.password.or(lower.password),
            kmip_version: self.kmip_version.or(lower.kmip_version),
            timeout: self.timeout.or(lower.timeout),
        }
    }

    /// The secrets the environment gives: [`PASSPHRASE_VAR`] and [`PASSWORD_VAR`].
    pub fn from_environment() -> Layer {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| Secret::Value(Zeroizing::new(v)))
        };
        Layer {
            passphrase: var(PASSPHRASE_VAR),
            password: var(PASSWORD_VAR),
            ..Layer::default()
        }
    }

    /// Reads a TOML settings file; relative paths in it are made relative to the file.
    pub fn from_toml_file(path: &Path) -> Result<Layer, SettingsError> {
        let bytes = read_file(path, "settings file")?;
        let text = String::from_utf8(bytes).map_err(|_| {
            SettingsError::new(format!(
                "the settings file {} is not UTF-8 text; give a TOML settings file",
                path.display()
            ))
        })?;
        let f: TomlFile = toml::from_str(&text).map_err(|e| {
            // One line: the message and where, never the excerpt (it could show a value).
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            SettingsError::new(format!(
                "the settings file {} is not valid TOML settings{}: {}; correct it",
                path.display(),
                line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                e.message().trim()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: Option<PathBuf>| p.map(|p| if p.is_relative() { base.join(p) } else { p });
        Ok(Layer {
            servers: f.servers,
            server_name: f.server_name,
            ca: rel(f.ca),
            client_cert: rel(f.client_cert),
            client_key: rel(f.client_key),
            passphrase: rel(f.passphrase_file).map(Secret::File),
            username: f.username,
            password: rel(f.password_file).map(Secret::File),
            kmip_version: f.kmip_version,
            timeout: f.timeout,
        })
    }
}

/// The TOML settings file: the flags' names with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    servers: Vec<String>,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    kmip_version: Option<String>,
    timeout: Option<f64>,
}

/// A client env file: `export NAME=value` lines (see [`atrest_kmip::client::parse_env`]).
#[derive(Clone)]
pub struct EnvFile {
    path: PathBuf,
    vars: Vec<(String, String)>,
}

impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names only: values include passwords.
        f.debug_struct("EnvFile")
            .field("path", &self.path)
            .field(
                "names",
                &self
                    .vars
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EnvFile {
    /// Reads and parses `path` (at most [`MAX_FILE`] bytes of UTF-8 text).
    pub fn read(path: &Path) -> Result<EnvFile, SettingsError> {
        let bytes = Zeroizing::new(read_file(path, "env file")?);
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            SettingsError::new(format!(
                "the env file {} is not UTF-8 text; give a file of `export NAME=value` lines",
                path.display()
            ))
        })?;
        Ok(EnvFile {
            path: path.to_owned(),
            vars: atrest_kmip::client::parse_env(text),
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every `NAME=value` pair, in the file's order.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// The value of `name`, unless it is missing or empty (the last one wins).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The connection settings the file gives: KMIP_HOST (with KMIP_PORT), KMIP_SERVER_NAME,
    /// KMIP_CA, the identity (KMIP_CLIENT_P12 with KMIP_CLIENT_P12_PASSPHRASE when set, else
    /// KMIP_CLIENT_CERT with KMIP_CLIENT_KEY), KMIP_USERNAME and KMIP_PASSWORD.
    pub fn layer(&self) -> Layer {
        let path = |name: &str| self.get(name).map(PathBuf::from);
        let value = |name: &str| {
            self.get(name)
                .map(|v| Secret::Value(Zeroizing::new(v.into())))
        };
        let servers = match (self.get("KMIP_HOST"), self.get("KMIP_PORT")) {
            (Some(host), Some(port)) if host.contains(':') && !host.starts_with('[') => {
                vec![format!("[{host}]:{port}")]
            }
            (Some(host), Some(port)) => vec![format!("{host}:{port}")],
            (Some(host), None) => vec![host.to_owned()],
            (None, _) => Vec::new(),
        };
        let mut layer = Layer {
            servers,
            server_name: self.get("KMIP_SERVER_NAME").map(str::to_owned),
            ca: path("KMIP_CA"),
            username: self.get("KMIP_USERNAME").map(str::to_owned),
            password: value("KMIP_PASSWORD"),
            ..Layer::default()
        };
        if let Some(p12) = path("KMIP_CLIENT_P12") {
            layer.client_cert = Some(p12);
            layer.passphrase = value("KMIP_CLIENT_P12_PASSPHRASE");
        } else {
            layer.client_cert = path("KMIP_CLIENT_CERT");
            layer.client_key = path("KMIP_CLIENT_KEY");
        }
        layer
    }
}

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
    /// Whether [`PASSPHRASE_VAR`] and [`PASSWORD_VAR`] are looked at.
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

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, SettingsError> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| {
        SettingsError::new(format!(
            "cannot read the {what} {} ({e}); check the path and that it may be read",
            path.display()
        ))
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(SettingsError::new(format!(
            "the {what} {} is larger than the {MAX_FILE} bytes allowed; give the right file",
            path.display()
        )));
    }
    Ok(buf)
}

fn read_secret(s: Secret, what: &str) -> Result<Zeroizing<String>, SettingsError> {
    match s {
        Secret::Value(v) => Ok(v),
        Secret::File(path) => {
            let bytes = Zeroizing::new(read_file(&path, what)?);
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                SettingsError::new(format!(
                    "the {what} {} is not UTF-8 text; give a file holding only the secret",
                    path.display()
                ))
            })?;
            Ok(Zeroizing::new(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_AND_KEY: &[u8] =
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
    const CERT_ONLY: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const PKCS12: &[u8] = &[0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03];

    /// A directory with a CA, identities, secrets, an env file and a TOML file.
    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |name: &str, b: &[u8]| std::fs::write(d.path().join(name), b).unwrap();
        w(
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
        );
        w(
            "other-ca.pem",
            b"-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----\n",
        );
        w("both.pem", CERT_AND_KEY);
        w("cert.pem", CERT_ONLY);
        w(
            "key.pem",
            b"-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n",
        );
        w("client.p12", PKCS12);
        w("pass", b"file-passphrase\n");
        w("password", b"file-password\r\n");
        let p = |name: &str| d.path().join(name).display().to_string();
        w(
            "client.env",
            format!(
                "export KMIP_HOST=127.0.0.1\nexport KMIP_PORT=15999\nexport KMIP_SERVER_NAME=localhost\n\
                 export KMIP_CA='{}'\nexport KMIP_CLIENT_CERT='{}'\nexport KMIP_CLIENT_KEY='{}'\n\
                 export KMIP_CLIENT_P12='{}'\nexport KMIP_CLIENT_P12_PASSPHRASE='env-file-passphrase'\n\
                 export KMIP_USERNAME=appliance\nexport KMIP_PASSWORD='env-file-password'\n",
                p("ca.pem"),
                p("cert.pem"),
                p("key.pem"),
                p("client.p12")
            )
            .as_bytes(),
        );
        w(
            "kmip.toml",
            b"servers = [\"toml.example:6000\", \"toml2.example\"]\nca = \"other-ca.pem\"\n\
              username = \"toml-user\"\npassword_file = \"password\"\ntimeout = 5\n",
        );
        d
    }

    fn value(s: &str) -> Option<Secret> {
        Some(Secret::Value(Zeroizing::new(s.to_owned())))
    }

    fn expose(s: &Option<Zeroizing<String>>) -> Option<&str> {
        s.as_ref().map(|s| s.as_str())
    }

    #[test]
    fn an_env_file_alone_gives_everything_with_its_pkcs12_identity() {
        let d = fixture();
        let s = Sources::env_file(&d.path().join("client.env"))
            .resolve()
            .unwrap();
        assert_eq!(s.servers, vec![parse_server("127.0.0.1:15999", 1).unwrap()]);
        assert_eq!(s.server_name.as_deref(), Some("localhost"));
        assert!(s.is_pkcs12());
        assert_eq!(s.client_cert, PKCS12);
        assert!(s.client_key.is_none());
        assert_eq!(expose(&s.passphrase), Some("env-file-passphrase"));
        assert_eq!(s.username.as_deref(), Some("appliance"));
        assert_eq!(expose(&s.password), Some("env-file-password"));
        assert_eq!(s.timeouts, Timeouts::default());
        assert!(matches!(s.identity(), Identity::Pkcs12 { .. }));
        let c = s.client_config();
        assert_eq!(c.password.unwrap().expose(), "env-file-password");
    }

    #[test]
    fn an_env_file_without_pkcs12_gives_the_pem_pair() {
        let d = fixture();
        let env = d.path().join("pem.env");
        std::fs::write(
            &env,
            format!(
                "export KMIP_HOST=::1\nexport KMIP_PORT=7000\nexport KMIP_CA={}\n\
                 export KMIP_CLIENT_CERT={}\nexport KMIP_CLIENT_KEY={}\nexport KMIP_PASSWORD=\n",
                d.path().join("ca.pem").display(),
                d.path().join("cert.pem").display(),
                d.path().join("key.pem").display()
            ),
        )
        .unwrap();
        let s = Sources::env_file(&env).resolve().unwrap();
        assert_eq!(s.servers[0].host, "::1");
        assert_eq!(s.servers[0].port, 7000);
        assert!(!s.is_pkcs12());
        assert!(s.client_key.is_some());
        assert!(s.passphrase.is_none());
        // An empty value is no value.
        assert!(s.password.is_none());
        assert!(matches!(
            s.identity(),
            Identity::Pem {
                passphrase: None,
                ..
            }
        ));
    }

    /// Flags over the TOML file over the env file over the environment over the fallback
    /// servers, setting by setting.
    #[test]
    fn precedence_is_flags_then_toml_then_env_file_then_environment_then_fallback() {
        let d = fixture();
        let flags = Layer {
            client_cert: Some(d.path().join("both.pem")),
            passphrase: Some(Secret::File(d.path().join("pass"))),
            ..Layer::default()
        };
        let sources = Sources {
            flags: Some(flags),
            config_file: Some(d.path().join("kmip.toml")),
            env_file: Some(d.path().join("client.env")),
            environment: false,
            fallback_servers: vec!["header.example".into()],
        };
        let merged = sources.layer().unwrap().or(Layer {
            password: value("environment-password"),
            ..Layer::default()
        });
        let s = sources.resolve_layer(merged).unwrap();
        // TOML over env file and fallback; its relative paths are relative to it.
        assert_eq!(s.servers.len(), 2);
        assert_eq!(s.servers[0].to_string(), "toml.example:6000");
        assert_eq!(s.servers[1].to_string(), "toml2.example:5696");
        assert!(s.ca_pem.windows(5).any(|w| w == b"OTHER"));
        assert_eq!(s.username.as_deref(), Some("toml-user"));
        assert_eq!(expose(&s.password), Some("file-password"));
        assert_eq!(s.timeouts, Timeouts::uniform(Duration::from_secs(5)));
        // Flags over everything: the PEM file with its key inside, the passphrase file.
        assert!(!s.is_pkcs12());
        assert_eq!(s.client_cert, CERT_AND_KEY);
        assert_eq!(expose(&s.passphrase), Some("file-passphrase"));
        // The env file gives what nothing above it gives.
        assert_eq!(s.server_name.as_deref(), Some("localhost"));
        // The env file names a PKCS#12 identity, so no key file: the flags' PEM holds its key.
        assert!(s.client_key.is_none());

        // Without the TOML file: the env file's server wins over the fallback.
        let s = Sources {
            config_file: None,
            ..sources.clone()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.servers[0].to_string(), "127.0.0.1:15999");
        // Without any server: the fallback.
        let s = Sources {
            flags: Some(Layer {
                ca: Some(d.path().join("ca.pem")),
                client_cert: Some(d.path().join("both.pem")),
                ..Layer::default()
            }),
            config_file: None,
            env_file: None,
            ..sources.clone()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.servers[0].to_string(), "header.example:5696");
        // The environment's secrets come below every file.
        let l = Layer::default()
            .or(Layer {
                password: value("environment"),
                ..Layer::default()
            })
            .or(Layer {
                password: value("lower"),
                ..Layer::default()
            });
        assert!(matches!(l.password, Some(Secret::Value(v)) if v.as_str() == "environment"));
    }

    #[test]
    fn what_is_missing_is_named_with_the_ways_to_give_it() {
        let d = fixture();
        let cli = Sources {
            flags: Some(Layer::default()),
            environment: true,
            ..Sources::default()
        };
        let e = cli.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("no KMIP server given; use --server HOST[:PORT]"),
            "{e}"
        );
        assert!(e.contains("`servers` in --config FILE"), "{e}");
        assert!(e.contains("KMIP_HOST in --env-file FILE"), "{e}");
        let e = Sources {
            fallback_servers: vec!["h".into()],
            ..cli.clone()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("no CA certificate given"), "{e}");
        assert!(e.contains("--ca FILE"), "{e}");
        let e = Sources {
            flags: Some(Layer {
                servers: vec!["h".into()],
                ca: Some(d.path().join("ca.pem")),
                client_cert: Some(d.path().join("cert.pem")),
                ..Layer::default()
            }),
            ..cli.clone()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("has no private key in it; use --client-key FILE"),
            "{e}"
        );

        // An env file alone: only its own variable is named.
        let env = d.path().join("partial.env");
        std::fs::write(&env, "export KMIP_HOST=h\nexport KMIP_PASSWORD=hunter2\n").unwrap();
        let e = Sources::env_file(&env).resolve().unwrap_err().to_string();
        assert!(e.starts_with("no CA certificate given"), "{e}");
        assert!(
            e.ends_with(&format!("; set KMIP_CA in {}", env.display())),
            "{e}"
        );
        assert!(!e.contains("hunter2") && !e.contains("--"), "{e}");
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let d = fixture();
        let env = d.path().join("client.env");
        let f = EnvFile::read(&env).unwrap();
        let dbg = format!("{f:?} {:?}", f.layer());
        assert!(!dbg.contains("env-file-password"), "{dbg}");
        assert!(!dbg.contains("env-file-passphrase"), "{dbg}");
        let s = Sources::env_file(&env).resolve().unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("env-file-pass"), "{dbg}");
        // A secret written where the TOML file has no such setting: named, not shown.
        let toml = d.path().join("bad.toml");
        std::fs::write(&toml, "servers = [\"h\"]\npassword = \"hunter2\"\n").unwrap();
        let e = Layer::from_toml_file(&toml).unwrap_err().to_string();
        assert!(e.contains("(line 2)") && e.contains("`password`"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        let d = fixture();
        let base = Layer {
            servers: vec!["h".into()],
            ca: Some(d.path().join("ca.pem")),
            client_cert: Some(d.path().join("both.pem")),
            ..Layer::default()
        };
        let cli = |l: Layer| {
            Sources {
                flags: Some(l),
                ..Sources::default()
            }
            .resolve()
        };
        let e = cli(Layer {
            timeout: Some(0.0),
            ..base.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("out of range; give seconds between 0 and 3600"),
            "{e}"
        );
        let e = cli(Layer {
            kmip_version: Some("9.9".into()),
            ..base.clone()
        })
        .unwrap_err();
        assert!(!e.to_string().is_empty());
        let e = cli(Layer {
            servers: vec!["bad host".into()],
            ..base.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a host name or IP address"), "{e}");
        let e = cli(Layer {
            ca: Some(d.path().join("missing.pem")),
            ..base.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("cannot read the CA certificate"), "{e}");
        assert!(e.contains("check the path"), "{e}");
        let s = cli(Layer {
            kmip_version: Some("1.2".into()),
            timeout: Some(2.5),
            ..base
        })
        .unwrap();
        assert!(s.version.is_some());
        assert_eq!(s.timeouts, Timeouts::uniform(Duration::from_millis(2500)));
    }

    #[test]
    fn server_entries() {
        let a = parse_server("kmip.example", 5697).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("kmip.example", 5697));
        let b = parse_server("kmip.example:6000", 5697).unwrap();
        assert_eq!(b.port, 6000);
        let c = parse_server("[::1]:7000", 5696).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 7000));
        let d = parse_server("::1", 5800).unwrap();
        assert_eq!(d.port, 5800);
        assert!(parse_server("bad host", 5696).is_err());
        assert!(parse_server("h:0", 5696).is_err());
    }
}
