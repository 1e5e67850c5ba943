//! `atrest volume encrypt | unlock | rekey | decrypt | grow`, and `export` of an encrypted
//! volume: the volume with its keys on a KMIP server.
//!
//! Every conversion resumes where it stopped: running the same command again after a crash,
//! a kill or Ctrl-C fetches the key(s) named in the header (never a new one) and carries on.
//!
//! A key the KMIP server holds Deactivated still reads (NIST SP 800-57: it may decrypt the data
//! it protected, never protect new data): `unlock`, `export`, `rekey` and `decrypt` accept it
//! with a note on stderr; a Compromised one only with `--allow-compromised`. `encrypt` (its new
//! key) and `grow` (a header signed anew) need an Active key.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use atrest_keys::{self as keys, create_volume_key_in_group, fetch_volume_keys};
use atrest_kmip::client::Client;
use atrest_volume::{
    ConvertOptions, EncryptOptions, RecoveryKdf, State, UnlockedVolume, Volume, VolumeInfo,
    VolumeLock,
};
use clap::Args;
use serde_json::json;

use crate::kmip_flags::KmipFlags;
use crate::size::parse_size;
use crate::volume_cmd::{lock_exclusive, open_to_read_data, open_writable, progress_printer};

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Image file or block device holding a plain atrest volume.
    image: PathBuf,
    #[command(flatten)]
    kmip: KmipFlags,
    /// Key length in bits: 256 (XTS-AES-128) or 512 (XTS-AES-256, where the KMIP server
    /// allows 512-bit AES objects).
    #[arg(long, default_value_t = 256)]
    key_length: u32,
    /// Sector size of the encrypted volume: 4096 or 512.
    #[arg(long, default_value_t = 4096)]
    sector_size: u32,
    /// A Name for the key on the KMIP server (default:
    /// `atrest/<appliance name>/<volume uuid>/<generation>`).
    #[arg(long)]
    name: Option<String>,
    /// The appliance name in the default Name and in the key's Object Group
    /// (`atrest/<appliance name>`); the host name by default.
    #[arg(long, value_name = "NAME")]
    appliance_name: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// Image file or block device holding an encrypted atrest volume.
    image: PathBuf,
    #[command(flatten)]
    kmip: KmipFlags,
    /// A Name for the new key on the KMIP server (default:
    /// `atrest/<appliance name>/<volume uuid>/<generation>`).
    #[arg(long)]
    name: Option<String>,
    /// The appliance name in the default Name and in the key's Object Group
    /// (`atrest/<appliance name>`); the host name by default.
    #[arg(long, value_name = "NAME")]
    appliance_name: Option<String>,
    /// Also use a key the KMIP server holds Compromised (to move the data off it at once).
    #[arg(long)]
    allow_compromised: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
pub struct KeyedArgs {
    /// Image file or block device holding an encrypted atrest volume.
    image: PathBuf,
    #[command(flatten)]
    kmip: KmipFlags,
    #[command(flatten)]
    run: RunArgs,
    /// Open the volume with the recovery key in file F instead of its KMIP key(s): no KMIP
    /// server is contacted.
    #[arg(long, value_name = "F")]
    recovery_key_file: Option<PathBuf>,
    /// (unlock) Accept a header whose authentication code is missing or wrong, as it is, and
    /// sign it under the volume key: only for a header you know (written by an atrest without
    /// header authentication, or changed by you). The keys are still checked against it.
    #[arg(long)]
    accept_header: bool,
    /// Also use a key the KMIP server holds Compromised (a Deactivated one is used anyway, to
    /// read): someone may know it, so move the data to a new key at once.
    #[arg(long)]
    allow_compromised: bool,
}

