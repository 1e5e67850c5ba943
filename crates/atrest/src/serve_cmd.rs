//! `atrest serve`: the appliance (web admin and REST API over HTTPS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use atrest_appliance::AppConfig;
use atrest_appliance::server::{Listen, ServeOptions};
use atrest_kmip::client::Timeouts;
use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The appliance's data directory: admin account, HTTPS certificate, KMIP settings
    /// (created if missing).
    #[arg(long, value_name = "DIR", env = "ATREST_DATA_DIR")]
    data_dir: PathBuf,
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
    /// Seconds to wait for a KMIP server to connect or answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    kmip_timeout: f64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    if !(args.kmip_timeout.is_finite() && args.kmip_timeout > 0.0 && args.kmip_timeout <= 600.0) {
        anyhow::bail!(
            "--kmip-timeout {} is out of range; give seconds between 0 and 600",
            args.kmip_timeout
        );
    }
    let mut config = AppConfig::new(args.data_dir);
    config.kmip_timeouts = Timeouts::uniform(Duration::from_secs_f64(args.kmip_timeout));
    let opts = ServeOptions {
        config,
        listen: Listen {
            addr: args.listen,
            cert: args.tls_cert.zip(args.tls_key),
        },
        embedded_kms: args.embedded_kms,
    };
    atrest_appliance::server::run(opts).map_err(anyhow::Error::msg)
}
