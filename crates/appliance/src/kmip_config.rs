//! The KMIP settings of Storage > Encryption: what the administrator entered and uploaded,
//! validated on save, kept under DIR/kmip/ in 0600 files.
//!
//! The passphrase and the password are kept in DIR/kmip/settings.json (0600) because the
//! appliance needs them unattended at every start; they are never returned by the API, shown
//! on the page or logged. [`KmipSettings::fingerprint`] identifies exactly what a test tested.

use std::fmt;
use std::path::{Path, PathBuf};

use atrest_keys::settings::{Settings, Sources, has_private_key, is_pem, parse_server};
use atrest_kmip::client::{
    Client, ClientConfig, DEFAULT_MAX_RESPONSE_LEN, DEFAULT_PORT, Identity, ServerAddr, Timeouts,
};
use atrest_kmip::message::Password;
use openssl::pkcs12::Pkcs12;
use openssl::x509::{X509, X509NameRef};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::files;

/// Largest certificate, key or PKCS#12 upload: 256 KiB.
pub const MAX_UPLOAD: usize = 256 * 1024;
/// Most KMIP servers in the failover list.
pub const MAX_SERVERS: usize = 16;
/// Longest user name, password or passphrase.
pub const MAX_SECRET_LEN: usize = 1024;
/// Certificates expiring within this many days are warned about.
pub const EXPIRY_WARNING_DAYS: i32 = 30;

/// How the client identity was supplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientFormat {
    /// One PKCS#12 (DER) file holding the certificate and its private key.
    Pkcs12,
    /// A PEM certificate, its private key inside it or in a PEM file of its own.
    Pem,
}

/// Where the settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Entered by the administrator.
    Manual,
    /// Filled in from the bundled KMIP server (`--embedded-kms`).
    Embedded,
}

/// DIR/kmip/settings.json.
#[derive(Clone, Serialize, Deserialize)]
struct StoredFile {
    servers: Vec<String>,
    server_name: Option<String>,
    username: Option<String>,
    password: Option<String>,
    passphrase: Option<String>,
    client_format: ClientFormat,
    source: Source,
    /// Random, made on the first save: mixed into the fingerprint so that it says nothing
    /// about the secrets to whoever sees it.
    salt: String,
}

impl Drop for StoredFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(p) = self.password.as_mut() {
            p.zeroize();
        }
        if let Some(p) = self.passphrase.as_mut() {
            p.zeroize();
        }
    }
}

/// A certificate's summary for the page and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// The subject name, as `SN=value` entries joined by `, ` (`CN=kmip.example, O=Example`).
    pub subject: String,
    /// The issuer name, in the same form as `subject`.
    pub issuer: String,
    /// The end of the validity period, as OpenSSL prints it (`Jun  1 12:00:00 2030 GMT`).
    pub not_after: String,
    /// Whole days until `not_after`, negative once past; `None` when it cannot be computed.
    pub days_left: Option<i32>,
    /// Expires within [`EXPIRY_WARNING_DAYS`] (or has expired).
    pub expiring: bool,
}

/// The KMIP settings, loaded and validated.
#[derive(Clone)]
pub struct KmipSettings {
    file: StoredFile,
    /// The KMIP servers, in failover order.
    pub servers: Vec<ServerAddr>,
    /// The PEM CA certificate(s) trusted to have issued the servers' certificates.
    pub ca_pem: Vec<u8>,
    /// The client certificate file: PKCS#12 (DER), or PEM (perhaps with its key inside).
    pub client_cert: Vec<u8>,
    /// The PEM private key, when it was uploaded apart from a PEM certificate.
    pub client_key: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for KmipSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmipSettings")
            .field("servers", &self.servers)
            .field("server_name", &self.file.server_name)
            .field("username", &self.file.username)
            .field("client_format", &self.file.client_format)
            .finish_non_exhaustive()
    }
}

