//! The server over the network: atrest's own KMIP client in every version, refused
//! credentials and certificates, malformed and oversized messages, bounded connections,
//! durability across restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use atrest_kmip::client::{Client, ClientConfig, ClientError, Identity, ServerAddr, Timeouts};
use atrest_kmip::message::{
    Attributes, Credential, Operation, Password, ProtocolVersion, RequestBatchItem, RequestHeader,
    RequestMessage, RequestPayload, ResponseMessage, ResultReason, RevocationReasonCode, State,
};
use atrest_kmip::ttlv;
use atrest_kms::server::ServerConfig;
use common::{TestServer, exchange, read_response};
use zeroize::Zeroizing;

fn client_for(
    s: &TestServer,
    env: &std::collections::HashMap<String, String>,
    version: Option<ProtocolVersion>,
    password: Option<&str>,
) -> Client {
    let p12 = std::fs::read(&env["KMIP_CLIENT_P12"]).unwrap();
    let config = ClientConfig {
        servers: vec![ServerAddr {
            host: "127.0.0.1".into(),
            port: s.addr.port(),
        }],
        server_name: Some("localhost".into()),
        ca_pem: std::fs::read(s.var("KMIP_CA")).unwrap(),
        identity: Identity::Pkcs12 {
            der: p12,
            passphrase: Zeroizing::new(env["KMIP_CLIENT_P12_PASSPHRASE"].clone()),
        },
        username: Some(env["KMIP_USERNAME"].clone()),
        password: Some(Password::new(
            password.unwrap_or(&env["KMIP_PASSWORD"]).to_owned(),
        )),
        version,
        timeouts: Timeouts::uniform(Duration::from_secs(10)),
        max_response_len: 1 << 20,
    };
    Client::new(config).unwrap()
}

fn reason_of(e: &ClientError) -> Option<ResultReason> {
    match e {
        ClientError::Operation { reason, .. } => *reason,
        ClientError::Authentication { .. } => Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL),
        ClientError::AllServersFailed(v) => v.first().and_then(reason_of),
        _ => None,
    }
}

#[test]
fn atrest_client_every_version() {
    let s = TestServer::start();
    let env = s.env.clone();
    // Negotiated (Discover Versions picks 2.1).
    let mut c = client_for(&s, &env, None, None);
    let versions = c.discover_versions().unwrap();
    assert_eq!(versions, ProtocolVersion::SUPPORTED.to_vec());
    for v in ProtocolVersion::SUPPORTED {
        let mut c = client_for(&s, &env, Some(v), None);
        let q = c.query().unwrap();
        assert!(q.operations.contains(&Operation::GET), "{v}");
        assert!(
            q.vendor_identification
                .as_deref()
                .unwrap()
                .contains("atrest"),
            "{v}"
        );
        for bits in [128, 256, 512] {
            let name = format!("net-{v}-{bits}");
            let uid = c.create_aes_key(bits, Some(&name)).unwrap();
            let a = c.get_attributes(&uid, &["State"]).unwrap();
            assert_eq!(a.state(), Some(State::PRE_ACTIVE), "{v}");
            c.activate(&uid).unwrap();
            let k = c.get_key(&uid).unwrap();
            assert_eq!(k.material.len() * 8, bits as usize, "{v}");
            let names = c.get_attribute_list(&uid).unwrap();
            assert!(
                names.iter().any(|n| n == "Activation Date"),
                "{v}: {names:?}"
            );
            let found = c
                .locate(
                    Attributes::new().with("Name", Attributes::name_value(&name)),
                    None,
                )
                .unwrap();
            assert_eq!(found, vec![uid.clone()], "{v}");
            let e = c.destroy(&uid).unwrap_err();
            let want = if v.is_2x() {
                ResultReason::WRONG_KEY_LIFECYCLE_STATE
            } else {
                ResultReason::PERMISSION_DENIED
            };
            assert_eq!(reason_of(&e), Some(want), "{v}: {e}");
            c.revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
                .unwrap();
            c.destroy(&uid).unwrap();
            let e = c.get_key(&uid).unwrap_err();
            let want = if v.is_2x() {
                ResultReason::OBJECT_DESTROYED
            } else {
                ResultReason::ITEM_NOT_FOUND
            };
            assert_eq!(reason_of(&e), Some(want), "{v}: {e}");
        }
        let material = Zeroizing::new(vec![0x5A; 32]);
        let uid = c
            .register_aes_key(material.clone(), Some("registered"))
            .unwrap();
        assert_eq!(c.get_key(&uid).unwrap().material, material);
    }
}

