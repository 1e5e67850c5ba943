//! TLS for the KMIP client, on OpenSSL.
//!
//! OpenSSL rather than rustls: the KMIP 1.x profiles make static-RSA CBC suites mandatory
//! (TLS_RSA_WITH_AES_128_CBC_SHA256) and servers with RSA keys often offer nothing else, which
//! rustls does not implement. OpenSSL also reads every identity format administrators bring:
//! PKCS#12 from OpenSSL 3 (PBES2/AES) and legacy (RC2/3DES, with the legacy provider), PEM
//! PKCS#8 encrypted with PBES2 or PBES1, and traditional encrypted PEM.

use std::sync::OnceLock;

use openssl::error::ErrorStack;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::provider::Provider;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use zeroize::Zeroizing;

use super::ClientError;
use super::error::TlsProblem;

/// TLS 1.2 cipher suites offered, in order of preference: forward-secret AEAD first, then
/// forward-secret CBC, then the static-RSA suites the KMIP 1.x profiles require
/// (TLS_RSA_WITH_AES_128_CBC_SHA256 is mandatory there). TLS 1.3 uses OpenSSL's defaults.
pub const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:\
ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:\
AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256";

/// The client's TLS identity, as the administrator supplied it.
#[derive(Clone)]
pub enum Identity {
    /// A PKCS#12 file (DER) and its passphrase.
    Pkcs12 {
        /// The PKCS#12 file's bytes.
        der: Vec<u8>,
        /// The PKCS#12 passphrase.
        passphrase: Zeroizing<String>,
    },
    /// A PEM certificate (optionally followed by its chain) and a PEM private key, optionally
    /// encrypted with `passphrase`.
    Pem {
        /// The PEM certificate and chain.
        cert_chain: Vec<u8>,
        /// The PEM private key.
        key: Zeroizing<Vec<u8>>,
        /// The private key's passphrase, when it is encrypted.
        passphrase: Option<Zeroizing<String>>,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Pkcs12 { .. } => f.write_str("Identity::Pkcs12(<redacted>)"),
            Identity::Pem { .. } => f.write_str("Identity::Pem(<redacted>)"),
        }
    }
}

/// A loaded identity: certificate, private key, extra chain certificates.
pub(crate) struct LoadedIdentity {
    pub cert: X509,
    pub key: PKey<Private>,
    pub chain: Vec<X509>,
}

/// Loads OpenSSL's "legacy" provider (RC2, 3DES in legacy PKCS#12) beside "default", once.
fn load_providers() {
    static PROVIDERS: OnceLock<Vec<Provider>> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        let mut v = Vec::new();
        // Failure to load is not fatal: modern PKCS#12 and PEM need neither.
        if let Ok(p) = Provider::try_load(None, "legacy", true) {
            v.push(p);
        }
        if let Ok(p) = Provider::try_load(None, "default", true) {
            v.push(p);
        }
        v
    });
}

