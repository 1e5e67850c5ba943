//! The client against servers that fail on purpose: each failure must end quickly, with its own
//! classified message, and bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientError, TlsProblem};
use atrest_kmip::message::{
    Credential, Operation, ProtocolVersion, RequestMessage, RequestPayload, ResponseBatchItem,
    ResponseHeader, ResponseMessage, ResponsePayload, ResultReason, ResultStatus,
};
use atrest_kmip::ttlv::{self, Limits};
use common::{Pki, read_message, tcp_server, tls_server, write_all};

fn assert_quick(start: Instant) {
    // Generous: the client's timeouts are 1.5 s here; this only catches a hang.
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

fn respond(
    req: &RequestMessage,
    payload: Option<ResponsePayload>,
    fail: Option<ResultReason>,
) -> Vec<u8> {
    let bi = &req.items[0];
    let item = match fail {
        Some(r) => ResponseBatchItem::failure(Some(bi.operation), None, r, "refused by test"),
        None => ResponseBatchItem {
            operation: Some(bi.operation),
            id: None,
            status: ResultStatus::SUCCESS,
            reason: None,
            message: None,
            payload,
        },
    };
    ResponseMessage {
        header: ResponseHeader {
            protocol_version: req.header.protocol_version,
            time_stamp: 0,
            batch_count: 1,
        },
        items: vec![item],
    }
    .to_item()
    .to_bytes()
}

fn parse(bytes: &[u8]) -> RequestMessage {
    RequestMessage::from_item(&ttlv::decode(bytes, &Limits::default()).unwrap()).unwrap()
}

#[test]
fn nothing_listening() {
    let pki = Pki::new("ca");
    let start = Instant::now();
    let err = Client::new(pki.client_config(common::dead_port()))
        .unwrap()
        .connect()
        .unwrap_err();
    assert_eq!(err.class(), "tcp-refused", "{err}");
    assert!(
        err.to_string().contains("nothing listens on that port"),
        "{err}"
    );
    assert_quick(start);
}

#[test]
fn a_listener_that_never_answers_times_out() {
    let pki = Pki::new("ca");
    let port = tcp_server(|s| {
        thread::sleep(Duration::from_secs(8));
        drop(s);
    });
    let start = Instant::now();
    let err = Client::new(pki.client_config(port))
        .unwrap()
        .connect()
        .unwrap_err();
    assert_eq!(err.class(), "timeout", "{err}");
    assert!(
        err.to_string().contains("no answer to the TLS handshake"),
        "{err}"
    );
    assert_quick(start);
}

#[test]
fn a_tls_server_that_never_answers_kmip_times_out() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let server = tls_server(
        cert,
        key,
        |_| {},
        4,
        |mut s| {
            let _ = read_message(&mut s);
            thread::sleep(Duration::from_secs(8));
        },
    );
    let start = Instant::now();
    let mut cfg = pki.client_config(server.port);
    cfg.version = Some(ProtocolVersion::V1_4);
    let err = Client::new(cfg).unwrap().query().unwrap_err();
    assert_eq!(err.class(), "timeout", "{err}");
    assert!(
        err.to_string().contains("no answer to the request"),
        "{err}"
    );
    assert_quick(start);
}

#[test]
fn plain_tcp_garbage_instead_of_tls() {
    let pki = Pki::new("ca");
    let port = tcp_server(|mut s| {
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        write_all(
            &mut s,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        );
    });
    let err = Client::new(pki.client_config(port))
        .unwrap()
        .connect()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Tls {
                problem: TlsProblem::Other,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("check that the port speaks TLS"),
        "{err}"
    );
}

#[test]
fn garbage_after_the_handshake_is_a_protocol_error() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let server = tls_server(
        cert,
        key,
        |_| {},
        4,
        |mut s| {
            let _ = read_message(&mut s);
            write_all(
                &mut s,
                &[
                    0x42, 0x00, 0x7B, 0x01, 0x00, 0x00, 0x00, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                    0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            );
        },
    );
    let mut cfg = pki.client_config(server.port);
    cfg.version = Some(ProtocolVersion::V1_4);
    let err = Client::new(cfg).unwrap().query().unwrap_err();
    assert_eq!(err.class(), "protocol", "{err}");
    assert!(err.to_string().contains("invalid TTLV at byte 8"), "{err}");
}

