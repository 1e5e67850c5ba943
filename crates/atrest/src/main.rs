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

impl Command {
    /// Whether the command holds key material (volume keys, the bundled server's keys).
    fn holds_keys(&self) -> bool {
        match self {
            Command::Serve(_) => true,
            Command::Kmip(a) => a.holds_keys(),
            Command::Kms(a) => a.holds_keys(),
            Command::Volume(a) => a.holds_keys(),
        }
    }

    /// Whether the command runs as a service (its log is read, so it says what it could not
    /// lock even when that is only the expected limit of an unprivileged user).
    fn is_service(&self) -> bool {
        matches!(self, Command::Serve(_)) || matches!(self, Command::Kms(a) if a.holds_keys())
    }
}

/// Core dumps off and memory locked for every command that holds key material, before any
/// thread starts or any key is read; says once on stderr what could not be done.
fn harden(command: &Command) {
    if !command.holds_keys() {
        return;
    }
    let h = atrest_volume::harden_process();
    // A short command keeps its one-line output: it reports only real failures (none is
    // expected: neither measure against core dumps needs a privilege).
    let lines = if command.is_service() {
        h.take_report()
    } else {
        h.problems()
    };
    for l in lines {
        eprintln!("atrest: warning: {l}");
    }
}

fn main() {
    let cli = Cli::parse();
    harden(&cli.command);
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