#[test]
fn isolation_and_refused_credentials() {
    let s = TestServer::start();
    let env = s.env.clone();
    let mut other_env = s.add_client("other");
    other_env.insert("KMIP_HOST".into(), "127.0.0.1".into());
    let mut c = client_for(&s, &env, Some(ProtocolVersion::V1_4), None);
    let uid = c.create_aes_key(256, Some("mine")).unwrap();

    // Another client: the key does not exist for it.
    let mut o = client_for(&s, &other_env, Some(ProtocolVersion::V1_4), None);
    let e = o.get_key(&uid).unwrap_err();
    assert_eq!(reason_of(&e), Some(ResultReason::ITEM_NOT_FOUND), "{e}");
    assert!(o.locate(Attributes::new(), None).unwrap().is_empty());
    let mut o2 = client_for(&s, &other_env, Some(ProtocolVersion::V2_1), None);
    let e = o2.get_key(&uid).unwrap_err();
    assert_eq!(reason_of(&e), Some(ResultReason::OBJECT_NOT_FOUND), "{e}");

    // Wrong password.
    let mut w = client_for(&s, &env, Some(ProtocolVersion::V1_4), Some("wrong"));
    let e = w.get_key(&uid).unwrap_err();
    assert_eq!(
        reason_of(&e),
        Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL),
        "{e}"
    );
    // This certificate with the other client's username and password.
    let mut mixed = env.clone();
    mixed.insert("KMIP_USERNAME".into(), other_env["KMIP_USERNAME"].clone());
    mixed.insert("KMIP_PASSWORD".into(), other_env["KMIP_PASSWORD"].clone());
    let mut m = client_for(&s, &mixed, Some(ProtocolVersion::V1_4), None);
    let e = m.get_key(&uid).unwrap_err();
    assert_eq!(
        reason_of(&e),
        Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL),
        "{e}"
    );

    // No credential at all (raw request).
    let mut t = s.tls(None, None);
    let resp = send(&mut t, &request(ProtocolVersion::V1_2, None, get(&uid)));
    assert_eq!(
        resp.items[0].reason,
        Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL)
    );
    // A certificate from the server's CA that no client owns.
    let (cert, key) = unregistered_identity(&s);
    let mut t = s.tls(Some(&cert), Some(&key));
    let cred = credential(&env["KMIP_USERNAME"], &env["KMIP_PASSWORD"]);
    let resp = send(
        &mut t,
        &request(ProtocolVersion::V1_2, Some(cred), get(&uid)),
    );
    assert_eq!(
        resp.items[0].reason,
        Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL)
    );
    // The owner still gets it.
    assert_eq!(c.get_key(&uid).unwrap().material.len(), 32);
}

fn unregistered_identity(s: &TestServer) -> (String, String) {
    use atrest_kms::pki;
    use openssl::pkey::PKey;
    use openssl::x509::X509;
    let ca_key = PKey::private_key_from_pem(&std::fs::read(s.data.ca_key()).unwrap()).unwrap();
    let ca = X509::from_pem(&std::fs::read(s.data.ca_cert()).unwrap()).unwrap();
    let k = pki::ec_key().unwrap();
    let c = pki::issue(&ca_key, &ca, &k, "appliance", pki::Role::Client, &[]).unwrap();
    let dir = s.dir.path();
    let (cp, kp) = (dir.join("stray.crt"), dir.join("stray.key"));
    std::fs::write(&cp, c.to_pem().unwrap()).unwrap();
    std::fs::write(&kp, k.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cp.display().to_string(), kp.display().to_string())
}

fn credential(u: &str, p: &str) -> Credential {
    Credential::UsernamePassword {
        username: u.into(),
        password: Some(Password::new(p.into())),
    }
}

fn get(uid: &str) -> RequestPayload {
    RequestPayload::Get {
        unique_identifier: Some(uid.into()),
        key_format_type: None,
    }
}

fn request(v: ProtocolVersion, cred: Option<Credential>, p: RequestPayload) -> Vec<u8> {
    RequestMessage {
        header: RequestHeader {
            protocol_version: v,
            maximum_response_size: None,
            authentication: cred,
            time_stamp: None,
            batch_count: 1,
        },
        items: vec![RequestBatchItem {
            operation: p.operation().unwrap(),
            id: None,
            payload: p,
        }],
    }
    .to_item()
    .to_bytes()
}

fn send(t: &mut openssl::ssl::SslStream<std::net::TcpStream>, req: &[u8]) -> ResponseMessage {
    let b = exchange(t, req).unwrap();
    ResponseMessage::from_item(&ttlv::decode(&b, &Default::default()).unwrap()).unwrap()
}

fn query_bytes(s: &TestServer) -> Vec<u8> {
    let cred = credential(s.var("KMIP_USERNAME"), s.var("KMIP_PASSWORD"));
    request(
        ProtocolVersion::V1_4,
        Some(cred),
        RequestPayload::Query {
            functions: vec![atrest_kmip::message::QueryFunction::QUERY_OPERATIONS],
        },
    )
}