/// A change to the settings; `None` keeps what is saved.
#[derive(Default)]
pub struct KmipUpdate {
    /// HOST or HOST:PORT entries, in failover order (a bare host gets `port`); blank entries
    /// are skipped, more than [`MAX_SERVERS`] are refused.
    pub servers: Option<Vec<String>>,
    /// The TCP port (1-65535) for entries without one, 5696 when `None`; with `servers` left
    /// `None`, it replaces the port of every saved server.
    pub port: Option<u16>,
    /// The name to verify in the servers' certificates instead of their hosts; `Some("")`
    /// clears it.
    pub server_name: Option<String>,
    /// The KMIP user name sent in each request; `Some("")` clears it.
    pub username: Option<String>,
    /// The KMIP password; `Some("")` clears it.
    pub password: Option<Zeroizing<String>>,
    /// The passphrase of the PKCS#12 file or of the encrypted PEM key; `Some("")` clears it.
    pub passphrase: Option<Zeroizing<String>>,
    /// The server CA upload: PEM certificate(s) or one DER certificate, at most
    /// [`MAX_UPLOAD`] bytes.
    pub ca: Option<Vec<u8>>,
    /// The client certificate upload: PKCS#12, or PEM (with its key inside or in
    /// `client_key`), at most [`MAX_UPLOAD`] bytes.
    pub client_cert: Option<Vec<u8>>,
    /// The PEM private key of a PEM client certificate, at most [`MAX_UPLOAD`] bytes.
    pub client_key: Option<Zeroizing<Vec<u8>>>,
    /// Where the settings come from; `None` keeps the saved source ([`Source::Manual`] on the
    /// first save).
    pub source: Option<Source>,
}

impl fmt::Debug for KmipUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmipUpdate")
            .field("servers", &self.servers)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("kmip")
}

fn name_text(n: &X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let k = e.object().nid().short_name().unwrap_or("?");
            let v = e.data().to_string().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Summarises a certificate.
pub fn summarize(c: &X509) -> CertSummary {
    let days = atrest_kmip::client::days_left(c.not_after());
    CertSummary {
        subject: name_text(c.subject_name()),
        issuer: name_text(c.issuer_name()),
        not_after: c.not_after().to_string(),
        days_left: days,
        expiring: days.is_some_and(|d| d < EXPIRY_WARNING_DAYS),
    }
}

/// The CA upload as PEM: PEM as given, or one DER certificate converted.
fn ca_to_pem(b: &[u8]) -> Result<Vec<u8>, ApiError> {
    let bad = |why: String| {
        ApiError::invalid(format!(
            "the server CA file is not a certificate ({why}); upload the root CA certificate \
             that issued the KMIP server's certificate, in PEM (-----BEGIN CERTIFICATE-----) or \
             DER form"
        ))
    };
    if is_pem(b) {
        if has_private_key(b) {
            return Err(ApiError::invalid(
                "the server CA file holds a private key; upload only the CA certificate, and \
                 keep its private key off the appliance",
            ));
        }
        let certs = X509::stack_from_pem(b).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate found".into()));
        }
        Ok(b.to_vec())
    } else {
        let c = X509::from_der(b).map_err(|_| bad("neither PEM nor DER".into()))?;
        c.to_pem().map_err(|e| bad(e.to_string()))
    }
}

fn check_len(what: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_SECRET_LEN {
        return Err(ApiError::bad_request(format!(
            "the {what} is longer than {MAX_SECRET_LEN} bytes; enter the right one"
        )));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "the {what} contains control characters (a line break?); enter it again"
        )));
    }
    Ok(())
}

