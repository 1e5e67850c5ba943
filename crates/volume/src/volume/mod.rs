//! Volumes: format, open, key check, unlock, the data segment as a block device, and in-place
//! conversion (encrypt, rekey, decrypt).

mod convert;
mod derived;
mod recovery_key;
mod unlocked;

pub use derived::SEAL_KEY_INFO;
use derived::*;
use unlocked::*;

use parking_lot::{Mutex, RwLock};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::device::{BlockDevice, check_range};
use crate::error::{Error, HeaderAuthError, HeaderAuthFailure, Result};
use crate::key::{KeyMaterial, VolumeKey, digest_matches, expected_bits, make_digest};
use crate::luks2::{
    self, ConversionKind, DEFAULT_HDR_SIZE, DEFAULT_PBKDF2_ITERATIONS, HOTZONE_UNIT, Hotzone,
    KmipToken, MAX_HOTZONE_SIZE, MacKey, Metadata, ReadReport, RecordVersion, SKIP_GRANULE,
    Segment, SegmentKind, Token,
};
use crate::rangelock::RangeLock;
use crate::recovery::{RecoveryKdf, RecoveryKey};
use crate::recovery_slots;
use crate::secret::SecretBytes;
use crate::used::UsedRanges;
use crate::xts::{KeySize, TWEAK_UNIT, XtsCipher};
use xxhash_rust::xxh3::xxh3_128;

/// The only cipher atrest reads and writes.
pub const CIPHER: &str = "aes-xts-plain64";
/// Default reserved header area (where the data segment starts): 16 MiB, as cryptsetup.
pub const DEFAULT_DATA_OFFSET: u64 = 16 << 20;
/// Smallest header area atrest formats.
pub const MIN_DATA_OFFSET: u64 = 1 << 20;
/// Default conversion chunk: the largest hotzone a header may name. Each chunk costs two
/// flushes and a header commit, so fewer, larger chunks convert faster (BENCHMARKS.md,
/// "Conversion at disk speed"); the appliance, which serves while converting, uses smaller
/// ones (`atrest serve --convert-chunk`, 4 MiB by default) so that a write waits less.
pub const DEFAULT_CHUNK_SIZE: u64 = crate::luks2::MAX_HOTZONE_SIZE;
/// Largest sector size (I/O locks are aligned to it).
const MAX_SECTOR: u64 = 4096;
/// Default sector size.
pub const DEFAULT_SECTOR_SIZE: u32 = 4096;

/// State of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not encrypted.
    Plain,
    /// Encrypted with one key.
    Encrypted,
    /// plain → encrypted in progress.
    Encrypting,
    /// key A → key B in progress.
    Rekeying,
    /// encrypted → plain in progress.
    Decrypting,
}

impl State {
    /// The name used in `dump` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Plain => "plain",
            State::Encrypted => "encrypted",
            State::Encrypting => "encrypting",
            State::Rekeying => "rekeying",
            State::Decrypting => "decrypting",
        }
    }
}

/// Options of [`Volume::format`].
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// Where the data segment starts: the header area reserved for the LUKS2 headers and the
    /// conversion tables (multiple of 1 MiB, at least [`MIN_DATA_OFFSET`]).
    pub data_offset: u64,
    /// LUKS2 label (up to 47 bytes).
    pub label: String,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            data_offset: DEFAULT_DATA_OFFSET,
            label: String::new(),
        }
    }
}

/// The KMIP reference of a new key, written into the `atrest-kmip` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReference {
    /// KMIP Unique Identifier.
    pub unique_identifier: String,
    /// KMIP servers holding the key (`host:port`).
    pub servers: Vec<String>,
    /// When the key was created (RFC 3339, UTC).
    pub created: String,
}

/// Options of a new encryption or rekey.
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// Sector size (4096 or 512); only used by encrypt (rekey keeps the volume's).
    pub sector_size: u32,
    /// PBKDF2 iterations of the key digest.
    pub pbkdf2_iterations: u32,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        EncryptOptions {
            sector_size: DEFAULT_SECTOR_SIZE,
            pbkdf2_iterations: DEFAULT_PBKDF2_ITERATIONS,
        }
    }
}