#[test]
fn malformed_requests_get_invalid_message_and_others_keep_working() {
    let s = TestServer::start();
    let mut bystander = s.tls(None, None);
    assert!(
        send(&mut bystander, &query_bytes(&s)).items[0]
            .reason
            .is_none()
    );

    // Garbage: not even a TTLV header. Answered, then closed.
    let mut t = s.tls(None, None);
    let resp = send(&mut t, b"\x00\x01garbage-bytes-here");
    assert_eq!(resp.items[0].reason, Some(ResultReason::INVALID_MESSAGE));
    let mut buf = [0u8; 1];
    assert_eq!(t.read(&mut buf).unwrap_or(0), 0, "connection kept open");

    // An announced length over the limit: refused before reading (or allocating) it.
    let mut t = s.tls(None, None);
    let mut huge = vec![0x42, 0x00, 0x78, 0x01];
    huge.extend_from_slice(&0x7FFF_FFF8u32.to_be_bytes());
    let resp = send(&mut t, &huge);
    assert_eq!(resp.items[0].reason, Some(ResultReason::INVALID_MESSAGE));
    assert!(
        resp.items[0]
            .message
            .as_deref()
            .unwrap()
            .contains("exceeds the limit")
    );

    // Well framed but not TTLV inside: answered, and the connection stays usable.
    let mut t = s.tls(None, None);
    let mut framed = vec![0x42, 0x00, 0x78, 0x01, 0, 0, 0, 16];
    framed.extend_from_slice(&[0xFF; 16]);
    let resp = send(&mut t, &framed);
    assert_eq!(resp.items[0].reason, Some(ResultReason::INVALID_MESSAGE));
    assert!(send(&mut t, &query_bytes(&s)).items[0].reason.is_none());

    // Valid TTLV, not a request; and a request in an unknown version.
    let not_request = ttlv::Item::structure(atrest_kmip::message::tags::REQUEST_HEADER, vec![]);
    let resp = send(&mut t, &not_request.to_bytes());
    assert_eq!(resp.items[0].reason, Some(ResultReason::INVALID_MESSAGE));
    let cred = credential(s.var("KMIP_USERNAME"), s.var("KMIP_PASSWORD"));
    let resp = send(
        &mut t,
        &request(ProtocolVersion::new(3, 0), Some(cred), get("x")),
    );
    assert_eq!(resp.items[0].reason, Some(ResultReason::INVALID_MESSAGE));
    assert_eq!(resp.header.protocol_version, ProtocolVersion::V2_1);

    // A message cut short: the server waits, then closes; others are unaffected.
    let mut t = s.tls(None, None);
    t.write_all(&[0x42, 0x00, 0x78, 0x01, 0, 0, 0, 64, 1, 2])
        .unwrap();
    assert!(
        send(&mut bystander, &query_bytes(&s)).items[0]
            .reason
            .is_none()
    );
}

#[test]
fn connections_are_bounded_and_idle_ones_closed() {
    let s = TestServer::start_with(ServerConfig {
        max_connections: 2,
        idle_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    });
    let mut a = s.tls(None, None);
    let _b = s.tls(None, None);
    // The third is closed at once (the handshake fails or the first read sees EOF).
    let served = match s.try_tls(None, None) {
        None => false,
        Some(mut c) => c.write_all(&query_bytes(&s)).is_ok() && read_response(&mut c).is_ok(),
    };
    assert!(!served, "a third connection was served");
    assert!(send(&mut a, &query_bytes(&s)).items[0].reason.is_none());
    // Idle past the timeout: the server closes.
    std::thread::sleep(Duration::from_millis(2500));
    let mut buf = [0u8; 1];
    assert_eq!(a.read(&mut buf).unwrap_or(0), 0);
    // With the idle ones gone, new connections are served again.
    let mut d = s.tls(None, None);
    assert!(send(&mut d, &query_bytes(&s)).items[0].reason.is_none());
}

