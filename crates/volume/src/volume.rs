//! Volumes: format, open, key check, unlock, the data segment as a block device, and in-place
//! conversion (encrypt, rekey, decrypt).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
/// Default conversion chunk.
pub const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;
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

/// HKDF `info` of the key [`UnlockedVolume::seal_key`] gives.
pub const SEAL_KEY_INFO: &[u8] = b"atrest content seal key v1";

/// What is derived from one verified volume key (one-way, with HKDF): the key that signs the
/// header, and the key the volume's content seals itself with.
struct DerivedKeys {
    mac: MacKey,
    seal: SecretBytes,
    /// The verified volume key itself, for a recovery keyslot made while unlocked.
    raw: SecretBytes,
}

impl DerivedKeys {
    fn of(key: &[u8]) -> Result<DerivedKeys> {
        let mut seal = SecretBytes::zeroed(32);
        luks2::mac::hkdf_sha256(key, SEAL_KEY_INFO, seal.expose_mut())?;
        Ok(DerivedKeys {
            mac: MacKey::derive(key)?,
            seal,
            raw: SecretBytes::from_slice_zeroizing(&mut key.to_vec()),
        })
    }
}

/// By digest id.
type DerivedMap = std::collections::BTreeMap<u32, DerivedKeys>;

fn derived_keys_of(keys: &[VolumeKey]) -> Result<DerivedMap> {
    keys.iter()
        .map(|k| Ok((k.digest_id, DerivedKeys::of(k.expose())?)))
        .collect()
}

/// Checks the MAC of `m` under its authenticating key (which must be among `derived`).
fn check_mac(m: &Metadata, derived: &DerivedMap) -> Result<()> {
    let Some(d) = m.authenticating_digest() else {
        return Ok(());
    };
    let key = derived.get(&d).map(|k| &k.mac).ok_or_else(|| {
        let what = m
            .kmip_token_for(d)
            .map(|t| format!("the key with KMIP id {:?}", t.unique_identifier))
            .unwrap_or_else(|| format!("the key of digest {d}"));
        Error::State(format!(
            "checking the header needs {what}: fetch it from the KMIP server and verify it first"
        ))
    })?;
    let failure = match m.mac() {
        None => HeaderAuthFailure::Missing,
        Some(_) if key.verify(m)? => return Ok(()),
        Some(_) => HeaderAuthFailure::Mismatch,
    };
    Err(Error::HeaderAuth(HeaderAuthError {
        failure,
        claim: claim_of(m),
    }))
}

/// What a header claims, in words, for error messages.
fn claim_of(m: &Metadata) -> String {
    let id = |d: Option<u32>| {
        d.and_then(|d| m.kmip_token_for(d))
            .map(|t| {
                format!(
                    "KMIP id {:?} on {}",
                    t.unique_identifier,
                    t.servers.join(", ")
                )
            })
            .unwrap_or_else(|| "no KMIP id".into())
    };
    match m.conversion() {
        Some((_, c)) => {
            let keys = match c.kind {
                ConversionKind::Encrypt => format!("to the key with {}", id(c.new_digest)),
                ConversionKind::Rekey => format!(
                    "from the key with {} to the key with {}",
                    id(c.old_digest),
                    id(c.new_digest)
                ),
                ConversionKind::Decrypt => {
                    format!("from the key with {} to plaintext", id(c.old_digest))
                }
            };
            let hz = c
                .hotzone
                .map(|h| {
                    format!(
                        ", hotzone of {} bytes with its table at device byte {}",
                        h.size, h.table_offset
                    )
                })
                .unwrap_or_default();
            format!(
                "it records a{} {} {keys} at byte {}{hz}",
                if c.kind == ConversionKind::Encrypt {
                    "n"
                } else {
                    ""
                },
                c.kind.as_str(),
                c.boundary
            )
        }
        None => match &m.segment.kind {
            SegmentKind::Linear => "plain".into(),
            SegmentKind::Crypt { encryption, .. } => format!(
                "encrypted with {encryption} under the key with {}",
                id(m.segment_digest())
            ),
        },
    }
}

fn info_of(m: &Metadata, dev_len: u64, report: &ReadReport) -> VolumeInfo {
    let state = state_of(m);
    let mut keys = Vec::new();
    let token_id = |digest: u32| {
        m.tokens
            .iter()
            .find(|(_, t)| matches!(t, Token::Kmip(k) if k.digest == digest))
            .map(|(id, _)| *id)
    };
    let mut push = |role: &'static str, digest: u32| {
        if let (Some(t), Some(tid)) = (m.kmip_token_for(digest), token_id(digest)) {
            keys.push(KeyInfo {
                role,
                token: tid,
                digest,
                reference: t.clone(),
            });
        }
    };
    match m.conversion() {
        Some((_, c)) => {
            if let Some(d) = c.old_digest {
                push("old", d);
            }
            if let Some(d) = c.new_digest {
                push("new", d);
            }
        }
        None => {
            for (id, d) in &m.digests {
                if d.segments.contains(&0) {
                    push("current", *id);
                }
            }
        }
    }
    let data_size = data_size_of(m, dev_len);
    let key_bits = keys.last().map(|k| k.reference.key_bits).or_else(|| {
        m.digests
            .keys()
            .find_map(|&id| crate::key::expected_bits(m, id))
    });
    VolumeInfo {
        state,
        uuid: m.uuid.clone(),
        label: m.label.clone(),
        cipher: match &m.segment.kind {
            SegmentKind::Crypt { encryption, .. } => Some(encryption.clone()),
            SegmentKind::Linear => None,
        },
        key_bits: if state == State::Plain {
            None
        } else {
            key_bits
        },
        sector_size: sector_of(m),
        data_offset: m.segment.offset,
        data_size,
        key_id: keys.last().map(|k| k.reference.unique_identifier.clone()),
        servers: keys
            .last()
            .map(|k| k.reference.servers.clone())
            .unwrap_or_default(),
        keys,
        progress: m.conversion().map(|(_, c)| ProgressInfo {
            kind: c.kind,
            done: c.boundary,
            total: data_size,
            percent: if data_size == 0 {
                100.0
            } else {
                c.boundary as f64 * 100.0 / data_size as f64
            },
        }),
        seqid: m.seqid,
        header_mac: m.mac().is_some(),
        recovery_key: !recovery_slots::recovery_keyslots(m).is_empty(),
        header_repair: report.damaged.as_ref().map(|d| {
            format!(
                "{d} ({})",
                if report.repaired {
                    "repaired"
                } else {
                    "not repaired yet: unlocking rewrites it once the header is authenticated \
                     under the volume key, as does `atrest volume dump --repair`"
                }
            )
        }),
    }
}

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

