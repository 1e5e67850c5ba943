//! Running the appliance over HTTPS.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use axum_server::tls_openssl::{OpenSSLAcceptor, OpenSSLConfig};

use crate::https;
use crate::state::AppState;

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The address and port of the HTTPS listener.
    pub addr: SocketAddr,
    /// A certificate and key to use instead of the self-signed one.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// A bound HTTPS listener, ready to serve.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    tls: OpenSSLConfig,
    /// The address bound (with the port the system picked when asked for port 0).
    pub local_addr: SocketAddr,
    /// The certificate served: the one given, or DIR/tls/cert.pem.
    pub cert_path: PathBuf,
    /// This start made a self-signed certificate.
    pub cert_created: bool,
}

/// Binds the listener and loads (or makes) the certificate.
pub fn bind(state: &AppState, listen: &Listen) -> Result<Bound, String> {
    let (cert, key, created) = match &listen.cert {
        Some((c, k)) => (c.clone(), k.clone(), false),
        None => {
            let p = https::ensure_self_signed(state.data_dir(), &[listen.addr.ip().to_string()])?;
            (p.cert, p.key, p.created)
        }
    };
    // The whole chain: the server certificate first, then the intermediates clients need.
    let tls = OpenSSLConfig::from_pem_chain_file(&cert, &key).map_err(|e| {
        format!(
            "cannot use the HTTPS certificate {} with key {} ({e}); give a PEM certificate and \
             its PEM private key",
            cert.display(),
            key.display()
        )
    })?;
    let listener = listen_socket(listen.addr).map_err(|e| {
        format!(
            "cannot listen on {} ({e}); choose another address with --listen",
            listen.addr
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set up the listener: {e}"))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    Ok(Bound {
        listener,
        tls,
        local_addr,
        cert_path: cert,
        cert_created: created,
    })
}

/// Connections the kernel queues before they are accepted. Larger than the usual 128 so that a
/// burst of connections (a login flood, say) is queued, not dropped into SYN retransmissions
/// that would delay everyone else's connection by seconds.
pub const LISTEN_BACKLOG: i32 = 1024;

fn listen_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Serves until `shutdown` completes, then lets requests in progress finish (for at most the
/// shutdown grace; what is still under way then is cut off, and its uploads are not published).
pub async fn serve(
    state: AppState,
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let limits = state.config().limits.clone();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    let grace = limits.shutdown_grace;
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(grace));
    });
    let app = crate::app(state.clone());
    let acceptor =
        OpenSSLAcceptor::new(bound.tls).acceptor(crate::limits::ConnectionLimits::new(&limits));
    let mut server = axum_server::from_tcp(bound.listener)
        .acceptor(acceptor)
        .handle(handle);
    crate::limits::configure_http(server.http_builder(), &limits);
    let result = server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|e| format!("the HTTPS server stopped: {e}"));
    // Uploads cut off are cancelled on blocking threads: let them finish before the store
    // closes.
    let left = state.uploads().wait_idle(grace).await;
    if left > 0 {
        tracing::warn!("{left} upload(s) still being cancelled at shutdown");
    }
    result
}