/// Options of [`UnlockedVolume::convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Bytes converted per committed step (rounded to the sector size; capped so that two
    /// checksum tables fit in the keyslots area).
    pub chunk_size: u64,
    /// Worker threads for XTS and checksums (1 or more).
    pub threads: usize,
    /// When set to true, the conversion stops cleanly after the current chunk.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop: None,
        }
    }
}

/// Progress of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Progress {
    /// What is converted.
    pub kind: ConversionKind,
    /// Bytes of the data segment in the new form.
    pub done: u64,
    /// Size of the data segment.
    pub total: u64,
    /// Bytes per second in this run.
    pub bytes_per_sec: f64,
    /// Estimated time left, once a rate is known.
    pub eta: Option<Duration>,
}

/// A key reference as shown by [`Volume::info`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// `current` (steady encrypted), `old` or `new` (during a conversion).
    pub role: &'static str,
    /// LUKS2 token id.
    pub token: u32,
    /// Digest id.
    pub digest: u32,
    /// The token's fields.
    #[serde(flatten)]
    pub reference: KmipToken,
}

/// Progress as stored in the header.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProgressInfo {
    /// What is converted.
    pub kind: ConversionKind,
    /// Bytes converted.
    pub done: u64,
    /// Total bytes.
    pub total: u64,
    /// done / total × 100.
    pub percent: f64,
}

/// What `atrest volume dump` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VolumeInfo {
    /// State.
    pub state: State,
    /// Volume UUID.
    pub uuid: String,
    /// Label.
    pub label: String,
    /// Cipher (`aes-xts-plain64`), absent on a plain volume.
    pub cipher: Option<String>,
    /// Key length in bits, when known.
    pub key_bits: Option<u32>,
    /// Sector size in bytes.
    pub sector_size: u32,
    /// Byte offset of the data segment.
    pub data_offset: u64,
    /// Size of the data segment in bytes.
    pub data_size: u64,
    /// KMIP Unique Identifier of the key in use (the new key during a conversion to it, the
    /// old one while decrypting).
    pub key_id: Option<String>,
    /// KMIP servers holding that key.
    pub servers: Vec<String>,
    /// Keys referenced by the header.
    pub keys: Vec<KeyInfo>,
    /// Conversion progress.
    pub progress: Option<ProgressInfo>,
    /// Header sequence id.
    pub seqid: u64,
    /// A damaged or stale header copy found on open, and whether it was repaired.
    pub header_repair: Option<String>,
    /// Whether the header carries a MAC (it is checked under the volume key at unlock; a plain
    /// volume has none).
    pub header_mac: bool,
    /// Whether the volume has a recovery key (atrest's LUKS2 passphrase keyslots).
    pub recovery_key: bool,
}

/// An opened volume whose keys are not loaded yet.
pub struct Volume {
    dev: Arc<dyn BlockDevice>,
    // Boxed: keeps `Volume` small for callers that hold it beside an `UnlockedVolume`.
    meta: Box<Metadata>,
    report: ReadReport,
    /// Whether unlock may rewrite a damaged or stale header copy (after authentication).
    may_repair: bool,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("uuid", &self.meta.uuid)
            .field("state", &state_of(&self.meta))
            .finish()
    }
}

fn state_of(m: &Metadata) -> State {
    match (m.conversion(), &m.segment.kind) {
        (Some((_, c)), _) => match c.kind {
            ConversionKind::Encrypt => State::Encrypting,
            ConversionKind::Rekey => State::Rekeying,
            ConversionKind::Decrypt => State::Decrypting,
        },
        (None, SegmentKind::Linear) => State::Plain,
        (None, SegmentKind::Crypt { .. }) => State::Encrypted,
    }
}

