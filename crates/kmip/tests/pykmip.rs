//! The client against a real third-party KMIP server: PyKMIP 0.11, started by scripts/test
//! with an EC server key (ATREST_PYKMIP_EC_ENV) and with an RSA server key that offers only the
//! KMIP profiles' CBC suites (ATREST_PYKMIP_RSA_ENV).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atrest_kmip::client::{Client, ClientError, Identity, TlsProblem};
use atrest_kmip::message::{
    Attributes, Operation, ProtocolVersion, ResultReason, RevocationReasonCode, State,
};
use atrest_testkit::peer;
use common::unique;
use zeroize::Zeroizing;

/// The whole life cycle of a key, with every operation, at one protocol version.
fn life_cycle(client: &mut Client, label: &str) {
    let name = unique(label);
    let versions = client.discover_versions().unwrap();
    assert!(!versions.is_empty());
    let q = client.query().unwrap();
    assert!(q.operations.contains(&Operation::CREATE), "{label}: {q:?}");
    assert!(
        q.vendor_identification
            .as_deref()
            .is_some_and(|v| v.contains("PyKMIP")),
        "{label}: {q:?}"
    );

    let uid = client.create_aes_key(256, Some(&name)).unwrap();
    let attrs = client.get_attributes(&uid, &["State"]).unwrap();
    assert_eq!(attrs.state(), Some(State::PRE_ACTIVE), "{label}");
    client.activate(&uid).unwrap();
    let key = client.get_key(&uid).unwrap();
    assert_eq!(key.material.len(), 32, "{label}");
    assert!(!key.wrapped);
    let attrs = client.get_attributes(&uid, &[]).unwrap();
    assert_eq!(attrs.state(), Some(State::ACTIVE), "{label}");
    assert_eq!(attrs.cryptographic_length(), Some(256), "{label}");
    assert_eq!(attrs.names(), vec![name.clone()], "{label}");
    let list = client.get_attribute_list(&uid).unwrap();
    assert!(list.iter().any(|n| n == "State"), "{label}: {list:?}");
    let found = client
        .locate(
            Attributes::new().with("Name", Attributes::name_value(&name)),
            None,
        )
        .unwrap();
    assert_eq!(found, vec![uid.clone()], "{label}");

    // Destroy of an Active key is refused; Revoke first.
    let err = client.destroy(&uid).unwrap_err();
    assert!(
        matches!(err, ClientError::Operation { .. }),
        "{label}: {err}"
    );
    client
        .revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    client.destroy(&uid).unwrap();
    let err = client.get_key(&uid).unwrap_err();
    assert_eq!(
        err.result_reason(),
        Some(ResultReason::ITEM_NOT_FOUND),
        "{label}: {err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("Item Not Found") && msg.contains("check the unique identifier"),
        "{msg}"
    );

    // Register: the same bytes come back.
    let material = Zeroizing::new(
        (0u8..32)
            .map(|i| i.wrapping_mul(7) ^ 0x5A)
            .collect::<Vec<_>>(),
    );
    let rid = client
        .register_aes_key(material.clone(), Some(&unique(label)))
        .unwrap();
    let back = client.get_key(&rid).unwrap();
    assert_eq!(back.material, material, "{label}");
    client.destroy(&rid).unwrap(); // Pre-Active: destroyed directly
}

#[test]
fn every_operation_at_every_version_pykmip_speaks() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    // Negotiated: PyKMIP lists 2.0 as its highest.
    let mut c = Client::new(p.client_config()).unwrap();
    let info = c.connect().unwrap();
    assert_eq!(info.protocol_version, ProtocolVersion::V2_0);
    life_cycle(&mut c, "negotiated");
    for v in [
        ProtocolVersion::V1_0,
        ProtocolVersion::V1_1,
        ProtocolVersion::V1_2,
        ProtocolVersion::V1_3,
        ProtocolVersion::V1_4,
        ProtocolVersion::V2_0,
    ] {
        let mut cfg = p.client_config();
        cfg.version = Some(v);
        let mut c = Client::new(cfg).unwrap();
        if v == ProtocolVersion::V1_0 {
            // 1.0 has no Discover Versions: the server fails it, the rest works.
            assert!(c.discover_versions().is_err());
            let uid = c.create_aes_key(128, None).unwrap();
            c.activate(&uid).unwrap();
            assert_eq!(c.get_key(&uid).unwrap().material.len(), 16);
            c.revoke(&uid, RevocationReasonCode::KEY_COMPROMISE, None)
                .unwrap();
            c.destroy(&uid).unwrap();
            continue;
        }
        life_cycle(&mut c, &format!("v{v}"));
        assert_eq!(c.protocol_version(), Some(v));
    }
}

