//! The dispatcher without sockets.

use super::attributes::tag;
use super::*;
use crate::clients::{Client, PasswordHash};
use crate::crypto::MasterKey;
use atrest_kmip::message::{Password, RequestHeader, RevocationReason};

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Engine,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        Store::open(&dir.path().join("objects"), MasterKey::generate().unwrap()).unwrap();
    let mut clients = Clients::load(&dir.path().join("clients.json")).unwrap();
    for (name, fp) in [("alice", "fp-alice"), ("bob", "fp-bob")] {
        clients
            .add(Client {
                name: name.into(),
                username: name.into(),
                password: PasswordHash::new(&format!("{name}-pw"), 1000).unwrap(),
                certificates: vec![fp.into()],
            })
            .unwrap();
    }
    Fixture {
        engine: Engine::new(store, clients),
        _dir: dir,
    }
}

fn session(who: &str) -> Session {
    Session::new("test", Some(format!("fp-{who}")))
}

fn cred(who: &str, pw: &str) -> Option<Credential> {
    Some(Credential::UsernamePassword {
        username: who.into(),
        password: Some(Password::new(pw.into())),
    })
}

fn req(v: ProtocolVersion, c: Option<Credential>, items: Vec<RequestPayload>) -> Vec<u8> {
    let n = items.len();
    RequestMessage {
        header: RequestHeader {
            protocol_version: v,
            maximum_response_size: None,
            authentication: c,
            time_stamp: None,
            batch_count: n as i32,
        },
        items: items
            .into_iter()
            .enumerate()
            .map(|(i, p)| RequestBatchItem {
                operation: p.operation().unwrap(),
                id: (n > 1).then(|| vec![i as u8]),
                payload: p,
            })
            .collect(),
    }
    .to_item()
    .to_bytes()
}

fn call(e: &Engine, s: &mut Session, bytes: &[u8]) -> ResponseMessage {
    let out = e.handle(s, bytes);
    ResponseMessage::from_item(&ttlv::decode(&out, &Limits::default()).unwrap()).unwrap()
}

fn as_alice(f: &Fixture, v: ProtocolVersion, p: RequestPayload) -> ResponseBatchItem {
    let mut s = session("alice");
    call(
        &f.engine,
        &mut s,
        &req(v, cred("alice", "alice-pw"), vec![p]),
    )
    .items
    .remove(0)
}

fn create(bits: i32) -> RequestPayload {
    RequestPayload::Create {
        object_type: ObjectType::SYMMETRIC_KEY,
        attributes: Attributes::new()
            .with("Cryptographic Algorithm", Value::Enumeration(3))
            .with("Cryptographic Length", Value::Integer(bits)),
    }
}

fn uid_of(item: &ResponseBatchItem) -> String {
    match &item.payload {
        Some(ResponsePayload::Create {
            unique_identifier, ..
        }) => unique_identifier.clone(),
        other => panic!("not a Create response: {other:?} {item:?}"),
    }
}

fn by_uid(op: fn(Option<String>) -> RequestPayload, uid: &str) -> RequestPayload {
    op(Some(uid.to_owned()))
}

fn activate(u: Option<String>) -> RequestPayload {
    RequestPayload::Activate {
        unique_identifier: u,
    }
}
fn destroy(u: Option<String>) -> RequestPayload {
    RequestPayload::Destroy {
        unique_identifier: u,
    }
}
fn get(u: Option<String>) -> RequestPayload {
    RequestPayload::Get {
        unique_identifier: u,
        key_format_type: None,
    }
}
fn revoke(u: &str, code: RevocationReasonCode) -> RequestPayload {
    RequestPayload::Revoke {
        unique_identifier: Some(u.into()),
        reason: RevocationReason {
            code,
            message: None,
        },
        compromise_date: None,
    }
}