/// SHA-256 of one conversion unit (record version 1). The one-shot `openssl::sha::sha256`
/// fetches the digest from the provider on every call under OpenSSL 3 (a lock and string
/// compares per 512-byte unit); the low-level context does not.
fn sha256_unit(unit: &[u8]) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(unit);
    h.finish()
}

/// Writes the checksum of each 512-byte unit of `data` into `table` (one entry per unit).
/// Version 2: xxh3-128, its canonical form (the 128-bit value big-endian); version 1: SHA-256.
fn unit_checksums(version: RecordVersion, data: &[u8], table: &mut [u8]) {
    let e = version.entry_bytes() as usize;
    for (unit, entry) in data
        .chunks_exact(HOTZONE_UNIT as usize)
        .zip(table.chunks_exact_mut(e))
    {
        match version {
            RecordVersion::V1 => entry.copy_from_slice(&sha256_unit(unit)),
            RecordVersion::V2 => entry.copy_from_slice(&xxh3_128(unit).to_be_bytes()),
        }
    }
}

/// Whether `unit` still holds the old contents its table entry describes.
fn unit_matches(version: RecordVersion, unit: &[u8], entry: &[u8]) -> bool {
    match version {
        RecordVersion::V1 => sha256_unit(unit)[..] == *entry,
        RecordVersion::V2 => xxh3_128(unit).to_be_bytes()[..] == *entry,
    }
}

/// Bit `i` of a hotzone's skip mask: the i-th [`SKIP_GRANULE`] of the chunk at `b` of `len`
/// bytes holds no content according to `used` (asked while the chunk's lock is held).
fn skip_mask(used: Option<&dyn UsedRanges>, b: u64, len: u64) -> u64 {
    let Some(used) = used else { return 0 };
    let mut mask = 0u64;
    for i in 0..len.div_ceil(SKIP_GRANULE).min(64) {
        let off = b + i * SKIP_GRANULE;
        let n = SKIP_GRANULE.min(b + len - off);
        if !used.in_use(off, n) {
            mask |= 1 << i;
        }
    }
    mask
}

/// Where a conversion that started this run at `first` stands at `done` of `total`, with this
/// run's rate and the time left at that rate.
fn progress_at(
    kind: ConversionKind,
    first: u64,
    done: u64,
    total: u64,
    started: Instant,
) -> Progress {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        (done - first) as f64 / secs
    } else {
        0.0
    };
    Progress {
        kind,
        done,
        total,
        bytes_per_sec: rate,
        eta: (rate > 0.0).then(|| Duration::from_secs_f64((total - done) as f64 / rate)),
    }
}

/// Most bytes a used-space-only conversion passes over in one commit when they hold no content:
/// a volume of hundreds of GiB, mostly empty, takes a commit per 4 GiB, not per chunk.
const MAX_SKIP_RUN: u64 = 4 << 30;

/// Bytes a conversion worker reads, checksums or converts at a time: small enough that the
/// read, the checksum or cipher and the write all stay in the CPU cache (a chunk-sized buffer
/// would go through memory several times).
const PIECE: usize = 256 << 10;