fn data_size_of(m: &Metadata, dev_len: u64) -> u64 {
    m.segment
        .size
        .unwrap_or_else(|| dev_len.saturating_sub(m.segment.offset))
}

fn sector_of(m: &Metadata) -> u32 {
    match m.segment.kind {
        SegmentKind::Crypt { sector_size, .. } => sector_size,
        SegmentKind::Linear => DEFAULT_SECTOR_SIZE,
    }
}

impl Volume {
    /// Formats `dev` as a plain (unencrypted) volume: a LUKS2 header with one `linear` data
    /// segment from `opts.data_offset` to the end of the device, whose header area is already
    /// big enough for encryption (no data shift later). The data area is left as it is.
    pub fn format(dev: Arc<dyn BlockDevice>, opts: &FormatOptions) -> Result<Volume> {
        if opts.data_offset < MIN_DATA_OFFSET || !opts.data_offset.is_multiple_of(1 << 20) {
            return Err(Error::Usage(format!(
                "the header area must be a multiple of 1 MiB and at least {MIN_DATA_OFFSET} bytes"
            )));
        }
        if opts.label.len() > 47 {
            return Err(Error::Usage("the label is longer than 47 bytes".into()));
        }
        let len = dev.len();
        if len < opts.data_offset + DEFAULT_SECTOR_SIZE as u64 {
            return Err(Error::Usage(format!(
                "the device ({len} bytes) is too small: it needs the {} byte header area plus data",
                opts.data_offset
            )));
        }
        let data_size =
            (len - opts.data_offset) / DEFAULT_SECTOR_SIZE as u64 * DEFAULT_SECTOR_SIZE as u64;
        let mut meta = Metadata {
            hdr_size: DEFAULT_HDR_SIZE,
            seqid: 0,
            label: opts.label.clone(),
            subsystem: String::new(),
            uuid: luks2::new_uuid()?,
            keyslots_size: opts.data_offset - 2 * DEFAULT_HDR_SIZE,
            keyslots: Default::default(),
            segment: Segment {
                offset: opts.data_offset,
                size: Some(data_size),
                kind: SegmentKind::Linear,
            },
            digests: Default::default(),
            tokens: Default::default(),
            flags: Vec::new(),
            requirements: Vec::new(),
        };
        luks2::write_header(&*dev, &mut meta)?;
        Ok(Volume {
            dev,
            meta: Box::new(meta),
            report: ReadReport::default(),
            may_repair: true,
        })
    }

    /// Opens a volume: reads and validates both header copies and takes the newest valid one.
    /// Nothing is written: a damaged or stale copy is repaired by [`Volume::unlock`], once the
    /// header has passed its MAC check under the volume key (a forged newer copy must never
    /// overwrite the genuine one).
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Volume> {
        Volume::open_with(dev, false, true)
    }

    /// Opens a volume that is only read (e.g. `dump`): nothing is ever written, not even by
    /// [`Volume::unlock`]; a damaged or stale header copy is reported in [`Volume::info`]
    /// (`header_repair`) and left as it is.
    pub fn open_read_only(dev: Arc<dyn BlockDevice>) -> Result<Volume> {
        Volume::open_with(dev, false, false)
    }

    /// Opens a volume and at once rewrites a damaged or stale header copy from the newest valid
    /// one, trusting the header checksums alone (like `cryptsetup repair`): only on the
    /// administrator's explicit request (`atrest volume dump --repair`).
    pub fn open_and_repair(dev: Arc<dyn BlockDevice>) -> Result<Volume> {
        Volume::open_with(dev, true, true)
    }

