//! `atrest kms …`: the bundled KMIP server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use atrest_kms::datadir::DataDir;
use atrest_kms::server::{self, Server, ServerConfig};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct KmsArgs {
    #[command(subcommand)]
    command: KmsCommand,
}

impl KmsArgs {
    /// Whether the command holds key material (the server: master key and every key).
    pub fn holds_keys(&self) -> bool {
        matches!(self.command, KmsCommand::Serve(_))
    }

    /// The settings file `kms serve --config` gives.
    pub fn config_file(&self) -> Option<PathBuf> {
        match &self.command {
            KmsCommand::Serve(a) => a.config.clone(),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum KmsCommand {
    /// Runs the KMIP server (TTLV over mutual TLS). The first start in an empty data directory
    /// creates a CA, the server's certificates, a master key and a first client identity, and
    /// writes DIR/client.env for clients and scripts.
    Serve(ServeArgs),
    /// Issues another client identity (certificate, key, PKCS#12) and user; its settings and
    /// secrets go to DIR/clients/NAME.env. A running server accepts it at once.
    AddClient(AddClientArgs),
    /// Removes and revokes a client: its certificate and credential are refused from then on,
    /// by a running server too (an open connection of the client is refused from its next
    /// request); its key, PKCS#12 and env file are deleted. Its objects stay, and its name is
    /// never issued again.
    RemoveClient(AddClientArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file with any of these options, named with underscores (`data_dir = "…"`); paths in
    /// it are relative to it; flags override it.
    #[arg(long, value_name = "FILE", env = "ATREST_KMS_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory (created if missing).
    #[arg(long, value_name = "DIR", env = "ATREST_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (written to DIR/client.env).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5696")]
    listen: String,
    /// Another name for the server certificate (first start only); repeatable.
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// Most authenticated client connections served at once (connections still in the TLS
    /// handshake do not count).
    #[arg(long, default_value_t = server::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most connections in the TLS handshake at once, all sources together; past it a stale
    /// handshake gives way to the new connection.
    #[arg(long, value_name = "N", default_value_t = server::MAX_PENDING)]
    max_handshakes: usize,
    /// Most connections in the TLS handshake at once from one source address.
    #[arg(long, value_name = "N", default_value_t = server::MAX_PENDING_PER_SOURCE)]
    max_handshakes_per_source: usize,
    /// Seconds a whole TLS handshake may take.
    #[arg(long, value_name = "SECONDS", default_value_t = server::HANDSHAKE_TIMEOUT.as_secs())]
    handshake_timeout: u64,
    /// Seconds a whole request may take to arrive once it started (and a response to leave).
    #[arg(long, value_name = "SECONDS", default_value_t = server::MESSAGE_TIMEOUT.as_secs())]
    message_timeout: u64,
    /// Seconds an idle connection is kept open.
    #[arg(long, value_name = "SECONDS", default_value_t = server::IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,
    /// Most objects one client may hold, destroyed ones included; past it Create and Register
    /// fail (Server Limit Exceeded in KMIP 2.x, Permission Denied in 1.x).
    #[arg(long, value_name = "N", default_value_t = atrest_kms::engine::MAX_OBJECTS_PER_CLIENT)]
    max_objects_per_client: usize,
    /// Serve GET /metrics (Prometheus: operations by type and result, connections, objects),
    /// /healthz and /readyz over plain HTTP on this address (unauthenticated: keep it on
    /// loopback or a monitoring network); port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Format of the process log on stderr: text, or json (one object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Debug, Args)]
struct AddClientArgs {
    /// The server's data directory.
    #[arg(long, value_name = "DIR", env = "ATREST_KMS_DATA_DIR")]
    data_dir: PathBuf,
    /// The client's name: its certificate's common name and its KMIP username.
    name: String,
}

pub fn run(args: KmsArgs) -> anyhow::Result<()> {
    let format = match &args.command {
        KmsCommand::Serve(a) => a.log_format.as_str(),
        _ => "text",
    };
    crate::init_log(format);
    match args.command {
        KmsCommand::Serve(a) => serve(a),
        KmsCommand::AddClient(a) => add_client(a),
        KmsCommand::RemoveClient(a) => remove_client(a),
    }
}

fn host_of(listen: &str) -> &str {
    let host = match listen.rsplit_once(':') {
        Some((h, _)) => h,
        None => listen,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let Some(data_dir) = a.data_dir.clone() else {
        anyhow::bail!(
            "no data directory given; use --data-dir DIR or `data_dir` in the --config file"
        );
    };
    let dir = DataDir::new(&data_dir);
    // Before anything is read or created: one server per data directory.
    let _lock = dir.lock()?;
    let mut names = vec![host_of(&a.listen).to_owned()];
    names.extend(a.server_names.iter().cloned());
    let opened = dir
        .open_or_init(&names)
        .with_context(|| format!("preparing the data directory {}", data_dir.display()))?;
    let engine = atrest_kms::open_engine(&dir)
        .context("opening the key store")?
        .with_max_objects_per_client(a.max_objects_per_client.max(1));
    let config = ServerConfig {
        listen: a.listen.clone(),
        max_connections: a.max_connections.max(1),
        max_pending: a.max_handshakes.max(1),
        max_pending_per_source: a.max_handshakes_per_source.max(1),
        handshake_timeout: Duration::from_secs(a.handshake_timeout.max(1)),
        message_timeout: Duration::from_secs(a.message_timeout.max(1)),
        idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
    };
    let engine = Arc::new(engine);
    let server = Server::bind(&dir, engine.clone(), config)?;
    // Before anything announces the server: a signal from then on stops it cleanly.
    let stop = server.stop_flag();
    atrest_kms::server::stop_on_signals(&stop).context("installing the signal handlers")?;
    let metrics = match a.metrics_listen {
        Some(addr) => Some(crate::kms_metrics::start(addr, engine, stop.clone())?),
        None => None,
    };
    let addr = server.local_addr()?;
    let host = match host_of(&a.listen) {
        "0.0.0.0" | "" => "127.0.0.1".to_owned(),
        "::" => "::1".to_owned(),
        h => h.to_owned(),
    };
    let env = if dir.has_first_client() {
        Some(
            dir.write_client_env(&host, addr.port())
                .context("writing client.env")?,
        )
    } else {
        None
    };
    if opened.created {
        println!("Created a new key server in {}:", data_dir.display());
    } else {
        println!("Using the key server in {}:", data_dir.display());
    }
    for (what, path) in &opened.files {
        println!("  {what:<28} {}", path.display());
    }
    match env {
        Some(env) => println!(
            "Clients: source {} for KMIP_HOST, KMIP_PORT, the CA, the client identity and its \
             username and password (secrets: keep that file private).",
            env.display()
        ),
        None => println!(
            "The first client ({}) was removed: no client.env; each client's settings are in \
             {} (set KMIP_HOST and KMIP_PORT).",
            atrest_kms::datadir::FIRST_CLIENT,
            dir.client_dir().join("NAME.env").display()
        ),
    }
    if let Some((m, _)) = &metrics {
        println!("metrics on http://{m}/metrics (and /healthz, /readyz)");
    }
    println!("listening on {addr}");
    let r = server.run();
    stop.store(true, Ordering::SeqCst);
    if let Some((_, h)) = metrics {
        let _ = h.join();
    }
    r?;
    if stop.load(Ordering::SeqCst) {
        println!("stopped");
    }
    Ok(())
}

fn add_client(a: AddClientArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&a.data_dir);
    let c = dir
        .add_client(&a.name)
        .with_context(|| format!("adding the client {:?}", a.name))?;
    println!("Issued client {:?}:", c.name);
    println!("  {:<28} {}", "certificate", c.cert.display());
    println!("  {:<28} {}", "key", c.key.display());
    println!("  {:<28} {}", "PKCS#12", c.p12.display());
    println!(
        "  {:<28} {} (passphrase, username and password; set KMIP_HOST and KMIP_PORT)",
        "settings and secrets",
        c.env.display()
    );
    Ok(())
}

fn remove_client(a: AddClientArgs) -> anyhow::Result<()> {
    let dir = DataDir::new(&a.data_dir);
    let deleted = dir
        .remove_client(&a.name)
        .with_context(|| format!("removing the client {:?}", a.name))?;
    println!(
        "Removed client {:?}: its certificate and credential are refused from now on, by a \
         running server too. Its objects are kept; the name is not issued again.",
        a.name
    );
    for f in deleted {
        println!("  deleted {}", f.display());
    }
    Ok(())
}