/// Runs `f(g, table_part, piece)` for each granule `g` of a chunk of `len` bytes that `skip`
/// does not exclude, spread over `threads` threads (the calling one included), each taking a
/// contiguous run of granules and its own `PIECE`-byte buffer. `table_part` is the granule's
/// part of `table` (empty when `table` is).
fn per_granule<F>(
    threads: usize,
    len: u64,
    skip: u64,
    table: &mut [u8],
    entry: u64,
    f: F,
) -> Result<()>
where
    F: Fn(u64, &mut [u8], &mut [u8]) -> Result<()> + Sync,
{
    let granules = len.div_ceil(SKIP_GRANULE) as usize;
    let t_per = (SKIP_GRANULE / HOTZONE_UNIT * entry) as usize;
    let tparts: Vec<&mut [u8]> = if table.is_empty() {
        (0..granules).map(|_| &mut [][..]).collect()
    } else {
        table.chunks_mut(t_per).collect()
    };
    let mut parts: Vec<(u64, &mut [u8])> = tparts
        .into_iter()
        .enumerate()
        .map(|(g, t)| (g as u64, t))
        .filter(|(g, _)| !is_skipped(skip, *g))
        .collect();
    let threads = threads.clamp(1, parts.len().max(1));
    let per = parts.len().div_ceil(threads).max(1);
    let run = |group: &mut [(u64, &mut [u8])]| -> Result<()> {
        let mut piece = vec![0u8; PIECE.min(len as usize)];
        for (g, t) in group.iter_mut() {
            f(*g, t, &mut piece)?;
        }
        Ok(())
    };
    if threads == 1 {
        return run(&mut parts);
    }
    std::thread::scope(|s| {
        let mut groups = parts.chunks_mut(per);
        let mine = groups.next();
        let handles: Vec<_> = groups.map(|g| s.spawn(|| run(g))).collect();
        let mut result = mine.map_or(Ok(()), run);
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("a conversion worker panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// A chunk whose checksums are computed, still locked, not yet committed or written.
struct Prepared<'a> {
    b: u64,
    len: u64,
    guard: crate::rangelock::RangeGuard<'a>,
    skip: u64,
    table: Vec<u8>,
}

/// Whether granule `g` is marked in a skip mask.
fn is_skipped(skip: u64, g: u64) -> bool {
    g < 64 && skip & (1 << g) != 0
}

impl UnlockedVolume {
    fn meta(&self) -> std::sync::MutexGuard<'_, Metadata> {
        self.inner.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// State.
    pub fn state(&self) -> State {
        state_of(&self.meta())
    }

    /// What `dump` shows.
    pub fn info(&self) -> VolumeInfo {
        info_of(&self.meta(), self.inner.dev.len(), &self.inner.report)
    }

    /// A key for what the volume stores to seal itself with (the content store seals its audit
    /// history with it): HKDF-SHA256 of the volume key that authenticates the header now (the
    /// data segment's key; the new key while encrypting, the old one while rekeying or
    /// decrypting), info [`SEAL_KEY_INFO`]. `None` on a plain volume. It changes when a
    /// conversion finishes; one-way, so it tells nothing about the volume key.
    pub fn seal_key(&self) -> Option<SecretBytes> {
        let d = self.meta().authenticating_digest()?;
        self.inner
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
            .map(|k| k.seal.clone())
    }

    /// A copy of the header metadata.
    pub fn metadata(&self) -> Metadata {
        self.meta().clone()
    }

    fn sector(&self) -> u64 {
        self.inner
            .layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .sector
    }

    fn rw(
        &self,
        offset: u64,
        len: usize,
        write: Option<&[u8]>,
        out: Option<&mut [u8]>,
    ) -> Result<()> {
        let inner = &*self.inner;
        check_range(offset, len, inner.data_size.load(Ordering::Acquire))
            .map_err(Error::io("data segment access"))?;
        if len == 0 {
            return Ok(());
        }
        // Lock order: byte range, then layout. The range is aligned to the largest sector size
        // so it covers whole sectors whatever the layout says.
        let s = MAX_SECTOR;
        let start = offset / s * s;
        let end = (offset + len as u64).div_ceil(s) * s;
        let _g = inner.locks.acquire(start, end, write.is_some());
        let layout = inner.layout.read().unwrap_or_else(|e| e.into_inner());
        let s = layout.sector;
        let start = offset / s * s;
        let end = (offset + len as u64).div_ceil(s) * s;
        let boundary = inner.boundary.load(Ordering::Acquire);
        let head = (offset - start) as usize;
        let aligned = head == 0 && end - start == len as u64;
        if let (Some(data), true) = (write, aligned) {
            // Aligned: no read, and no copy at all where the bytes are stored as they are.
            let dev_off = inner.data_offset + start;
            let what = Error::io("writing the data segment");
            if layout.stores_plain(boundary, start, end) {
                return inner.dev.write_at(data, dev_off).map_err(what);
            }
            let mut buf = data.to_vec();
            layout.code_split(boundary, true, start, &mut buf)?;
            return inner.dev.write_at(&buf, dev_off).map_err(what);
        }
        let mut buf = vec![0u8; (end - start) as usize];
        let read_dev = |buf: &mut [u8]| {
            inner
                .dev
                .read_at(buf, inner.data_offset + start)
                .map_err(Error::io("reading the data segment"))
        };
        match (write, out) {
            (Some(data), _) => {
                if !aligned {
                    read_dev(&mut buf)?;
                    layout.code_split(boundary, false, start, &mut buf)?;
                }
                buf[head..head + len].copy_from_slice(data);
                layout.code_split(boundary, true, start, &mut buf)?;
                inner
                    .dev
                    .write_at(&buf, inner.data_offset + start)
                    .map_err(Error::io("writing the data segment"))
            }
            (None, Some(out)) => {
                if aligned {
                    inner
                        .dev
                        .read_at(out, inner.data_offset + start)
                        .map_err(Error::io("reading the data segment"))?;
                    layout.code_split(boundary, false, start, out)
                } else {
                    read_dev(&mut buf)?;
                    layout.code_split(boundary, false, start, &mut buf)?;
                    out.copy_from_slice(&buf[head..head + len]);
                    Ok(())
                }
            }
            (None, None) => Ok(()),
        }
    }

    /// Extends the data segment to the end of the device, after the disk or image grew (a VM
    /// disk extended, an image file made longer), in the plain and the encrypted state: the new
    /// size goes into the header through [`UnlockedVolume::commit`], signed under the volume key
    /// like every commit. The new space is usable at once by whatever uses this volume. Refused
    /// during a conversion, and when the device is now smaller than the data segment. Returns
    /// the data size before and after (equal when the device did not grow).
    pub fn grow(&self) -> Result<(u64, u64)> {
        let inner = &*self.inner;
        // A conversion holds this for its whole run, and beginning one takes it too.
        let _busy = match inner.converting.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(Error::State(
                    "a conversion is running on this volume; grow it once the conversion has \
                     finished"
                        .into(),
                ));
            }
        };
        let state = self.state();
        if matches!(
            state,
            State::Encrypting | State::Rekeying | State::Decrypting
        ) {
            return Err(Error::State(format!(
                "the volume is {} (a conversion is under way); finish the conversion (run it \
                 again to resume), then grow the volume",
                state.as_str()
            )));
        }
        let dev_len = inner
            .dev
            .refresh_len()
            .map_err(Error::io("reading the size of the device"))?;
        let (fixed, sector) = {
            let m = self.meta();
            (m.segment.size.is_some(), sector_of(&m) as u64)
        };
        let old = inner.data_size.load(Ordering::Acquire);
        let new = dev_len.saturating_sub(inner.data_offset) / sector * sector;
        if new < old {
            return Err(Error::State(format!(
                "the device ({dev_len} bytes) is now smaller than the end of the data segment \
                 ({} bytes); a volume never shrinks: give the device its size back",
                inner.data_offset + old
            )));
        }
        if new == old {
            return Ok((old, old));
        }
        // A `dynamic` segment (cryptsetup's choice) already runs to the end of the device.
        if fixed {
            self.commit(|m| m.segment.size = Some(new))?;
        }
        inner.data_size.store(new, Ordering::Release);
        inner.boundary.store(new, Ordering::Release);
        Ok((old, new))
    }

    /// Commits the header changed by `f`, signed under its authenticating key, so that a
    /// crash between two commits always leaves a header whose MAC verifies.
    fn commit(&self, f: impl FnOnce(&mut Metadata)) -> Result<()> {
        self.commit_with(f, false)
    }

    /// [`UnlockedVolume::commit`]; with `defer`, the secondary copy's flush is left to the next
    /// flush of the device (a conversion's next chunk makes one before it commits again), and
    /// any commit flushes first while one is owed, so at most one header copy is ever in flight.
    fn commit_with(&self, f: impl FnOnce(&mut Metadata), defer: bool) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::State(
                "the volume was opened read-only; its header is not written".into(),
            ));
        }
        let mut m = self.meta();
        let mut next = m.clone();
        f(&mut next);
        let mac = match next.authenticating_digest() {
            None => None,
            Some(d) => {
                let keys = self.inner.derived.lock().unwrap_or_else(|e| e.into_inner());
                let key = keys.get(&d).map(|k| &k.mac).ok_or_else(|| {
                    Error::State(format!(
                        "no verified key for digest {d} to sign the header with; unlock with \
                         every key the volume names"
                    ))
                })?;
                Some(key.sign(&next)?)
            }
        };
        next.set_mac(mac);
        if self.inner.header_flush_owed.swap(false, Ordering::AcqRel) {
            self.inner
                .dev
                .flush()
                .map_err(Error::io("flushing the secondary LUKS2 header"))?;
        }
        if defer {
            luks2::write_header_deferred(&*self.inner.dev, &mut next)?;
            self.inner.header_flush_owed.store(true, Ordering::Release);
        } else {
            luks2::write_header(&*self.inner.dev, &mut next)?;
        }
        *m = next;
        Ok(())
    }

    /// Flushes the device from the conversion's thread, after its own writes: this also makes
    /// durable a secondary header copy whose flush a commit left owed.
    fn flush_data(&self) -> Result<()> {
        self.inner
            .dev
            .flush()
            .map_err(Error::io("flushing the data segment"))?;
        self.inner.header_flush_owed.store(false, Ordering::Release);
        Ok(())
    }

    /// Keeps the keys derived from a new key (whose digest will get id `digest`) for the
    /// commits that follow.
    fn add_derived_keys(&self, digest: u32, key: &KeyMaterial) -> Result<()> {
        let k = DerivedKeys::of(key.expose())?;
        self.inner
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, k);
        Ok(())
    }

    /// Starts encrypting a plain volume with `key`, whose KMIP reference goes into the header.
    /// Returns at once; [`UnlockedVolume::convert`] does the work (and resumes it after a
    /// crash).
    pub fn begin_encrypt(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
    ) -> Result<()> {
        if opts.sector_size != 512 && opts.sector_size != 4096 {
            return Err(Error::Usage("the sector size must be 4096 or 512".into()));
        }
        let _busy = self
            .inner
            .converting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _all = self.inner.locks.acquire(0, u64::MAX, true);
        if self.state() != State::Plain {
            return Err(Error::State(format!(
                "the volume is {}, not plain: encryption applies to plain volumes only",
                self.state().as_str()
            )));
        }
        if !self
            .inner
            .data_size
            .load(Ordering::Acquire)
            .is_multiple_of(opts.sector_size as u64)
        {
            return Err(Error::State(
                "the data size is not a multiple of the sector size".into(),
            ));
        }
        check_reference(&reference)?;
        let digest = make_digest(&key, opts.pbkdf2_iterations, vec![0])?;
        let cipher = Arc::new(XtsCipher::new(key.secret())?);
        let did = self.meta().free_digest_id();
        self.add_derived_keys(did, &key)?;
        let token = token_of(&reference, key.size());
        self.commit(|m| {
            m.add_new_key(digest, token, ConversionKind::Encrypt, None);
            m.segment.kind = SegmentKind::Crypt {
                encryption: CIPHER.into(),
                sector_size: opts.sector_size,
                iv_tweak: 0,
            };
        })?;
        let mut layout = self.inner.layout.write().unwrap_or_else(|e| e.into_inner());
        layout.new = Form::Xts(cipher);
        layout.old = Form::Plain;
        layout.sector = opts.sector_size as u64;
        layout.iv_tweak = 0;
        self.inner.boundary.store(0, Ordering::Release);
        Ok(())
    }

    /// Starts re-encrypting an encrypted volume with a new key. A recovery key the volume has
    /// is removed in the same header commit (it opens the old key only); see
    /// [`UnlockedVolume::begin_rekey_renewing_recovery`] to replace it instead.
    pub fn begin_rekey(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
    ) -> Result<()> {
        self.begin_rekey_with(key, reference, opts, None).map(drop)
    }

    /// Like [`UnlockedVolume::begin_rekey`], but when the volume has a recovery key a new one
    /// replaces it in the same header commit, in two keyslots: one holding the old key and one
    /// the new key, so that the new recovery key alone opens the volume at every point of the
    /// rekey; the old key's keyslot goes with the old key when the rekey finishes. Returns the
    /// new recovery key (to be shown once), or `None` when the volume had none.
    pub fn begin_rekey_renewing_recovery(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
        kdf: &RecoveryKdf,
    ) -> Result<Option<RecoveryKey>> {
        self.begin_rekey_with(key, reference, opts, Some(kdf))
    }

    fn begin_rekey_with(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
        renew: Option<&RecoveryKdf>,
    ) -> Result<Option<RecoveryKey>> {
        let _busy = self
            .inner
            .converting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _all = self.inner.locks.acquire(0, u64::MAX, true);
        self.check_steady_encrypted("rekeying")?;
        check_reference(&reference)?;
        let old_id = {
            let m = self.meta();
            let id = m
                .digests
                .iter()
                .find(|(_, d)| d.segments.contains(&0))
                .map(|(i, _)| *i);
            let id =
                id.ok_or_else(|| Error::State("no digest belongs to the data segment".into()))?;
            if digest_matches(&m.digests[&id], key.expose())? {
                return Err(Error::Usage(
                    "the new key is the current key: create a new key on the KMIP server".into(),
                ));
            }
            id
        };
        let digest = make_digest(&key, opts.pbkdf2_iterations, Vec::new())?;
        let cipher = Arc::new(XtsCipher::new(key.secret())?);
        let did = self.meta().free_digest_id();
        let old_slots = recovery_slots::recovery_keyslots(&self.meta());
        // The new recovery keyslots (old key, new key) are written before the commit that names
        // them and removes the old one, so a crash leaves one recovery key or the other.
        let renewed = match renew {
            Some(kdf) if !old_slots.is_empty() => {
                let old_raw = self.raw_key(old_id)?;
                let rk = RecoveryKey::generate()?;
                let slots = self.write_recovery_slots(
                    &rk,
                    &[(old_id, old_raw.expose()), (did, key.expose())],
                    kdf,
                )?;
                Some((rk, slots))
            }
            _ => None,
        };
        self.add_derived_keys(did, &key)?;
        let token = token_of(&reference, key.size());
        let slots = renewed.as_ref().map(|(_, s)| s.clone());
        self.commit_and_wipe(|m| {
            recovery_slots::remove(m, &old_slots);
            m.add_new_key(digest, token, ConversionKind::Rekey, Some(old_id));
            for (id, json, digest) in slots.into_iter().flatten() {
                recovery_slots::add(m, id, json, digest);
            }
        })?;
        let mut layout = self.inner.layout.write().unwrap_or_else(|e| e.into_inner());
        layout.old = layout.new.clone();
        layout.new = Form::Xts(cipher);
        self.inner.boundary.store(0, Ordering::Release);
        Ok(renewed.map(|(rk, _)| rk))
    }

    /// Starts decrypting an encrypted volume.
    pub fn begin_decrypt(&self) -> Result<()> {
        let _busy = self
            .inner
            .converting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _all = self.inner.locks.acquire(0, u64::MAX, true);
        self.check_steady_encrypted("decrypting")?;
        self.commit(Metadata::begin_decrypt)?;
        let mut layout = self.inner.layout.write().unwrap_or_else(|e| e.into_inner());
        layout.old = layout.new.clone();
        layout.new = Form::Plain;
        self.inner.boundary.store(0, Ordering::Release);
        Ok(())
    }

    fn check_steady_encrypted(&self, what: &str) -> Result<()> {
        let m = self.meta();
        match state_of(&m) {
            State::Encrypted => {}
            s => {
                return Err(Error::State(format!(
                    "the volume is {}: {what} starts from an encrypted volume (resume a conversion under way instead)",
                    s.as_str()
                )));
            }
        }
        let foreign = crate::recovery_slots::foreign_keyslots(&m);
        if !foreign.is_empty() {
            return Err(Error::State(format!(
                "the volume has {} passphrase keyslot(s) not made by atrest that {what} would invalidate: remove them with `cryptsetup luksKillSlot` first",
                foreign.len()
            )));
        }
        Ok(())
    }

    /// Finishes the hotzone a crash left behind (called by unlock).
    fn recover_hotzone(&self) -> Result<()> {
        let (hz, version) = match self.meta().conversion() {
            Some((_, c)) => (c.hotzone, c.version),
            None => (None, RecordVersion::V2),
        };
        let Some(hz) = hz else { return Ok(()) };
        let inner = &*self.inner;
        let _g = inner.locks.acquire(hz.offset, hz.offset + hz.size, true);
        let mut table = vec![0u8; version.table_len(hz.size) as usize];
        inner
            .dev
            .read_at(&mut table, hz.table_offset)
            .map_err(Error::io("reading the conversion checksum table"))?;
        if let Some(want) = hz.table_sha256
            && !openssl::memcmp::eq(&openssl::sha::sha256(&table), &want)
        {
            return Err(Error::State(format!(
                "the checksum table of the interrupted conversion chunk (device byte {}) is not \
                 the one the authenticated header records: the keyslots area was changed outside \
                 atrest, so the chunk at byte {} of the data segment cannot be finished safely; \
                 nothing was written. Restore the volume from a backup",
                hz.table_offset, hz.offset
            )));
        }
        let mut raw = vec![0u8; hz.size as usize];
        inner
            .dev
            .read_at(&mut raw, inner.data_offset + hz.offset)
            .map_err(Error::io("reading the interrupted conversion chunk"))?;
        let layout = inner.layout.read().unwrap_or_else(|e| e.into_inner());
        let s = layout.sector as usize;
        let upu = s / HOTZONE_UNIT as usize;
        let e = version.entry_bytes() as usize;
        let skipped = |i: usize| {
            let g = (i * s) as u64 / SKIP_GRANULE;
            g < 64 && hz.skip & (1 << g) != 0
        };
        let mut plain = vec![0u8; s];
        let mut old_dec = vec![0u8; s];
        for (i, sector) in raw.chunks_exact_mut(s).enumerate() {
            if skipped(i) {
                // Holds no content: the conversion left it as it was, and so does recovery.
                continue;
            }
            let seg_off = hz.offset + (i * s) as u64;
            old_dec.copy_from_slice(sector);
            layout.code(&layout.old, false, seg_off, &mut old_dec)?;
            plain.copy_from_slice(sector);
            layout.code(&layout.new, false, seg_off, &mut plain)?;
            for u in 0..upu {
                let idx = i * upu + u;
                let r = u * HOTZONE_UNIT as usize..(u + 1) * HOTZONE_UNIT as usize;
                if unit_matches(version, &sector[r.clone()], &table[idx * e..idx * e + e]) {
                    // Still the old form.
                    plain[r.clone()].copy_from_slice(&old_dec[r]);
                }
            }
            layout.code(&layout.new, true, seg_off, &mut plain)?;
            sector.copy_from_slice(&plain);
        }
        // Written back granule by granule: a skipped one is not touched (a hole stays a hole).
        for (g, part) in raw.chunks(SKIP_GRANULE as usize).enumerate() {
            if g < 64 && hz.skip & (1 << g) != 0 {
                continue;
            }
            inner
                .dev
                .write_at(
                    part,
                    inner.data_offset + hz.offset + g as u64 * SKIP_GRANULE,
                )
                .map_err(Error::io("rewriting the interrupted conversion chunk"))?;
        }
        inner
            .dev
            .flush()
            .map_err(Error::io("flushing the data segment"))?;
        drop(layout);
        let end = hz.offset + hz.size;
        let v = self.record_version();
        self.commit(|m| m.set_boundary(end, None, v))?;
        inner.boundary.store(end, Ordering::Release);
        Ok(())
    }

    /// The version of the conversion record this process writes: 2 (a record of version 1
    /// is recovered and resumed, and becomes version 2 with the next commit).
    fn record_version(&self) -> RecordVersion {
        #[cfg(feature = "testing")]
        if self.inner.legacy_record.load(Ordering::Relaxed) {
            return RecordVersion::V1;
        }
        RecordVersion::V2
    }

    /// Makes this volume's conversion write records of version 1 (SHA-256 table), as earlier
    /// atrest versions did, so that tests can check that such a record is still recovered and
    /// resumed. Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn write_version_1_records(&self, on: bool) {
        self.inner.legacy_record.store(on, Ordering::Relaxed);
    }

    /// Runs (or resumes) the conversion under way until it is finished or `opts.stop` is set,
    /// converting the whole data segment. See [`UnlockedVolume::convert_with`].
    pub fn convert(
        &self,
        opts: &ConvertOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<State> {
        self.convert_with(opts, None, progress)
    }

    /// Runs (or resumes) the conversion under way until it is finished or `opts.stop` is set.
    /// Each chunk is committed in the header; a crash at any point loses nothing (see
    /// docs/volume-format.md). `progress` is called after each chunk. Returns the final state.
    ///
    /// With `used` (used-space-only conversion), each [`SKIP_GRANULE`] of a chunk is asked
    /// about while the chunk's lock is held; one that holds no content is not read or written
    /// (it keeps what it held: a hole stays a hole) and counts as converted. `None` converts
    /// every byte (the full conversion, which also overwrites free space).
    pub fn convert_with(
        &self,
        opts: &ConvertOptions,
        used: Option<Arc<dyn UsedRanges>>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<State> {
        let _busy = self
            .inner
            .converting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let inner = &*self.inner;
        let (kind, ks_off, ks_size) = {
            let m = self.meta();
            match m.conversion() {
                None => return Ok(state_of(&m)),
                Some((_, c)) => (c.kind, m.keyslots_offset(), m.keyslots_size),
            }
        };
        let version = self.record_version();
        // A version 1 record has no skip mask: it converts every byte.
        let used = used.filter(|_| version == RecordVersion::V2);
        let sector = self.sector();
        let entry = version.entry_bytes();
        // Conversion tables stay below the recovery keyslots' region.
        let max_chunk = (recovery_slots::table_space(ks_size) / 2 / entry * HOTZONE_UNIT)
            .min(MAX_HOTZONE_SIZE)
            / sector
            * sector;
        let chunk = (opts.chunk_size / sector * sector).clamp(sector, max_chunk.max(sector));
        if max_chunk < sector {
            return Err(Error::State(
                "the keyslots area is too small for a conversion table".into(),
            ));
        }
        let table_len = version.table_len(chunk);
        let total = inner.data_size.load(Ordering::Acquire);
        let started = Instant::now();
        let first = inner.boundary.load(Ordering::Acquire);
        let mut slot = 0u64;
        let mut prev_guard = None;
        let threads = opts.threads.max(1);
        // With two threads or more, the checksums of the next chunk (pass 1) run while this
        // chunk is converted and written (pass 2), each stage on half of the threads.
        let pipelined = threads >= 2;
        let stage_threads = if pipelined { threads / 2 } else { threads };
        let stopping = || {
            opts.stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        };
        let prepare = |b: u64, threads: usize| -> Result<Prepared<'_>> {
            let len = chunk.min(total - b);
            let guard = inner.locks.acquire(b, b + len, true);
            // Decided under the chunk's lock: no write to it can start or be under way.
            let skip = skip_mask(used.as_deref(), b, len);
            let mut table = vec![0u8; version.table_len(len) as usize];
            // The checksums of the old form, piece by piece.
            let per_piece = PIECE / HOTZONE_UNIT as usize * entry as usize;
            per_granule(threads, len, skip, &mut table, entry, |g, t, piece| {
                let g_off = b + g * SKIP_GRANULE;
                let g_end = (g_off + SKIP_GRANULE).min(b + len);
                for (p, t) in t.chunks_mut(per_piece).enumerate() {
                    let off = g_off + (p * PIECE) as u64;
                    let d = &mut piece[..(g_end - off).min(PIECE as u64) as usize];
                    inner
                        .dev
                        .read_at(d, inner.data_offset + off)
                        .map_err(Error::io("reading the data segment"))?;
                    unit_checksums(version, d, t);
                }
                Ok(())
            })?;
            Ok(Prepared {
                b,
                len,
                guard,
                skip,
                table,
            })
        };
        let mut next: Option<Prepared<'_>> = None;
        loop {
            let b = inner.boundary.load(Ordering::Acquire);
            let stop = stopping();
            if b >= total || stop {
                // A chunk prepared ahead is released untouched.
                drop(next.take());
                self.flush_data()?;
                if stop && b < total {
                    self.commit(|m| m.set_boundary(b, None, version))?;
                    return Ok(self.state());
                }
                // The last chunk stays locked until the commit that retires its hotzone. The old
                // key's recovery keyslots go with its digest, and their areas are wiped.
                self.commit_and_wipe(Metadata::finish)?;
                drop(prev_guard);
                let _all = inner.locks.acquire(0, u64::MAX, true);
                let mut layout = inner.layout.write().unwrap_or_else(|e| e.into_inner());
                layout.old = layout.new.clone();
                return Ok(self.state());
            }
            // Used-space-only: a run of chunks that hold no content is locked, asked, and passed
            // over by one commit; nothing is read or written there, and no table is needed.
            if used.is_some() {
                let all = |len: u64| {
                    let g = len.div_ceil(SKIP_GRANULE);
                    if g >= 64 { u64::MAX } else { (1u64 << g) - 1 }
                };
                let mut guards = Vec::new();
                let mut end = b;
                match next.take() {
                    Some(p) if p.b == b && p.skip == all(p.len) => {
                        end = b + p.len;
                        guards.push(p.guard);
                    }
                    other => next = other,
                }
                if next.is_none() {
                    while end < total && end - b < MAX_SKIP_RUN {
                        let len = chunk.min(total - end);
                        let guard = inner.locks.acquire(end, end + len, true);
                        // Decided under the lock, as for a converted chunk.
                        if skip_mask(used.as_deref(), end, len) != all(len) {
                            break;
                        }
                        guards.push(guard);
                        end += len;
                    }
                }
                if end > b {
                    // The previous chunk's converted bytes are durable before the commit that
                    // retires its hotzone.
                    self.flush_data()?;
                    self.commit(|m| m.set_boundary(end, None, version))?;
                    inner.boundary.store(end, Ordering::Release);
                    drop(prev_guard.take());
                    drop(guards);
                    progress(&progress_at(kind, first, end, total, started));
                    continue;
                }
            }
            let cur = match next.take() {
                Some(p) if p.b == b => p,
                _ => prepare(b, threads)?,
            };
            let len = cur.len;
            let table_offset = ks_off + slot * table_len;
            inner
                .dev
                .write_at(&cur.table, table_offset)
                .map_err(Error::io("writing the conversion checksum table"))?;
            // Makes durable: the previous chunk, online writes before the lock, the table, and
            // the previous commit's secondary header copy.
            self.flush_data()?;
            let hz = Hotzone {
                offset: b,
                size: len,
                table_offset,
                table_sha256: (version == RecordVersion::V2)
                    .then(|| openssl::sha::sha256(&cur.table)),
                skip: cur.skip,
            };
            // The secondary copy's flush is the next chunk's flush (step 5).
            self.commit_with(|m| m.set_boundary(b, Some(hz), version), true)?;
            drop(prev_guard.take());
            // Pass 2: read again (the chunk is locked, so these are the same bytes, now from
            // the cache), convert and write back piece by piece, and start each granule's
            // write-back at once. Granules that hold no content are not touched.
            let convert = |threads: usize| -> Result<()> {
                let layout = inner.layout.read().unwrap_or_else(|e| e.into_inner());
                per_granule(threads, len, cur.skip, &mut [], entry, |g, _, piece| {
                    let g_off = b + g * SKIP_GRANULE;
                    let g_end = (g_off + SKIP_GRANULE).min(b + len);
                    let mut off = g_off;
                    while off < g_end {
                        let d = &mut piece[..(g_end - off).min(PIECE as u64) as usize];
                        inner
                            .dev
                            .read_at(d, inner.data_offset + off)
                            .map_err(Error::io("reading the data segment"))?;
                        layout.code(&layout.old, false, off, d)?;
                        layout.code(&layout.new, true, off, d)?;
                        inner
                            .dev
                            .write_at(d, inner.data_offset + off)
                            .map_err(Error::io("writing the data segment"))?;
                        off += d.len() as u64;
                    }
                    inner
                        .dev
                        .start_writeback(inner.data_offset + g_off, g_end - g_off);
                    Ok(())
                })
            };
            let nb = b + len;
            if pipelined && nb < total && !stopping() {
                let (written, ahead) = std::thread::scope(|s| {
                    let ahead = s.spawn(|| prepare(nb, stage_threads));
                    let written = convert(stage_threads);
                    let ahead = ahead.join().unwrap_or_else(|_| {
                        Err(Error::Usage("a conversion worker panicked".into()))
                    });
                    (written, ahead)
                });
                written?;
                next = Some(ahead?);
            } else {
                convert(threads)?;
            }
            let guard = cur.guard;
            inner.boundary.store(b + len, Ordering::Release);
            prev_guard = Some(guard);
            slot ^= 1;
            progress(&progress_at(kind, first, b + len, total, started));
        }
    }
}

