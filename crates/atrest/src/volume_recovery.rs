//! `atrest volume recovery-key add|remove IMAGE`, and the `--recovery-key-file F` of `unlock`
//! and `export`: the break-glass recovery key, a standard LUKS2 passphrase keyslot that opens
//! the volume with no KMIP server (and with stock cryptsetup).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use atrest_keys::fetch_volume_keys;
use atrest_kmip::client::Client;
use atrest_volume::{RecoveryKdf, RecoveryKey, State, Volume, VolumeKey};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::kmip_flags::KmipFlags;
use crate::volume_cmd::{lock_exclusive, open_writable};

#[derive(Debug, Args)]
pub struct RecoveryKeyArgs {
    #[command(subcommand)]
    command: RecoveryKeyCommand,
}

#[derive(Debug, Subcommand)]
enum RecoveryKeyCommand {
    /// Make a recovery key (replacing the one the volume has) and print it once on standard
    /// output. Anyone holding it can decrypt the volume without the KMIP server: store it
    /// offline, like a spare key to a safe.
    Add(RecoveryKeyCmdArgs),
    /// Remove the recovery key: its keyslot leaves the header and its area is overwritten.
    Remove(RecoveryKeyCmdArgs),
}

#[derive(Debug, Args)]
struct RecoveryKeyCmdArgs {
    /// Image file or block device holding an encrypted atrest volume.
    image: PathBuf,
    #[command(flatten)]
    kmip: KmipFlags,
    /// Unlock with the current recovery key in file F instead of the KMIP key (e.g. to remove
    /// or replace the recovery key while the KMIP server is gone).
    #[arg(long, value_name = "F")]
    recovery_key_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Largest recovery key file read (the key is 55 characters; spaces and line breaks allowed).
const MAX_RECOVERY_FILE: u64 = 1024;

/// Reads and parses a recovery key file (bounded; the text never reaches an error message).
pub fn read_recovery_key(path: &Path) -> anyhow::Result<RecoveryKey> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(path)
        .with_context(|| format!("opening the recovery key file {}", path.display()))?
        .take(MAX_RECOVERY_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| {
            format!(
                "reading the recovery key file {} (it holds the key as text)",
                path.display()
            )
        })?;
    if text.len() as u64 > MAX_RECOVERY_FILE {
        bail!(
            "{} is longer than a recovery key (8 groups of 6 digits); check the file",
            path.display()
        );
    }
    RecoveryKey::parse(&text).with_context(|| format!("reading {}", path.display()))
}

/// The volume keys the recovery key in `path` opens (no KMIP server involved).
pub fn keys_from_file(vol: &Volume, path: &Path) -> anyhow::Result<Vec<VolumeKey>> {
    let rk = read_recovery_key(path)?;
    Ok(vol.keys_from_recovery_key(&rk)?)
}

pub fn run(a: RecoveryKeyArgs) -> anyhow::Result<()> {
    let (add, a) = match a.command {
        RecoveryKeyCommand::Add(a) => (true, a),
        RecoveryKeyCommand::Remove(a) => (false, a),
    };
    let _lock = lock_exclusive(&a.image)?;
    let vol = open_writable(&a.image)?;
    match vol.state() {
        State::Encrypted => {}
        State::Plain => bail!(
            "{} is plain: a recovery key protects an encrypted volume; nothing was changed",
            a.image.display()
        ),
        s => bail!(
            "{} is {}: add or remove the recovery key once the conversion has finished (run it \
             again to resume); nothing was changed",
            a.image.display(),
            s.as_str()
        ),
    }
    let keys = match &a.recovery_key_file {
        Some(f) => keys_from_file(&vol, f)?,
        None => {
            let info = vol.info();
            let fallback: Vec<String> = info
                .keys
                .first()
                .map(|k| k.reference.servers.clone())
                .unwrap_or_default();
            let mut client = Client::new(a.kmip.to_client_config_or(&fallback)?)?;
            let keys = fetch_volume_keys(&mut client, &vol)?;
            client.disconnect();
            keys
        }
    };
    let u = vol.unlock(keys)?;
    if add {
        let replaced = u.has_recovery_key();
        let rk = u
            .add_recovery_key(&RecoveryKdf::from_env())
            .with_context(|| format!("adding a recovery key to {}", a.image.display()))?;
        if a.json {
            println!(
                "{}",
                json!({"image": a.image, "recovery_key": rk.expose(), "replaced": replaced})
            );
        } else {
            println!("{}", rk.expose());
            eprintln!(
                "This is the recovery key of {}; it is shown only now{}. Anyone who holds it can \
                 decrypt the volume without the KMIP server (also with `cryptsetup open`): keep \
                 it offline. Remove it with `atrest volume recovery-key remove`.",
                a.image.display(),
                if replaced {
                    "; the previous recovery key no longer opens the volume"
                } else {
                    ""
                }
            );
        }
    } else {
        let had = u
            .remove_recovery_key()
            .with_context(|| format!("removing the recovery key of {}", a.image.display()))?;
        if a.json {
            println!("{}", json!({"image": a.image, "removed": had}));
        } else if had {
            println!(
                "{}: recovery key removed; it no longer opens the volume. A copy of the old \
                 header still opens it with that key: if the key may have leaked, rekey too.",
                a.image.display()
            );
        } else {
            println!(
                "{}: the volume has no recovery key; nothing was changed",
                a.image.display()
            );
        }
    }
    Ok(())
}
