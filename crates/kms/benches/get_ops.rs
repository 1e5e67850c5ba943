//! Get operations per second with 1 and 16 concurrent clients: the same client (atrest's
//! KMIP client, KMIP 1.2, one TLS connection per client thread) against the bundled server
//! and against a PyKMIP server, in one run, and the ratio.
//!
//! `cargo bench -p atrest-kms --bench get_ops`
//!
//! The PyKMIP server: the one whose env file ATREST_PYKMIP_EC_ENV names (scripts/test starts
//! one), else one started for the run with the peer kit in ATREST_SHARED (default
//! ../shared beside the checkout) on a free port, stopped afterwards.
//! ATREST_BENCH_SECONDS sets the length of each measurement (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientConfig, Identity, ServerAddr, Timeouts};
use atrest_kmip::message::{Password, ProtocolVersion};
use atrest_kms::datadir::{DataDir, parse_env};
use atrest_kms::server::{Server, ServerConfig};
use zeroize::Zeroizing;

fn env_file(p: &Path) -> HashMap<String, String> {
    parse_env(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .into_iter()
        .collect()
}

fn client(env: &HashMap<String, String>) -> Client {
    let config = ClientConfig {
        servers: vec![ServerAddr {
            host: env["KMIP_HOST"].clone(),
            port: env["KMIP_PORT"].parse().unwrap(),
        }],
        server_name: Some("localhost".into()),
        ca_pem: std::fs::read(&env["KMIP_CA"]).unwrap(),
        identity: Identity::Pem {
            cert_chain: std::fs::read(&env["KMIP_CLIENT_CERT"]).unwrap(),
            key: Zeroizing::new(std::fs::read(&env["KMIP_CLIENT_KEY"]).unwrap()),
            passphrase: None,
        },
        username: Some(env["KMIP_USERNAME"].clone()),
        password: Some(Password::new(env["KMIP_PASSWORD"].clone())),
        version: Some(ProtocolVersion::V1_2),
        timeouts: Timeouts::uniform(Duration::from_secs(30)),
        max_response_len: 1 << 20,
    };
    Client::new(config).unwrap()
}

/// Gets per second with `clients` threads, each on its own connection, for `secs`.
fn measure(env: &HashMap<String, String>, uid: &str, clients: usize, secs: f64) -> f64 {
    let env = Arc::new(env.clone());
    let uid = Arc::new(uid.to_owned());
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (env, uid) = (env.clone(), uid.clone());
            std::thread::spawn(move || {
                let mut c = client(&env);
                c.get_key(&uid).expect("warm-up Get");
                while Instant::now() < start {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let mut n = 0u64;
                while Instant::now() < end {
                    c.get_key(&uid).expect("Get");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / secs
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let secs: f64 = std::env::var("ATREST_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);

    // The bundled server, in this process, in release mode.
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path().join("kms"));
    data.open_or_init(&[]).unwrap();
    let engine = atrest_kms::open_engine(&data).unwrap();
    let server = Server::bind(
        &data,
        Arc::new(engine),
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let port = server.local_addr().unwrap().port();
    let ours = env_file(&data.write_client_env("127.0.0.1", port).unwrap());
    let stop = server.stop_flag();
    let handle = std::thread::spawn(move || server.run().unwrap());

    // The PyKMIP server.
    let mut started: Option<PathBuf> = None;
    let theirs = match std::env::var_os("ATREST_PYKMIP_EC_ENV") {
        Some(p) if !p.is_empty() => env_file(Path::new(&p)),
        _ => {
            let state = tmp.path().join("pykmip");
            let kit = atrest_testkit::shared_kit().join("peers/pykmip");
            eprintln!(
                "starting a PyKMIP server with {} (may take a minute)",
                kit.display()
            );
            let out = Command::new(kit.join("start"))
                .arg(&state)
                .env("PYKMIP_PORT", free_port().to_string())
                .env("PYKMIP_LOG_LEVEL", "INFO")
                .output()
                .expect("running the PyKMIP peer kit");
            assert!(
                out.status.success(),
                "the PyKMIP peer did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            started = Some(state);
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            env_file(Path::new(&path))
        }
    };

    let mut rows = Vec::new();
    let mut results: HashMap<(&str, usize), f64> = HashMap::new();
    for (label, env) in [("atrest kms", &ours), ("PyKMIP", &theirs)] {
        let mut c = client(env);
        let uid = c.create_aes_key(256, Some("bench-get")).unwrap();
        c.activate(&uid).unwrap();
        for n in [1usize, 16] {
            let ops = measure(env, &uid, n, secs);
            eprintln!("{label:<10} {n:>2} clients: {ops:>9.0} Get/s");
            results.insert((label, n), ops);
        }
    }
    for n in [1usize, 16] {
        let a = results[&("atrest kms", n)];
        let p = results[&("PyKMIP", n)];
        rows.push(format!(
            "| {n:>2} | {a:>9.0} | {p:>7.0} | {:>6.1}x |",
            a / p
        ));
    }
    println!("| clients | atrest kms Get/s | PyKMIP Get/s | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    handle.join().unwrap();
    if let Some(state) = started {
        let _ = Command::new(atrest_testkit::shared_kit().join("peers/pykmip/stop"))
            .arg(&state)
            .status();
    }
}
