//! The appliance's content volume (DIR/volume.img) and the content store on it.
//!
//! - First start: the image is made and formatted plain, and an empty store is created on its
//!   data segment (in a temporary file renamed into place, so a crash never leaves half a
//!   volume behind).
//! - Every start: a plain volume opens at once; an encrypted (or mid-conversion) one is
//!   "locked" until its key(s) are fetched from a KMIP server by the ids in the header, tried
//!   one server at a time with bounded timeouts; failures are kept per server and retried with
//!   [`Backoff`]. Once unlocked, a conversion that was under way resumes.
//! - Encrypt, Rekey and Decrypt start the volume's online conversion in a background thread;
//!   the store keeps serving on the same volume throughout.
//! - While encrypted, the key's state on the KMIP server is checked at an interval; a key that
//!   is no longer Active raises an alert, or locks the volume ([`KeyPolicy`]).
//! - Scheduled rotation: with a rotation interval in the key policy, a Rekey starts by itself
//!   once the current key is that old (its `created` in the header), at the same pace as any
//!   conversion, never while locked or while another conversion runs; a failure (KMIP server
//!   away) is retried with [`Backoff`]. The check runs every `rotation_check_interval` against
//!   [`Clock`], both injectable for tests ([`DataVolume::rotation_tick`]).
//!
//! Every key operation goes into the audit history (server, operation, key id, result).
//!
//! The parts: `open` attaches the volume, `unlock` fetches its key(s), `convert` runs the
//! conversions, `rotation` schedules Rekeys, `key_check` watches the key's state, and `backend`
//! answers the appliance's requests ([`VolumeBackend`](crate::state::VolumeBackend)).

mod backend;
mod convert;
mod key_check;
mod open;
mod rotation;
mod unlock;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atrest_kmip::client::Timeouts;
use atrest_store::StoreOptions;
use atrest_volume::{BlockDevice, EncryptOptions, State as VolState, UnlockedVolume, Volume};
use parking_lot::{Condvar, Mutex};

use crate::known::{KNOWN_FILE, Known};
use crate::state::{AppState, WeakAppState};
use crate::status::{AuditCheck, KeyCheck, LastConversion};
use crate::workflow::{Backoff, State as WfState};
use atrest_keys as keys;

use rotation::Rotation;
pub use rotation::{Clock, RotationTick};

/// The volume image in the data directory.
pub const VOLUME_FILE: &str = "volume.img";

/// Default size of a new volume image: 64 MiB.
pub const DEFAULT_VOLUME_SIZE: u64 = 64 << 20;

/// Smallest volume image: the 16 MiB header area plus 16 MiB of content.
pub const MIN_VOLUME_SIZE: u64 = 32 << 20;

/// What happens when the key's state check finds it is no longer Active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Show an alert (page, API, log, audit) and keep the volume unlocked.
    Alert,
    /// Show the alert and lock the volume: content endpoints answer 503 until the key is
    /// usable again.
    Lock,
}

/// The file whose presence makes the conversion overwrite the free space too.
pub const FULL_MARKER: &str = "conversion-full";

/// Settings of the content volume.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// The image (DIR/volume.img).
    pub path: PathBuf,
    /// Size of a new image.
    pub size: u64,
    /// Key length for Encrypt and Rekey: 256 (XTS-AES-128) or 512 (XTS-AES-256).
    pub key_bits: u32,
    /// Bytes converted per committed step.
    pub chunk_size: u64,
    /// Conversion worker threads.
    pub threads: usize,
    /// Most bytes per second a conversion converts (None: as fast as it goes), to leave I/O
    /// to the appliance's own work.
    pub max_rate: Option<u64>,
    /// Retry policy while locked.
    pub backoff: Backoff,
    /// How often the key's state is checked while unlocked.
    pub key_check_interval: Duration,
    /// What a key that is no longer Active does to the volume.
    pub key_policy: KeyPolicy,
    /// Timeouts of the KMIP requests.
    pub timeouts: Timeouts,
    /// PBKDF2 iterations of the key digest in the header.
    pub digest_iterations: u32,
    /// Options of the content store on the volume (its cache, 16 MiB by default).
    pub store: StoreOptions,
    /// What the appliance knows about its volume, outside it ([`Known`]).
    pub known: PathBuf,
    /// The appliance's name in the Names of the keys it creates
    /// (`atrest/<appliance name>/<volume uuid>/<generation>`); the host name by default.
    pub appliance_name: String,
    /// How often the rotation scheduler looks whether the key is due.
    pub rotation_check_interval: Duration,
    /// The scheduler's "now".
    pub clock: Clock,
}

