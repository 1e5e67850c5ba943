//! `atrest`: data-at-rest encryption for appliances, keyed by the customer's KMIP server.

mod kmip_cmd;
mod kmip_settings;
mod kms_cmd;
mod serve_cmd;
mod volume_cmd;
mod volume_kmip;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "atrest",
    version,
    about = "Data-at-rest encryption keyed by a KMIP server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// The appliance: web admin, REST API and content stores.
    Serve(serve_cmd::ServeArgs),
    /// A KMIP client for administrators and scripts.
    Kmip(kmip_cmd::KmipArgs),
    /// The bundled KMIP server.
    Kms(kms_cmd::KmsArgs),
    /// The encrypted volume, offline.
    Volume(volume_cmd::VolumeArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_cmd::run(args),
        Command::Kmip(args) => kmip_cmd::run(args),
        Command::Kms(args) => kms_cmd::run(args),
        Command::Volume(args) => volume_cmd::run(args),
    };
    if let Err(err) = result {
        // One line on stderr: the whole chain of causes, joined.
        eprintln!("atrest: {err:#}");
        std::process::exit(1);
    }
}