#[test]
fn garbage_never_panics_and_gets_invalid_message() {
    let f = fixture();
    let mut s = session("alice");
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x42],
        b"hello world, not ttlv".to_vec(),
        vec![
            0x42, 0x00, 0x78, 0x01, 0, 0, 0, 8, 0x42, 0, 0x77, 1, 0, 0, 0, 0,
        ],
        ttlv::Item::structure(tags::REQUEST_MESSAGE, vec![]).to_bytes(),
    ];
    for i in inputs {
        let r = call(&f.engine, &mut s, &i);
        assert_eq!(r.items.len(), 1);
        assert_eq!(
            r.items[0].reason,
            Some(ResultReason::INVALID_MESSAGE),
            "{i:?}"
        );
    }
    // Batch Count that disagrees with the items.
    let mut b = RequestMessage::from_item(
        &ttlv::decode(
            &req(
                ProtocolVersion::V1_2,
                cred("alice", "alice-pw"),
                vec![get(None)],
            ),
            &Limits::default(),
        )
        .unwrap(),
    )
    .unwrap();
    b.header.batch_count = 3;
    let r = call(&f.engine, &mut s, &b.to_item().to_bytes());
    assert_eq!(r.items[0].reason, Some(ResultReason::INVALID_MESSAGE));
}

#[test]
fn authentication_needs_certificate_and_password_of_one_client() {
    let f = fixture();
    let q = || RequestPayload::Query {
        functions: vec![QueryFunction::QUERY_OPERATIONS],
    };
    let v = ProtocolVersion::V1_4;
    let auth_fail = |s: &mut Session, c: Option<Credential>| {
        let r = call(&f.engine, s, &req(v, c, vec![q()]));
        r.items[0].reason == Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL)
    };
    assert!(auth_fail(&mut session("alice"), cred("alice", "wrong")));
    assert!(auth_fail(&mut session("alice"), None));
    assert!(auth_fail(&mut session("alice"), cred("bob", "bob-pw")));
    assert!(auth_fail(
        &mut session("mallory"),
        cred("alice", "alice-pw")
    ));
    assert!(auth_fail(
        &mut Session::new("t", None),
        cred("alice", "alice-pw")
    ));
    let mut s = session("alice");
    assert!(!auth_fail(&mut s, cred("alice", "alice-pw")));
    // The cached credential does not let another password through.
    assert!(auth_fail(&mut s, cred("alice", "alice-pw2")));
    assert!(!auth_fail(&mut s, cred("alice", "alice-pw")));
}

#[test]
fn life_cycle_and_reasons_per_version() {
    for v in [
        ProtocolVersion::V1_0,
        ProtocolVersion::V1_4,
        ProtocolVersion::V2_1,
    ] {
        let f = fixture();
        let uid = uid_of(&as_alice(&f, v, create(256)));
        let r = as_alice(&f, v, by_uid(activate, &uid));
        assert_eq!(r.status, ResultStatus::SUCCESS, "{v} {r:?}");
        // Activate twice, Destroy while Active: wrong state.
        let want = if v.is_2x() {
            ResultReason::WRONG_KEY_LIFECYCLE_STATE
        } else {
            ResultReason::PERMISSION_DENIED
        };
        assert_eq!(as_alice(&f, v, by_uid(activate, &uid)).reason, Some(want));
        assert_eq!(as_alice(&f, v, by_uid(destroy, &uid)).reason, Some(want));
        // Another client sees nothing.
        let mut b = session("bob");
        let r = call(
            &f.engine,
            &mut b,
            &req(v, cred("bob", "bob-pw"), vec![by_uid(get, &uid)]),
        );
        let nf = if v.is_2x() {
            ResultReason::OBJECT_NOT_FOUND
        } else {
            ResultReason::ITEM_NOT_FOUND
        };
        assert_eq!(r.items[0].reason, Some(nf));
        // Revoke, Destroy, then Get fails and attributes remain.
        let r = as_alice(&f, v, revoke(&uid, RevocationReasonCode::SUPERSEDED));
        assert_eq!(r.status, ResultStatus::SUCCESS);
        assert_eq!(
            as_alice(&f, v, by_uid(destroy, &uid)).status,
            ResultStatus::SUCCESS
        );
        let gone = if v.is_2x() {
            ResultReason::OBJECT_DESTROYED
        } else {
            ResultReason::ITEM_NOT_FOUND
        };
        assert_eq!(as_alice(&f, v, by_uid(get, &uid)).reason, Some(gone));
        let r = as_alice(
            &f,
            v,
            RequestPayload::GetAttributes {
                unique_identifier: Some(uid.clone()),
                names: vec!["State".into(), "Destroy Date".into()],
            },
        );
        match r.payload {
            Some(ResponsePayload::GetAttributes { attributes, .. }) => {
                assert_eq!(attributes.state(), Some(State::DESTROYED));
                assert!(attributes.date("Destroy Date").is_some());
            }
            other => panic!("{other:?}"),
        }
        // Compromise of a destroyed key.
        let r = as_alice(&f, v, revoke(&uid, RevocationReasonCode::KEY_COMPROMISE));
        assert_eq!(r.status, ResultStatus::SUCCESS);
    }
}