#[derive(Debug, Args)]
pub struct GrowArgs {
    /// Image file or block device holding an atrest volume (plain, or encrypted: its key is
    /// fetched, as the grown header is signed under it).
    image: PathBuf,
    #[command(flatten)]
    kmip: KmipFlags,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// How a conversion runs.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Bytes converted per committed step (SIZE: bytes, or with K, M, G or T, e.g. 4M);
    /// smaller steps commit more often (default 64M, the largest a header may name).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Limit the conversion to SIZE bytes per second (e.g. 50M), to spare a busy disk.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_rate: Option<u64>,
    /// Also overwrite the free space. By default only the space the content store on the
    /// volume has in use is converted (every byte when the volume holds no content store);
    /// free space keeps what it held (after Encrypt: deleted content, in plaintext).
    #[arg(long)]
    full: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    fn options(&self, stop: Arc<AtomicBool>) -> anyhow::Result<ConvertOptions> {
        let mut o = ConvertOptions::default();
        if let Some(c) = self.chunk_size {
            o.chunk_size = c;
        }
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            o.threads = t;
        }
        o.stop = Some(stop);
        Ok(o)
    }
}

/// Takes the exclusive lock, then opens the volume read-write (conversions and unlock may
/// repair or commit the header); the lock is held until the returned guard is dropped.
fn open(image: &Path) -> anyhow::Result<(VolumeLock, Volume)> {
    let lock = lock_exclusive(image)?;
    Ok((lock, open_writable(image)?))
}

/// A KMIP client from the settings; the header's servers stand in when none are given.
fn client(settings: &KmipFlags, info: &VolumeInfo) -> anyhow::Result<Client> {
    let fallback: Vec<String> = info
        .keys
        .first()
        .map(|k| k.reference.servers.clone())
        .unwrap_or_default();
    let config = settings.to_client_config_or(&fallback)?;
    Ok(Client::new(config)?)
}

/// Fetches the keys to read the volume: a key the server holds Deactivated is accepted (it may
/// still decrypt), a Compromised one with `allow_compromised`; each such key is named on
/// stderr with what to do. The key a Rekey moves to must be Active.
pub fn fetch_for_reading(
    client: &mut Client,
    vol: &Volume,
    allow_compromised: bool,
) -> anyhow::Result<Vec<atrest_volume::VolumeKey>> {
    let accept = if allow_compromised {
        keys::Accept::Compromised
    } else {
        keys::Accept::Deactivated
    };
    let (keys, inactive) = keys::fetch_volume_keys_accepting(client, vol, accept)?;
    for k in inactive {
        eprintln!(
            "note: the KMIP server holds key {} as {}: it may only decrypt the data it \
             protected, never protect new data; move the data to a new key with `atrest volume \
             rekey`",
            k.uid, k.state
        );
    }
    Ok(keys)
}

/// Ctrl-C / SIGTERM stop the conversion cleanly after the current chunk.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

