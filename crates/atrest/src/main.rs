//! `atrest`: data-at-rest encryption for appliances, keyed by the customer's KMIP server.

#![forbid(unsafe_code)]

mod config_file;
mod kmip_cmd;
mod kmip_flags;
mod kms_cmd;
mod kms_metrics;
mod serve_cmd;
mod size;
mod volume_cmd;
mod volume_kmip;
mod volume_recovery;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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

/// Parses the command line; for `serve` and `kms serve` with `--config FILE`, the options the
/// file gives and the command line does not are added as flags and the whole is parsed again.
fn parse() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (path, names): (_, &[&str]) = match &cli.command {
        Command::Serve(a) => (a.config_file(), &["serve"]),
        Command::Kms(a) => (a.config_file(), &["kms", "serve"]),
        _ => (None, &[]),
    };
    let Some(path) = path else {
        return cli;
    };
    let mut cmd = Cli::command();
    let mut sub_m = &matches;
    for name in names {
        // The names are those of the command just parsed: both lookups find them.
        let (Some(c), Some(m)) = (cmd.find_subcommand(name), sub_m.subcommand_matches(name)) else {
            return cli;
        };
        cmd = c.clone();
        sub_m = m;
    }
    let extra = match config_file::file_args(&cmd, sub_m, &path) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("atrest: {err:#}");
            std::process::exit(2);
        }
    };
    let mut all = argv;
    all.extend(extra);
    match Cli::try_parse_from(&all) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "atrest: in the settings file {} (or the flags): {}",
                path.display(),
                first.trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = parse();
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
        // What to change is the front end's to say: the KMIP client's errors name the problem.
        let kmip = err
            .chain()
            .find_map(|c| c.downcast_ref::<atrest_kmip::client::ClientError>());
        if kmip.is_some_and(|e| e.is_version_mismatch()) {
            eprintln!(
                "atrest: pin a version the server speaks with --kmip-version (or kmip_version in \
                 the settings file)"
            );
        }
        std::process::exit(1);
    }
}

/// Sets up the process log on stderr: `text` (human-readable) or `json` (one object per line,
/// for log collectors); the level from RUST_LOG, `info` by default.
fn init_log(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = if format == "json" {
        b.json().flatten_event(true).try_init()
    } else {
        b.try_init()
    };
}