impl KmipSettings {
    /// Applies `u` over `old` (or nothing) and validates the result: every server address,
    /// the CA, and the client identity opened with its passphrase.
    ///
    /// Errors: 400 for a missing, malformed or too long setting, 413 for an upload larger
    /// than [`MAX_UPLOAD`], 422 for a file that is not what it should be or an identity that
    /// does not open (see [`Self::validate`]).
    pub fn apply(old: Option<&KmipSettings>, u: KmipUpdate) -> Result<KmipSettings, ApiError> {
        let port = u.port.unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(ApiError::bad_request(
                "the port must be 1-65535; KMIP uses 5696",
            ));
        }
        let servers = match (&u.servers, old) {
            (Some(list), _) => {
                let list: Vec<&String> = list.iter().filter(|s| !s.trim().is_empty()).collect();
                if list.is_empty() {
                    return Err(ApiError::bad_request(
                        "no KMIP server given; enter at least one host name or IP address",
                    ));
                }
                if list.len() > MAX_SERVERS {
                    return Err(ApiError::bad_request(format!(
                        "{} KMIP servers given; list at most {MAX_SERVERS}",
                        list.len()
                    )));
                }
                list.iter()
                    .map(|s| parse_server(s, port))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ApiError::bad_request)?
            }
            (None, Some(o)) => match u.port {
                Some(p) => o
                    .servers
                    .iter()
                    .map(|s| ServerAddr {
                        host: s.host.clone(),
                        port: p,
                    })
                    .collect(),
                None => o.servers.clone(),
            },
            (None, None) => {
                return Err(ApiError::bad_request(
                    "no KMIP server given; enter at least one host name or IP address",
                ));
            }
        };
        let ca_pem = match (u.ca, old) {
            (Some(b), _) => {
                if b.len() > MAX_UPLOAD {
                    return Err(ApiError::too_large(format!(
                        "the server CA file is larger than {MAX_UPLOAD} bytes; upload only the \
                         CA certificate"
                    )));
                }
                ca_to_pem(&b)?
            }
            (None, Some(o)) => o.ca_pem.clone(),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "no server CA certificate uploaded; upload the root CA certificate that \
                     issued the KMIP server's certificate",
                ));
            }
        };
        let (client_format, client_cert, client_key) = match (u.client_cert, old) {
            (Some(cert), _) => {
                if cert.len() > MAX_UPLOAD {
                    return Err(ApiError::too_large(format!(
                        "the client certificate file is larger than {MAX_UPLOAD} bytes; upload \
                         the client certificate (PKCS#12, or PEM certificate and key)"
                    )));
                }
                if is_pem(&cert) {
                    let key = match u.client_key {
                        Some(k) => Some(k),
                        None if has_private_key(&cert) => None,
                        None => match old {
                            Some(o) if o.file.client_format == ClientFormat::Pem => {
                                o.client_key.clone()
                            }
                            _ => {
                                return Err(ApiError::bad_request(
                                    "the PEM client certificate has no private key in it; \
                                     upload its private key too (or a PKCS#12 file holding both)",
                                ));
                            }
                        },
                    };
                    (ClientFormat::Pem, cert, key)
                } else {
                    if u.client_key.is_some() {
                        return Err(ApiError::bad_request(
                            "a private key was uploaded with a PKCS#12 client certificate; the \
                             key is inside the PKCS#12 file: leave the key upload empty",
                        ));
                    }
                    (ClientFormat::Pkcs12, cert, None)
                }
            }
            (None, Some(o)) => match (u.client_key, o.file.client_format) {
                (Some(k), ClientFormat::Pem) => (ClientFormat::Pem, o.client_cert.clone(), Some(k)),
                (Some(_), ClientFormat::Pkcs12) => {
                    return Err(ApiError::bad_request(
                        "a private key was uploaded but the saved client certificate is a \
                         PKCS#12 file; upload the PEM certificate together with its key",
                    ));
                }
                (None, f) => (f, o.client_cert.clone(), o.client_key.clone()),
            },
            (None, None) => {
                return Err(ApiError::bad_request(
                    "no client certificate uploaded; upload the appliance's client certificate \
                     (PKCS#12, or PEM certificate and key)",
                ));
            }
        };
        if let Some(k) = &client_key
            && k.len() > MAX_UPLOAD
        {
            return Err(ApiError::too_large(format!(
                "the client key file is larger than {MAX_UPLOAD} bytes; upload only the private key"
            )));
        }
        let keep = |new: Option<String>, old: Option<&String>| -> Option<String> {
            match new {
                Some(v) if v.is_empty() => None,
                Some(v) => Some(v),
                None => old.cloned(),
            }
        };
        let server_name = keep(u.server_name, old.and_then(|o| o.file.server_name.as_ref()));
        let username = keep(u.username, old.and_then(|o| o.file.username.as_ref()));
        let password = keep(
            u.password.map(|p| p.to_string()),
            old.and_then(|o| o.file.password.as_ref()),
        );
        let passphrase = keep(
            u.passphrase.map(|p| p.to_string()),
            old.and_then(|o| o.file.passphrase.as_ref()),
        );
        for (what, v) in [
            ("server name", &server_name),
            ("username", &username),
            ("password", &password),
            ("passphrase", &passphrase),
        ] {
            if let Some(v) = v {
                check_len(what, v)?;
            }
        }
        let file = StoredFile {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            server_name,
            username,
            password,
            passphrase,
            client_format,
            source: u
                .source
                .or(old.map(|o| o.file.source))
                .unwrap_or(Source::Manual),
            salt: old
                .map(|o| o.file.salt.clone())
                .unwrap_or_else(|| crate::auth::random_hex(16)),
        };
        let s = KmipSettings {
            file,
            servers,
            ca_pem,
            client_cert,
            client_key,
        };
        s.validate()?;
        Ok(s)
    }

    /// Opens the CA and the identity as the client will: a wrong passphrase, a key that does
    /// not belong to the certificate or a file of the wrong kind is refused here, by name
    /// (422, with the KMIP client's sentence).
    pub fn validate(&self) -> Result<(), ApiError> {
        Client::new(self.client_config(Timeouts::default()))
            .map(|_| ())
            .map_err(|e| ApiError::invalid(e.to_string()))
    }

    /// The client configuration for all servers.
    pub fn client_config(&self, timeouts: Timeouts) -> ClientConfig {
        let passphrase = self.file.passphrase.clone().map(Zeroizing::new);
        let identity = match self.file.client_format {
            ClientFormat::Pkcs12 => Identity::Pkcs12 {
                der: self.client_cert.clone(),
                passphrase: passphrase.unwrap_or_default(),
            },
            ClientFormat::Pem => Identity::Pem {
                cert_chain: self.client_cert.clone(),
                key: self
                    .client_key
                    .clone()
                    .unwrap_or_else(|| Zeroizing::new(self.client_cert.clone())),
                passphrase,
            },
        };
        ClientConfig {
            servers: self.servers.clone(),
            server_name: self.file.server_name.clone(),
            ca_pem: self.ca_pem.clone(),
            identity,
            username: self.file.username.clone(),
            password: self.file.password.clone().map(Password::new),
            version: None,
            timeouts,
            max_response_len: DEFAULT_MAX_RESPONSE_LEN,
        }
    }

    /// The configuration for one server only (the step-by-step test).
    pub fn client_config_for(&self, server: &ServerAddr, timeouts: Timeouts) -> ClientConfig {
        let mut c = self.client_config(timeouts);
        c.servers = vec![server.clone()];
        c
    }

    /// Where the settings came from.
    pub fn source(&self) -> Source {
        self.file.source
    }

    /// The name verified in the servers' certificates instead of their hosts, if set.
    pub fn server_name(&self) -> Option<&str> {
        self.file.server_name.as_deref()
    }

    /// The KMIP user name, if set.
    pub fn username(&self) -> Option<&str> {
        self.file.username.as_deref()
    }

    /// How the client identity was supplied.
    pub fn client_format(&self) -> ClientFormat {
        self.file.client_format
    }

    /// The first CA certificate's summary.
    pub fn ca_summary(&self) -> Option<CertSummary> {
        X509::stack_from_pem(&self.ca_pem)
            .ok()?
            .first()
            .map(summarize)
    }

    /// The client certificate's summary.
    pub fn client_summary(&self) -> Option<CertSummary> {
        match self.file.client_format {
            ClientFormat::Pem => X509::stack_from_pem(&self.client_cert)
                .ok()?
                .first()
                .map(summarize),
            ClientFormat::Pkcs12 => {
                let p = Pkcs12::from_der(&self.client_cert).ok()?;
                let pass = self.file.passphrase.clone().unwrap_or_default();
                let parsed = p.parse2(&pass).ok()?;
                parsed.cert.as_ref().map(summarize)
            }
        }
    }

    /// A SHA-256 over everything the client uses (salted, so it reveals nothing): a test
    /// result applies to the settings only while their fingerprint is the same.
    pub fn fingerprint(&self) -> String {
        let mut h = openssl::sha::Sha256::new();
        let mut put = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(self.file.salt.as_bytes());
        for s in &self.servers {
            put(s.to_string().as_bytes());
        }
        put(b"|");
        for v in [
            &self.file.server_name,
            &self.file.username,
            &self.file.password,
            &self.file.passphrase,
        ] {
            match v {
                Some(v) => put(v.as_bytes()),
                None => put(b"\0none"),
            }
        }
        put(match self.file.client_format {
            ClientFormat::Pkcs12 => b"pkcs12",
            ClientFormat::Pem => b"pem",
        });
        put(&self.ca_pem);
        put(&self.client_cert);
        put(self
            .client_key
            .as_deref()
            .map_or(&b"\0none"[..], |k| &k[..]));
        hex::encode(h.finish())
    }

    /// The settings as the API shows them: no password, no passphrase, no key.
    pub fn view(&self) -> crate::status::SettingsView {
        crate::status::SettingsView {
            servers: self
                .servers
                .iter()
                .map(|s| crate::status::ServerView {
                    host: s.host.clone(),
                    port: s.port,
                })
                .collect(),
            server_name: self.file.server_name.clone(),
            username: self.file.username.clone(),
            password_set: self.file.password.is_some(),
            passphrase_set: self.file.passphrase.is_some(),
            client_format: self.file.client_format,
            ca: self.ca_summary(),
            client_certificate: self.client_summary(),
            source: self.file.source,
            fingerprint: self.fingerprint(),
        }
    }

    /// Writes DIR/kmip/: settings.json, ca.pem and the client files, all 0600, removing the
    /// client files of the other format; fails with the first I/O error.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let d = dir_of(data_dir);
        files::private_dir(&d)?;
        files::write_private(&d.join("ca.pem"), &self.ca_pem)?;
        match self.file.client_format {
            ClientFormat::Pkcs12 => {
                files::write_private(&d.join("client.p12"), &self.client_cert)?;
                files::remove_if_exists(&d.join("client-cert.pem"))?;
                files::remove_if_exists(&d.join("client-key.pem"))?;
            }
            ClientFormat::Pem => {
                files::write_private(&d.join("client-cert.pem"), &self.client_cert)?;
                match &self.client_key {
                    Some(k) => files::write_private(&d.join("client-key.pem"), k)?,
                    None => files::remove_if_exists(&d.join("client-key.pem"))?,
                }
                files::remove_if_exists(&d.join("client.p12"))?;
            }
        }
        let json =
            Zeroizing::new(serde_json::to_vec_pretty(&self.file).map_err(std::io::Error::other)?);
        // Written last: it names the files above.
        files::write_private(&d.join("settings.json"), &json)
    }

    /// Loads DIR/kmip/, or `None` when nothing was saved yet. The error is a sentence naming
    /// the file that cannot be read or parsed and saying to enter the settings again.
    pub fn load(data_dir: &Path) -> Result<Option<KmipSettings>, String> {
        let d = dir_of(data_dir);
        let path = d.join("settings.json");
        if !path.exists() {
            return Ok(None);
        }
        let damaged = |p: &Path, e: &dyn fmt::Display| {
            format!(
                "cannot read the KMIP settings {} ({e}); enter them again in Storage > Encryption",
                p.display()
            )
        };
        let text =
            Zeroizing::new(files::read_bounded(&path, 1 << 20).map_err(|e| damaged(&path, &e))?);
        let file: StoredFile = serde_json::from_slice(&text).map_err(|e| damaged(&path, &e))?;
        let servers = file
            .servers
            .iter()
            .map(|s| parse_server(s, DEFAULT_PORT))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| damaged(&path, &e))?;
        let read = |name: &str| {
            let p = d.join(name);
            files::read_bounded(&p, MAX_UPLOAD as u64 * 2).map_err(|e| damaged(&p, &e))
        };
        let ca_pem = read("ca.pem")?;
        let (client_cert, client_key) = match file.client_format {
            ClientFormat::Pkcs12 => (read("client.p12")?, None),
            ClientFormat::Pem => {
                let key = if d.join("client-key.pem").exists() {
                    Some(Zeroizing::new(read("client-key.pem")?))
                } else {
                    None
                };
                (read("client-cert.pem")?, key)
            }
        };
        Ok(Some(KmipSettings {
            file,
            servers,
            ca_pem,
            client_cert,
            client_key,
        }))
    }
}