/// The `atrest-kmip` token of a new key (its digest id is filled in by
/// [`Metadata::add_new_key`]).
fn token_of(r: &KeyReference, size: KeySize) -> KmipToken {
    KmipToken {
        unique_identifier: r.unique_identifier.clone(),
        servers: r.servers.clone(),
        key_bits: size.bits(),
        created: r.created.clone(),
        digest: 0,
    }
}

fn check_reference(r: &KeyReference) -> Result<()> {
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= luks2::MAX_TOKEN_TEXT && !s.chars().any(char::is_control)
    };
    if !ok(&r.unique_identifier) || !ok(&r.created) {
        return Err(Error::Usage("the key reference needs a unique identifier and a creation time (1…256 printable bytes)".into()));
    }
    if r.servers.is_empty()
        || r.servers.len() > luks2::MAX_SERVERS
        || !r.servers.iter().all(|s| ok(s))
    {
        return Err(Error::Usage(format!(
            "the key reference needs 1…{} servers",
            luks2::MAX_SERVERS
        )));
    }
    Ok(())
}

impl BlockDevice for UnlockedVolume {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.rw(offset, len, None, Some(buf)).map_err(io_err)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.rw(offset, buf.len(), Some(buf), None).map_err(io_err)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.dev.flush()
    }

    fn len(&self) -> u64 {
        self.inner.data_size.load(Ordering::Acquire)
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner
            .dev
            .start_writeback(self.inner.data_offset + offset, len)
    }
}