fn run_conversion(
    image: &Path,
    volume: &UnlockedVolume,
    run: &RunArgs,
    what: &str,
) -> anyhow::Result<()> {
    let stop = stop_flag();
    let opts = run.options(stop.clone())?;
    let max_rate = match run.max_rate {
        Some(0) => bail!("--max-rate must be more than 0 bytes per second"),
        r => r,
    };
    // The content store on the volume says which space holds content; it stays open (and
    // its map of used space current) for the whole conversion.
    let (store, used) = if run.full {
        (None, None)
    } else {
        let dev: Arc<dyn atrest_volume::BlockDevice> = Arc::new(volume.clone());
        match atrest_store::Store::open(dev, &atrest_store::StoreOptions::default()) {
            Ok(s) => {
                let used = s.used_ranges();
                (Some(s), Some(used))
            }
            Err(e) => {
                if std::io::stderr().is_terminal() {
                    eprintln!(
                        "{what}: no content store can be read on {} ({e}); every byte is \
                         converted",
                        image.display()
                    );
                }
                (None, None)
            }
        }
    };
    if std::io::stderr().is_terminal() {
        eprintln!(
            "{what}: {}",
            if used.is_some() {
                "only the space the content store uses is converted; free space keeps what it \
                 held (give --full to overwrite it too)"
            } else {
                "every byte of the data segment is converted (free space too)"
            }
        );
    }
    let start = Instant::now();
    let mut printer = progress_printer();
    let mut first_done = None;
    let mut on_progress = |p: &atrest_volume::Progress| {
        printer(p);
        // Throttle: after each committed chunk, wait until this run's average rate is within
        // the limit.
        if let Some(rate) = max_rate {
            let base = *first_done.get_or_insert(p.done);
            let due = std::time::Duration::from_secs_f64((p.done - base) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    };
    let state = volume
        .convert_with(&opts, used, &mut on_progress)
        .with_context(|| format!("{what} {}", image.display()))?;
    drop(store);
    let info = volume.info();
    if stop.load(Ordering::Relaxed) && info.progress.is_some() {
        let p = info.progress.as_ref().map(|p| p.percent).unwrap_or(0.0);
        bail!(
            "{what} of {} stopped at {p:.1} %; run the same command again to resume",
            image.display()
        );
    }
    report(image, &info, state, start, run.json);
    Ok(())
}

fn report(image: &Path, info: &VolumeInfo, state: State, start: Instant, json: bool) {
    let key = info.keys.first().map(|k| &k.reference);
    if json {
        println!(
            "{}",
            json!({
                "image": image,
                "state": state.as_str(),
                "cipher": info.cipher,
                "key_bits": info.key_bits,
                "unique_identifier": key.map(|k| &k.unique_identifier),
                "servers": key.map(|k| &k.servers),
                "data_size": info.data_size,
                "seconds": start.elapsed().as_secs_f64(),
            })
        );
    } else {
        let mut s = format!(
            "{}: {} ({} bytes of data, {:.1} s)",
            image.display(),
            state.as_str(),
            info.data_size,
            start.elapsed().as_secs_f64()
        );
        if let Some(k) = key {
            s.push_str(&format!(
                "; key {} on {}",
                k.unique_identifier,
                k.servers.join(", ")
            ));
        }
        println!("{s}");
    }
}

fn in_progress_elsewhere(image: &Path, state: State) -> anyhow::Error {
    let cmd = match state {
        State::Encrypting => "encrypt",
        State::Rekeying => "rekey",
        State::Decrypting => "decrypt",
        _ => "dump",
    };
    anyhow::anyhow!(
        "{} is {}: finish that first with `atrest volume {cmd} {}`; nothing was changed",
        image.display(),
        state.as_str(),
        image.display()
    )
}

/// The Name and Object Group of a new volume key: `--name`, or
/// `atrest/<appliance name>/<volume uuid>/<generation>`, the generation one more than the
/// current key's.
fn key_name(
    client: &mut Client,
    appliance: &Option<String>,
    name: Option<&str>,
    uuid: &str,
    current: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let appliance = appliance.clone().unwrap_or_else(keys::host_name);
    keys::check_appliance_name(&appliance).map_err(anyhow::Error::msg)?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => {
            let generation = keys::next_generation(client, uuid, current);
            keys::volume_key_name(&appliance, uuid, generation)
        }
    };
    Ok((name, keys::volume_key_group(&appliance)))
}

pub fn encrypt(a: EncryptArgs) -> anyhow::Result<()> {
    let (_lock, vol) = open(&a.image)?;
    let info = vol.info();
    let mut client = client(&a.kmip, &info)?;
    let unlocked = match vol.state() {
        State::Plain => {
            if a.key_length != 256 && a.key_length != 512 {
                bail!("--key-length must be 256 or 512");
            }
            let (name, group) = key_name(
                &mut client,
                &a.appliance_name,
                a.name.as_deref(),
                &info.uuid,
                None,
            )?;
            let key =
                create_volume_key_in_group(&mut client, a.key_length, Some(&name), Some(&group))?;
            let uid = key.reference.unique_identifier.clone();
            let unlocked = vol.unlock(Vec::new())?;
            let opts = EncryptOptions {
                sector_size: a.sector_size,
                ..EncryptOptions::default()
            };
            unlocked
                .begin_encrypt(key.material, key.reference, &opts)
                .with_context(|| {
                    format!(
                        "starting to encrypt {} (key {uid} was created on the KMIP server and \
                         is not used; destroy it with `atrest kmip destroy {uid}`)",
                        a.image.display()
                    )
                })?;
            unlocked
        }
        State::Encrypting => {
            let keys = fetch_volume_keys(&mut client, &vol)?;
            vol.unlock(keys)?
        }
        State::Encrypted => {
            let start = Instant::now();
            report(&a.image, &info, State::Encrypted, start, a.run.json);
            return Ok(());
        }
        s => return Err(in_progress_elsewhere(&a.image, s)),
    };
    client.disconnect();
    run_conversion(&a.image, &unlocked, &a.run, "encrypting")
}

pub fn rekey(a: RekeyArgs) -> anyhow::Result<()> {
    let (_lock, vol) = open(&a.image)?;
    let info = vol.info();
    let mut client = client(&a.kmip, &info)?;
    let (unlocked, old) = match vol.state() {
        State::Encrypted => {
            let keys = fetch_for_reading(&mut client, &vol, a.allow_compromised)?;
            let old = info
                .keys
                .first()
                .map(|k| k.reference.unique_identifier.clone());
            let bits = info.key_bits.unwrap_or(256);
            let (name, group) = key_name(
                &mut client,
                &a.appliance_name,
                a.name.as_deref(),
                &info.uuid,
                old.as_deref(),
            )?;
            let key = create_volume_key_in_group(&mut client, bits, Some(&name), Some(&group))?;
            let unlocked = vol.unlock(keys)?;
            let renewed = unlocked
                .begin_rekey_renewing_recovery(
                    key.material,
                    key.reference,
                    &EncryptOptions::default(),
                    &RecoveryKdf::from_env(),
                )
                .with_context(|| format!("starting to rekey {}", a.image.display()))?;
            if let Some(rk) = renewed {
                // Shown at once: the conversion may be stopped, and the key is stored nowhere.
                if a.run.json {
                    println!("{}", json!({"image": a.image, "recovery_key": rk.expose()}));
                } else {
                    println!("{}", rk.expose());
                    eprintln!(
                        "This is the new recovery key of {} (shown only now); the previous \
                         recovery key no longer opens the volume. Keep it offline.",
                        a.image.display()
                    );
                }
            }
            (unlocked, old)
        }
        State::Rekeying => {
            let old = info
                .keys
                .iter()
                .find(|k| k.role == "old")
                .map(|k| k.reference.unique_identifier.clone());
            let keys = fetch_for_reading(&mut client, &vol, a.allow_compromised)?;
            (vol.unlock(keys)?, old)
        }
        State::Plain => bail!(
            "{} is plain: encrypt it with `atrest volume encrypt` first; nothing was changed",
            a.image.display()
        ),
        s => return Err(in_progress_elsewhere(&a.image, s)),
    };
    client.disconnect();
    run_conversion(&a.image, &unlocked, &a.run, "rekeying")?;
    if let Some(old) = old
        && !a.run.json
    {
        eprintln!(
            "The old key {old} no longer protects this volume; destroy it on the KMIP server \
             with `atrest kmip destroy {old}` once backups made with it have expired."
        );
    }
    Ok(())
}

pub fn decrypt(a: KeyedArgs) -> anyhow::Result<()> {
    if a.accept_header {
        bail!(
            "--accept-header belongs to `atrest volume unlock`: accept the header there first, \
             then decrypt; nothing was changed"
        );
    }
    let (_lock, vol) = open(&a.image)?;
    let info = vol.info();
    let unlocked = match vol.state() {
        State::Encrypted | State::Decrypting => {
            let keys = volume_keys(
                &vol,
                &a.kmip,
                a.recovery_key_file.as_deref(),
                a.allow_compromised,
            )?;
            let u = vol.unlock(keys)?;
            if u.state() == State::Encrypted {
                u.begin_decrypt()
                    .with_context(|| format!("starting to decrypt {}", a.image.display()))?;
            }
            u
        }
        State::Plain => {
            report(&a.image, &info, State::Plain, Instant::now(), a.run.json);
            return Ok(());
        }
        s => return Err(in_progress_elsewhere(&a.image, s)),
    };
    run_conversion(&a.image, &unlocked, &a.run, "decrypting")
}

pub fn unlock(a: KeyedArgs) -> anyhow::Result<()> {
    // Accepting a header signs it: that writes, under the exclusive lock.
    let (_lock, vol) = if a.accept_header {
        open(&a.image)?
    } else {
        open_to_read_data(&a.image)?
    };
    if vol.state() == State::Plain {
        bail!("{} is plain: it has no key to unlock", a.image.display());
    }
    let keys = volume_keys(
        &vol,
        &a.kmip,
        a.recovery_key_file.as_deref(),
        a.allow_compromised,
    )?;
    let n = keys.len();
    let unlocked = if a.accept_header {
        vol.unlock_accepting_header(keys)?
    } else {
        vol.unlock(keys)?
    };
    let info = unlocked.info();
    let ids: Vec<&str> = info
        .keys
        .iter()
        .map(|k| k.reference.unique_identifier.as_str())
        .collect();
    let by = if a.recovery_key_file.is_some() {
        "recovery key"
    } else {
        "kmip"
    };
    if a.run.json {
        println!(
            "{}",
            json!({"image": a.image, "state": info.state.as_str(), "verified_keys": ids, "unlocked_with": by})
        );
    } else {
        println!(
            "{}: {} key{} verified ({}){}; state {}",
            a.image.display(),
            n,
            if n == 1 { "" } else { "s" },
            ids.join(", "),
            if by == "kmip" {
                ""
            } else {
                " with the recovery key, no KMIP server contacted"
            },
            info.state.as_str()
        );
    }
    Ok(())
}

/// The verified keys of `vol`: from the recovery key in `recovery_file` when given (no KMIP
/// server contacted), else fetched from the KMIP server (a Deactivated key reads, a
/// Compromised one with `allow_compromised`; see [`fetch_for_reading`]).
fn volume_keys(
    vol: &Volume,
    settings: &KmipFlags,
    recovery_file: Option<&Path>,
    allow_compromised: bool,
) -> anyhow::Result<Vec<atrest_volume::VolumeKey>> {
    if let Some(f) = recovery_file {
        return crate::volume_recovery::keys_from_file(vol, f);
    }
    let mut client = client(settings, &vol.info())?;
    let keys = fetch_for_reading(&mut client, vol, allow_compromised)?;
    client.disconnect();
    Ok(keys)
}

/// Unlocks an encrypted (or mid-conversion) volume for `export`, with its keys as
/// [`volume_keys`] gets them; the caller holds its lock.
pub fn unlock_for_export(
    vol: Volume,
    settings: &KmipFlags,
    recovery_file: Option<&Path>,
    allow_compromised: bool,
) -> anyhow::Result<UnlockedVolume> {
    let keys = volume_keys(&vol, settings, recovery_file, allow_compromised)?;
    Ok(vol.unlock(keys)?)
}

/// `atrest volume grow`: extends the data segment to the device's size, after the disk or image
/// grew. An encrypted volume is unlocked first (its key fetched and verified), as the new header
/// is signed under it. Refused during a conversion.
pub fn grow(a: GrowArgs) -> anyhow::Result<()> {
    let (_lock, vol) = open(&a.image)?;
    let state = vol.state();
    if matches!(
        state,
        State::Encrypting | State::Rekeying | State::Decrypting
    ) {
        return Err(in_progress_elsewhere(&a.image, state)
            .context("a volume grows only when no conversion is under way"));
    }
    let unlocked = if state == State::Plain {
        vol.unlock(Vec::new())?
    } else {
        let info = vol.info();
        let mut client = client(&a.kmip, &info)?;
        let keys = fetch_volume_keys(&mut client, &vol)?;
        vol.unlock(keys)?
    };
    let (old, new) = unlocked
        .grow()
        .with_context(|| format!("growing {}", a.image.display()))?;
    if a.json {
        println!(
            "{}",
            json!({"image": a.image, "state": state.as_str(), "old_data_size": old, "data_size": new})
        );
    } else if new == old {
        println!(
            "{}: the data segment already fills the device ({new} bytes); nothing was changed",
            a.image.display()
        );
    } else {
        println!(
            "{}: data segment grown from {old} to {new} bytes ({})",
            a.image.display(),
            state.as_str()
        );
    }
    Ok(())
}
