//! `--embedded-kms`: the bundled KMIP server beside the appliance, on 127.0.0.1, with its data
//! in DIR/kms/. The KMIP settings are filled in from its DIR/kms/client.env, so a first run
//! needs nothing else; settings the administrator entered by hand are left alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use atrest_kms::datadir::DataDir;
use atrest_kms::server::{Server, ServerConfig};

use crate::kmip_config::{self, KmipSettings, Source};
use crate::state::AppState;

/// The running bundled KMIP server.
#[derive(Debug)]
pub struct EmbeddedKms {
    /// Where it listens: 127.0.0.1, on its last run's port when that is free, else on one the
    /// system picked.
    pub addr: SocketAddr,
    /// Its client env file (DIR/kms/client.env): the settings a KMIP client needs to reach it.
    pub env_file: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// DIR/kms/lock, held while the server runs: an `atrest kms serve` started on the same
    /// directory is refused instead of serving from a copy of its objects.
    _lock: atrest_kms::datadir::DirLock,
}

impl EmbeddedKms {
    /// Stops the server and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EmbeddedKms {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn previous_port(env: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(env).ok()?;
    atrest_kms::datadir::parse_env(&text)
        .into_iter()
        .find(|(k, _)| k == "KMIP_PORT")
        .and_then(|(_, v)| v.parse().ok())
}

/// Whether the env file already names `host:port`.
fn env_names(env: &Path, host: &str, port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string(env) else {
        return false;
    };
    let vars = atrest_kms::datadir::parse_env(&text);
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    get("KMIP_HOST") == Some(host) && get("KMIP_PORT") == Some(port.to_string().as_str())
}

/// Starts the bundled server in DIR/kms (created on the first start), on the port it had
/// last time when that port is free.
pub fn start(data_dir: &Path) -> Result<EmbeddedKms, String> {
    let root = data_dir.join("kms");
    let dir = DataDir::new(&root);
    // Before anything is read or created: one server per data directory.
    let lock = dir.lock().map_err(|e| {
        format!(
            "cannot start the bundled KMIP server in {}: {e}",
            root.display()
        )
    })?;
    dir.open_or_init(&["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| {
            format!(
                "cannot prepare the bundled KMIP server in {}: {e}",
                root.display()
            )
        })?;
    let engine = atrest_kms::open_engine(&dir)
        .map_err(|e| format!("cannot open the bundled KMIP server's key store: {e}"))?;
    let engine = Arc::new(engine);
    let bind = |port: u16| {
        Server::bind(
            &dir,
            engine.clone(),
            ServerConfig {
                listen: format!("127.0.0.1:{port}"),
                ..ServerConfig::default()
            },
        )
    };
    let server = match previous_port(&dir.client_env()).map(bind) {
        Some(Ok(s)) => s,
        _ => bind(0).map_err(|e| format!("cannot start the bundled KMIP server: {e}"))?,
    };
    let addr = server
        .local_addr()
        .map_err(|e| format!("cannot read the bundled KMIP server's address: {e}"))?;
    let env_file = if env_names(&dir.client_env(), "127.0.0.1", addr.port()) {
        // Nothing changed: write nothing (the file system may be full).
        dir.client_env()
    } else {
        dir.write_client_env("127.0.0.1", addr.port())
            .map_err(|e| {
                format!(
                    "cannot write the bundled KMIP server's client.env ({e}); if the file \
                     system of the data directory is full, free space there and start again"
                )
            })?
    };
    let stop = server.stop_flag();
    let thread = std::thread::Builder::new()
        .name("embedded-kms".into())
        .spawn(move || {
            if let Err(e) = server.run() {
                tracing::error!("the bundled KMIP server stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the bundled KMIP server's thread: {e}"))?;
    Ok(EmbeddedKms {
        addr,
        env_file,
        stop,
        thread: Some(thread),
        _lock: lock,
    })
}

/// Fills in the KMIP settings from the bundled server's env file, unless the administrator
/// entered settings of their own. Returns whether the settings changed.
pub fn prefill(state: &AppState, env_file: &Path) -> Result<bool, String> {
    let old = state.kmip();
    if old.as_ref().is_some_and(|o| o.source() == Source::Manual) {
        return Ok(false);
    }
    let mut u = kmip_config::update_from_env_file(env_file)?;
    u.source = Some(Source::Embedded);
    let new = KmipSettings::apply(old.as_ref(), u)
        .map_err(|e| format!("the bundled KMIP server's settings are unusable: {e}"))?;
    if old.as_ref().map(|o| o.fingerprint()) == Some(new.fingerprint()) {
        return Ok(false);
    }
    state
        .set_kmip(new)
        .map_err(|e| format!("cannot save the KMIP settings: {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_server_on_the_bundled_servers_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kms = start(dir.path()).unwrap();
        // `atrest kms serve --data-dir DIR/kms` takes the same lock first.
        let err = DataDir::new(dir.path().join("kms")).lock().unwrap_err();
        assert!(
            err.to_string().contains("another key server is running"),
            "{err}"
        );
        let err = start(dir.path()).unwrap_err();
        assert!(err.contains("another key server is running"), "{err}");
        kms.stop();
        // Stopped, the directory is free again.
        start(dir.path()).unwrap().stop();
    }
}
