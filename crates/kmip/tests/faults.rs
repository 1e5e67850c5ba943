//! The client against servers that fail on purpose: each failure must end quickly, with its own
//! classified message, and bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientError, TlsProblem};
use atrest_kmip::message::{
    Credential, Operation, ProtocolVersion, RequestMessage, RequestPayload, ResponseBatchItem,
    ResponseHeader, ResponseMessage, ResponsePayload, ResultReason, ResultStatus,
};
use atrest_kmip::ttlv::{self, Limits};
use atrest_testkit::table::check_each;
use common::{Pki, read_message, tcp_server, tls_server, write_all};
use openssl::ssl::{SslAcceptorBuilder, SslStream};

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

/// What the server of a case does wrong.
enum Server {
    /// Nothing listens on the port.
    Nothing,
    /// A plain TCP listener that runs this on each connection.
    Tcp(fn(TcpStream)),
    /// A TLS server whose certificate for `localhost` is valid from `valid.0` to `valid.1`
    /// days from now, its acceptor changed by `configure`, running `handle` on each
    /// connection.
    Tls {
        valid: (i64, i64),
        configure: fn(&mut SslAcceptorBuilder),
        handle: fn(SslStream<TcpStream>),
    },
}

/// What the client asks of it.
enum Ask {
    /// Connect (with version negotiation).
    Connect,
    /// Query, in this version (no negotiation).
    Query(ProtocolVersion),
}

/// One server that fails on purpose and what the client must say about it.
struct Fault {
    name: &'static str,
    server: Server,
    ask: Ask,
    /// The error's class.
    class: &'static str,
    /// What the error's text says.
    says: &'static [&'static str],
    /// How long it may take at the most.
    within: Duration,
    /// Further checks of the error.
    also: fn(&ClientError),
}

/// Generous: the client's timeouts are 1.5 s here; this only catches a hang.
const QUICK: Duration = Duration::from_secs(20);

fn no_change(_: &mut SslAcceptorBuilder) {}

fn no_answer(_: SslStream<TcpStream>) {}

fn nothing_more(_: &ClientError) {}

