//! The sources themselves: a [`Layer`] of settings from the environment, a TOML settings file
//! or a client env file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::{PASSPHRASE_VAR, PASSWORD_VAR, Secret, SettingsError, read_file};

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
    /// Reads and parses `path` (at most [`MAX_FILE`](super::MAX_FILE) bytes of UTF-8 text).
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
