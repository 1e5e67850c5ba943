//! `atrest serve`: the appliance (web admin and REST API over HTTPS).

use crate::size::parse_size;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use atrest_appliance::AppConfig;
use atrest_appliance::content::{KeyPolicy, VolumeOptions};
use atrest_appliance::server::{Listen, ServeOptions};
use atrest_appliance::workflow::Backoff;
use atrest_kmip::client::Timeouts;
use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of these options, named with underscores (`data_dir = "…"`); paths in
    /// it are relative to it; flags override it.
    #[arg(long, value_name = "FILE", env = "ATREST_CONFIG")]
    config: Option<PathBuf>,
    /// The appliance's data directory: admin account, HTTPS certificate, KMIP settings, the
    /// content volume (created if missing).
    #[arg(long, value_name = "DIR", env = "ATREST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve HTTPS on; port 0 picks a free port (printed).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// HTTPS certificate (PEM) to use instead of the self-signed one made on the first start.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also run the bundled KMIP server (data in DIR/kms) and fill in its settings.
    #[arg(long)]
    embedded_kms: bool,
    /// The content volume: an image file (made on the first start when missing) or a block
    /// device (formatted beforehand with `atrest volume format DEVICE`; never formatted by the
    /// appliance). Default: DIR/volume.img.
    #[arg(long, value_name = "PATH", conflicts_with = "no_volume")]
    volume: Option<PathBuf>,
    /// Size of the content volume image made on the first start (bytes, or with K, M, G or
    /// T: powers of 1024). Default: the free space of the file system that will hold it, less
    /// a margin (1/20, 64 MiB to 8 GiB); the image is sparse.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    volume_size: Option<u64>,
    /// Serve without the content volume (Encrypt and the content API answer 503).
    #[arg(long)]
    no_volume: bool,
    /// Length of the volume keys Encrypt and Rekey create: 256 (XTS-AES-128) or 512
    /// (XTS-AES-256; not every KMIP server makes 512-bit AES keys).
    #[arg(long, value_name = "BITS", default_value_t = 256, value_parser = clap::builder::ValueParser::new(parse_bits))]
    key_bits: u32,
    /// Most bytes per second Encrypt, Rekey and Decrypt convert (SIZE: bytes, or with K, M, G
    /// or T), to leave disk bandwidth to the appliance; 0 for no limit.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    convert_rate: u64,
    /// Bytes converted (and committed in the volume header) per step (SIZE: bytes, or with
    /// K, M, G or T).
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = parse_size)]
    convert_chunk: u64,
    /// Seconds between checks that the volume key is still Active on the KMIP server.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    key_check_interval: u64,
    /// What a key found no longer Active does: `alert` (page, API, log, audit) or `lock` (also
    /// locks the content until the key is usable). A Deactivated key makes the content
    /// read-only under both; a Compromised one is read-only under `alert`, locked until the
    /// administrator confirms under `lock`.
    #[arg(long, value_name = "POLICY", default_value = "alert", value_parser = ["alert", "lock"])]
    key_check_policy: String,
    /// Longest wait, in seconds, between attempts to fetch the key while locked (the wait
    /// starts at 2 s and doubles).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    unlock_retry_max: u64,
    /// Seconds to wait for a KMIP server to connect or answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    kmip_timeout: f64,
    /// Wrong admin passwords in a row from one address before that address is locked out
    /// (the lock-out starts at 1 s and doubles with each further wrong password).
    #[arg(long, value_name = "N", default_value_t = 5)]
    login_free_failures: u32,
    /// The longest lock-out of an address after wrong admin passwords, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    login_max_delay: u64,
    /// Open HTTPS connections at most; more are closed as soon as they are accepted.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers (HTTP/1.1; also the longest wait for
    /// the next request on a kept-alive connection).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    header_read_timeout: u64,
    /// Seconds after which a connection with no request under way is closed (HTTP/1.1 and
    /// HTTP/2).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    idle_timeout: u64,
    /// HTTP/2: seconds of silence during a request before a ping; no answer within as long
    /// closes the connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    keepalive_interval: u64,
    /// Recording uploads under way at once; more are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_uploads: usize,
    /// Seconds an upload's body may stop arriving before the upload is dropped (408), unpublished.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    body_timeout: u64,
    /// Serve GET /metrics (Prometheus), /healthz and /readyz over plain HTTP on this address,
    /// without login (off unless given; keep it on loopback or a monitoring network).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// Send key and admin events (key operations, Save and Test, conversions, alerts, admin
    /// logins) to this syslog receiver as RFC 5424 over TCP, or over TLS (RFC 5425) with
    /// tls://HOST:PORT; repeatable. Events wait in DIR/syslog/ while a receiver is away.
    #[arg(long = "syslog", value_name = "tcp://HOST:PORT", value_parser = clap::builder::ValueParser::new(parse_syslog))]
    syslog: Vec<atrest_appliance::syslog::Target>,
    /// The CA certificate(s) (PEM) that issued the tls:// syslog receivers' certificates (the
    /// system's trusted CAs when not given).
    #[arg(long, value_name = "FILE")]
    syslog_ca: Option<PathBuf>,
    /// Format of the process log on stderr: text, or json (one object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Seconds SIGTERM waits for requests under way before cutting them off (uploads cut off are
    /// not published).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    shutdown_grace: u64,
    /// The appliance's name in the Names of the keys it creates
    /// (`atrest/<appliance name>/<volume uuid>/<generation>`) and their Object Group
    /// (`atrest/<appliance name>`); the host name by default.
    #[arg(long, value_name = "NAME")]
    appliance_name: Option<String>,
}