    fn open_with(dev: Arc<dyn BlockDevice>, repair_now: bool, may_repair: bool) -> Result<Volume> {
        let (meta, report) = luks2::read_header(&*dev, repair_now)?;
        let data_size = data_size_of(&meta, dev.len());
        if meta
            .segment
            .offset
            .checked_add(data_size)
            .is_none_or(|e| e > dev.len())
        {
            return Err(Error::header(
                crate::error::Check::Segment,
                "metadata",
                format!(
                    "the data segment ({} bytes at {}) extends past the end of the device ({} bytes)",
                    data_size,
                    meta.segment.offset,
                    dev.len()
                ),
            ));
        }
        if let Some((_, c)) = meta.conversion() {
            let end = c
                .hotzone
                .map_or(Some(c.boundary), |h| h.offset.checked_add(h.size));
            if end.is_none_or(|e| e > data_size) {
                return Err(Error::header(
                    crate::error::Check::Conversion,
                    "metadata",
                    format!(
                        "the conversion record points past the data segment ({data_size} bytes)"
                    ),
                ));
            }
        }
        Ok(Volume {
            dev,
            meta: Box::new(meta),
            report,
            may_repair,
        })
    }

    /// The header metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// State.
    pub fn state(&self) -> State {
        state_of(&self.meta)
    }

    /// What `dump` shows.
    pub fn info(&self) -> VolumeInfo {
        info_of(&self.meta, self.dev.len(), &self.report)
    }

    /// The KMIP keys needed to unlock (or resume), in the order old, new: one in the steady
    /// encrypted state and while encrypting or decrypting, two while rekeying, none when plain.
    pub fn required_keys(&self) -> Vec<KeyInfo> {
        info_of(&self.meta, self.dev.len(), &self.report).keys
    }

    /// Checks `key` against the volume's digests. Only this makes a [`VolumeKey`].
    ///
    /// The key must also have the exact length the token (or keyslot) names: PBKDF2-HMAC pads a
    /// short key with zeros, so a digest alone would accept `key ‖ 00…00`.
    pub fn verify_key(&self, key: KeyMaterial) -> Result<VolumeKey> {
        if self.meta.digests.is_empty() {
            return Err(Error::State(
                "the volume is not encrypted, so it has no key to check".into(),
            ));
        }
        for (&id, d) in &self.meta.digests {
            if let Some(bits) = expected_bits(&self.meta, id)
                && bits != key.size().bits()
            {
                continue;
            }
            if digest_matches(d, key.expose())? {
                return Ok(VolumeKey {
                    material: key,
                    digest_id: id,
                    volume_uuid: self.meta.uuid.clone(),
                });
            }
        }
        let ids: Vec<String> = self
            .required_keys()
            .iter()
            .map(|k| format!("KMIP id {:?}", k.reference.unique_identifier))
            .collect();
        Err(Error::WrongKey {
            what: if ids.is_empty() {
                "any digest of this volume".to_string()
            } else {
                format!("this volume's key(s) ({})", ids.join(", "))
            },
        })
    }

    /// Unlocks the volume with the verified keys it needs (see [`Volume::required_keys`]).
    ///
    /// The header's MAC is checked under the authenticating key first (the data segment's key,
    /// the old key of a rekey or decrypt, the new key of an encrypt); a header whose MAC is
    /// missing or wrong is refused with [`Error::HeaderAuth`] before any sector is read or
    /// written. Then a damaged or stale header copy is repaired, and a conversion interrupted by
    /// a crash has its hotzone finished, so the data segment is consistent before anyone reads
    /// it.
    pub fn unlock(self, keys: Vec<VolumeKey>) -> Result<UnlockedVolume> {
        self.unlock_with(keys, false)
    }

    /// Like [`Volume::unlock`], but a header whose MAC is missing or wrong is accepted as it is
    /// and signed anew under its authenticating key: the administrator's explicit decision
    /// (the page's Resume, `atrest volume unlock --accept-header`) for a header written by an
    /// atrest without header MACs, or changed on purpose. The keys are still verified against
    /// the header's digests.
    pub fn unlock_accepting_header(self, keys: Vec<VolumeKey>) -> Result<UnlockedVolume> {
        self.unlock_with(keys, true)
    }

    /// Checks the header's MAC with the given verified keys, without unlocking. `Ok(())` for a
    /// plain volume (no key, no MAC).
    pub fn authenticate(&self, keys: &[VolumeKey]) -> Result<()> {
        check_mac(&self.meta, &derived_keys_of(keys)?)
    }

