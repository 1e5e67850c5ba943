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

mod resolve;
mod sources;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use resolve::{Settings, Sources, has_private_key, is_pem, parse_server};
pub use sources::{EnvFile, Layer};

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