/// Recovery key (docs/volume-format.md, "Recovery keyslot").
impl UnlockedVolume {
    /// Whether the volume has a recovery key (atrest's recovery keyslots).
    pub fn has_recovery_key(&self) -> bool {
        !recovery_slots::recovery_keyslots(&self.meta()).is_empty()
    }

    /// Makes a new recovery key for the data segment's key: a LUKS2 argon2id keyslot that
    /// stock cryptsetup opens. A recovery key the volume had is replaced in the same header
    /// commit (its keyslot area is wiped afterwards). Only in the steady encrypted state (a
    /// conversion changes the keys; rekey renews the recovery key itself). Returns the key, to
    /// be shown once: it is stored nowhere.
    pub fn add_recovery_key(&self, kdf: &RecoveryKdf) -> Result<RecoveryKey> {
        let _busy = self.not_converting("adding a recovery key")?;
        let state = self.state();
        if state != State::Encrypted {
            return Err(Error::State(format!(
                "the volume is {}: a recovery key is added to an encrypted volume with no \
                 conversion under way",
                state.as_str()
            )));
        }
        let (did, old) = {
            let m = self.meta();
            if recovery_slots::region(&m).is_none() {
                return Err(Error::State(format!(
                    "the volume's keyslots area ({} bytes) is too small for a recovery keyslot; \
                     volumes formatted with the default 16 MiB header area have room",
                    m.keyslots_size
                )));
            }
            let did = m
                .segment_digest()
                .ok_or_else(|| Error::State("no digest belongs to the data segment".into()))?;
            (did, recovery_slots::recovery_keyslots(&m))
        };
        let raw = self.raw_key(did)?;
        let rk = RecoveryKey::generate()?;
        let slots = self.write_recovery_slots(&rk, &[(did, raw.expose())], kdf)?;
        self.commit_and_wipe(|m| {
            recovery_slots::remove(m, &old);
            for (id, json, digest) in slots {
                recovery_slots::add(m, id, json, digest);
            }
        })?;
        Ok(rk)
    }