    fn unlock_with(self, keys: Vec<VolumeKey>, accept: bool) -> Result<UnlockedVolume> {
        for k in &keys {
            if k.volume_uuid != self.meta.uuid {
                return Err(Error::Usage(
                    "a key verified against another volume was given".into(),
                ));
            }
        }
        // The MAC first: nothing the header says is acted upon before it is authenticated.
        let derived = derived_keys_of(&keys)?;
        // Accepted: signed anew, unless opened read-only (then only read, never written).
        let resign = match check_mac(&self.meta, &derived) {
            Ok(()) => false,
            Err(Error::HeaderAuth(_)) if accept => self.may_repair,
            Err(e) => return Err(e),
        };
        let take = |id: u32| -> Result<Arc<XtsCipher>> {
            let k = keys.iter().find(|k| k.digest_id == id).ok_or_else(|| {
                let what = self
                    .meta
                    .kmip_token_for(id)
                    .map(|t| format!("the key with KMIP id {:?}", t.unique_identifier))
                    .unwrap_or_else(|| format!("the key of digest {id}"));
                Error::State(format!(
                    "unlocking needs {what}: fetch it from the KMIP server and verify it first"
                ))
            })?;
            Ok(Arc::new(XtsCipher::new(k.material.secret())?))
        };
        let segment_digest = || {
            self.meta
                .digests
                .iter()
                .find(|(_, d)| d.segments.contains(&0))
                .map(|(id, _)| *id)
        };
        let (old, new) = match (self.meta.conversion(), &self.meta.segment.kind) {
            (None, SegmentKind::Linear) => (Form::Plain, Form::Plain),
            (None, SegmentKind::Crypt { encryption, .. }) => {
                if encryption != CIPHER {
                    return Err(Error::State(format!(
                        "the data segment uses cipher {encryption}; atrest supports {CIPHER}"
                    )));
                }
                let id = segment_digest()
                    .ok_or_else(|| Error::State("no digest belongs to the data segment".into()))?;
                let c = take(id)?;
                (Form::Xts(c.clone()), Form::Xts(c))
            }
            (Some((_, c)), _) => {
                let old = match c.old_digest {
                    Some(id) => Form::Xts(take(id)?),
                    None => Form::Plain,
                };
                let new = match c.new_digest {
                    Some(id) => Form::Xts(take(id)?),
                    None => Form::Plain,
                };
                (old, new)
            }
        };
        let data_size = data_size_of(&self.meta, self.dev.len());
        let boundary = match self.meta.conversion() {
            Some((_, c)) => c.boundary,
            None => data_size,
        };
        let (sector, iv_tweak) = match self.meta.segment.kind {
            SegmentKind::Crypt {
                sector_size,
                iv_tweak,
                ..
            } => (sector_size as u64, iv_tweak),
            SegmentKind::Linear => (DEFAULT_SECTOR_SIZE as u64, 0),
        };
        let data_offset = self.meta.segment.offset;
        let v = UnlockedVolume {
            inner: Arc::new(Inner {
                dev: self.dev,
                meta: Mutex::new(*self.meta),
                derived: Mutex::new(derived),
                report: self.report,
                data_offset,
                data_size: AtomicU64::new(data_size),
                layout: RwLock::new(Layout {
                    old,
                    new,
                    sector,
                    iv_tweak,
                }),
                boundary: AtomicU64::new(boundary),
                locks: RangeLock::default(),
                converting: Mutex::new(()),
                header_flush_owed: AtomicBool::new(false),
                read_only: !self.may_repair,
                #[cfg(feature = "testing")]
                legacy_record: AtomicBool::new(false),
            }),
        };
        if resign || (v.inner.report.damaged.is_some() && self.may_repair) {
            // Authenticated (or accepted): now the header may be written. A commit rewrites both
            // copies, which also repairs a damaged or stale one.
            v.commit(|_| {})?;
        }
        if !v.inner.read_only {
            v.recover_hotzone()?;
        } else if v
            .meta()
            .conversion()
            .is_some_and(|(_, c)| c.hotzone.is_some())
        {
            return Err(Error::State(
                "the volume has an interrupted conversion chunk that must be finished before it \
                 can be read; open it for writing (not read-only)"
                    .into(),
            ));
        }
        Ok(v)
    }
}

