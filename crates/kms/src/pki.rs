//! The private PKI of a data directory, made with OpenSSL on first start: a CA, the server's
//! certificates (an ECDSA P-256 one and an RSA-2048 one, so that both the ECDHE-ECDSA suites
//! and the RSA suites of the KMIP profiles can be offered) and client identities.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

use crate::error::{KmsError, Result};

/// Validity of the CA certificate.
const CA_DAYS: u32 = 3650;
/// Validity of server and client certificates.
const LEAF_DAYS: u32 = 825;

fn err(what: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> KmsError {
    KmsError::crypto(what)
}

/// A new EC P-256 private key.
pub fn ec_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(err("EC group"))?;
    let key = EcKey::generate(&group).map_err(err("generating an EC key"))?;
    PKey::from_ec_key(key).map_err(err("generating an EC key"))
}

/// A new RSA-2048 private key.
pub fn rsa_key() -> Result<PKey<Private>> {
    let rsa = Rsa::generate(2048).map_err(err("generating an RSA key"))?;
    PKey::from_rsa(rsa).map_err(err("generating an RSA key"))
}

/// The organisation of the KMS's certificates.
const KMS_ORG: &str = "atrest KMS";

fn builder(org: &str, cn: &str, days: u32, key: &PKey<Private>) -> Result<X509Builder> {
    let mut name = X509NameBuilder::new().map_err(err("building a certificate"))?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)
        .map_err(err("building a certificate"))?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)
        .map_err(err("certificate common name"))?;
    let name = name.build();
    let e = || err("building a certificate");
    let mut b = X509::builder().map_err(e())?;
    b.set_version(2).map_err(e())?;
    let mut serial = BigNum::new().map_err(e())?;
    serial
        .rand(127, MsbOption::MAYBE_ZERO, false)
        .map_err(e())?;
    let serial = Asn1Integer::from_bn(&serial).map_err(e())?;
    b.set_serial_number(&serial).map_err(e())?;
    b.set_subject_name(&name).map_err(e())?;
    // Backdated a little: clocks of clients differ.
    let not_before = Asn1Time::from_unix(now_unix() - 3600).map_err(e())?;
    b.set_not_before(&not_before).map_err(e())?;
    let not_after = Asn1Time::days_from_now(days).map_err(e())?;
    b.set_not_after(&not_after).map_err(e())?;
    b.set_pubkey(key).map_err(e())?;
    Ok(b)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A self-signed CA (EC P-256 key).
pub fn make_ca(cn: &str) -> Result<(PKey<Private>, X509)> {
    let key = ec_key()?;
    let e = || err("building the CA certificate");
    let mut b = builder(KMS_ORG, cn, CA_DAYS, &key)?;
    let subject = {
        let mut n = X509NameBuilder::new().map_err(e())?;
        n.append_entry_by_nid(Nid::ORGANIZATIONNAME, KMS_ORG)
            .map_err(e())?;
        n.append_entry_by_nid(Nid::COMMONNAME, cn).map_err(e())?;
        n.build()
    };
    b.set_issuer_name(&subject).map_err(e())?;
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .ca()
            .build()
            .map_err(e())?,
    )
    .map_err(e())?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .map_err(e())?,
    )
    .map_err(e())?;
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .map_err(e())?;
    b.append_extension(ski).map_err(e())?;
    b.sign(&key, MessageDigest::sha256()).map_err(e())?;
    Ok((key, b.build()))
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A server certificate (Extended Key Usage serverAuth, with the names as SANs).
    Server,
    /// A client certificate (Extended Key Usage clientAuth).
    Client,
}

/// A certificate for `key`, signed by the CA. Server certificates carry `names` as SANs (IP
/// addresses as IP entries, the rest as DNS names) and the serverAuth EKU; client certificates
/// the clientAuth EKU.
pub fn issue(
    ca_key: &PKey<Private>,
    ca: &X509,
    key: &PKey<Private>,
    cn: &str,
    role: Role,
    names: &[String],
) -> Result<X509> {
    let e = || err("issuing a certificate");
    let mut b = builder(KMS_ORG, cn, LEAF_DAYS, key)?;
    b.set_issuer_name(ca.subject_name()).map_err(e())?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(e())?)
        .map_err(e())?;
    let mut ku = KeyUsage::new();
    ku.critical().digital_signature();
    if key.rsa().is_ok() {
        ku.key_encipherment();
    } else {
        ku.key_agreement();
    }
    b.append_extension(ku.build().map_err(e())?).map_err(e())?;
    let mut eku = ExtendedKeyUsage::new();
    match role {
        Role::Server => eku.server_auth(),
        Role::Client => eku.client_auth(),
    };
    b.append_extension(eku.build().map_err(e())?).map_err(e())?;
    if role == Role::Server && !names.is_empty() {
        add_names(&mut b, Some(ca), names)?;
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(Some(ca), None))
        .map_err(e())?;
    b.append_extension(ski).map_err(e())?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&b.x509v3_context(Some(ca), None))
        .map_err(e())?;
    b.append_extension(aki).map_err(e())?;
    b.sign(ca_key, MessageDigest::sha256()).map_err(e())?;
    Ok(b.build())
}