/// Everything `atrest serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The appliance's settings (data directory, limits, timeouts, syslog).
    pub config: crate::state::AppConfig,
    /// Where and how the HTTPS admin and API listen.
    pub listen: Listen,
    /// Run the bundled KMIP server beside the appliance (`--embedded-kms`) and fill in the
    /// KMIP settings from it.
    pub embedded_kms: bool,
    /// The content volume; `None` serves without one (Encrypt and the content API answer 503).
    pub volume: Option<crate::content::VolumeOptions>,
    /// Where to serve /metrics, /healthz and /readyz over plain HTTP (none: not served).
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs the appliance until SIGINT or SIGTERM: opens the data directory (printing a generated
/// admin password on the first start), starts the bundled KMIP server if asked, serves HTTPS.
pub fn run(opts: ServeOptions) -> Result<(), String> {
    // Core dumps off and memory locked before any key is read (once per process: `atrest
    // serve` did it at start and reported it; another caller gets the report here).
    for w in atrest_volume::harden_process().take_report() {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        let dir = opts.config.data_dir.clone();
        let opened = AppState::open(opts.config)?;
        let state = opened.state;
        if let Some(pw) = &opened.generated_password {
            use std::io::IsTerminal as _;
            let file = dir.join("initial-admin-password");
            if std::io::stdout().is_terminal() {
                println!(
                    "Admin account created: user `admin`, password {} (also in {} until you \
                     change it)",
                    pw.as_str(),
                    file.display()
                );
            } else {
                // A service manager keeps stdout in its journal: the password stays in the file.
                println!(
                    "Admin account created: user `admin`; the password is in {} (readable by \
                     this user only) until you change it",
                    file.display()
                );
            }
        }
        let kms = if opts.embedded_kms {
            let k = crate::embedded::start(&dir)?;
            match crate::embedded::prefill(&state, &k.env_file) {
                Ok(true) => println!(
                    "Bundled KMIP server on {}; Storage > Encryption is filled in with its settings",
                    k.addr
                ),
                Ok(false) => println!("Bundled KMIP server on {}", k.addr),
                Err(e) => eprintln!("atrest: {e}"),
            }
            println!("Warning: {}", crate::status::EMBEDDED_KMS_WARNING);
            Some(k)
        } else {
            None
        };
        raise_open_files(state.config().limits.max_connections);
        let volume = match opts.volume {
            Some(v) => {
                let s = state.clone();
                let dv = tokio::task::spawn_blocking(move || {
                    crate::content::DataVolume::attach(&s, v)
                })
                .await
                .map_err(|e| format!("cannot open the content volume: {e}"))??;
                let st = state.workflow().state;
                println!("Content volume {}: {}", dv.path().display(), st.as_str());
                Some(dv)
            }
            None => None,
        };
        let bound = bind(&state, &opts.listen)?;
        if bound.cert_created {
            println!(
                "Made a self-signed HTTPS certificate: {}",
                bound.cert_path.display()
            );
        }
        let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
        let metrics = match opts.metrics_listen {
            Some(addr) => {
                crate::metrics::observe_kmip();
                let l = crate::metrics::bind(addr)?;
                let local = l
                    .local_addr()
                    .map_err(|e| format!("cannot read the metrics address: {e}"))?;
                println!("metrics on http://{local}/metrics (and /healthz, /readyz)");
                let mut stopped = metrics_stopped.clone();
                let s = state.clone();
                Some(tokio::spawn(crate::metrics::serve(s, l, async move {
                    let _ = stopped.wait_for(|v| *v).await;
                })))
            }
            None => None,
        };
        println!("atrest appliance listening on https://{}/", bound.local_addr);
        tracing::info!(addr = %bound.local_addr, "listening");
        let result = serve(state, bound, shutdown_signal()).await;
        let _ = stop_metrics.send(true);
        if let Some(m) = metrics
            && let Ok(Err(e)) = m.await
        {
            tracing::warn!("{e}");
        }
        if let Some(v) = volume {
            use crate::state::VolumeBackend as _;
            tokio::task::spawn_blocking(move || v.shutdown()).await.ok();
        }
        if let Some(k) = kms {
            tokio::task::spawn_blocking(move || k.stop()).await.ok();
        }
        result
    })
}

/// Raises the open-files limit for many connections, and says when it stays low.
fn raise_open_files(max_connections: usize) {
    let n = crate::limits::raise_open_files();
    let want = max_connections as u64 + 256;
    if n < want {
        tracing::warn!(
            "the open-files limit is {n}, lower than the connections allowed need ({want}); \
             raise RLIMIT_NOFILE (LimitNOFILE= in the service) or lower --max-connections"
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