    /// Removes the recovery key: its keyslots leave the header (one commit) and their areas
    /// are overwritten with zeros. Returns whether there was one.
    pub fn remove_recovery_key(&self) -> Result<bool> {
        let _busy = self.not_converting("removing the recovery key")?;
        let old = recovery_slots::recovery_keyslots(&self.meta());
        if old.is_empty() {
            return Ok(false);
        }
        self.commit_and_wipe(|m| recovery_slots::remove(m, &old))?;
        Ok(true)
    }

    fn not_converting(&self, what: &str) -> Result<std::sync::MutexGuard<'_, ()>> {
        match self.inner.converting.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Error::State(format!(
                "a conversion is running on this volume; {what} waits until it has finished"
            ))),
        }
    }

    /// The verified raw key of digest `digest`.
    fn raw_key(&self, digest: u32) -> Result<SecretBytes> {
        self.inner
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .map(|k| k.raw.clone())
            .ok_or_else(|| Error::State(format!("no verified key for digest {digest}")))
    }

    /// Writes one recovery keyslot area per `(digest, key)` under `rk` and flushes; returns the
    /// keyslots to add in the next commit.
    fn write_recovery_slots(
        &self,
        rk: &RecoveryKey,
        keys: &[(u32, &[u8])],
        kdf: &RecoveryKdf,
    ) -> Result<Vec<(u32, serde_json::Value, u32)>> {
        if self.inner.read_only {
            return Err(Error::State(
                "the volume was opened read-only; its header is not written".into(),
            ));
        }
        let (areas, ids) = {
            let m = self.meta();
            let areas = recovery_slots::free_areas(&m, keys.len());
            let ids = recovery_slots::free_ids(&m, keys.len());
            match (areas, ids) {
                (Some(a), Some(i)) => (a, i),
                _ => {
                    return Err(Error::State(
                        "no free recovery keyslot area or keyslot id is left in the header; \
                         remove the recovery key, then add it again"
                            .into(),
                    ));
                }
            }
        };
        let mut out = Vec::new();
        for (((digest, key), area), id) in keys.iter().zip(areas).zip(ids) {
            let (json, bytes) = crate::recovery::make_keyslot(rk, key, kdf, area)?;
            self.inner
                .dev
                .write_at(&bytes, area)
                .map_err(Error::io("writing the recovery keyslot area"))?;
            out.push((id, json, *digest));
        }
        self.inner
            .dev
            .flush()
            .map_err(Error::io("flushing the recovery keyslot area"))?;
        Ok(out)
    }

    /// Commits like [`UnlockedVolume::commit`], then overwrites with zeros the areas of the
    /// recovery keyslots the commit removed, so a removed recovery key opens nothing even with
    /// an old copy of the header.
    fn commit_and_wipe(&self, f: impl FnOnce(&mut Metadata)) -> Result<()> {
        let before = self.meta().clone();
        self.commit(f)?;
        let gone = recovery_slots::removed_areas(&before, &self.meta());
        if gone.is_empty() {
            return Ok(());
        }
        for (off, size) in gone {
            let zeros = vec![0u8; size as usize];
            self.inner
                .dev
                .write_at(&zeros, off)
                .map_err(Error::io("wiping a removed recovery keyslot area"))?;
        }
        self.inner
            .dev
            .flush()
            .map_err(Error::io("flushing the wiped recovery keyslot area"))
    }
}

