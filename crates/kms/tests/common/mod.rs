//! Shared test helpers: an in-process key server on an ephemeral loopback port, its client
//! settings, and the peers' Python.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use atrest_kms::datadir::{DataDir, parse_env};
use atrest_kms::server::{Server, ServerConfig};
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::X509;

/// A key server running in this process until dropped.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data: DataDir,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The first client's settings (DIR/client.env).
    pub env: HashMap<String, String>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(ServerConfig::default())
    }

    pub fn start_with(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("kms"));
        data.open_or_init(&[]).unwrap();
        Self::start_in(dir, data, config)
    }

    /// Starts a server on an existing (set-up) data directory.
    pub fn start_in(dir: tempfile::TempDir, data: DataDir, config: ServerConfig) -> TestServer {
        data.open_or_init(&[]).unwrap();
        let engine = atrest_kms::open_engine(&data).unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".into(),
            ..config
        };
        let server = Server::bind(&data, Arc::new(engine), config).unwrap();
        let addr = server.local_addr().unwrap();
        let env_path = data.write_client_env("127.0.0.1", addr.port()).unwrap();
        let env = parse_env(&std::fs::read_to_string(env_path).unwrap())
            .into_iter()
            .collect();
        let stop = server.stop_flag();
        let thread = std::thread::spawn(move || server.run().unwrap());
        TestServer {
            dir,
            data,
            addr,
            stop,
            thread: Some(thread),
            env,
        }
    }

    /// Stops the server and waits for it; returns the directory for a restart.
    pub fn stop(mut self) -> (tempfile::TempDir, DataDir) {
        self.halt();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.data.clone())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Issues another client; returns its settings (KMIP_* names, without host and port).
    pub fn add_client(&self, name: &str) -> HashMap<String, String> {
        let c = self.data.add_client(name).unwrap();
        parse_env(&std::fs::read_to_string(&c.env).unwrap())
            .into_iter()
            .collect()
    }

    pub fn var(&self, k: &str) -> &str {
        &self.env[k]
    }

    /// A TLS connection with the given client identity (the first client's by default).
    pub fn tls(&self, cert: Option<&str>, key: Option<&str>) -> SslStream<TcpStream> {
        self.try_tls(cert, key).expect("TLS handshake")
    }

    /// Like [`TestServer::tls`], `None` if the handshake fails.
    pub fn try_tls(&self, cert: Option<&str>, key: Option<&str>) -> Option<SslStream<TcpStream>> {
        let cert = cert.unwrap_or(&self.env["KMIP_CLIENT_CERT"]);
        let key = key.unwrap_or(&self.env["KMIP_CLIENT_KEY"]);
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(&self.env["KMIP_CA"]).unwrap();
        let c = X509::from_pem(&std::fs::read(cert).unwrap()).unwrap();
        let k = PKey::private_key_from_pem(&std::fs::read(key).unwrap()).unwrap();
        b.set_certificate(&c).unwrap();
        b.set_private_key(&k).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        b.build().connect("localhost", tcp).ok()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sends one message and reads one response (whole TTLV message).
pub fn exchange(s: &mut SslStream<TcpStream>, request: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(request)?;
    read_response(s)
}

pub fn read_response(s: &mut SslStream<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let mut out = h.to_vec();
    out.resize(8 + len, 0);
    s.read_exact(&mut out[8..])?;
    Ok(out)
}

/// The Python with PyKMIP, from ATREST_PYTHON. `None` (with a note) when it is not set and
/// ATREST_REQUIRE_PEERS is not 1; a panic when it is required.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("ATREST_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if std::env::var("ATREST_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "ATREST_PYTHON is not set but ATREST_REQUIRE_PEERS=1: point it at a Python \
                     with PyKMIP (the peer kit's venv; scripts/test sets it)"
                );
            }
            eprintln!("note: ATREST_PYTHON is not set; skipping this PyKMIP test");
            None
        }
    }
}