const FAULTS: &[Fault] = &[
    Fault {
        name: "nothing_listening",
        server: Server::Nothing,
        ask: Ask::Connect,
        class: "tcp-refused",
        says: &["nothing listens on that port"],
        within: QUICK,
        also: nothing_more,
    },
    Fault {
        name: "a_listener_that_never_answers_times_out",
        server: Server::Tcp(|s| {
            thread::sleep(Duration::from_secs(8));
            drop(s);
        }),
        ask: Ask::Connect,
        class: "timeout",
        says: &["no answer to the TLS handshake"],
        within: QUICK,
        also: nothing_more,
    },
    Fault {
        name: "a_tls_server_that_never_answers_kmip_times_out",
        server: Server::Tls {
            valid: (-1, 30),
            configure: no_change,
            handle: |mut s| {
                let _ = read_message(&mut s);
                thread::sleep(Duration::from_secs(8));
            },
        },
        ask: Ask::Query(ProtocolVersion::V1_4),
        class: "timeout",
        says: &["no answer to the request"],
        within: QUICK,
        also: nothing_more,
    },
    Fault {
        name: "plain_tcp_garbage_instead_of_tls",
        server: Server::Tcp(|mut s| {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            write_all(
                &mut s,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            );
        }),
        ask: Ask::Connect,
        class: "tls",
        says: &["check that the port speaks TLS"],
        within: QUICK,
        also: |err| {
            assert!(
                matches!(
                    err,
                    ClientError::Tls {
                        problem: TlsProblem::Other,
                        ..
                    }
                ),
                "{err:?}"
            )
        },
    },
    Fault {
        name: "garbage_after_the_handshake_is_a_protocol_error",
        server: Server::Tls {
            valid: (-1, 30),
            configure: no_change,
            handle: |mut s| {
                let _ = read_message(&mut s);
                write_all(
                    &mut s,
                    &[
                        0x42, 0x00, 0x7B, 0x01, 0x00, 0x00, 0x00, 0x10, 0xFF, 0xFF, 0xFF, 0xFF,
                        0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                );
            },
        },
        ask: Ask::Query(ProtocolVersion::V1_4),
        class: "protocol",
        says: &["invalid TTLV at byte 8"],
        within: QUICK,
        also: nothing_more,
    },
    // Refused before buffering: the client does not wait for the body it was announced.
    Fault {
        name: "a_huge_announced_length_is_refused_before_buffering",
        server: Server::Tls {
            valid: (-1, 30),
            configure: no_change,
            handle: |mut s| {
                let _ = read_message(&mut s);
                // A Response Message announcing 2 GiB, then nothing.
                write_all(&mut s, &[0x42, 0x00, 0x7B, 0x01, 0x7F, 0xFF, 0xFF, 0xF8]);
                thread::sleep(Duration::from_secs(5));
            },
        },
        ask: Ask::Query(ProtocolVersion::V1_4),
        class: "protocol",
        says: &["over the limit of 65536"],
        within: Duration::from_secs(4),
        also: nothing_more,
    },
    Fault {
        name: "expired_server_certificate",
        server: Server::Tls {
            valid: (-30, -1),
            configure: no_change,
            handle: no_answer,
        },
        ask: Ask::Connect,
        class: "tls-expired",
        says: &["has expired"],
        within: QUICK,
        also: nothing_more,
    },
    Fault {
        name: "no_common_cipher_suite",
        server: Server::Tls {
            valid: (-1, 30),
            configure: |b| {
                common::tls12_only(b);
                // SHA-1 CBC only: not among the suites the client offers.
                b.set_cipher_list("ECDHE-ECDSA-AES128-SHA").unwrap();
            },
            handle: no_answer,
        },
        ask: Ask::Connect,
        class: "tls-cipher",
        says: &["no common TLS version or cipher suite"],
        within: QUICK,
        also: nothing_more,
    },
    // Under TLS 1.3 the server judges the client certificate after the client has finished
    // the handshake: the rejection arrives as an alert at the first read.
    Fault {
        name: "client_certificate_rejected_after_a_tls13_handshake",
        server: Server::Tls {
            valid: (-1, 30),
            configure: |b| {
                // It trusts only another CA than the one of the client's certificate.
                let other = Pki::new("other-ca");
                let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
                store.add_cert(other.ca).unwrap();
                b.set_verify_cert_store(store.build()).unwrap();
                b.set_verify(
                    openssl::ssl::SslVerifyMode::PEER
                        | openssl::ssl::SslVerifyMode::FAIL_IF_NO_PEER_CERT,
                );
            },
            handle: |mut s| {
                let _ = read_message(&mut s);
            },
        },
        ask: Ask::Query(ProtocolVersion::V2_1),
        class: "tls-client-cert",
        says: &[],
        within: QUICK,
        also: nothing_more,
    },
    Fault {
        name: "no_version_in_common",
        server: Server::Tls {
            valid: (-1, 30),
            configure: no_change,
            handle: |mut s| {
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
        },
        ask: Ask::Connect,
        class: "version",
        says: &["1.0-1.4 and 2.0-2.1"],
        within: QUICK,
        also: |err| {
            assert!(err.is_version_mismatch(), "{err}");
            // What to change is for the front end to say (the CLI names its flag, the page its
            // field).
            assert!(!err.to_string().contains("--"), "{err}");
        },
    },
];

/// Runs the server of `fault` and asks it what the case asks: the error and how long it took.
fn provoke(fault: &Fault) -> (ClientError, Duration) {
    let pki = Pki::new("ca");
    let port = match fault.server {
        Server::Nothing => atrest_testkit::process::free_port(),
        Server::Tcp(handle) => tcp_server(handle),
        Server::Tls {
            valid: (from, to),
            configure,
            handle,
        } => {
            let (cert, key) = pki.leaf("localhost", &["localhost"], from, to);
            tls_server(cert, key, configure, 4, handle).port
        }
    };
    let mut cfg = pki.client_config(port);
    let start = Instant::now();
    let err = match fault.ask {
        Ask::Connect => Client::new(cfg).unwrap().connect().map(|_| ()),
        Ask::Query(version) => {
            cfg.version = Some(version);
            Client::new(cfg).unwrap().query().map(|_| ())
        }
    }
    .unwrap_err();
    (err, start.elapsed())
}

/// Each server that fails on purpose: the client's error has its class and its sentence, and
/// comes quickly.
#[test]
fn each_fault_ends_quickly_with_its_own_error() {
    check_each(
        FAULTS,
        |f| f.name,
        |f| {
            let (err, took) = provoke(f);
            assert_eq!(err.class(), f.class, "{err}");
            for says in f.says {
                assert!(err.to_string().contains(says), "{err}");
            }
            (f.also)(&err);
            assert!(took < f.within, "took {took:?}, more than {:?}", f.within);
        },
    );
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