#[test]
fn unauthenticated_sockets_do_not_count_and_trickling_ones_meet_a_whole_deadline() {
    // Under the pre-authentication caps (16 per source): nothing is dropped to make room, so
    // only the deadline can close the trickling socket.
    let s = TestServer::start_with(ServerConfig {
        max_connections: 2,
        handshake_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    });
    // One that trickles a TLS record header, a byte every 300 ms (a per-read timeout of 2 s
    // would never fire).
    let mut trickle = std::net::TcpStream::connect(s.addr).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Ten silent sockets: more than --max-connections.
    let silent: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    // Authenticated clients are served up to the cap: the silent sockets hold none of it.
    let mut a = s.tls(None, None);
    let mut b = s.tls(None, None);
    assert!(send(&mut a, &query_bytes(&s)).items[0].reason.is_none());
    assert!(send(&mut b, &query_bytes(&s)).items[0].reason.is_none());
    let mut closed = false;
    for i in 0..40 {
        let _ = trickle.write_all(&[[0x16u8, 0x03, 0x01, 0x02, 0x00][i % 5]]);
        let mut buf = [0u8; 64];
        match trickle.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a trickling handshake outlived its deadline");
    drop(silent);
}

#[test]
fn keys_survive_a_restart_and_rest_sealed() {
    let s = TestServer::start();
    let env = s.env.clone();
    let mut c = client_for(&s, &env, Some(ProtocolVersion::V1_2), None);
    let uid = c.create_aes_key(256, Some("durable")).unwrap();
    c.activate(&uid).unwrap();
    let before = c.get_key(&uid).unwrap().material;
    drop(c);
    let (dir, data) = s.stop();
    // At rest: no key bytes in any file but the master key's own.
    for entry in std::fs::read_dir(data.objects()).unwrap() {
        let b = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!b.windows(before.len()).any(|w| w == &before[..]));
        assert!(!String::from_utf8_lossy(&b).contains(&hex::encode(&before[..])));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.master_key())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let s = TestServer::start_in(dir, data, ServerConfig::default());
    let mut c = client_for(&s, &s.env.clone(), Some(ProtocolVersion::V1_2), None);
    assert_eq!(c.get_key(&uid).unwrap().material, before);
    let a = c.get_attributes(&uid, &["State"]).unwrap();
    assert_eq!(a.state(), Some(State::ACTIVE));
}

#[test]
fn a_removed_client_is_refused_on_its_open_connection() {
    let s = TestServer::start();
    let tenant = s.add_client("tenant");
    let mut t = s.tls(
        Some(&tenant["KMIP_CLIENT_CERT"]),
        Some(&tenant["KMIP_CLIENT_KEY"]),
    );
    let cred = || credential(&tenant["KMIP_USERNAME"], &tenant["KMIP_PASSWORD"]);
    let q = |c| {
        request(
            ProtocolVersion::V1_4,
            Some(c),
            RequestPayload::Query {
                functions: vec![atrest_kmip::message::QueryFunction::QUERY_OPERATIONS],
            },
        )
    };
    assert_eq!(send(&mut t, &q(cred())).items[0].reason, None);
    let deleted = s.data.remove_client("tenant").unwrap();
    assert!(deleted.iter().any(|p| p.ends_with("tenant.key")));
    assert!(!std::path::Path::new(&tenant["KMIP_CLIENT_P12"]).exists());
    // The same connection, already authenticated: refused from its next request.
    assert_eq!(
        send(&mut t, &q(cred())).items[0].reason,
        Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL)
    );
    // Other clients are served; the name is not issued again.
    let mut c = client_for(&s, &s.env.clone(), Some(ProtocolVersion::V1_4), None);
    c.query().unwrap();
    let e = s.data.add_client("tenant").unwrap_err().to_string();
    assert!(e.contains("was removed"), "{e}");
}

#[test]
fn a_destroyed_key_cannot_be_recovered_from_a_copy_taken_before_destroy() {
    let s = TestServer::start();
    let mut c = client_for(&s, &s.env.clone(), Some(ProtocolVersion::V1_4), None);
    let uid = c.create_aes_key(256, Some("to be destroyed")).unwrap();
    let material = c.get_key(&uid).unwrap().material;
    // A copy of the whole data directory, taken before Destroy.
    let copy = tempfile::tempdir().unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&s.data.root)
        .arg(copy.path().join("kms"))
        .status()
        .unwrap();
    assert!(cp.success());
    c.destroy(&uid).unwrap();
    drop(c);
    let (_dir, data) = s.stop();
    let master = data.load_master_key().unwrap();
    let old_file = copy.path().join(format!("kms/objects/{uid}.obj"));
    // The old object file with the master key and the server's key table: no key for it.
    let e = atrest_kms::store::open_object_file(&old_file, &data.objects(), &master)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not in the key table"), "{e}");
    // The old object file, put back in place, is refused at start and yields nothing.
    std::fs::copy(&old_file, data.objects().join(format!("{uid}.obj"))).unwrap();
    let (store, problems) =
        atrest_kms::store::Store::open(&data.objects(), data.load_master_key().unwrap()).unwrap();
    assert!(store.get(&uid).is_none());
    assert!(problems.iter().any(|p| p.contains(&uid)), "{problems:?}");
    // Nothing in the copy holds the material in the clear or under the master key alone.
    for f in walk(copy.path()) {
        let b = std::fs::read(&f).unwrap();
        assert!(!b.windows(material.len()).any(|w| w == &material[..]));
    }
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
