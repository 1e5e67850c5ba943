//! The appliance's own HTTPS certificate: the one given, or a self-signed one made on the
//! first start and kept in DIR/tls/.

use std::path::{Path, PathBuf};

use crate::files;

/// Days a self-signed certificate is valid.
pub const SELF_SIGNED_DAYS: u32 = 825;

/// Where the certificate and key are.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The certificate, PEM (DIR/tls/cert.pem).
    pub cert: PathBuf,
    /// Its private key, PEM (DIR/tls/key.pem).
    pub key: PathBuf,
    /// Whether this start made them.
    pub created: bool,
}

/// Returns DIR/tls/cert.pem and key.pem, making a self-signed pair for `names` (host names
/// or IP addresses; localhost and 127.0.0.1 are always included) when they do not exist.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<CertPaths, String> {
    let tls = dir.join("tls");
    let cert = tls.join("cert.pem");
    let key = tls.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok(CertPaths {
            cert,
            key,
            created: false,
        });
    }
    let (c, k) = self_signed(names).map_err(|e| {
        format!("cannot make the self-signed HTTPS certificate ({e}); give one with --tls-cert and --tls-key")
    })?;
    files::write_private(&key, &k).map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    files::write_private(&cert, &c).map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    Ok(CertPaths {
        cert,
        key,
        created: true,
    })
}

/// A self-signed P-256 certificate for `names` and localhost: (certificate PEM, private key
/// PEM). Made by the KMS's PKI, like every certificate atrest makes.
pub fn self_signed(names: &[String]) -> Result<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>), String> {
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for n in names {
        if !n.is_empty() && !all.contains(n) && n != "0.0.0.0" && n != "::" {
            all.push(n.clone());
        }
    }
    let (key, cert) = atrest_kms::pki::self_signed_server(
        "atrest appliance",
        "atrest appliance",
        SELF_SIGNED_DAYS,
        &all,
    )
    .map_err(|e| e.to_string())?;
    let pem = |r: Result<Vec<u8>, openssl::error::ErrorStack>| r.map_err(|e| e.to_string());
    let key = zeroize::Zeroizing::new(pem(key.private_key_to_pem_pkcs8())?);
    Ok((pem(cert.to_pem())?, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509;

    #[test]
    fn made_once_then_reused() {
        let d = tempfile::tempdir().unwrap();
        let a = ensure_self_signed(d.path(), &["appliance.example".into()]).unwrap();
        assert!(a.created);
        let pem = std::fs::read(&a.cert).unwrap();
        let c = X509::from_pem(&pem).unwrap();
        let names: Vec<String> = c
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_owned))
            .collect();
        assert!(names.contains(&"appliance.example".to_owned()));
        let b = ensure_self_signed(d.path(), &[]).unwrap();
        assert!(!b.created);
        assert_eq!(std::fs::read(&b.cert).unwrap(), pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
