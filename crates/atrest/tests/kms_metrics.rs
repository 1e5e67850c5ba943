//! `atrest kms serve --metrics-listen` as a process: /healthz, /readyz, and a strictly checked
//! /metrics whose numbers match what the test did over KMIP: operations by type and result
//! (a Get of an unknown id counted under its Result Reason), connections (a TLS handshake that
//! fails, an authenticated one open), objects by type and state (as Get Attributes reports
//! them). `promtool check metrics` also reads the scrape when it is installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use atrest_kmip::client::Client;
use atrest_kmip::message::RevocationReasonCode;
use atrest_testkit::exposition::{Exposition, get, scrape};
use atrest_testkit::process::{Served, kms_port, kms_serve_command, metrics_addr, spawn_until};

struct Server {
    /// Killed when the server is dropped.
    _served: Served,
    metrics: String,
}

fn serve(dir: &Path) -> Server {
    let (served, _) = spawn_until(
        kms_serve_command(env!("CARGO_BIN_EXE_atrest"), dir, "127.0.0.1:0")
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stderr(Stdio::null()),
        kms_port,
    );
    Server {
        metrics: metrics_addr(&served.output),
        _served: served,
    }
}

fn ops(e: &Exposition, op: &str, result: &str) -> f64 {
    e.find(
        "atrest_kms_operations_total",
        &[("operation", op), ("result", result)],
    )
    .first()
    .map_or(0.0, |s| s.value)
}

#[test]
fn kms_metrics_count_operations_connections_and_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kms");
    let server = serve(&dir);
    let m = server.metrics.clone();
    assert_eq!(get(&m, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&m, "/readyz"), (200, "ready\n".into()));
    let before = scrape(&m);
    assert_eq!(ops(&before, "Create", "success"), 0.0);
    assert!(
        before
            .find("atrest_kms_objects", &[("state", "Active")])
            .is_empty()
    );

    let peer = atrest_testkit::Peer::from_file(&dir.join("client.env"));
    let mut c = Client::new(peer.client_config()).unwrap();
    let k1 = c.create_aes_key(256, None).unwrap();
    c.activate(&k1).unwrap();
    let k2 = c.create_aes_key(256, None).unwrap();
    c.activate(&k2).unwrap();
    c.revoke(&k2, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    assert_eq!(c.get_key(&k1).unwrap().material.len(), 32);
    assert!(c.get_key("no-such-object").is_err());
    // A handshake that fails: not TLS at all.
    {
        let mut s = TcpStream::connect(c.connection_info().unwrap().server.to_string()).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // The KMIP view of the objects, to compare with the scrape.
    let s1 = c.get_attributes(&k1, &["State"]).unwrap().state().unwrap();
    let s2 = c.get_attributes(&k2, &["State"]).unwrap().state().unwrap();
    assert_eq!(
        (s1.to_string(), s2.to_string()),
        ("Active".into(), "Deactivated".into())
    );

    let mut e = scrape(&m);
    for _ in 0..100 {
        if e.value("atrest_kms_connections_total", &[("result", "tls_failed")]) >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        e = scrape(&m);
    }
    assert_eq!(ops(&e, "Create", "success"), 2.0);
    assert_eq!(ops(&e, "Activate", "success"), 2.0);
    assert_eq!(ops(&e, "Revoke", "success"), 1.0);
    assert_eq!(ops(&e, "Get", "success"), 1.0);
    // Item Not Found is called Object Not Found from KMIP 2.0 on.
    assert_eq!(
        ops(&e, "Get", "Item Not Found") + ops(&e, "Get", "Object Not Found"),
        1.0
    );
    assert_eq!(ops(&e, "Get Attributes", "success"), 2.0);
    assert!(e.value("atrest_kms_connections_total", &[("result", "tls_failed")]) >= 1.0);
    assert!(e.value("atrest_kms_connections_total", &[("result", "accepted")]) >= 1.0);
    assert_eq!(
        e.value("atrest_kms_connections_total", &[("result", "over_limit")]),
        0.0
    );
    // The client's connection is still open.
    assert!(e.value("atrest_kms_connections_open", &[]) >= 1.0);
    assert_eq!(
        e.value(
            "atrest_kms_objects",
            &[("type", "Symmetric Key"), ("state", "Active")]
        ),
        1.0
    );
    assert_eq!(
        e.value(
            "atrest_kms_objects",
            &[("type", "Symmetric Key"), ("state", "Deactivated")]
        ),
        1.0
    );
    c.disconnect();
    let mut open = 1.0;
    for _ in 0..100 {
        open = scrape(&m).value("atrest_kms_connections_open", &[]);
        if open == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(open, 0.0, "the closed connection is still counted open");
    drop(server);
}
