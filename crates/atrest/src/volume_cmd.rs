//! `atrest volume …`: the volume, offline.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use atrest_volume::{
    BlockDevice, FileDevice, FormatOptions, Progress, State, Volume, VolumeInfo, VolumeLock,
};
use clap::{Args, Subcommand};

use crate::size::parse_size;

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

impl VolumeArgs {
    /// Whether the command fetches or makes volume keys.
    pub fn holds_keys(&self) -> bool {
        !matches!(
            self.command,
            VolumeCommand::Format(_) | VolumeCommand::Dump(_)
        )
    }
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Make a plain (unencrypted) volume whose header area is reserved, so that encrypting it
    /// later needs no data shift.
    Format(FormatArgs),
    /// Show the volume: state, cipher, sector size, data offset and size, key id, servers,
    /// progress, and a damaged header copy. Reads only, unless --repair is given.
    Dump(DumpArgs),
    /// Write the plaintext payload (the data segment); an encrypted volume's key is fetched
    /// from the KMIP server and verified first.
    Export(ExportArgs),
    /// Encrypt a plain volume in place: Create + Activate a key on the KMIP server, Get it,
    /// write its Unique Identifier into the header, convert. Re-running resumes.
    Encrypt(crate::volume_kmip::EncryptArgs),
    /// Get the volume's key(s) by the ids in its header and verify them against its digest.
    Unlock(crate::volume_kmip::KeyedArgs),
    /// Re-encrypt in place under a new KMIP key. Re-running resumes.
    Rekey(crate::volume_kmip::RekeyArgs),
    /// Turn encryption off: decrypt in place. Re-running resumes.
    Decrypt(crate::volume_kmip::KeyedArgs),
    /// Extend the data segment to the size of the device, after the disk or image grew (plain
    /// or encrypted; an encrypted volume's key is fetched to sign the new header). Not during
    /// a conversion.
    Grow(crate::volume_kmip::GrowArgs),
    /// The recovery key (break-glass): `add` makes one and prints it once, `remove` removes it.
    /// With it, `unlock` and `export --recovery-key-file F` need no KMIP server.
    #[command(subcommand_value_name = "add|remove")]
    RecoveryKey(crate::volume_recovery::RecoveryKeyArgs),
}

#[derive(Debug, Args)]
struct FormatArgs {
    /// Image file (created if missing) or block device.
    image: PathBuf,
    /// Payload size (bytes, or with K, M, G or T: powers of 1024); the image is this plus
    /// the header area. Required when IMAGE does not exist.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Reserved header area in front of the data (multiple of 1 MiB; SIZE as for --size).
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    header_area: u64,
    /// LUKS2 label.
    #[arg(long, default_value = "")]
    label: String,
    /// Format IMAGE even though it exists (its header area is overwritten). Not needed for a
    /// block device whose header area reads as zeros.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// Image file or block device.
    image: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Rewrite a damaged or stale header copy from the good one (opens IMAGE read-write
    /// under the exclusive lock); without it, dump writes nothing.
    #[arg(long)]
    repair: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Image file or block device.
    image: PathBuf,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// KMIP settings, for an encrypted volume.
    #[command(flatten)]
    kmip: crate::kmip_flags::KmipFlags,
    /// Open the encrypted volume with the recovery key in file F instead of its KMIP key (no
    /// KMIP server is contacted).
    #[arg(long, value_name = "F")]
    recovery_key_file: Option<PathBuf>,
    /// Also read with a key the KMIP server holds Compromised (a Deactivated one reads anyway).
    #[arg(long)]
    allow_compromised: bool,
}

pub fn run(args: VolumeArgs) -> anyhow::Result<()> {
    match args.command {
        VolumeCommand::Format(a) => format(a),
        VolumeCommand::Dump(a) => dump(a),
        VolumeCommand::Export(a) => export(a),
        VolumeCommand::Encrypt(a) => crate::volume_kmip::encrypt(a),
        VolumeCommand::Unlock(a) => crate::volume_kmip::unlock(a),
        VolumeCommand::Rekey(a) => crate::volume_kmip::rekey(a),
        VolumeCommand::Decrypt(a) => crate::volume_kmip::decrypt(a),
        VolumeCommand::Grow(a) => crate::volume_kmip::grow(a),
        VolumeCommand::RecoveryKey(a) => crate::volume_recovery::run(a),
    }
}

fn format(a: FormatArgs) -> anyhow::Result<()> {
    let header = a.header_area;
    let _lock = lock_exclusive(&a.image)?;
    let exists = a.image.exists();
    let dev = if exists {
        let dev =
            FileDevice::open(&a.image).with_context(|| format!("opening {}", a.image.display()))?;
        // A block device whose header area reads as zeros holds nothing format could destroy.
        let empty = dev.is_block_device() && reads_as_zeros(&dev, header.min(dev.len()))?;
        if !a.force && !empty {
            bail!(
                "{} {}; nothing was changed. Pass --force to format it (its first {} bytes are overwritten)",
                a.image.display(),
                if dev.is_block_device() {
                    "is a block device that holds data"
                } else {
                    "exists"
                },
                header
            );
        }
        if let Some(size) = &a.size {
            let want = header + size;
            if dev.len() != want {
                bail!(
                    "{} is {} bytes, not header area + --size = {want}; nothing was changed. Omit --size to use its whole size",
                    a.image.display(),
                    dev.len()
                );
            }
        }
        dev
    } else if a.image.starts_with("/dev") {
        bail!(
            "{} does not exist; give a block device that exists, or an image file outside /dev",
            a.image.display()
        );
    } else {
        let Some(size) = &a.size else {
            bail!(
                "{} does not exist: give --size to create it",
                a.image.display()
            );
        };
        let size = *size;
        if size == 0 || !size.is_multiple_of(4096) {
            bail!("--size must be a positive multiple of 4096 bytes (got {size})");
        }
        FileDevice::create(&a.image, header + size)
            .with_context(|| format!("creating {}", a.image.display()))?
    };
    let opts = FormatOptions {
        data_offset: header,
        label: a.label,
    };
    let result = Volume::format(Arc::new(dev), &opts);
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            if !exists {
                let _ = std::fs::remove_file(&a.image);
            }
            return Err(e).with_context(|| format!("formatting {}", a.image.display()));
        }
    };
    let info = v.info();
    println!(
        "{}: plain volume {}, {} bytes of data at offset {}",
        a.image.display(),
        info.uuid,
        info.data_size,
        info.data_offset
    );
    Ok(())
}