#[test]
fn a_huge_announced_length_is_refused_before_buffering() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let server = tls_server(
        cert,
        key,
        |_| {},
        4,
        |mut s| {
            let _ = read_message(&mut s);
            // A Response Message announcing 2 GiB, then nothing.
            write_all(&mut s, &[0x42, 0x00, 0x7B, 0x01, 0x7F, 0xFF, 0xFF, 0xF8]);
            thread::sleep(Duration::from_secs(5));
        },
    );
    let mut cfg = pki.client_config(server.port);
    cfg.version = Some(ProtocolVersion::V1_4);
    let start = Instant::now();
    let err = Client::new(cfg).unwrap().query().unwrap_err();
    assert_eq!(err.class(), "protocol", "{err}");
    assert!(err.to_string().contains("over the limit of 65536"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "waited for the body"
    );
}

#[test]
fn expired_server_certificate() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -30, -1);
    let server = tls_server(cert, key, |_| {}, 4, |_| {});
    let err = Client::new(pki.client_config(server.port))
        .unwrap()
        .connect()
        .unwrap_err();
    assert_eq!(err.class(), "tls-expired", "{err}");
    assert!(err.to_string().contains("has expired"), "{err}");
}

#[test]
fn no_common_cipher_suite() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let server = tls_server(
        cert,
        key,
        |b| {
            common::tls12_only(b);
            // SHA-1 CBC only: not among the suites the client offers.
            b.set_cipher_list("ECDHE-ECDSA-AES128-SHA").unwrap();
        },
        4,
        |_| {},
    );
    let err = Client::new(pki.client_config(server.port))
        .unwrap()
        .connect()
        .unwrap_err();
    assert_eq!(err.class(), "tls-cipher", "{err}");
    assert!(
        err.to_string()
            .contains("no common TLS version or cipher suite"),
        "{err}"
    );
}

#[test]
fn client_certificate_rejected_after_a_tls13_handshake() {
    // Under TLS 1.3 the server judges the client certificate after the client has finished
    // the handshake: the rejection arrives as an alert at the first read.
    let pki = Pki::new("ca");
    let other = Pki::new("other-ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let other_ca = other.ca.clone();
    let server = tls_server(
        cert,
        key,
        move |b| {
            let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
            store.add_cert(other_ca).unwrap();
            b.set_verify_cert_store(store.build()).unwrap();
            b.set_verify(
                openssl::ssl::SslVerifyMode::PEER
                    | openssl::ssl::SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            );
        },
        4,
        |mut s| {
            let _ = read_message(&mut s);
        },
    );
    let mut cfg = pki.client_config(server.port);
    cfg.version = Some(ProtocolVersion::V2_1);
    let err = Client::new(cfg).unwrap().query().unwrap_err();
    assert_eq!(err.class(), "tls-client-cert", "{err}");
}

#[test]
fn negotiation_and_the_credential_in_every_header() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let seen: Arc<Mutex<Vec<RequestMessage>>> = Arc::default();
    let seen2 = seen.clone();
    let server = tls_server(
        cert,
        key,
        |_| {},
        4,
        move |mut s| {
            while let Some(bytes) = read_message(&mut s) {
                let req = parse(&bytes);
                let reply = match &req.items[0].payload {
                    RequestPayload::DiscoverVersions { versions } => {
                        assert_eq!(versions[0], ProtocolVersion::V2_1);
                        respond(
                            &req,
                            Some(ResponsePayload::DiscoverVersions {
                                versions: vec![ProtocolVersion::V1_3, ProtocolVersion::V1_2],
                            }),
                            None,
                        )
                    }
                    _ => respond(&req, None, Some(ResultReason::OPERATION_NOT_SUPPORTED)),
                };
                seen2.lock().unwrap().push(req);
                write_all(&mut s, &reply);
            }
        },
    );
    let mut c = Client::new(pki.client_config(server.port)).unwrap();
    let info = c.connect().unwrap();
    assert_eq!(info.protocol_version, ProtocolVersion::V1_3);
    let err = c.query().unwrap_err();
    assert_eq!(
        err.result_reason(),
        Some(ResultReason::OPERATION_NOT_SUPPORTED)
    );
    assert!(
        err.to_string()
            .contains("KMIP Query failed: Operation Not Supported"),
        "{err}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header.protocol_version, ProtocolVersion::V1_3);
    for r in seen.iter() {
        match &r.header.authentication {
            Some(Credential::UsernamePassword { username, password }) => {
                assert_eq!(username, "tester");
                assert_eq!(password.as_ref().unwrap().expose(), "secret-password");
            }
            other => panic!("no credential: {other:?}"),
        }
    }
    // Never in an error text.
    assert!(!err.to_string().contains("secret-password"));
}

#[test]
fn a_server_that_rejects_discover_versions_is_spoken_to_in_1_0() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let server = tls_server(
        cert,
        key,
        |_| {},
        4,
        move |mut s| {
            while let Some(bytes) = read_message(&mut s) {
                let req = parse(&bytes);
                let reply = match req.items[0].operation {
                    Operation::DISCOVER_VERSIONS => {
                        respond(&req, None, Some(ResultReason::OPERATION_NOT_SUPPORTED))
                    }
                    _ => {
                        assert_eq!(req.header.protocol_version, ProtocolVersion::V1_0);
                        respond(&req, Some(ResponsePayload::Query(Default::default())), None)
                    }
                };
                write_all(&mut s, &reply);
            }
        },
    );
    let mut c = Client::new(pki.client_config(server.port)).unwrap();
    c.query().unwrap();
    assert_eq!(c.protocol_version(), Some(ProtocolVersion::V1_0));
}