#[test]
fn identities_pem_encrypted_pem_pkcs12_and_legacy_pkcs12() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let pass = Zeroizing::new(p.v("KMIP_CLIENT_P12_PASSPHRASE").to_owned());
    let identities = [
        ("pem", p.pem_identity("KMIP_CLIENT_CERT", "KMIP_CLIENT_KEY")),
        (
            "pem-combined",
            Identity::Pem {
                cert_chain: p.read("KMIP_CLIENT_PEM"),
                key: Zeroizing::new(p.read("KMIP_CLIENT_PEM")),
                passphrase: None,
            },
        ),
        (
            "encrypted-pem",
            Identity::Pem {
                cert_chain: p.read("KMIP_CLIENT_CERT"),
                key: Zeroizing::new(p.read("KMIP_CLIENT_KEY_ENCRYPTED")),
                passphrase: Some(Zeroizing::new(p.v("KMIP_CLIENT_KEY_PASSPHRASE").to_owned())),
            },
        ),
        (
            "pkcs12",
            Identity::Pkcs12 {
                der: p.read("KMIP_CLIENT_P12"),
                passphrase: pass.clone(),
            },
        ),
        (
            "pkcs12-legacy",
            Identity::Pkcs12 {
                der: p.read("KMIP_CLIENT_P12_LEGACY"),
                passphrase: pass.clone(),
            },
        ),
        (
            "rsa-pem",
            p.pem_identity("KMIP_CLIENT_RSA_CERT", "KMIP_CLIENT_RSA_KEY"),
        ),
    ];
    // One key, read back through every identity (all carry the same CN, so the same owner).
    let mut c = Client::new(p.client_config()).unwrap();
    let uid = c.create_aes_key(256, None).unwrap();
    c.activate(&uid).unwrap();
    let expected = c.get_key(&uid).unwrap().material;
    for (label, identity) in identities {
        let mut cfg = p.client_config();
        cfg.identity = identity;
        let mut c = Client::new(cfg).unwrap_or_else(|e| panic!("{label}: {e}"));
        let got = c.get_key(&uid).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(got.material, expected, "{label}");
    }
    c.destroy(&uid).unwrap_err(); // Active
    c.revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    c.destroy(&uid).unwrap();
}

#[test]
fn wrong_passphrases_are_named() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    cfg.identity = Identity::Pkcs12 {
        der: p.read("KMIP_CLIENT_P12"),
        passphrase: Zeroizing::new("not-the-passphrase".into()),
    };
    let err = Client::new(cfg).unwrap_err();
    assert!(matches!(err, ClientError::Config(_)));
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    let mut cfg = p.client_config();
    cfg.identity = Identity::Pem {
        cert_chain: p.read("KMIP_CLIENT_CERT"),
        key: Zeroizing::new(p.read("KMIP_CLIENT_KEY_ENCRYPTED")),
        passphrase: Some(Zeroizing::new("nope".into())),
    };
    let err = Client::new(cfg).unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    let mut cfg = p.client_config();
    cfg.identity = Identity::Pem {
        cert_chain: p.read("KMIP_CLIENT_CERT"),
        key: Zeroizing::new(p.read("KMIP_CLIENT_KEY_ENCRYPTED")),
        passphrase: None,
    };
    let err = Client::new(cfg).unwrap_err();
    assert!(
        err.to_string().contains("encrypted; give its passphrase"),
        "{err}"
    );

    let mut cfg = p.client_config();
    cfg.identity = p.pem_identity("KMIP_CLIENT_CERT", "KMIP_CLIENT_RSA_KEY");
    let err = Client::new(cfg).unwrap_err();
    assert!(
        err.to_string().contains("key belongs to the certificate"),
        "{err}"
    );
}

#[test]
fn rsa_server_with_only_cbc_suites() {
    let Some(p) = peer("ATREST_PYKMIP_RSA_ENV") else {
        return;
    };
    assert_eq!(p.v("KMIP_SERVER_KEY_ALG"), "rsa");
    let mut c = Client::new(p.client_config()).unwrap();
    let info = c.connect().unwrap();
    assert_eq!(info.tls_version, "TLSv1.2");
    assert!(
        [
            "AES128-SHA256",
            "AES256-SHA256",
            "ECDHE-RSA-AES128-SHA256",
            "ECDHE-RSA-AES256-SHA384"
        ]
        .contains(&info.cipher.as_str()),
        "{}",
        info.cipher
    );
    life_cycle(&mut c, "rsa");
}

/// `atrest kmip create`, then PyKMIP's own client Gets the same 32 bytes as `atrest kmip get`.
#[test]
fn pykmip_client_gets_the_bytes_atrest_sees() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut c = Client::new(p.client_config()).unwrap();
    let uid = c.create_aes_key(256, None).unwrap();
    c.activate(&uid).unwrap();
    let ours = hex::encode(&*c.get_key(&uid).unwrap().material);
    assert_eq!(p.pykmip_get_hex(&uid, Some("KMIP_1_2")), ours);
    c.revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    c.destroy(&uid).unwrap();
}