/// Whether the first `len` bytes of `dev` are all zero.
fn reads_as_zeros(dev: &FileDevice, len: u64) -> anyhow::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        dev.read_at(&mut buf[..n], off)
            .with_context(|| format!("reading {}", dev.path().display()))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// Takes the exclusive lock of the volume at `image`: for commands that write.
pub fn lock_exclusive(image: &Path) -> anyhow::Result<VolumeLock> {
    Ok(VolumeLock::exclusive(image)?)
}

/// Takes a shared lock of the volume at `image`: for commands that only read.
pub fn lock_shared(image: &Path) -> anyhow::Result<VolumeLock> {
    Ok(VolumeLock::shared(image)?)
}

/// Opens the volume at `image` read-write: conversions, unlocking mid-conversion and repairs
/// write. The caller holds the exclusive lock.
pub fn open_writable(image: &Path) -> anyhow::Result<Volume> {
    let dev = FileDevice::open(image).with_context(|| format!("opening {}", image.display()))?;
    Volume::open(Arc::new(dev)).with_context(|| format!("reading the volume {}", image.display()))
}

/// Opens the volume at `image` read-only: nothing is written, a damaged header copy is only
/// reported. The caller holds a lock (shared is enough).
pub fn open_read_only(image: &Path) -> anyhow::Result<Volume> {
    let dev = FileDevice::open_read_only(image)
        .with_context(|| format!("opening {}", image.display()))?;
    Volume::open_read_only(Arc::new(dev))
        .with_context(|| format!("reading the volume {}", image.display()))
}

/// Opens the volume at `image` for a command that reads its data (`export`, `unlock`): under a
/// shared lock and read-only, unless a conversion is under way — unlocking it may finish a
/// chunk a crash interrupted, which writes — then under the exclusive lock and read-write.
pub fn open_to_read_data(image: &Path) -> anyhow::Result<(VolumeLock, Volume)> {
    let lock = lock_shared(image)?;
    let v = open_read_only(image)?;
    if v.info().progress.is_none() {
        return Ok((lock, v));
    }
    drop(v);
    drop(lock);
    let lock = lock_exclusive(image)?;
    let v = open_writable(image)?;
    Ok((lock, v))
}