/// Adds `names` as Subject Alternative Names: IP addresses as IP entries, the rest as DNS
/// names.
fn add_names(b: &mut X509Builder, issuer: Option<&X509>, names: &[String]) -> Result<()> {
    let e = || err("adding the certificate's names");
    let mut san = SubjectAlternativeName::new();
    for n in names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    let ext = san
        .build(&b.x509v3_context(issuer.map(|c| &**c), None))
        .map_err(e())?;
    b.append_extension(ext).map_err(e())
}

/// A self-signed server certificate (EC P-256 key) for `names` (see [`issue`] for how names
/// become SANs), valid `days`: what a server presents until it is given a certificate of its
/// own (the appliance's HTTPS).
pub fn self_signed_server(
    org: &str,
    cn: &str,
    days: u32,
    names: &[String],
) -> Result<(PKey<Private>, X509)> {
    let key = ec_key()?;
    let e = || err("building a self-signed certificate");
    let mut b = builder(org, cn, days, &key)?;
    let name = {
        let mut n = X509NameBuilder::new().map_err(e())?;
        n.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)
            .map_err(e())?;
        n.append_entry_by_nid(Nid::COMMONNAME, cn).map_err(e())?;
        n.build()
    };
    b.set_issuer_name(&name).map_err(e())?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(e())?)
        .map_err(e())?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()
            .map_err(e())?,
    )
    .map_err(e())?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(e())?)
        .map_err(e())?;
    add_names(&mut b, None, names)?;
    b.sign(&key, MessageDigest::sha256()).map_err(e())?;
    Ok((key, b.build()))
}

/// A PKCS#12 file holding `key`, `cert` and the CA, protected by `passphrase` (OpenSSL 3
/// defaults: PBES2 with AES-256-CBC, SHA-256 MAC).
pub fn pkcs12(
    name: &str,
    key: &PKey<Private>,
    cert: &X509,
    ca: &X509,
    passphrase: &str,
) -> Result<Vec<u8>> {
    let e = || err("making the PKCS#12 file");
    let mut chain = Stack::new().map_err(e())?;
    chain.push(ca.clone()).map_err(e())?;
    let mut b = Pkcs12::builder();
    b.name(name).pkey(key).cert(cert).ca(chain);
    let p12 = b.build2(passphrase).map_err(e())?;
    p12.to_der().map_err(e())
}

/// The SHA-256 fingerprint of a certificate (of its DER encoding), as lower-case hex.
pub fn fingerprint(cert: &X509) -> Result<String> {
    let d = cert
        .digest(MessageDigest::sha256())
        .map_err(err("fingerprinting a certificate"))?;
    Ok(hex::encode(d))
}

/// The subject common name of a certificate, if it has one.
pub fn common_name(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_server_and_client() {
        let (ca_key, ca) = make_ca("test CA").unwrap();
        let k = ec_key().unwrap();
        let s = issue(
            &ca_key,
            &ca,
            &k,
            "server",
            Role::Server,
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        assert!(s.verify(&ca.public_key().unwrap()).unwrap());
        let ck = ec_key().unwrap();
        let c = issue(&ca_key, &ca, &ck, "alice", Role::Client, &[]).unwrap();
        assert_eq!(common_name(&c).as_deref(), Some("alice"));
        let p12 = pkcs12("alice", &ck, &c, &ca, "pw").unwrap();
        let parsed = Pkcs12::from_der(&p12).unwrap().parse2("pw").unwrap();
        assert_eq!(
            fingerprint(&parsed.cert.unwrap()).unwrap(),
            fingerprint(&c).unwrap()
        );
    }
}