impl Volume {
    /// Whether the volume has a recovery key (atrest's recovery keyslots).
    pub fn has_recovery_key(&self) -> bool {
        !recovery_slots::recovery_keyslots(&self.meta).is_empty()
    }

    /// The volume keys a recovery key opens, verified against their digests: one in the steady
    /// encrypted state, both keys of a rekey under way. Runs the keyslots' KDF (argon2id, about
    /// a second each), only for keyslots whose cost is within the bounds of
    /// [`crate::recovery::RecoveryKdf::check`]. No KMIP server is involved.
    pub fn keys_from_recovery_key(&self, rk: &RecoveryKey) -> Result<Vec<VolumeKey>> {
        let m = &*self.meta;
        let ks_start = m.keyslots_offset();
        let ks_end = ks_start + m.keyslots_size;
        let read = |buf: &mut [u8], off: u64| self.dev.read_at(buf, off);
        let mut keys: Vec<VolumeKey> = Vec::new();
        let mut refused = Vec::new();
        let mut tried = 0;
        for (did, d) in &m.digests {
            for ks in &d.keyslots {
                let Some(v) = m.keyslots.get(&ks.to_string()) else {
                    continue;
                };
                if keys.iter().any(|k| k.digest_id == *did) {
                    continue;
                }
                tried += 1;
                if tried > crate::recovery::MAX_RECOVERY_SLOTS_TRIED {
                    break;
                }
                let raw = match crate::recovery::open_keyslot(
                    &ks.to_string(),
                    v,
                    ks_start,
                    ks_end,
                    rk,
                    &read,
                ) {
                    Ok(raw) => raw,
                    Err(Error::State(why)) => {
                        refused.push(why);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Ok(material) = KeyMaterial::new(raw) else {
                    continue;
                };
                if expected_bits(m, *did).is_some_and(|b| b != material.size().bits()) {
                    continue;
                }
                if digest_matches(d, material.expose())? {
                    keys.push(VolumeKey {
                        material,
                        digest_id: *did,
                        volume_uuid: m.uuid.clone(),
                    });
                }
            }
        }
        if keys.is_empty() {
            let why = if tried == 0 {
                "the volume has no recovery key (no passphrase keyslot): unlock it with its key \
                 from the KMIP server"
                    .to_string()
            } else if !refused.is_empty() && refused.len() == tried {
                format!(
                    "no keyslot of this volume could be tried: {}",
                    refused.join("; ")
                )
            } else {
                "the recovery key opens no keyslot of this volume: check that it is the latest \
                 recovery key made for this volume (a rekey replaces it)"
                    .to_string()
            };
            return Err(Error::RecoveryKey(why));
        }
        Ok(keys)
    }
}