impl KmipUpdate {
    /// An update that replaces every setting with `s` (what `s` leaves out is cleared).
    pub fn replacing_with(s: Settings) -> KmipUpdate {
        KmipUpdate {
            servers: Some(s.servers.iter().map(|a| a.to_string()).collect()),
            port: None,
            server_name: Some(s.server_name.unwrap_or_default()),
            username: Some(s.username.unwrap_or_default()),
            password: Some(s.password.unwrap_or_default()),
            passphrase: Some(s.passphrase.unwrap_or_default()),
            ca: Some(s.ca_pem),
            client_cert: Some(s.client_cert),
            client_key: s.client_key,
            source: None,
        }
    }
}

/// An update from a KMIP client env file (`export NAME=value` lines as written by
/// `atrest kms serve` or the PyKMIP test peer), resolved as every front end resolves one
/// ([`atrest_keys::settings`]): KMIP_HOST, KMIP_PORT, KMIP_SERVER_NAME, KMIP_CA,
/// KMIP_CLIENT_P12 + KMIP_CLIENT_P12_PASSPHRASE (or KMIP_CLIENT_CERT + KMIP_CLIENT_KEY),
/// KMIP_USERNAME, KMIP_PASSWORD. It replaces all the settings. The error is the resolver's
/// sentence ([`atrest_keys::settings::SettingsError`]).
pub fn update_from_env_file(path: &Path) -> Result<KmipUpdate, String> {
    Sources::env_file(path)
        .resolve()
        .map(KmipUpdate::replacing_with)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_saved_needs_everything() {
        let e = KmipSettings::apply(None, KmipUpdate::default()).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("no KMIP server"), "{e}");
        let e = KmipSettings::apply(
            None,
            KmipUpdate {
                servers: Some(vec!["h".into()]),
                ..KmipUpdate::default()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("no server CA"), "{e}");
    }

    #[test]
    fn garbage_ca_is_named() {
        let e = KmipSettings::apply(
            None,
            KmipUpdate {
                servers: Some(vec!["h".into()]),
                ca: Some(b"hello".to_vec()),
                ..KmipUpdate::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.status, 422);
        assert!(
            e.message.contains("server CA file is not a certificate"),
            "{e}"
        );
    }
}