impl VolumeOptions {
    /// The defaults for a volume in `data_dir`: `volume.img` of 64 MiB, XTS-AES-128, 4 MiB
    /// chunks, key checks every 5 minutes (alert only), rotation looks every minute.
    pub fn new(data_dir: &Path) -> Self {
        VolumeOptions {
            path: data_dir.join(VOLUME_FILE),
            size: DEFAULT_VOLUME_SIZE,
            key_bits: 256,
            chunk_size: 4 << 20,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
            max_rate: None,
            backoff: Backoff::default(),
            key_check_interval: Duration::from_secs(300),
            key_policy: KeyPolicy::Alert,
            timeouts: Timeouts::default(),
            digest_iterations: EncryptOptions::default().pbkdf2_iterations,
            store: StoreOptions {
                cache_bytes: 16 << 20,
                ..StoreOptions::default()
            },
            known: data_dir.join(KNOWN_FILE),
            appliance_name: keys::host_name(),
            rotation_check_interval: Duration::from_secs(60),
            clock: Clock::system(),
        }
    }
}

enum Slot {
    Locked(Volume),
    /// The key is being fetched (the volume is out of the slot meanwhile, so that status
    /// requests never wait for a KMIP server).
    Unlocking(Box<atrest_volume::VolumeInfo>),
    Open(UnlockedVolume),
    Empty,
}

struct Inner {
    opts: VolumeOptions,
    /// Held (flock) while attached: one appliance per volume.
    lock_file: Mutex<Option<std::fs::File>>,
    app: WeakAppState,
    dev: Arc<dyn BlockDevice>,
    slot: Mutex<Slot>,
    stop: Arc<AtomicBool>,
    /// Bumped to wake the unlock loop early.
    wake: (Mutex<u64>, Condvar),
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    extra: Mutex<Extra>,
    unlock_running: AtomicBool,
    attempts: AtomicU64,
    /// Held while a conversion starts, so that two requests (the administrator's and the
    /// scheduler's) never start two at once.
    starting: Mutex<()>,
}

#[derive(Default)]
struct Extra {
    last_conversion: Option<LastConversion>,
    key_check: Option<KeyCheck>,
    alerts: Vec<String>,
    next_retry_at: Option<String>,
    /// Why the volume stays locked without retrying, until the administrator acts.
    hold: Option<Hold>,
    /// The last check of the audit history.
    audit: Option<AuditCheck>,
    rotation: Rotation,
    /// The recovery key's part of a Rekey (crate::recovery).
    recovery: crate::recovery::RekeyRecovery,
}

/// A lock that retrying cannot lift: the header failed its authentication, or does not match
/// what the appliance knows about its volume.
#[derive(Debug, Clone)]
struct Hold {
    class: &'static str,
    reason: String,
    /// Whether Resume (accepting the header) may lift it.
    resumable: bool,
}

/// The outcome of one unlock attempt.
enum Attempt {
    Done,
    Retry,
    /// Locked until the administrator acts ([`Hold`]).
    Hold,
}

/// The data volume attached to an appliance.
#[derive(Clone)]
pub struct DataVolume {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataVolume")
            .field("path", &self.inner.opts.path)
            .finish_non_exhaustive()
    }
}

