//! The appliance's own HTTPS certificate: the one given, or a self-signed one made on the
//! first start and kept in DIR/tls/.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

use crate::files;

/// Days a self-signed certificate is valid.
pub const SELF_SIGNED_DAYS: u32 = 825;

/// Where the certificate and key are.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
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

/// A self-signed P-256 certificate for `names`: (certificate PEM, private key PEM).
pub fn self_signed(
    names: &[String],
) -> Result<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>), openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "atrest appliance")?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(SELF_SIGNED_DAYS)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for n in names {
        if !n.is_empty() && !all.contains(n) && n != "0.0.0.0" && n != "::" {
            all.push(n.clone());
        }
    }
    let mut san = SubjectAlternativeName::new();
    for n in &all {
        if n.parse::<IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build().to_pem()?;
    let key = zeroize::Zeroizing::new(key.private_key_to_pem_pkcs8()?);
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

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
