//! KMIP benchmarks, each a ratio against an anchor measured in the same run on the same machine:
//!
//! 1. TTLV decode and encode throughput (MB/s) of a Get response carrying a 256-bit key, against
//!    PyKMIP's own codec decoding and encoding the same bytes (the anchor).
//! 2. Get round trips per second against the PyKMIP server over one kept-open TLS connection:
//!    atrest's client against PyKMIP's client (the anchor) fetching the same key, both sending
//!    the same Username/Password Credential (the server is measurably slower with one).
//!
//! Run: `ATREST_PYKMIP_EC_ENV=<peer env file> cargo bench -p atrest-kmip --bench kmip`
//! (scripts/bench starts the peer and does this). Without the env file only the in-process
//! figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientConfig, Timeouts};
use atrest_kmip::message::{
    KeyBlock, ManagedObject, ObjectType, Operation, ProtocolVersion, ResponseBatchItem,
    ResponseHeader, ResponseMessage, ResponsePayload, ResultStatus, RevocationReasonCode,
};
use atrest_kmip::ttlv::{self, Limits};
use zeroize::Zeroizing;

fn get_response() -> Vec<u8> {
    ResponseMessage {
        header: ResponseHeader {
            protocol_version: ProtocolVersion::V1_2,
            time_stamp: 1_700_000_000,
            batch_count: 1,
        },
        items: vec![ResponseBatchItem {
            operation: Some(Operation::GET),
            id: None,
            status: ResultStatus::SUCCESS,
            reason: None,
            message: None,
            payload: Some(ResponsePayload::Get {
                object_type: ObjectType::SYMMETRIC_KEY,
                unique_identifier: "1234".into(),
                object: ManagedObject::SymmetricKey(KeyBlock::raw_aes(Zeroizing::new(vec![7; 32]))),
            }),
        }],
    }
    .to_item()
    .to_bytes()
}

/// Runs `f` repeatedly for about `dur`; returns iterations per second.
fn rate(dur: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn python(py: &str, script: &str, args: &[String]) -> Option<f64> {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("anchor failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

const PY_CODEC: &str = r#"
import sys, time
from kmip.core import utils
from kmip.core.messages.messages import ResponseMessage
data = bytes.fromhex(sys.argv[1]); mode = sys.argv[2]
m = ResponseMessage(); m.read(utils.BytearrayStream(data))
n = 0; start = time.perf_counter()
while time.perf_counter() - start < 3.0:
    for _ in range(100):
        if mode == 'decode':
            ResponseMessage().read(utils.BytearrayStream(data))
        else:
            s = utils.BytearrayStream(); m.write(s)
    n += 100
print(n * len(data) / (time.perf_counter() - start) / 1e6)
"#;

const PY_GETS: &str = r#"
import sys, time
from kmip.pie.client import ProxyKmipClient
from kmip.core import enums
h, port, cert, key, ca, uid, user, password = sys.argv[1:9]
c = ProxyKmipClient(hostname=h, port=int(port), cert=cert, key=key, ca=ca, config_file='/dev/null',
                    username=user, password=password, kmip_version=enums.KMIPVersion.KMIP_1_2)
c.open()
c.get(uid)
n = 0; start = time.perf_counter()
while time.perf_counter() - start < 5.0:
    c.get(uid); n += 1
print(n / (time.perf_counter() - start))
c.close()
"#;

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let bytes = get_response();
    let limits = Limits::default();
    let mb = bytes.len() as f64 / 1e6;
    let dec = rate(Duration::from_secs(3), || {
        black_box(ttlv::decode(black_box(&bytes), &limits).unwrap());
    }) * mb;
    let item = ttlv::decode(&bytes, &limits).unwrap();
    let enc = rate(Duration::from_secs(3), || {
        black_box(black_box(&item).to_bytes());
    }) * mb;
    let typed = rate(Duration::from_secs(3), || {
        let i = ttlv::decode(black_box(&bytes), &limits).unwrap();
        black_box(ResponseMessage::from_item(&i).unwrap());
    }) * mb;
    println!("message: Get response, {} bytes", bytes.len());
    println!("atrest TTLV decode:                 {dec:10.1} MB/s");
    println!("atrest TTLV decode + typed message: {typed:10.1} MB/s");
    println!("atrest TTLV encode:                 {enc:10.1} MB/s");

    let Some(env) = std::env::var_os("ATREST_PYKMIP_EC_ENV") else {
        println!("(set ATREST_PYKMIP_EC_ENV for the PyKMIP anchors and the Get round trips)");
        return;
    };
    let peer = atrest_testkit::Peer::from_file(std::path::Path::new(&env));
    let vars = &peer.vars;
    let py = &vars["PYKMIP_PYTHON_BIN"];
    let hexed = hex::encode(&bytes);
    let py_dec = python(py, PY_CODEC, &[hexed.clone(), "decode".into()]);
    let py_enc = python(py, PY_CODEC, &[hexed, "encode".into()]);
    if let (Some(d), Some(e)) = (py_dec, py_enc) {
        println!(
            "PyKMIP decode (anchor):             {d:10.1} MB/s   ratio {:.0}x",
            typed / d
        );
        println!(
            "PyKMIP encode (anchor):             {e:10.1} MB/s   ratio {:.0}x",
            enc / e
        );
    }

    let config = ClientConfig {
        version: Some(ProtocolVersion::V1_2),
        timeouts: Timeouts::default(),
        ..peer.client_config()
    };
    let mut client = Client::new(config).unwrap();
    let uid = client.create_aes_key(256, None).unwrap();
    client.activate(&uid).unwrap();
    client.get_key(&uid).unwrap();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(5) {
        client.get_key(&uid).unwrap();
        n += 1;
    }
    let ours = n as f64 / start.elapsed().as_secs_f64();
    let anchor = python(
        py,
        PY_GETS,
        &[
            vars["KMIP_HOST"].clone(),
            vars["KMIP_PORT"].clone(),
            vars["KMIP_CLIENT_CERT"].clone(),
            vars["KMIP_CLIENT_KEY"].clone(),
            vars["KMIP_CA"].clone(),
            uid.clone(),
            vars["KMIP_USERNAME"].clone(),
            vars["KMIP_PASSWORD"].clone(),
        ],
    );
    println!("atrest client Get vs PyKMIP server: {ours:10.1} round trips/s");
    if let Some(a) = anchor {
        println!(
            "PyKMIP client Get (anchor):         {a:10.1} round trips/s   ratio {:.2}x",
            ours / a
        );
    }
    client
        .revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    client.destroy(&uid).unwrap();
}
