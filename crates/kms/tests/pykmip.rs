//! PyKMIP's own client (ProxyKmipClient) against the server: every operation, in KMIP 1.0 to
//! 1.4 and 2.0, with the identity the server printed, plus isolation between clients and
//! refused credentials. Needs ATREST_PYTHON (a Python with PyKMIP).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{TestServer, python};

fn run_pykmip(version: &str) {
    let Some(py) = python() else { return };
    let server = TestServer::start();
    let other = server.add_client("other-tenant");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pykmip_client.py");
    let mut cmd = Command::new(&py);
    cmd.arg(script).arg(version).current_dir(server.dir.path());
    for (k, v) in &server.env {
        cmd.env(k, v);
    }
    for k in ["CLIENT_CERT", "CLIENT_KEY", "USERNAME", "PASSWORD"] {
        cmd.env(format!("KMIP_OTHER_{k}"), &other[&format!("KMIP_{k}")]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "PyKMIP client checks failed at KMIP {version}:\n{stdout}\n{stderr}"
    );
    // The server logs never carry the password.
    assert!(!stdout.contains(&server.env["KMIP_PASSWORD"]));
}

#[test]
fn pykmip_client_kmip_1_0() {
    run_pykmip("1.0");
}

#[test]
fn pykmip_client_kmip_1_1() {
    run_pykmip("1.1");
}

#[test]
fn pykmip_client_kmip_1_2() {
    run_pykmip("1.2");
}

#[test]
fn pykmip_client_kmip_1_3() {
    run_pykmip("1.3");
}

#[test]
fn pykmip_client_kmip_1_4() {
    run_pykmip("1.4");
}

#[test]
fn pykmip_client_kmip_2_0() {
    run_pykmip("2.0");
}