fn dump(a: DumpArgs) -> anyhow::Result<()> {
    let (_lock, v) = if a.repair {
        let lock = lock_exclusive(&a.image)?;
        let dev =
            FileDevice::open(&a.image).with_context(|| format!("opening {}", a.image.display()))?;
        let v = Volume::open_and_repair(Arc::new(dev))
            .with_context(|| format!("reading the volume {}", a.image.display()))?;
        (lock, v)
    } else {
        (lock_shared(&a.image)?, open_read_only(&a.image)?)
    };
    let info = v.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", render(&info));
    }
    Ok(())
}

/// The human-readable form of `dump`.
pub fn render(i: &VolumeInfo) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<16}{v}\n"));
    line("State:", i.state.as_str().to_string());
    line("UUID:", i.uuid.clone());
    if !i.label.is_empty() {
        line("Label:", i.label.clone());
    }
    line(
        "Cipher:",
        i.cipher.clone().unwrap_or_else(|| "none (plain)".into()),
    );
    if let Some(b) = i.key_bits {
        line("Key:", format!("{b} bits"));
    }
    if i.state != State::Plain {
        line(
            "Recovery key:",
            if i.recovery_key {
                "present (a LUKS2 passphrase keyslot; opens the volume without KMIP)".into()
            } else {
                "none".into()
            },
        );
    }
    line("Sector size:", format!("{} bytes", i.sector_size));
    line("Data offset:", format!("{} bytes", i.data_offset));
    line("Data size:", format!("{} bytes", i.data_size));
    for k in &i.keys {
        line(
            &format!("Key ({}):", k.role),
            format!(
                "KMIP id {} on {} ({} bits, created {})",
                k.reference.unique_identifier,
                k.reference.servers.join(", "),
                k.reference.key_bits,
                k.reference.created
            ),
        );
    }
    if let Some(p) = &i.progress {
        line(
            "Progress:",
            format!(
                "{:?} {} of {} bytes ({:.1} %)",
                p.kind, p.done, p.total, p.percent
            )
            .to_lowercase(),
        );
    }
    if i.state != State::Plain {
        line(
            "Header MAC:",
            if i.header_mac {
                "present (checked under the volume key by unlock)".into()
            } else {
                "missing: unlock refuses the volume until the header is accepted \
                 (`atrest volume unlock --accept-header`)"
                    .into()
            },
        );
    }
    if let Some(r) = &i.header_repair {
        line("Header:", r.clone());
    }
    s
}

/// Shows conversion progress on stderr when it is a terminal (one updating line); for the
/// conversion subcommands.
pub fn progress_printer() -> impl FnMut(&Progress) {
    let tty = std::io::stderr().is_terminal();
    move |p: &Progress| {
        if !tty {
            return;
        }
        let pct = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let eta = p
            .eta
            .map_or("--".to_string(), |d| format!("{}s", d.as_secs()));
        eprint!(
            "\r[{}{}] {pct:5.1} %  {:.0} MiB/s  ETA {eta}   ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            p.bytes_per_sec / (1 << 20) as f64
        );
        if p.done >= p.total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

fn export(a: ExportArgs) -> anyhow::Result<()> {
    let (_lock, v) = open_to_read_data(&a.image)?;
    let u = match v.state() {
        State::Plain => v.unlock(Vec::new())?,
        state => crate::volume_kmip::unlock_for_export(
            v,
            &a.kmip,
            a.recovery_key_file.as_deref(),
            a.allow_compromised,
        )
        .with_context(|| match &a.recovery_key_file {
            Some(_) => format!(
                "opening {} with the recovery key; nothing was written",
                a.image.display()
            ),
            None => format!(
                "{} is {}: exporting it needs its key from the KMIP server; nothing was written",
                a.image.display(),
                state.as_str()
            ),
        })?,
    };
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => {
            if let (Ok(x), Ok(y)) = (p.canonicalize(), a.image.canonicalize())
                && x == y
            {
                bail!("--out is the image itself; nothing was written");
            }
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!(
                    "standard output is a terminal: give --out FILE or redirect the output; nothing was written"
                );
            }
            Box::new(std::io::stdout().lock())
        }
    };
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < u.len() {
        let n = (u.len() - off).min(buf.len() as u64) as usize;
        u.read_at(&mut buf[..n], off)
            .with_context(|| format!("reading the data segment at {off}"))?;
        out.write_all(&buf[..n]).context("writing the export")?;
        off += n as u64;
    }
    out.flush().context("writing the export")?;
    Ok(())
}