#[test]
fn a_state_changing_request_is_not_repeated_on_another_server() {
    // The first server takes the Create and dies: the client must not create a second key on
    // the next server.
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let creates = Arc::new(Mutex::new(0));
    let c1 = creates.clone();
    let dying = tls_server(
        cert.clone(),
        key.clone(),
        |_| {},
        4,
        move |mut s| {
            if let Some(b) = read_message(&mut s) {
                let req = parse(&b);
                if req.items[0].operation == Operation::CREATE {
                    *c1.lock().unwrap() += 1;
                }
            }
            // closes without an answer
        },
    );
    let c2 = creates.clone();
    let healthy = tls_server(
        cert,
        key,
        |_| {},
        4,
        move |mut s| {
            while let Some(b) = read_message(&mut s) {
                let req = parse(&b);
                if req.items[0].operation == Operation::CREATE {
                    *c2.lock().unwrap() += 1;
                }
                write_all(
                    &mut s,
                    &respond(&req, None, Some(ResultReason::GENERAL_FAILURE)),
                );
            }
        },
    );
    let mut cfg = pki.client_config(dying.port);
    cfg.version = Some(ProtocolVersion::V1_4);
    cfg.servers.push(atrest_kmip::client::ServerAddr {
        host: "localhost".into(),
        port: healthy.port,
    });
    let err = Client::new(cfg)
        .unwrap()
        .create_aes_key(256, None)
        .unwrap_err();
    assert_eq!(err.class(), "closed", "{err}");
    assert_eq!(*creates.lock().unwrap(), 1);
}

#[test]
fn no_version_in_common() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("localhost", &["localhost"], -1, 30);
    let server = tls_server(
        cert,
        key,
        |_| {},
        4,
        move |mut s| {
            while let Some(bytes) = read_message(&mut s) {
                let req = parse(&bytes);
                // A server that only speaks a future version: the intersection is empty.
                let reply = respond(
                    &req,
                    Some(ResponsePayload::DiscoverVersions { versions: vec![] }),
                    None,
                );
                write_all(&mut s, &reply);
            }
        },
    );
    let err = Client::new(pki.client_config(server.port))
        .unwrap()
        .connect()
        .unwrap_err();
    assert_eq!(err.class(), "version", "{err}");
    assert!(err.is_version_mismatch(), "{err}");
    assert!(err.to_string().contains("1.0-1.4 and 2.0-2.1"), "{err}");
    // What to change is for the front end to say (the CLI names its flag, the page its field).
    assert!(!err.to_string().contains("--"), "{err}");
}