/// How the data on one side of the boundary is stored: plain, or XTS under a key.
#[derive(Clone)]
enum Form {
    Plain,
    Xts(Arc<XtsCipher>),
}

struct Layout {
    /// Form at and after the boundary.
    old: Form,
    /// Form before the boundary.
    new: Form,
    sector: u64,
    iv_tweak: u64,
}

impl Layout {
    fn tweak(&self, seg_off: u64) -> u128 {
        self.iv_tweak as u128 + (seg_off / TWEAK_UNIT) as u128
    }

    fn code(&self, form: &Form, encode: bool, seg_off: u64, buf: &mut [u8]) -> Result<()> {
        match form {
            Form::Plain => Ok(()),
            Form::Xts(x) => {
                let t = self.tweak(seg_off);
                if encode {
                    x.encrypt_sectors(t, self.sector as usize, buf)
                } else {
                    x.decrypt_sectors(t, self.sector as usize, buf)
                }
            }
        }
    }

    /// Whether `[start, end)` of the segment is stored as it is (plain on both sides of the
    /// boundary that it touches).
    fn stores_plain(&self, boundary: u64, start: u64, end: u64) -> bool {
        (start >= boundary || matches!(self.new, Form::Plain))
            && (end <= boundary || matches!(self.old, Form::Plain))
    }

    /// Decodes (encode = false) or encodes a sector-aligned buffer at segment offset `seg_off`,
    /// choosing the form of each sector by the boundary.
    fn code_split(&self, boundary: u64, encode: bool, seg_off: u64, buf: &mut [u8]) -> Result<()> {
        let end = seg_off + buf.len() as u64;
        let split = boundary.clamp(seg_off, end);
        let (a, b) = buf.split_at_mut((split - seg_off) as usize);
        if !a.is_empty() {
            self.code(&self.new, encode, seg_off, a)?;
        }
        if !b.is_empty() {
            self.code(&self.old, encode, split, b)?;
        }
        Ok(())
    }
}

struct Inner {
    dev: Arc<dyn BlockDevice>,
    meta: Mutex<Metadata>,
    /// The keys derived from each verified volume key, by digest id: every commit signs the new
    /// header under its authenticating key's MAC key; [`UnlockedVolume::seal_key`] gives the
    /// current seal key.
    derived: Mutex<DerivedMap>,
    report: ReadReport,
    /// Opened read-only: the header is never written.
    read_only: bool,
    data_offset: u64,
    /// Grows with [`UnlockedVolume::grow`], never shrinks.
    data_size: AtomicU64,
    layout: RwLock<Layout>,
    /// Segment offsets below this are in the new form.
    boundary: AtomicU64,
    locks: RangeLock,
    converting: Mutex<()>,
    /// A header commit left its secondary copy unflushed (see `commit_with`).
    header_flush_owed: AtomicBool,
    /// Tests only: write conversion records of version 1.
    #[cfg(feature = "testing")]
    legacy_record: std::sync::atomic::AtomicBool,
}

/// An unlocked volume. Its data segment is a [`BlockDevice`], also while a conversion runs in
/// another thread ([`UnlockedVolume::convert`]): I/O that touches the chunk being converted
/// waits for it.
#[derive(Clone)]
pub struct UnlockedVolume {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for UnlockedVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockedVolume")
            .field("state", &self.state())
            .field("data_size", &self.inner.data_size.load(Ordering::Acquire))
            .finish()
    }
}

fn io_err(e: Error) -> io::Error {
    match e {
        Error::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}