fn wf_state(s: VolState) -> WfState {
    match s {
        VolState::Plain => WfState::Plain,
        VolState::Encrypted => WfState::Encrypted,
        VolState::Encrypting => WfState::Encrypting,
        VolState::Rekeying => WfState::Rekeying,
        VolState::Decrypting => WfState::Decrypting,
    }
}

fn is_converting(s: VolState) -> bool {
    matches!(
        s,
        VolState::Encrypting | VolState::Rekeying | VolState::Decrypting
    )
}

fn cipher_text(cipher: Option<&str>, bits: Option<u32>) -> Option<String> {
    let c = cipher?;
    Some(match bits {
        Some(256) => format!("{c} (XTS-AES-128, 256-bit key)"),
        Some(512) => format!("{c} (XTS-AES-256, 512-bit key)"),
        Some(b) => format!("{c} ({b}-bit key)"),
        None => c.to_owned(),
    })
}

impl DataVolume {
    /// The volume's path: an image file or a block device.
    pub fn path(&self) -> &Path {
        &self.inner.opts.path
    }

    /// The path shown in the status: `volume.img` for the image in the data directory, the
    /// whole path of anything else.
    fn shown_path(&self) -> String {
        let o = &self.inner.opts;
        match o.known.parent() {
            Some(dir) if o.path == dir.join(VOLUME_FILE) => VOLUME_FILE.into(),
            _ => o.path.display().to_string(),
        }
    }

    fn app(&self) -> Option<AppState> {
        self.inner.app.upgrade()
    }

    /// Present while the conversion under way (or the next one) overwrites the free space too:
    /// `DATA_DIR/conversion-full`, beside the known record, so a resumed conversion keeps the
    /// administrator's choice.
    fn full_marker(&self) -> PathBuf {
        self.inner.opts.known.with_file_name(FULL_MARKER)
    }

    fn spawn(&self, name: &str, f: impl FnOnce(DataVolume) + Send + 'static) {
        let me = self.clone();
        match std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(me))
        {
            Ok(h) => {
                let mut t = self.inner.threads.lock();
                t.retain(|h| !h.is_finished());
                t.push(h);
            }
            Err(e) => tracing::error!("cannot start the {name} thread: {e}"),
        }
    }

    /// Sleeps up to `d`; returns early (true) when woken or stopping.
    fn sleep(&self, d: Duration) -> bool {
        let (m, cv) = &self.inner.wake;
        let mut g = m.lock();
        let start = *g;
        let deadline = Instant::now() + d;
        while *g == start && !self.inner.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            cv.wait_for(&mut g, deadline - now);
        }
        true
    }

    /// Records what the header of `uv` now says as what the appliance knows.
    fn record_known(&self, uv: &UnlockedVolume) {
        if let Err(e) = Known::of(&uv.info()).save(&self.inner.opts.known) {
            tracing::error!("{e}");
        }
    }

    /// The appliance (`None` while stopping).
    pub(crate) fn app_state(&self) -> Option<AppState> {
        self.app()
    }

    /// The unlocked volume, if it is unlocked.
    pub(crate) fn open_volume(&self) -> Option<UnlockedVolume> {
        match &*self.inner.slot.lock() {
            Slot::Open(uv) => Some(uv.clone()),
            _ => None,
        }
    }

    /// What the volume header says now (`None` when detached).
    pub(crate) fn volume_info(&self) -> Option<atrest_volume::VolumeInfo> {
        match &*self.inner.slot.lock() {
            Slot::Open(uv) => Some(uv.info()),
            Slot::Locked(v) => Some(v.info()),
            Slot::Unlocking(i) => Some((**i).clone()),
            Slot::Empty => None,
        }
    }

    /// The recovery key's part of a Rekey (what the next one does, what the last one did).
    pub(crate) fn with_rekey_recovery<T>(
        &self,
        f: impl FnOnce(&mut crate::recovery::RekeyRecovery) -> T,
    ) -> T {
        f(&mut self.inner.extra.lock().recovery)
    }

    /// Unlock attempts made so far.
    pub fn unlock_attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }
}