#[test]
fn the_credential_reaches_the_server() {
    // PyKMIP does not check the Credential; its debug log holds every request in hex.
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let user = unique("cred-user");
    let mut cfg = p.client_config();
    cfg.username = Some(user.clone());
    let mut c = Client::new(cfg).unwrap();
    c.query().unwrap();
    c.disconnect();
    let log = std::fs::read_to_string(p.path("PYKMIP_SERVER_LOG")).unwrap();
    let user_hex = hex::encode(user.as_bytes());
    let pass_hex = hex::encode(p.v("KMIP_PASSWORD").as_bytes());
    let request = log
        .lines()
        .rfind(|l| l.to_ascii_lowercase().contains(&user_hex))
        .unwrap_or_else(|| panic!("no request with username {user} in the server log"));
    assert!(request.to_ascii_lowercase().contains(&pass_hex));
}

#[test]
fn untrusted_client_certificate_is_rejected_by_the_server() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    cfg.identity = p.pem_identity("KMIP_UNTRUSTED_CLIENT_CERT", "KMIP_UNTRUSTED_CLIENT_KEY");
    let err = Client::new(cfg).unwrap().connect().unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Tls {
                problem: TlsProblem::ClientCertRejected { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("rejected the client certificate"),
        "{err}"
    );
}

#[test]
fn wrong_ca_means_the_server_is_not_trusted() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    cfg.ca_pem = p.read("KMIP_UNTRUSTED_CA");
    let err = Client::new(cfg).unwrap().connect().unwrap_err();
    assert_eq!(err.class(), "tls-untrusted", "{err}");
    assert!(
        err.to_string().contains("not signed by the configured CA"),
        "{err}"
    );
}

#[test]
fn wrong_server_name_is_a_name_mismatch() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    cfg.server_name = Some("kmip.example.com".into());
    let err = Client::new(cfg).unwrap().connect().unwrap_err();
    assert_eq!(err.class(), "tls-name", "{err}");
    assert!(
        err.to_string().contains("not valid for `kmip.example.com`"),
        "{err}"
    );
    // The IP address is in the certificate: connecting by IP without a name override works.
    let mut cfg = p.client_config();
    cfg.server_name = None;
    Client::new(cfg).unwrap().connect().unwrap();
}

#[test]
fn certificate_without_client_auth_usage_fails_kmip_authentication() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    cfg.identity = p.pem_identity("KMIP_NOEKU_CLIENT_CERT", "KMIP_NOEKU_CLIENT_KEY");
    cfg.version = Some(ProtocolVersion::V1_2);
    let err = Client::new(cfg).unwrap().query().unwrap_err();
    assert_eq!(err.class(), "authentication", "{err}");
    assert!(
        err.to_string().contains("KMIP authentication failed"),
        "{err}"
    );
}

#[test]
fn another_tenant_cannot_see_the_key() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut owner = Client::new(p.client_config()).unwrap();
    let name = unique("tenant");
    let uid = owner.create_aes_key(256, Some(&name)).unwrap();
    let mut cfg = p.client_config();
    cfg.identity = p.pem_identity("KMIP_OTHER_CLIENT_CERT", "KMIP_OTHER_CLIENT_KEY");
    let mut other = Client::new(cfg).unwrap();
    let err = other.get_key(&uid).unwrap_err();
    assert_eq!(
        err.result_reason(),
        Some(ResultReason::PERMISSION_DENIED),
        "{err}"
    );
    let found = other
        .locate(
            Attributes::new().with("Name", Attributes::name_value(&name)),
            None,
        )
        .unwrap();
    assert!(found.is_empty());
    owner.destroy(&uid).unwrap();
}

#[test]
fn failover_from_a_dead_server_to_a_live_one_and_remembered() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    let dead = atrest_testkit::process::free_port();
    cfg.servers.insert(
        0,
        atrest_kmip::client::ServerAddr {
            host: "127.0.0.1".into(),
            port: dead,
        },
    );
    let mut c = Client::new(cfg).unwrap();
    let q = c.query().unwrap();
    assert!(q.operations.contains(&Operation::GET));
    assert_eq!(c.connection_info().unwrap().server, p.server());
    // After a reconnect the live server is tried first.
    c.disconnect();
    c.query().unwrap();
    assert_eq!(c.connection_info().unwrap().server, p.server());
}

#[test]
fn all_servers_dead_lists_each_reason() {
    let Some(p) = peer("ATREST_PYKMIP_EC_ENV") else {
        return;
    };
    let mut cfg = p.client_config();
    cfg.servers = vec![
        atrest_kmip::client::ServerAddr {
            host: "127.0.0.1".into(),
            port: atrest_testkit::process::free_port(),
        },
        atrest_kmip::client::ServerAddr {
            host: "no-such-host.invalid".into(),
            port: 5696,
        },
    ];
    let err = Client::new(cfg).unwrap().query().unwrap_err();
    let ClientError::AllServersFailed(all) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(all[0].class(), "tcp-refused");
    assert_eq!(all[1].class(), "dns");
    let msg = err.to_string();
    assert!(
        msg.contains("connection refused") && msg.contains("cannot resolve"),
        "{msg}"
    );
}
