//! The KMIP connection flags shared by every subcommand that talks to a KMIP server. They are
//! the highest of the settings' sources; [`atrest_keys::settings`] resolves them with the rest:
//! flags, then the TOML file (`--config`), then the env file (`--env-file`), then
//! ATREST_KMIP_PASSPHRASE / ATREST_KMIP_PASSWORD, then the servers a volume's header names.
//! Secrets come from files or the environment, never from the command line, where other users
//! of the machine could read them.

use std::path::PathBuf;

use atrest_keys::settings::{Layer, Secret, Sources};
use atrest_kmip::client::ClientConfig;
use clap::Args;

/// Flags naming a KMIP server and how to authenticate to it.
#[derive(Debug, Clone, Default, Args)]
pub struct KmipFlags {
    /// TOML file with any of: servers, server_name, ca, client_cert, client_key,
    /// passphrase_file, username, password_file, kmip_version, timeout (paths relative to it).
    /// Flags override it; it overrides --env-file.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// KMIP client env file (`export KMIP_HOST=…` lines, as `atrest kms serve` writes
    /// DIR/client.env): server, CA, client identity, username and password. Flags and --config
    /// override it.
    #[arg(long, value_name = "FILE", global = true)]
    pub env_file: Option<PathBuf>,
    /// KMIP server, HOST or HOST:PORT (port 5696 by default); repeat for failover, in order.
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
    /// (or set ATREST_KMIP_PASSPHRASE, used when no file gives one).
    #[arg(long, value_name = "FILE", global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// KMIP username, sent in every request header.
    #[arg(long, value_name = "NAME", global = true)]
    pub username: Option<String>,
    /// File holding the KMIP password (or set ATREST_KMIP_PASSWORD, used when no file gives
    /// one).
    #[arg(long, value_name = "FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Pin the KMIP protocol version (1.0 … 1.4, 2.0, 2.1) instead of negotiating it.
    #[arg(long, value_name = "VERSION", global = true)]
    pub kmip_version: Option<String>,
    /// Seconds to wait for a connection or an answer (default 10).
    #[arg(long, value_name = "SECONDS", global = true)]
    pub timeout: Option<f64>,
}

impl KmipFlags {
    /// Resolves flags, files and environment into a client configuration.
    pub fn to_client_config(&self) -> anyhow::Result<ClientConfig> {
        self.to_client_config_or(&[])
    }

    /// As [`Self::to_client_config`], with `fallback` servers (e.g. those a volume header
    /// names) when no source gives any.
    pub fn to_client_config_or(&self, fallback: &[String]) -> anyhow::Result<ClientConfig> {
        Ok(self.sources(fallback).resolve()?.client_config())
    }

    /// Where the settings are looked for: these flags first.
    fn sources(&self, fallback: &[String]) -> Sources {
        Sources {
            flags: Some(Layer {
                servers: self.servers.clone(),
                server_name: self.server_name.clone(),
                ca: self.ca.clone(),
                client_cert: self.client_cert.clone(),
                client_key: self.client_key.clone(),
                passphrase: self.passphrase_file.clone().map(Secret::File),
                username: self.username.clone(),
                password: self.password_file.clone().map(Secret::File),
                kmip_version: self.kmip_version.clone(),
                timeout: self.timeout,
            }),
            config_file: self.config.clone(),
            env_file: self.env_file.clone(),
            environment: true,
            fallback_servers: fallback.to_vec(),
        }
    }
}
