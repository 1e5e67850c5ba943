//! Shared test support: the PyKMIP peers' env files, client configurations built from them, a
//! throw-away PKI, and small TLS servers that misbehave on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use atrest_kmip::client::{ClientConfig, Identity, ServerAddr, Timeouts};
use atrest_kmip::message::Password;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use zeroize::Zeroizing;

/// A unique name for objects made by a test.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A throw-away PKI: a CA and certificates it signs.
pub struct Pki {
    pub ca_key: PKey<Private>,
    pub ca: X509,
}

pub fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    b.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    b.build()
}

impl Pki {
    pub fn new(cn: &str) -> Pki {
        let key = ec_key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(&name(cn)).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(KeyUsage::new().key_cert_sign().crl_sign().build().unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Pki {
            ca_key: key,
            ca: b.build(),
        }
    }

    /// A leaf certificate for `dns` names, valid from `from` to `to` days from now.
    pub fn leaf(&self, cn: &str, dns: &[&str], from: i64, to: i64) -> (X509, PKey<Private>) {
        let key = ec_key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        static SERIAL: AtomicU32 = AtomicU32::new(2);
        b.set_serial_number(
            &BigNum::from_u32(SERIAL.fetch_add(1, Ordering::Relaxed))
                .unwrap()
                .to_asn1_integer()
                .unwrap(),
        )
        .unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(self.ca.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        b.set_not_before(&Asn1Time::from_unix(now + from * 86400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + to * 86400).unwrap())
            .unwrap();
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        san.ip("127.0.0.1");
        b.append_extension(san.build(&b.x509v3_context(Some(&self.ca), None)).unwrap())
            .unwrap();
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&self.ca_key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    /// A client configuration trusting this CA, with a client identity from this CA.
    pub fn client_config(&self, port: u16) -> ClientConfig {
        let (cert, key) = self.leaf("client", &[], -1, 30);
        ClientConfig {
            servers: vec![ServerAddr {
                host: "localhost".into(),
                port,
            }],
            server_name: None,
            ca_pem: self.ca.to_pem().unwrap(),
            identity: Identity::Pem {
                cert_chain: cert.to_pem().unwrap(),
                key: Zeroizing::new(key.private_key_to_pem_pkcs8().unwrap()),
                passphrase: None,
            },
            username: Some("tester".into()),
            password: Some(Password::new("secret-password".into())),
            version: None,
            timeouts: Timeouts::uniform(Duration::from_millis(1500)),
            max_response_len: 64 * 1024,
        }
    }
}

/// How a test TLS server behaves.
pub struct TlsServer {
    pub port: u16,
}

/// Starts a TLS server on 127.0.0.1 with `cert`/`key` that serves up to `connections`
/// connections, each handled by `handle` on its own thread.
pub fn tls_server(
    cert: X509,
    key: PKey<Private>,
    configure: impl FnOnce(&mut openssl::ssl::SslAcceptorBuilder),
    connections: usize,
    handle: impl Fn(openssl::ssl::SslStream<TcpStream>) + Send + Sync + 'static,
) -> TlsServer {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_certificate(&cert).unwrap();
    b.set_private_key(&key).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    configure(&mut b);
    let acceptor = b.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::sync::Arc::new(handle);
    thread::spawn(move || {
        for s in listener.incoming().take(connections) {
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let acceptor = acceptor.clone();
            let handle = handle.clone();
            thread::spawn(move || {
                if let Ok(tls) = acceptor.accept(s) {
                    handle(tls);
                }
            });
        }
    });
    TlsServer { port }
}

/// Reads one TTLV message from a stream (for test servers).
pub fn read_message(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut header = [0u8; 8];
    s.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let mut rest = vec![0u8; len.min(1 << 20)];
    s.read_exact(&mut rest).ok()?;
    let mut all = header.to_vec();
    all.extend(rest);
    Some(all)
}

/// A plain TCP listener that accepts connections and runs `f` on each.
pub fn tcp_server(f: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = std::sync::Arc::new(f);
    thread::spawn(move || {
        for s in listener.incoming().take(8) {
            let Ok(s) = s else { continue };
            let f = f.clone();
            thread::spawn(move || f(s));
        }
    });
    port
}

pub fn tls12_only(b: &mut openssl::ssl::SslAcceptorBuilder) {
    b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
}

pub fn write_all(s: &mut impl Write, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    let _ = s.flush();
}