#[test]
fn create_checks_algorithm_and_length() {
    let f = fixture();
    let v = ProtocolVersion::V1_2;
    for bits in [128, 192, 256, 512] {
        assert_eq!(as_alice(&f, v, create(bits)).status, ResultStatus::SUCCESS);
    }
    for bits in [0, 64, 100, 1024] {
        assert_eq!(
            as_alice(&f, v, create(bits)).reason,
            Some(ResultReason::INVALID_FIELD)
        );
    }
    let bad = RequestPayload::Create {
        object_type: ObjectType::SYMMETRIC_KEY,
        attributes: Attributes::new()
            .with("Cryptographic Algorithm", Value::Enumeration(3))
            .with("Cryptographic Length", Value::Integer(128))
            .with("State", Value::Enumeration(2)),
    };
    assert_eq!(
        as_alice(&f, v, bad).reason,
        Some(ResultReason::INVALID_FIELD)
    );
}

#[test]
fn batch_with_id_placeholder_and_response_size_limit() {
    let f = fixture();
    let mut s = session("alice");
    let r = call(
        &f.engine,
        &mut s,
        &req(
            ProtocolVersion::V1_4,
            cred("alice", "alice-pw"),
            vec![create(128), activate(None), get(None)],
        ),
    );
    assert!(
        r.items.iter().all(|i| i.status == ResultStatus::SUCCESS),
        "{r:?}"
    );
    assert_eq!(r.items[2].id, Some(vec![2]));
    match &r.items[2].payload {
        Some(ResponsePayload::Get { object, .. }) => {
            assert_eq!(object.key_block().unwrap().material.len(), 16)
        }
        other => panic!("{other:?}"),
    }
    let mut m = RequestMessage::from_item(
        &ttlv::decode(
            &req(
                ProtocolVersion::V1_4,
                cred("alice", "alice-pw"),
                vec![create(128)],
            ),
            &Limits::default(),
        )
        .unwrap(),
    )
    .unwrap();
    m.header.maximum_response_size = Some(10);
    let r = call(&f.engine, &mut s, &m.to_item().to_bytes());
    assert_eq!(r.items[0].reason, Some(ResultReason::RESPONSE_TOO_LARGE));
}