fn reason(e: &ErrorStack) -> String {
    e.errors()
        .iter()
        .filter_map(|e| e.reason())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Identity {
    pub(crate) fn load(&self) -> Result<LoadedIdentity, ClientError> {
        load_providers();
        match self {
            Identity::Pkcs12 { der, passphrase } => {
                let p12 = Pkcs12::from_der(der).map_err(|e| {
                    ClientError::Config(format!(
                        "the client certificate file is not a PKCS#12 file ({}); upload a .p12 \
                         / .pfx file, or a PEM certificate with its key",
                        reason(&e)
                    ))
                })?;
                let parsed = p12.parse2(passphrase).map_err(|e| {
                    let r = reason(&e);
                    if r.contains("mac verify failure") || r.contains("decrypt") {
                        ClientError::Config(
                            "cannot open the PKCS#12 client certificate: wrong passphrase; enter \
                             the passphrase it was exported with"
                                .into(),
                        )
                    } else {
                        ClientError::Config(format!(
                            "cannot open the PKCS#12 client certificate ({r}); check the \
                             passphrase, or export it again with OpenSSL"
                        ))
                    }
                })?;
                let (Some(cert), Some(key)) = (parsed.cert, parsed.pkey) else {
                    return Err(ClientError::Config(
                        "the PKCS#12 file holds no certificate with a private key; export the \
                         client certificate together with its key"
                            .into(),
                    ));
                };
                let chain = parsed
                    .ca
                    .map(|s| s.into_iter().collect())
                    .unwrap_or_default();
                Ok(LoadedIdentity { cert, key, chain })
            }
            Identity::Pem {
                cert_chain,
                key,
                passphrase,
            } => {
                let mut certs = X509::stack_from_pem(cert_chain).map_err(|e| {
                    ClientError::Config(format!(
                        "the client certificate is not a PEM certificate ({}); upload a PEM \
                         file starting with -----BEGIN CERTIFICATE-----, or a PKCS#12 file",
                        reason(&e)
                    ))
                })?;
                if certs.is_empty() {
                    return Err(ClientError::Config(
                        "the client certificate file holds no PEM certificate; upload a PEM \
                         file starting with -----BEGIN CERTIFICATE-----"
                            .into(),
                    ));
                }
                let cert = certs.remove(0);
                let encrypted = key.windows(9).any(|w| w == b"ENCRYPTED");
                let key = match (passphrase, encrypted) {
                    (Some(p), _) => PKey::private_key_from_pem_passphrase(key, p.as_bytes()),
                    (None, true) => {
                        return Err(ClientError::Config(
                            "the client private key is encrypted; give its passphrase".into(),
                        ));
                    }
                    (None, false) => PKey::private_key_from_pem(key),
                }
                .map_err(|e| {
                    if encrypted {
                        ClientError::Config(format!(
                            "cannot decrypt the client private key ({}): wrong passphrase?; enter \
                             the passphrase the key was encrypted with",
                            reason(&e)
                        ))
                    } else {
                        ClientError::Config(format!(
                            "the client private key is not a PEM private key ({}); upload the key \
                             that belongs to the certificate",
                            reason(&e)
                        ))
                    }
                })?;
                Ok(LoadedIdentity {
                    cert,
                    key,
                    chain: certs,
                })
            }
        }
    }
}

/// Builds the connector: TLS 1.2 minimum, only `ca_pem` trusted, our identity presented.
pub(crate) fn connector(ca_pem: &[u8], identity: &Identity) -> Result<SslConnector, ClientError> {
    let id = identity.load()?;
    let cas = X509::stack_from_pem(ca_pem).map_err(|e| {
        ClientError::Config(format!(
            "the CA certificate is not PEM ({}); upload the KMIP server's root CA as a PEM file",
            reason(&e)
        ))
    })?;
    if cas.is_empty() {
        return Err(ClientError::Config(
            "the CA file holds no certificate; upload the KMIP server's root CA as a PEM file"
                .into(),
        ));
    }
    let build = || -> Result<SslConnector, ErrorStack> {
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_cipher_list(TLS12_CIPHERS)?;
        let mut store = X509StoreBuilder::new()?;
        for ca in &cas {
            store.add_cert(ca.clone())?;
        }
        b.set_verify_cert_store(store.build())?;
        b.set_verify(SslVerifyMode::PEER);
        b.set_certificate(&id.cert)?;
        for c in &id.chain {
            b.add_extra_chain_cert(c.clone())?;
        }
        b.set_private_key(&id.key)?;
        b.check_private_key()?;
        Ok(b.build())
    };
    build().map_err(|e| {
        ClientError::Config(format!(
            "cannot set up TLS with this client certificate and key ({}); check that the key \
             belongs to the certificate",
            reason(&e)
        ))
    })
}

/// Classifies a failed handshake from OpenSSL's verify result and error stack.
pub(crate) fn classify_handshake(
    verify: openssl::x509::X509VerifyResult,
    detail: &str,
    server_name: &str,
) -> TlsProblem {
    use openssl_sys as ffi;
    let code = verify.as_raw();
    if code != ffi::X509_V_OK {
        return match code {
            ffi::X509_V_ERR_HOSTNAME_MISMATCH | ffi::X509_V_ERR_IP_ADDRESS_MISMATCH => {
                TlsProblem::NameMismatch {
                    expected: server_name.to_owned(),
                }
            }
            ffi::X509_V_ERR_CERT_HAS_EXPIRED | ffi::X509_V_ERR_CERT_NOT_YET_VALID => {
                TlsProblem::ServerCertExpired
            }
            _ => TlsProblem::ServerCertUntrusted,
        };
    }
    classify_alert(detail)
}

/// Classifies a TLS alert the server sent (during the handshake, or at the first read under
/// TLS 1.3, where the server checks the client certificate after the client finished).
pub(crate) fn classify_alert(detail: &str) -> TlsProblem {
    const CLIENT_CERT: [&str; 7] = [
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "unsupported certificate",
        "certificate required",
        "access denied",
        "certificate revoked",
    ];
    const CIPHER: [&str; 5] = [
        "handshake failure",
        "insufficient security",
        "protocol version",
        "no shared cipher",
        "no cipher",
    ];
    let d = detail.to_ascii_lowercase();
    if let Some(a) = CLIENT_CERT.iter().find(|a| d.contains(*a)) {
        return TlsProblem::ClientCertRejected {
            alert: a.replace(' ', "_"),
        };
    }
    if let Some(a) = CIPHER.iter().find(|a| d.contains(*a)) {
        return TlsProblem::NoCommonCipher {
            alert: a.replace(' ', "_"),
        };
    }
    TlsProblem::Other
}

/// OpenSSL's reasons for a failed TLS operation, joined.
pub(crate) fn ssl_detail(e: &openssl::ssl::Error) -> String {
    if let Some(stack) = e.ssl_error() {
        let r = reason(stack);
        if !r.is_empty() {
            return r;
        }
    }
    if let Some(io) = e.io_error() {
        return io.to_string();
    }
    e.to_string()
}
