//! KMIP connection settings shared by every subcommand that talks to a KMIP server: flags, a
//! TOML file (`--config`), and secrets from files or environment variables — never from the
//! command line alone, where other users of the machine could read them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use atrest_kmip::client::{ClientConfig, DEFAULT_MAX_RESPONSE_LEN, Identity, ServerAddr, Timeouts};
use atrest_kmip::message::{Password, ProtocolVersion};
use clap::Args;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Flags naming a KMIP server and how to authenticate to it.
#[derive(Debug, Clone, Default, Args)]
pub struct KmipSettings {
    /// TOML file with any of: servers, server_name, ca, client_cert, client_key,
    /// passphrase_file, username, password_file, kmip_version, timeout. Flags override it.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// KMIP server, HOST[:PORT] (port 5696 by default); repeat for failover, in order.
    #[arg(long = "server", value_name = "HOST[:PORT]", global = true)]
    pub servers: Vec<String>,
    /// Name to verify in the server certificate, when it differs from the host given.
    #[arg(long, value_name = "NAME", global = true)]
    pub server_name: Option<String>,
    /// The CA certificate (PEM) that issued the server's certificate; the only one trusted.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate: PEM (with --client-key, or the key in the same file) or PKCS#12.
    #[arg(long, value_name = "FILE", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM, optionally encrypted), when not inside --client-cert.
    #[arg(long, value_name = "FILE", global = true)]
    pub client_key: Option<PathBuf>,
    /// File holding the passphrase of the PKCS#12 file or the encrypted key
    /// (or set ATREST_KMIP_PASSPHRASE).
    #[arg(long, value_name = "FILE", global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// KMIP username, sent in every request header.
    #[arg(long, value_name = "NAME", global = true)]
    pub username: Option<String>,
    /// File holding the KMIP password (or set ATREST_KMIP_PASSWORD).
    #[arg(long, value_name = "FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Pin the KMIP protocol version (1.0 … 1.4, 2.0, 2.1) instead of negotiating it.
    #[arg(long, value_name = "VERSION", global = true)]
    pub kmip_version: Option<String>,
    /// Seconds to wait for a connection or an answer (default 10).
    #[arg(long, value_name = "SECONDS", global = true)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
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

/// Largest settings or certificate file read: 1 MiB.
const MAX_FILE: u64 = 1 << 20;

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if meta.len() > MAX_FILE {
        bail!(
            "the {what} {} is {} bytes, larger than the {} allowed; give the right file",
            path.display(),
            meta.len(),
            MAX_FILE
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

fn read_secret(path: &Path, what: &str) -> anyhow::Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(read_file(path, what)?);
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("the {what} {} is not UTF-8 text", path.display()))?;
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

impl KmipSettings {
    /// Resolves flags, file and environment into a client configuration.
    pub fn to_client_config(&self) -> anyhow::Result<ClientConfig> {
        self.to_client_config_or(&[])
    }

    /// As [`Self::to_client_config`], with `fallback` servers (e.g. those a volume header
    /// names) when neither the flags nor the file give any.
    pub fn to_client_config_or(&self, fallback: &[String]) -> anyhow::Result<ClientConfig> {
        let file = match &self.config {
            Some(p) => {
                let text = String::from_utf8(read_file(p, "settings file")?)
                    .with_context(|| format!("the settings file {} is not UTF-8", p.display()))?;
                let mut f: FileSettings = toml::from_str(&text).with_context(|| {
                    format!(
                        "the settings file {} is not valid TOML settings",
                        p.display()
                    )
                })?;
                // Relative paths in the file are relative to the file.
                let base = p.parent().unwrap_or(Path::new("."));
                for path in [
                    &mut f.ca,
                    &mut f.client_cert,
                    &mut f.client_key,
                    &mut f.passphrase_file,
                    &mut f.password_file,
                ]
                .into_iter()
                .flatten()
                {
                    if path.is_relative() {
                        *path = base.join(&*path);
                    }
                }
                f
            }
            None => FileSettings::default(),
        };
        let servers_text = if !self.servers.is_empty() {
            self.servers.clone()
        } else if !file.servers.is_empty() {
            file.servers
        } else {
            fallback.to_vec()
        };
        if servers_text.is_empty() {
            bail!("no KMIP server given; use --server HOST[:PORT] or `servers` in --config");
        }
        let servers = servers_text
            .iter()
            .map(|s| s.parse::<ServerAddr>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ca_path = self
            .ca
            .clone()
            .or(file.ca)
            .context("no CA certificate given; use --ca FILE (the PEM CA that issued the KMIP server's certificate)")?;
        let ca_pem = read_file(&ca_path, "CA certificate")?;
        let passphrase = match self.passphrase_file.clone().or(file.passphrase_file) {
            Some(p) => Some(read_secret(&p, "passphrase file")?),
            None => std::env::var("ATREST_KMIP_PASSPHRASE")
                .ok()
                .map(Zeroizing::new),
        };
        let cert_path = self
            .client_cert
            .clone()
            .or(file.client_cert)
            .context("no client certificate given; use --client-cert FILE (PEM or PKCS#12)")?;
        let cert = read_file(&cert_path, "client certificate")?;
        let identity = if cert.trim_ascii_start().starts_with(b"-----BEGIN") {
            let key = match self.client_key.clone().or(file.client_key) {
                Some(k) => Zeroizing::new(read_file(&k, "client key")?),
                None if cert.windows(11).any(|w| w == b"PRIVATE KEY") => {
                    Zeroizing::new(cert.clone())
                }
                None => bail!(
                    "the client certificate {} has no private key in it; give the key with \
                     --client-key FILE",
                    cert_path.display()
                ),
            };
            Identity::Pem {
                cert_chain: cert,
                key,
                passphrase,
            }
        } else {
            Identity::Pkcs12 {
                der: cert,
                passphrase: passphrase.unwrap_or_default(),
            }
        };
        let password = match self.password_file.clone().or(file.password_file) {
            Some(p) => Some(read_secret(&p, "password file")?),
            None => std::env::var("ATREST_KMIP_PASSWORD")
                .ok()
                .map(Zeroizing::new),
        };
        let version = match self.kmip_version.clone().or(file.kmip_version) {
            Some(v) => Some(v.parse::<ProtocolVersion>().map_err(anyhow::Error::msg)?),
            None => None,
        };
        let timeouts = match self.timeout.or(file.timeout) {
            Some(t) if t.is_finite() && t > 0.0 && t <= 3600.0 => {
                Timeouts::uniform(Duration::from_secs_f64(t))
            }
            Some(t) => bail!("--timeout {t} is out of range; give seconds between 0 and 3600"),
            None => Timeouts::default(),
        };
        Ok(ClientConfig {
            servers,
            server_name: self.server_name.clone().or(file.server_name),
            ca_pem,
            identity,
            username: self.username.clone().or(file.username),
            password: password.map(|p| Password::new(p.to_string())),
            version,
            timeouts,
            max_response_len: DEFAULT_MAX_RESPONSE_LEN,
        })
    }
}