#[test]
fn discover_versions_and_query() {
    let f = fixture();
    let r = as_alice(
        &f,
        ProtocolVersion::V1_4,
        RequestPayload::DiscoverVersions {
            versions: vec![
                ProtocolVersion::new(3, 0),
                ProtocolVersion::V1_4,
                ProtocolVersion::V1_2,
            ],
        },
    );
    assert_eq!(
        r.payload,
        Some(ResponsePayload::DiscoverVersions {
            versions: vec![ProtocolVersion::V1_4, ProtocolVersion::V1_2]
        })
    );
    let r = as_alice(
        &f,
        ProtocolVersion::V2_1,
        RequestPayload::Query {
            functions: vec![
                QueryFunction::QUERY_OPERATIONS,
                QueryFunction::QUERY_OBJECTS,
                QueryFunction::QUERY_SERVER_INFORMATION,
            ],
        },
    );
    match r.payload {
        Some(ResponsePayload::Query(q)) => {
            assert!(q.operations.contains(&Operation::DISCOVER_VERSIONS));
            assert_eq!(q.vendor_identification.as_deref(), Some(VENDOR));
            assert!(q.object_types.contains(&ObjectType::SYMMETRIC_KEY));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn object_quota_per_client() {
    let Fixture { _dir, engine } = fixture();
    let f = Fixture {
        engine: engine.with_max_objects_per_client(2),
        _dir,
    };
    let a = uid_of(&as_alice(&f, ProtocolVersion::V1_4, create(128)));
    uid_of(&as_alice(&f, ProtocolVersion::V2_0, create(128)));
    // Destroyed objects still count: their records are kept.
    assert_eq!(
        as_alice(&f, ProtocolVersion::V1_4, by_uid(destroy, &a)).status,
        ResultStatus::SUCCESS
    );
    let r = as_alice(&f, ProtocolVersion::V1_4, create(128));
    assert_eq!(r.reason, Some(ResultReason::PERMISSION_DENIED), "{r:?}");
    assert!(r.message.unwrap().contains("--max-objects-per-client"));
    let r = as_alice(&f, ProtocolVersion::V2_1, create(128));
    assert_eq!(r.reason, Some(ResultReason::SERVER_LIMIT_EXCEEDED), "{r:?}");
    // Another client has a quota of its own.
    let mut s = session("bob");
    let r = call(
        &f.engine,
        &mut s,
        &req(
            ProtocolVersion::V1_4,
            cred("bob", "bob-pw"),
            vec![create(128)],
        ),
    );
    assert_eq!(r.items[0].status, ResultStatus::SUCCESS);
}

#[test]
fn get_with_key_wrapping_is_refused_not_answered_in_the_clear() {
    let f = fixture();
    let uid = uid_of(&as_alice(&f, ProtocolVersion::V1_2, create(128)));
    let mut m = RequestMessage::from_item(
        &ttlv::decode(
            &req(
                ProtocolVersion::V1_2,
                cred("alice", "alice-pw"),
                vec![get(Some(uid))],
            ),
            &Limits::default(),
        )
        .unwrap(),
    )
    .unwrap()
    .to_item();
    // Add a Key Wrapping Specification (Wrapping Method: Encrypt) to the Get payload.
    fn kids(i: &mut Item) -> &mut Vec<Item> {
        match &mut i.value {
            Value::Structure(c) => c,
            _ => panic!("not a structure"),
        }
    }
    let batch = kids(&mut m)
        .iter_mut()
        .find(|i| i.tag == tags::BATCH_ITEM)
        .unwrap();
    let payload = kids(batch)
        .iter_mut()
        .find(|i| i.tag == tags::REQUEST_PAYLOAD)
        .unwrap();
    kids(payload).push(Item::structure(
        tag("Key Wrapping Specification"),
        vec![Item::new(tag("Wrapping Method"), Value::Enumeration(1))],
    ));
    let mut s = session("alice");
    let r = call(&f.engine, &mut s, &m.to_bytes());
    assert_eq!(r.items[0].reason, Some(ResultReason::FEATURE_NOT_SUPPORTED));
    assert!(r.items[0].payload.is_none());
}

#[test]
fn client_text_is_escaped_and_bounded_in_logs() {
    let s = for_log("a\nFAKE LOG LINE\u{1b}[31m\u{202e}x");
    assert!(!s.contains('\n') && !s.contains('\u{1b}') && !s.contains('\u{202e}'));
    assert!(s.contains("FAKE LOG LINE"));
    let long = "x".repeat(10_000);
    let s = for_log(&long);
    assert!(s.chars().count() < 300, "{}", s.len());
    assert!(s.ends_with("(10000 characters)"));
    assert!(clip(&long).chars().count() < 100);
}