impl ServeArgs {
    /// The settings file given with `--config`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone()
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let appliance_name = args
        .appliance_name
        .clone()
        .unwrap_or_else(atrest_keys::host_name);
    atrest_keys::check_appliance_name(&appliance_name).map_err(anyhow::Error::msg)?;
    let Some(data_dir) = args.data_dir.clone() else {
        anyhow::bail!(
            "no data directory given; use --data-dir DIR or `data_dir` in the --config file"
        );
    };
    crate::init_log(&args.log_format);
    if !(args.kmip_timeout.is_finite() && args.kmip_timeout > 0.0 && args.kmip_timeout <= 600.0) {
        anyhow::bail!(
            "--kmip-timeout {} is out of range; give seconds between 0 and 600",
            args.kmip_timeout
        );
    }
    if args.key_check_interval == 0 || args.unlock_retry_max == 0 {
        anyhow::bail!(
            "--key-check-interval and --unlock-retry-max must be at least 1 second; give a \
             number of seconds"
        );
    }
    if !(64 << 10..=1 << 30).contains(&args.convert_chunk) {
        anyhow::bail!(
            "--convert-chunk {} is out of range; give a size between 64K and 1G",
            args.convert_chunk
        );
    }
    for (name, v) in [
        ("--max-connections", args.max_connections as u64),
        ("--header-read-timeout", args.header_read_timeout),
        ("--idle-timeout", args.idle_timeout),
        ("--keepalive-interval", args.keepalive_interval),
        ("--max-uploads", args.max_uploads as u64),
        ("--body-timeout", args.body_timeout),
    ] {
        if v == 0 {
            anyhow::bail!("{name} must be at least 1; give a positive number");
        }
    }
    let limits = atrest_appliance::limits::Limits {
        max_connections: args.max_connections,
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        keepalive_interval: Duration::from_secs(args.keepalive_interval),
        max_uploads: args.max_uploads,
        body_timeout: Duration::from_secs(args.body_timeout),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let timeouts = Timeouts::uniform(Duration::from_secs_f64(args.kmip_timeout));
    let volume = (!args.no_volume).then(|| {
        let mut v = VolumeOptions::new(&data_dir);
        if let Some(p) = &args.volume {
            v.path = p.clone();
        }
        v.size = match args.volume_size {
            Some(n) => n,
            None => atrest_appliance::hostspace::default_volume_size(
                v.path.parent().unwrap_or(&data_dir),
            ),
        };
        v.key_bits = args.key_bits;
        v.max_rate = (args.convert_rate > 0).then_some(args.convert_rate);
        v.chunk_size = args.convert_chunk;
        v.timeouts = timeouts;
        v.appliance_name = appliance_name;
        v.key_check_interval = Duration::from_secs(args.key_check_interval);
        v.key_policy = if args.key_check_policy == "lock" {
            KeyPolicy::Lock
        } else {
            KeyPolicy::Alert
        };
        v.backoff = Backoff {
            initial: Duration::from_secs(2).min(Duration::from_secs(args.unlock_retry_max)),
            max: Duration::from_secs(args.unlock_retry_max),
        };
        v
    });
    if args.login_free_failures == 0 || args.login_max_delay == 0 {
        anyhow::bail!(
            "--login-free-failures and --login-max-delay must be at least 1; give a count and a \
             number of seconds"
        );
    }
    let mut config = AppConfig::new(data_dir);
    config.kmip_timeouts = timeouts;
    config.login.free_failures = args.login_free_failures;
    config.login.max_delay = Duration::from_secs(args.login_max_delay);
    config.limits = limits;
    if args.syslog_ca.is_some() && !args.syslog.iter().any(|t| t.tls) {
        anyhow::bail!(
            "--syslog-ca is for tls:// syslog receivers; give one with --syslog tls://HOST:PORT"
        );
    }
    config.syslog = args
        .syslog
        .into_iter()
        .map(|mut t| {
            if t.tls {
                t.ca = args.syslog_ca.clone();
            }
            t
        })
        .collect();
    let opts = ServeOptions {
        config,
        listen: Listen {
            addr: args.listen,
            cert: args.tls_cert.zip(args.tls_key),
        },
        embedded_kms: args.embedded_kms,
        volume,
        metrics_listen: args.metrics_listen,
    };
    atrest_appliance::server::run(opts).map_err(anyhow::Error::msg)
}

fn parse_syslog(s: &str) -> Result<atrest_appliance::syslog::Target, String> {
    s.parse()
}

fn parse_bits(s: &str) -> Result<u32, String> {
    match s.trim() {
        "256" => Ok(256),
        "512" => Ok(512),
        _ => Err(format!("`{s}`: the key length is 256 or 512 bits")),
    }
}
