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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientConfig, Timeouts};
use atrest_kmip::message::{RevocationReasonCode, State as KeyState};
use atrest_store::{Store, StoreOptions};
use atrest_volume::{
    BlockDevice, Check, ConvertOptions, EncryptOptions, FileDevice, FormatOptions,
    State as VolState, UnlockedVolume, Volume, VolumeLock,
};
use parking_lot::{Condvar, Mutex};

use crate::keys::{self, KeyError};
use crate::known::{KNOWN_FILE, Known};
use crate::state::{AppState, Content, EventSink, VolumeBackend, WeakAppState};
use crate::status::{
    AuditCheck, HoldView, KeyCheck, LastConversion, RotationView, SpaceView, VolumeStatus,
    VolumeView,
};
use crate::workflow::{Backoff, Event, LockReason, Progress, Request, State as WfState};

/// The volume image in the data directory.
pub const VOLUME_FILE: &str = "volume.img";
/// Default size of a new volume image: 64 MiB.
pub const DEFAULT_VOLUME_SIZE: u64 = 64 << 20;
/// How long an unlock with the recovery key waits for an attempt with the KMIP server that
/// holds the volume (each server is tried with bounded timeouts).
const RECOVERY_UNLOCK_WAIT: Duration = Duration::from_secs(60);
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

/// "Now" for the rotation scheduler: the system clock, or a clock a test moves.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> time::OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system clock (UTC).
    pub fn system() -> Clock {
        Clock(Arc::new(time::OffsetDateTime::now_utc))
    }

    /// A clock that answers `f()`.
    pub fn new(f: impl Fn() -> time::OffsetDateTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> time::OffsetDateTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// What one look of the rotation scheduler did ([`DataVolume::rotation_tick`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationTick {
    /// No rotation interval is set, or the volume has no key to rotate.
    Off,
    /// The current key is younger than the interval.
    NotDue,
    /// Not now: the volume is locked or another conversion runs (why, for a person).
    Busy(String),
    /// A failed attempt is retried later (backoff).
    Waiting,
    /// The Rekey started.
    Started,
    /// The Rekey could not start (why); retried after the backoff.
    Failed(String),
}

/// The scheduler's memory between looks.
#[derive(Debug, Default, Clone)]
struct Rotation {
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this (backoff after a failure).
    retry_at: Option<time::OffsetDateTime>,
    /// When the scheduler last started a Rekey: never another within one interval.
    last_started: Option<time::OffsetDateTime>,
    last_error: Option<String>,
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
    pub key_policy: KeyPolicy,
    /// Timeouts of the KMIP requests.
    pub timeouts: Timeouts,
    /// PBKDF2 iterations of the key digest in the header.
    pub digest_iterations: u32,
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

/// Makes a new plain volume with an empty store at `path`.
fn create_volume(path: &Path, size: u64, store: &StoreOptions) -> Result<(), String> {
    let tmp = path.with_extension("img.new");
    let made = (|| -> Result<(), String> {
        let dev: Arc<dyn BlockDevice> = Arc::new(
            FileDevice::create(&tmp, size).map_err(|e| format!("cannot create it ({e})"))?,
        );
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot make it private ({e})"))?;
        }
        let vol = Volume::format(dev.clone(), &FormatOptions::default())
            .map_err(|e| format!("cannot format it ({e})"))?;
        let uv = vol
            .unlock(Vec::new())
            .map_err(|e| format!("cannot open it ({e})"))?;
        let s = Store::create(Arc::new(uv), store)
            .map_err(|e| format!("cannot create the content store on it ({e})"))?;
        drop(s);
        dev.flush()
            .map_err(|e| format!("cannot flush it to disk ({e})"))?;
        Ok(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "cannot make the content volume {}: {e}; check the free space and permissions of \
             the data directory",
            path.display()
        ));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        format!(
            "cannot put the new content volume in place at {} ({e}); check the data directory",
            path.display()
        )
    })?;
    crate::files::sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Whether the first `len` bytes of `dev` (or all of it, when smaller) read as zeros.
fn starts_with_zeros(dev: &dyn BlockDevice, len: u64) -> bool {
    let mut buf = vec![0u8; len.min(dev.len()) as usize];
    dev.read_at(&mut buf, 0).is_ok() && buf.iter().all(|&b| b == 0)
}

/// Takes the exclusive lock beside the volume (`volume.img.lock`, [`VolumeLock`]), so that two
/// appliances, or an appliance and an `atrest volume` command, never use one volume at once.
fn take_lock(path: &Path) -> Result<std::fs::File, String> {
    VolumeLock::exclusive(path)
        .map(VolumeLock::into_file)
        .map_err(|e| e.to_string())
}

impl DataVolume {
    /// Opens (or makes) the volume, attaches it to `state`, and starts the background work:
    /// unlocking (when encrypted), a resumed conversion, and the key state checks.
    pub fn attach(state: &AppState, opts: VolumeOptions) -> Result<DataVolume, String> {
        if opts.key_bits != 256 && opts.key_bits != 512 {
            return Err("the key length must be 256 or 512 bits".into());
        }
        keys::check_appliance_name(&opts.appliance_name)?;
        let lock_file = take_lock(&opts.path)?;
        let created = if opts.path.exists() {
            false
        } else if opts.path.starts_with("/dev") {
            return Err(format!(
                "the content volume {} does not exist; give --volume a block device that \
                 exists, or an image file outside /dev",
                opts.path.display()
            ));
        } else {
            if opts.size < MIN_VOLUME_SIZE {
                return Err(format!(
                    "a content volume of {} bytes is too small; give --volume-size of at least \
                     {} MiB",
                    opts.size,
                    MIN_VOLUME_SIZE >> 20
                ));
            }
            create_volume(&opts.path, opts.size, &opts.store)?;
            true
        };
        let file = FileDevice::open(&opts.path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::ResourceBusy {
                // Already one sentence: which device, why, and what to do.
                e.to_string()
            } else {
                format!(
                    "cannot open the content volume {} ({e}); check its permissions",
                    opts.path.display()
                )
            }
        })?;
        let block = file.is_block_device();
        let dev: Arc<dyn BlockDevice> = Arc::new(file);
        let vol = Volume::open(dev.clone()).map_err(|e| match e.header_check() {
            // Never formatted by atrest: nothing is written to it, whatever it holds.
            Some(Check::Magic | Check::DeviceSize) => format!(
                "the content volume {} has no LUKS2 header, so the appliance leaves it \
                 untouched; format it with `atrest volume format {}` (it refuses a {} that \
                 holds data unless given --force), then start again",
                opts.path.display(),
                opts.path.display(),
                if block { "device" } else { "file" }
            ),
            _ => format!(
                "the content volume {} cannot be opened: {e}",
                opts.path.display()
            ),
        })?;
        if let Some(r) = vol.info().header_repair {
            tracing::warn!("content volume header: {r}");
        }
        let dv = DataVolume {
            inner: Arc::new(Inner {
                opts,
                lock_file: Mutex::new(Some(lock_file)),
                app: state.downgrade(),
                dev,
                slot: Mutex::new(Slot::Empty),
                stop: Arc::new(AtomicBool::new(false)),
                wake: (Mutex::new(0), Condvar::new()),
                threads: Mutex::new(Vec::new()),
                extra: Mutex::new(Extra::default()),
                unlock_running: AtomicBool::new(false),
                attempts: AtomicU64::new(0),
                starting: Mutex::new(()),
            }),
        };
        if created {
            tracing::info!(path = %dv.inner.opts.path.display(), "made a new plain content volume");
        }
        state.set_backend(Arc::new(dv.clone()));
        let info = vol.info();
        let known = Known::load(&dv.inner.opts.known).and_then(|k| match k {
            Some(k) => k.check(&info, &dv.inner.opts.known),
            None if info.state == VolState::Plain => {
                // Not being able to write the record (a full disk) must not lock a plain
                // volume: it is written again at the next change.
                if let Err(e) = Known::of(&info).save(&dv.inner.opts.known) {
                    tracing::warn!("{e}");
                }
                Ok(())
            }
            // Recorded once the header is authenticated under its key.
            None => Ok(()),
        });
        if let Err(reason) = known {
            tracing::error!("{reason}");
            state.audit(
                "volume",
                "appliance",
                format!("refused the content volume: {reason}"),
            );
            dv.set_locked(
                state,
                vol,
                "its header does not match this appliance's record".into(),
            );
            dv.hold(
                state,
                Hold {
                    class: "volume-changed",
                    reason,
                    resumable: false,
                },
            );
        } else if vol.state() == VolState::Plain {
            let uv = vol
                .unlock(Vec::new())
                .map_err(|e| format!("the plain content volume cannot be opened: {e}"))?;
            dv.grow_at_start(&uv);
            dv.open_store(state, &uv)?;
            *dv.inner.slot.lock() = Slot::Open(uv);
            state.apply(Event::OpenedPlain);
        } else {
            dv.set_locked(state, vol, "its key has not been fetched yet".into());
            dv.spawn_unlock_loop();
        }
        dv.spawn_key_checks();
        dv.spawn_rotation();
        Ok(dv)
    }

    /// Extends the data segment to the size of the device ([`UnlockedVolume::grow`]); the
    /// store on it uses the new space at once. A growth is logged and audited.
    fn grow_volume(&self, uv: &UnlockedVolume, when: &str) -> Result<(u64, u64), String> {
        let (old, new) = uv.grow().map_err(|e| {
            format!(
                "the content volume {} cannot grow: {e}",
                self.inner.opts.path.display()
            )
        })?;
        if new > old {
            tracing::info!(old, new, "content volume grown to the size of its device");
            if let Some(state) = self.app() {
                state.audit(
                    "volume",
                    "appliance",
                    format!(
                        "grew the content volume {when} from {old} to {new} bytes of data, the \
                         size of its device"
                    ),
                );
            }
        }
        Ok((old, new))
    }

    /// At start, once unlocked and with no conversion under way: grows the volume when its
    /// device grew while the appliance was stopped.
    fn grow_at_start(&self, uv: &UnlockedVolume) {
        if is_converting(uv.state()) {
            return;
        }
        if let Err(e) = self.grow_volume(uv, "at start") {
            tracing::warn!("{e}");
        }
    }

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

    fn open_store(&self, state: &AppState, uv: &UnlockedVolume) -> Result<(), String> {
        let dev: Arc<dyn BlockDevice> = Arc::new(uv.clone());
        let store = match Store::open(dev.clone(), &self.inner.opts.store) {
            // A plain volume just made by `atrest volume format` (a block device): no store,
            // and nothing where the store keeps its superblocks and first pages.
            Err(atrest_store::Error::NoStore { .. })
                if uv.state() == VolState::Plain && starts_with_zeros(&*dev, 1 << 20) =>
            {
                tracing::info!(
                    path = %self.inner.opts.path.display(),
                    "made an empty content store on the freshly formatted volume"
                );
                Store::create(dev, &self.inner.opts.store)
            }
            r => r,
        }
        .map_err(|e| {
            format!(
                "the content store on {} cannot be opened: {e}",
                self.inner.opts.path.display()
            )
        })?;
        // The audit history is sealed under a key derived from the volume key (none when
        // plain) and checked at every start.
        self.seal_audit(&store, uv, false);
        state.set_content(Content::Ready(store));
        Ok(())
    }

    /// Sets the audit history's seal key to `uv`'s (after a key change: reseals, when the
    /// history checks under the previous key) and checks the history; a broken one raises an
    /// alert.
    fn seal_audit(&self, store: &Store, uv: &UnlockedVolume, key_changed: bool) {
        let key = uv.seal_key().map(|k| {
            let mut a = zeroize::Zeroizing::new([0u8; 32]);
            a.copy_from_slice(k.expose());
            a
        });
        let reseal = key_changed
            && store
                .audit()
                .verify()
                .is_ok_and(|v| v.first_broken.is_none());
        if let Err(e) = store.audit().set_seal_key(key.as_deref().copied(), reseal) {
            tracing::error!("cannot seal the audit history: {e}");
        }
        match AuditCheck::of(store) {
            Ok(c) => VolumeBackend::note_audit_check(self, c),
            Err(e) => tracing::error!("cannot check the audit history: {e}"),
        }
    }

    /// Seals the audit history under the volume's current key, after a conversion began or
    /// finished.
    fn reseal_audit(&self, uv: &UnlockedVolume) {
        if let Some(state) = self.app()
            && let Content::Ready(store) = state.content()
        {
            self.seal_audit(&store, uv, true);
        }
    }

    fn set_locked(&self, state: &AppState, vol: Volume, why: String) {
        let info = vol.info();
        state.apply(Event::OpenedEncrypted {
            key_id: info.key_id.clone().unwrap_or_default(),
            servers: info.servers.clone(),
            cipher: cipher_text(info.cipher.as_deref(), info.key_bits).unwrap_or_default(),
            pending: Some(wf_state(info.state)),
        });
        state.set_content(Content::Locked(format!(
            "the content volume is locked: {why}; the appliance retries by itself (see GET \
             /api/encryption)"
        )));
        *self.inner.slot.lock() = Slot::Locked(vol);
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

    fn spawn_unlock_loop(&self) {
        if self.inner.unlock_running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.spawn("atrest-unlock", |me| {
            let mut failures = 0u32;
            loop {
                if me.inner.stop.load(Ordering::Acquire) {
                    break;
                }
                match me.try_unlock(false) {
                    Attempt::Done | Attempt::Hold => break,
                    Attempt::Retry => {
                        failures += 1;
                        let d = me.inner.opts.backoff.delay(failures);
                        let at = time::OffsetDateTime::now_utc() + d;
                        me.inner.extra.lock().next_retry_at = at
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok();
                        if me.sleep(d) {
                            // Woken: new settings, try again at once with a fresh backoff.
                            failures = 0;
                        }
                    }
                }
            }
            me.inner.extra.lock().next_retry_at = None;
            me.inner.unlock_running.store(false, Ordering::Release);
        });
    }

    /// Keeps the volume locked with `hold` until the administrator acts.
    fn hold(&self, state: &AppState, hold: Hold) {
        state.apply(Event::UnlockFailed(vec![LockReason {
            server: "-".into(),
            class: hold.class.into(),
            reason: hold.reason.clone(),
        }]));
        state.set_content(Content::Locked(format!(
            "the content volume is locked: {}",
            hold.reason
        )));
        self.inner.extra.lock().hold = Some(hold);
    }

    /// One attempt to fetch the key(s) and unlock; reasons per server are applied on failure.
    /// With `accept`, a header whose MAC is missing or wrong is accepted and signed anew (the
    /// administrator's Resume).
    fn try_unlock(&self, accept: bool) -> Attempt {
        let Some(state) = self.app() else {
            return Attempt::Done;
        };
        if self.inner.extra.lock().hold.is_some() && !accept {
            return Attempt::Hold;
        }
        self.inner.attempts.fetch_add(1, Ordering::Relaxed);
        let vol = {
            let mut slot = self.inner.slot.lock();
            let info = match &*slot {
                Slot::Locked(v) => Box::new(v.info()),
                // Held by another attempt (the recovery key's): look again after the backoff.
                Slot::Unlocking(_) => return Attempt::Retry,
                _ => return Attempt::Done,
            };
            match std::mem::replace(&mut *slot, Slot::Unlocking(info)) {
                Slot::Locked(v) => v,
                _ => return Attempt::Done,
            }
        };
        let put_back = |vol: Volume| {
            let mut slot = self.inner.slot.lock();
            if matches!(&*slot, Slot::Unlocking(_)) {
                *slot = Slot::Locked(vol);
            }
        };
        let settings = state.kmip();
        let previous = state.previous_kmip();
        if settings.is_none() && previous.is_none() {
            let reasons = vec![LockReason {
                server: "-".into(),
                class: "config".into(),
                reason: "no KMIP settings are saved; fill in Storage > Encryption with the \
                         servers that hold this volume's key"
                    .into(),
            }];
            put_back(vol);
            self.unlock_failed(&state, reasons);
            return Attempt::Retry;
        }
        // Every key from the servers its header token names, then the configured ones (the
        // saved settings, and the previous ones kept while a key of the volume needs them):
        // in the middle of a move, the old key and the new one live on different servers.
        let mut reasons = Vec::new();
        let mut keys = Vec::new();
        // Keys fetched although no longer Active (Deactivated, or Compromised once confirmed):
        // the content opens read-only (crate::readonly).
        let mut inactive: Vec<(String, KeyState)> = Vec::new();
        for rk in vol.required_keys() {
            let uid = &rk.reference.unique_identifier;
            let accept = keys::key_accept(rk.role, state.read_only().accept_for(uid));
            let mut got = None;
            for (name, cfg) in key_sources(
                settings.as_ref(),
                previous.as_ref(),
                &rk.reference.servers,
                self.inner.opts.timeouts,
            ) {
                let result = Client::new(cfg)
                    .map_err(|e| (e.class().to_owned(), e.to_string()))
                    .and_then(|mut c| {
                        keys::fetch_key_accepting(&mut c, &vol, uid, rk.reference.key_bits, accept)
                            .map_err(|e| {
                                if let KeyError::NotActive { uid, state: s } = &e
                                    && *s == KeyState::COMPROMISED
                                {
                                    state.read_only().note_compromised(uid);
                                }
                                (key_error_class(&e).to_owned(), e.to_string())
                            })
                    });
                match result {
                    Ok((k, ks)) => {
                        let note = if ks == KeyState::ACTIVE {
                            String::new()
                        } else {
                            inactive.push((uid.clone(), ks));
                            format!("; the key is {ks}: the content opens read-only")
                        };
                        state.audit_key(
                            &name,
                            "get",
                            Some(uid),
                            &format!("ok (verified against the header digest{note})"),
                        );
                        got = Some(k);
                        break;
                    }
                    Err((class, reason)) => {
                        tracing::warn!(server = %name, "cannot fetch the volume key: {reason}");
                        state.audit_key(
                            &name,
                            "get",
                            Some(uid),
                            &format!("failed ({class}): {reason}"),
                        );
                        reasons.push(LockReason {
                            server: name,
                            class,
                            reason,
                        });
                    }
                }
            }
            match got {
                Some(k) => keys.push(k),
                None => {
                    put_back(vol);
                    self.unlock_failed(&state, reasons);
                    return Attempt::Retry;
                }
            }
        }
        self.complete_unlock(&state, vol, keys, accept, &inactive)
    }

    /// Unlocks `vol` (taken out of the slot) with its verified keys: the header's MAC first
    /// (a failure holds the volume locked), then the known record, the store, and a
    /// conversion under way resumes. `inactive` names the keys fetched although no longer
    /// Active (the content opens read-only); keys from the recovery key have no such state.
    fn complete_unlock(
        &self,
        state: &AppState,
        vol: Volume,
        keys: Vec<atrest_volume::VolumeKey>,
        accept: bool,
        inactive: &[(String, KeyState)],
    ) -> Attempt {
        let state = state.clone();
        let mut slot = self.inner.slot.lock();
        if !matches!(&*slot, Slot::Unlocking(_)) {
            return Attempt::Done; // stopping
        }
        let decrypting = vol.state() == VolState::Decrypting;
        let unlocked = if accept {
            vol.unlock_accepting_header(keys)
        } else {
            vol.unlock(keys)
        };
        let uv = match unlocked {
            Ok(uv) => uv,
            Err(atrest_volume::Error::HeaderAuth(e)) => {
                // Never resumed by itself: the administrator decides (Resume on the page).
                let reason = format!(
                    "{e}. On this appliance: press Resume on Storage > Encryption (POST \
                     /api/encryption/resume{}) once you know where this header comes from",
                    if decrypting {
                        ", with the admin password: the header asks to decrypt"
                    } else {
                        ""
                    }
                );
                tracing::error!("content volume header: {reason}");
                state.audit(
                    "volume",
                    "appliance",
                    format!("the content volume header failed its authentication: {e}"),
                );
                match Volume::open(self.inner.dev.clone()) {
                    Ok(v) => *slot = Slot::Locked(v),
                    Err(e2) => tracing::error!("cannot reopen the content volume: {e2}"),
                }
                drop(slot);
                self.hold(
                    &state,
                    Hold {
                        class: "header-auth",
                        reason,
                        resumable: true,
                    },
                );
                return Attempt::Hold;
            }
            Err(e) => {
                let reason = format!("the volume could not be unlocked with the fetched key: {e}");
                match Volume::open(self.inner.dev.clone()) {
                    Ok(v) => *slot = Slot::Locked(v),
                    Err(e2) => tracing::error!("cannot reopen the content volume: {e2}"),
                }
                drop(slot);
                self.unlock_failed(
                    &state,
                    vec![LockReason {
                        server: "-".into(),
                        class: "volume".into(),
                        reason,
                    }],
                );
                return Attempt::Retry;
            }
        };
        self.inner.extra.lock().hold = None;
        if accept {
            state.audit(
                "volume",
                "appliance",
                "the administrator accepted the content volume header as it is; it is signed \
                 under the volume key again"
                    .to_string(),
            );
        }
        // Authenticated: this is now what the appliance knows about its volume.
        self.record_known(&uv);
        // Before the store opens: nothing is appended to it while read-only.
        state.read_only().opened();
        if let Some((uid, ks)) = inactive.first() {
            state.enter_read_only(uid, *ks, uv.state() == VolState::Rekeying);
        }
        if inactive.is_empty() {
            self.grow_at_start(&uv);
        }
        if let Err(e) = self.open_store(&state, &uv) {
            tracing::error!("{e}");
            state.set_content(Content::Locked(format!(
                "{e}; the volume is unlocked but its content cannot be read"
            )));
        }
        let vs = uv.state();
        *slot = Slot::Open(uv.clone());
        drop(slot);
        state.apply(Event::Unlocked);
        tracing::info!("content volume unlocked");
        if is_converting(vs) {
            // The record is authenticated (or the administrator accepted it): resume.
            tracing::info!("resuming the {} conversion", vs.as_str());
            self.spawn_convert(uv, state.event_sink());
        }
        crate::readonly::apply_policy(&state);
        Attempt::Done
    }

    fn unlock_failed(&self, state: &AppState, reasons: Vec<LockReason>) {
        let summary = reasons
            .iter()
            .map(|r| format!("{}: {}", r.server, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        state.set_content(Content::Locked(format!(
            "the content volume is locked because its key could not be fetched ({summary}); \
             the appliance retries by itself"
        )));
        state.apply(Event::UnlockFailed(reasons));
    }

    fn spawn_convert(&self, uv: UnlockedVolume, events: EventSink) {
        self.spawn("atrest-convert", move |me| {
            let opts = ConvertOptions {
                chunk_size: me.inner.opts.chunk_size,
                threads: me.inner.opts.threads,
                stop: Some(me.inner.stop.clone()),
            };
            let kind = uv.state();
            // The key(s) this conversion retires when it finishes: the old key of a Rekey,
            // the key of a Decrypt.
            let info = uv.info();
            let retiring: Vec<(String, Vec<String>)> = info
                .keys
                .iter()
                .filter(|k| match kind {
                    VolState::Rekeying => k.role == "old",
                    VolState::Decrypting => true,
                    _ => false,
                })
                .map(|k| {
                    (
                        k.reference.unique_identifier.clone(),
                        k.reference.servers.clone(),
                    )
                })
                .collect();
            // A resumed conversion starts part-way: its rate counts this run's bytes only.
            let start_done = uv.info().progress.map_or(0, |p| p.done);
            let started = Instant::now();
            let started_at = crate::now_rfc3339();
            let mut last = None;
            let mut first_done = None;
            let max_rate = me.inner.opts.max_rate.filter(|r| *r > 0);
            // Used-space-only unless the administrator asked to overwrite the free space too
            // (or the store is not open: then every byte, which is always right).
            let used = if me.full_marker().exists() {
                None
            } else {
                me.app().and_then(|st| match st.content() {
                    Content::Ready(store) => Some(store.used_ranges()),
                    _ => None,
                })
            };
            if used.is_none() {
                tracing::info!("the {} converts every byte of the volume", kind.as_str());
            }
            let r = uv.convert_with(&opts, used.clone(), &mut |p| {
                let run_done = p.done - *first_done.get_or_insert(p.done);
                let mut rate = (p.bytes_per_sec > 0.0).then_some(p.bytes_per_sec);
                if let Some(max) = max_rate {
                    // Hold the next chunk back until this run is within the rate.
                    let due = Duration::from_secs_f64(run_done as f64 / max as f64);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        me.sleep((due - elapsed).min(Duration::from_secs(10)));
                    }
                    let secs = started.elapsed().as_secs_f64();
                    if run_done > 0 && secs > 0.0 {
                        rate = Some(run_done as f64 / secs);
                    }
                }
                let prog = Progress::new(p.done, p.total, rate);
                last = Some(prog);
                events(Event::Progress(prog));
            });
            me.record_known(&uv);
            me.reseal_audit(&uv);
            match r {
                Ok(s) if !is_converting(s) => {
                    let secs = started.elapsed().as_secs_f64();
                    let total = last.map(|p| p.total_bytes).unwrap_or(0);
                    let run = last.map_or(0, |p| p.done_bytes).saturating_sub(start_done);
                    let done = RunSummary {
                        kind: kind.as_str(),
                        total,
                        run,
                        secs,
                    };
                    me.inner.extra.lock().last_conversion = Some(LastConversion {
                        kind: kind.as_str().to_string(),
                        started_at: started_at.clone(),
                        finished_at: crate::now_rfc3339(),
                        bytes: total,
                        run_bytes: run,
                        seconds: secs,
                        bytes_per_sec: done.rate(),
                        percent: 100.0,
                        full: used.is_none(),
                    });
                    // The choice was for this conversion only.
                    let _ = std::fs::remove_file(me.full_marker());
                    events(Event::Finished);
                    if let Some(st) = me.app() {
                        if matches!(kind, VolState::Rekeying | VolState::Decrypting) {
                            st.leave_read_only(&format!(
                                "{} finished: the data no longer depends on the old key",
                                kind.as_str()
                            ));
                        }
                        st.audit("volume", "appliance", done.text());
                        crate::keylife::retire(&st, retiring);
                        let servers: Vec<String> = uv
                            .info()
                            .keys
                            .iter()
                            .flat_map(|k| k.reference.servers.clone())
                            .collect();
                        st.forget_previous_kmip(&servers);
                    }
                    tracing::info!("{} finished", kind.as_str());
                }
                Ok(_) => tracing::info!("conversion paused; it resumes at the next start"),
                Err(e) => {
                    tracing::error!("conversion stopped: {e}");
                    events(Event::Failed(format!(
                        "the conversion stopped: {e}; it resumes at the next start of the \
                         appliance"
                    )));
                }
            }
        });
    }

    fn spawn_rotation(&self) {
        self.spawn("atrest-rotation", |me| {
            loop {
                me.sleep(me.inner.opts.rotation_check_interval);
                if me.inner.stop.load(Ordering::Acquire) {
                    break;
                }
                let t = me.rotation_tick();
                tracing::debug!("rotation check: {t:?}");
            }
        });
    }

    /// When the current key of `info` is due for rotation under `interval` seconds: its
    /// `created` plus the interval, and never within one interval of the scheduler's last
    /// start. None when the volume has no current key (plain, or converting).
    fn rotation_due(
        &self,
        info: &atrest_volume::VolumeInfo,
        rot: &Rotation,
        interval: u64,
    ) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        if info.state != VolState::Encrypted {
            return None;
        }
        let current = info.keys.iter().find(|k| k.role == "current")?;
        let created = time::OffsetDateTime::parse(
            &current.reference.created,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        let since = rot.last_started.map_or(created, |s| s.max(created));
        let step = time::Duration::seconds(i64::try_from(interval).unwrap_or(i64::MAX / 2));
        Some((created, since.saturating_add(step)))
    }

    fn rotation_view(
        &self,
        rot: &Rotation,
        info: &atrest_volume::VolumeInfo,
    ) -> Option<RotationView> {
        let current = info.keys.iter().find(|k| k.role == "current")?;
        let interval = self
            .app()
            .and_then(|s| s.keylife().get().policy.rotation_interval_seconds);
        let now = self.inner.opts.clock.now();
        let created = time::OffsetDateTime::parse(
            &current.reference.created,
            &time::format_description::well_known::Rfc3339,
        )
        .ok();
        let next = interval
            .and_then(|i| self.rotation_due(info, rot, i))
            .map(|(_, due)| rot.retry_at.map_or(due, |r| r.max(due)));
        Some(RotationView {
            interval_seconds: interval,
            key_created: Some(current.reference.created.clone()).filter(|c| !c.is_empty()),
            key_age_seconds: created.map(|c| (now - c).whole_seconds().max(0) as u64),
            next_rotation_at: next.and_then(rfc3339),
            last_error: rot.last_error.clone(),
        })
    }

    /// One look of the rotation scheduler: starts a Rekey when the policy has a rotation
    /// interval, the current key is at least that old, the volume is unlocked and no other
    /// conversion runs, and no failed attempt waits for its backoff. Every start and failure
    /// is audited (`operation=rotate`).
    pub fn rotation_tick(&self) -> RotationTick {
        let Some(state) = self.app() else {
            return RotationTick::Off;
        };
        let Some(interval) = state.keylife().get().policy.rotation_interval_seconds else {
            self.inner.extra.lock().rotation = Rotation::default();
            return RotationTick::Off;
        };
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => return RotationTick::Busy("the volume is locked".into()),
        };
        let wf = state.workflow().state;
        if wf != WfState::Encrypted || uv.state() != VolState::Encrypted {
            return if wf == WfState::Plain && uv.state() == VolState::Plain {
                RotationTick::Off
            } else {
                RotationTick::Busy(format!("the volume is {}", wf.as_str()))
            };
        }
        let now = self.inner.opts.clock.now();
        let info = uv.info();
        let rot = self.inner.extra.lock().rotation.clone();
        let Some((created, due)) = self.rotation_due(&info, &rot, interval) else {
            return RotationTick::Off;
        };
        if now < due {
            return RotationTick::NotDue;
        }
        if rot.retry_at.is_some_and(|r| now < r) {
            return RotationTick::Waiting;
        }
        let old = info.key_id.clone();
        let age = (now - created).whole_seconds();
        let settings = state.kmip();
        let server = settings
            .as_ref()
            .and_then(|k| k.servers.first().map(|s| s.to_string()))
            .unwrap_or_else(|| "-".into());
        let started = match settings {
            None => Err("no KMIP settings are saved; fill in Storage > Encryption".to_string()),
            Some(k) => self.start(
                Request::Rekey,
                k.client_config(state.config().kmip_timeouts),
                state.event_sink(),
            ),
        };
        match started {
            Ok(()) => {
                self.inner.extra.lock().rotation = Rotation {
                    last_started: Some(now),
                    ..Rotation::default()
                };
                state.audit_key(
                    &server,
                    "rotate",
                    old.as_deref(),
                    &format!(
                        "started (scheduled: the key is {age} s old, the rotation interval is                          {interval} s)"
                    ),
                );
                RotationTick::Started
            }
            Err(e) => {
                let failures = rot.failures.saturating_add(1);
                let wait = self.inner.opts.backoff.delay(failures);
                let retry = now + wait;
                let msg = format!(
                    "the scheduled rotation could not start: {e}; it is tried again at {} (or                      press Rekey)",
                    rfc3339(retry).unwrap_or_default()
                );
                tracing::warn!("{msg}");
                state.audit_key(
                    &server,
                    "rotate",
                    old.as_deref(),
                    &format!("failed: {e}; retried in {} s", wait.as_secs()),
                );
                self.inner.extra.lock().rotation = Rotation {
                    failures,
                    retry_at: Some(retry),
                    last_started: rot.last_started,
                    last_error: Some(msg.clone()),
                };
                RotationTick::Failed(msg)
            }
        }
    }

    fn spawn_key_checks(&self) {
        self.spawn("atrest-key-check", |me| {
            loop {
                me.sleep(me.inner.opts.key_check_interval);
                if me.inner.stop.load(Ordering::Acquire) {
                    break;
                }
                me.check_key_state();
                if let Some(st) = me.app() {
                    crate::keylife::apply_policy(&st);
                }
            }
        });
    }

    /// Checks that the current key is still Active on the KMIP server.
    pub fn check_key_state(&self) {
        let Some(state) = self.app() else { return };
        if state.workflow().state != WfState::Encrypted {
            return;
        }
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => return,
        };
        let Some(settings) = state.kmip() else { return };
        let ids: Vec<String> = uv
            .info()
            .keys
            .iter()
            .map(|k| k.reference.unique_identifier.clone())
            .collect();
        let cfg = settings.client_config(self.inner.opts.timeouts);
        let checked_at = crate::now_rfc3339();
        let mut client = match Client::new(cfg) {
            Ok(c) => c,
            Err(e) => {
                self.note_key_check(KeyCheck {
                    checked_at,
                    ok: false,
                    key_id: None,
                    key_state: None,
                    error: Some(e.to_string()),
                });
                return;
            }
        };
        for id in ids {
            match client.get_attributes(&id, &["State"]) {
                Ok(a) => match a.state() {
                    Some(KeyState::ACTIVE) => {
                        self.note_key_check(KeyCheck {
                            checked_at: checked_at.clone(),
                            ok: true,
                            key_id: Some(id.clone()),
                            key_state: Some("Active".into()),
                            error: None,
                        });
                    }
                    other => {
                        let st = other
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "unknown".into());
                        // Still usable to read, never to write (crate::readonly): a
                        // Deactivated key always, a Compromised one unless the policy locks
                        // (then the unlock waits for the administrator's confirmation).
                        let readable = match other {
                            Some(s) if s == KeyState::DEACTIVATED => true,
                            Some(s) if s == KeyState::COMPROMISED => {
                                self.inner.opts.key_policy == KeyPolicy::Alert
                            }
                            _ => false,
                        };
                        let alert = format!(
                            "the KMIP server reports the volume key {id:?} as {st}, no longer \
                             Active: {}; ask the key manager's administrator, or Rekey to a new \
                             key now",
                            if readable {
                                "the content is read-only (the key may still decrypt, never \
                                 protect new data) until a Rekey"
                            } else if other == Some(KeyState::COMPROMISED) {
                                "the content is locked until the administrator confirms that it \
                                 may be read with this key, to Rekey"
                            } else {
                                "the volume cannot be unlocked at the next start"
                            }
                        );
                        self.note_key_check(KeyCheck {
                            checked_at: checked_at.clone(),
                            ok: false,
                            key_id: Some(id.clone()),
                            key_state: Some(st),
                            error: Some(alert.clone()),
                        });
                        self.raise_alert(&state, &id, alert, !readable);
                        if readable && let Some(s) = other {
                            state.enter_read_only(&id, s, false);
                            crate::readonly::apply_policy(&state);
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!("cannot check the state of the volume key: {e}");
                    self.note_key_check(KeyCheck {
                        checked_at: checked_at.clone(),
                        ok: false,
                        key_id: Some(id.clone()),
                        key_state: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
    }

    fn note_key_check(&self, v: KeyCheck) {
        self.inner.extra.lock().key_check = Some(v);
    }

    /// Records and reports the alert; with `lock` and the policy `lock`, locks the content.
    fn raise_alert(&self, state: &AppState, id: &str, alert: String, lock_it: bool) {
        let new = {
            let mut x = self.inner.extra.lock();
            let new = !x.alerts.contains(&alert);
            if new {
                x.alerts.push(alert.clone());
            }
            new
        };
        if new {
            tracing::error!("{alert}");
            state.audit_key("-", "check-state", Some(id), &format!("alert: {alert}"));
        }
        if lock_it && self.inner.opts.key_policy == KeyPolicy::Lock {
            let mut slot = self.inner.slot.lock();
            if matches!(&*slot, Slot::Open(_)) {
                *slot = Slot::Empty;
                drop(slot);
                match Volume::open(self.inner.dev.clone()) {
                    Ok(v) => {
                        self.set_locked(state, v, alert.clone());
                        self.unlock_failed(
                            state,
                            vec![LockReason {
                                server: "-".into(),
                                class: "not-active".into(),
                                reason: alert,
                            }],
                        );
                        self.spawn_unlock_loop();
                    }
                    Err(e) => tracing::error!("cannot reopen the content volume: {e}"),
                }
            }
        }
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

    /// Unlocks the locked volume with the keys `get` finds in it (the recovery key), with
    /// everything an unlock with keys from the KMIP server does after the fetch. A volume held
    /// locked for the administrator's decision (header authentication, a changed volume) stays
    /// held: Resume or the record decides, not a recovery key.
    pub(crate) fn unlock_with_keys(
        &self,
        get: impl FnOnce(&Volume) -> Result<Vec<atrest_volume::VolumeKey>, crate::recovery::Refusal>,
    ) -> Result<(), crate::recovery::Refusal> {
        use crate::recovery::Refusal;
        let state = self
            .app()
            .ok_or(Refusal::Conflict("the appliance is stopping".into()))?;
        if let Some(h) = &self.inner.extra.lock().hold {
            return Err(Refusal::Conflict(format!(
                "the volume is held locked for your decision, which a recovery key does not \
                 change: {}",
                h.reason
            )));
        }
        // An attempt with the KMIP server may hold the volume meanwhile (the retry loop):
        // wait for it (bounded by its timeouts), then take the volume if it is still locked.
        let deadline = Instant::now() + RECOVERY_UNLOCK_WAIT;
        let vol = loop {
            let mut slot = self.inner.slot.lock();
            let info = match &*slot {
                Slot::Locked(v) => Box::new(v.info()),
                Slot::Unlocking(_) if Instant::now() < deadline => {
                    drop(slot);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Slot::Unlocking(_) => {
                    return Err(Refusal::Conflict(
                        "an unlock attempt with the KMIP server is still under way; try again in \
                         a minute"
                            .into(),
                    ));
                }
                _ => return Err(Refusal::Conflict("the volume is not locked".into())),
            };
            match std::mem::replace(&mut *slot, Slot::Unlocking(info)) {
                Slot::Locked(v) => break v,
                other => {
                    *slot = other;
                    return Err(Refusal::Conflict("the volume is not locked".into()));
                }
            }
        };
        let keys = match get(&vol) {
            Ok(k) => k,
            Err(e) => {
                let mut slot = self.inner.slot.lock();
                if matches!(&*slot, Slot::Unlocking(_)) {
                    *slot = Slot::Locked(vol);
                }
                return Err(e);
            }
        };
        match self.complete_unlock(&state, vol, keys, false, &[]) {
            Attempt::Done if matches!(&*self.inner.slot.lock(), Slot::Open(_)) => Ok(()),
            _ => Err(Refusal::Conflict(
                state
                    .workflow()
                    .lock_reasons
                    .iter()
                    .map(|r| r.reason.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// Unlock attempts made so far.
    pub fn unlock_attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    fn begin(
        &self,
        req: Request,
        kmip: ClientConfig,
        events: &EventSink,
    ) -> Result<UnlockedVolume, String> {
        let state = self.app().ok_or("the appliance is stopping")?;
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => {
                return Err("the content volume is locked; wait until it is unlocked".into());
            }
        };
        let server = kmip
            .servers
            .first()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let bits = self.inner.opts.key_bits;
        let eopts = EncryptOptions {
            pbkdf2_iterations: self.inner.opts.digest_iterations,
            ..EncryptOptions::default()
        };
        if wf_state(uv.state()) == req.conversion() {
            // The conversion stopped on an error: resume it where the header says.
            tracing::info!("resuming the {} conversion", uv.state().as_str());
            let info = uv.info();
            events(Event::Started {
                conversion: req.conversion(),
                key_id: info.key_id.clone(),
                servers: info.servers.clone(),
                cipher: cipher_text(info.cipher.as_deref(), info.key_bits),
            });
            return Ok(uv);
        }
        let conversion = match req {
            Request::Encrypt | Request::Rekey => {
                let op = if req == Request::Encrypt {
                    "create"
                } else {
                    "rekey"
                };
                let mut client = Client::new(kmip).map_err(|e| {
                    state.audit_key(&server, op, None, &format!("failed ({}): {e}", e.class()));
                    format!("cannot reach the KMIP server to create the volume key: {e}")
                })?;
                let info = uv.info();
                let current = (req == Request::Rekey)
                    .then_some(info.key_id.as_deref())
                    .flatten();
                let generation = keys::next_generation(&mut client, &info.uuid, current);
                let appliance = &self.inner.opts.appliance_name;
                let name = keys::volume_key_name(appliance, &info.uuid, generation);
                let group = keys::volume_key_group(appliance);
                let nk =
                    keys::create_volume_key_in_group(&mut client, bits, Some(&name), Some(&group))
                        .map_err(|e| {
                            state.audit_key(
                                &server,
                                op,
                                None,
                                &format!("failed ({}): {e}", key_error_class(&e)),
                            );
                            format!("the volume key could not be created: {e}")
                        })?;
                let server = client
                    .connection_info()
                    .map(|c| c.server.to_string())
                    .unwrap_or(server);
                let uid = nk.reference.unique_identifier.clone();
                state.audit_key(&server, op, Some(&uid), "ok (created, activated, fetched)");
                let before = uv.info();
                let begun = Known::before(&before, wf_vol(req), Some(&uid))
                    .save(&self.inner.opts.known)
                    .map_err(atrest_volume::Error::State)
                    .and_then(|()| {
                        if req == Request::Encrypt {
                            uv.begin_encrypt(nk.material, nk.reference, &eopts)
                        } else {
                            // Renews or removes the recovery key in the same header commit.
                            crate::recovery::begin_rekey(
                                self,
                                &uv,
                                nk.material,
                                nk.reference,
                                &eopts,
                            )
                        }
                    });
                self.record_known(&uv);
                self.reseal_audit(&uv);
                if let Err(e) = begun {
                    // The new key is of no use: take it off the server again.
                    let r = client
                        .revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
                        .and_then(|_| client.destroy(&uid));
                    state.audit_key(
                        &server,
                        "destroy",
                        Some(&uid),
                        &match &r {
                            Ok(()) => "ok (unused new key)".to_string(),
                            Err(e) => format!("failed ({}): {e}", e.class()),
                        },
                    );
                    return Err(format!("the conversion could not start: {e}"));
                }
                if req == Request::Rekey {
                    crate::recovery::audit_rekey(self, &state, &uid);
                }
                if req == Request::Encrypt {
                    WfState::Encrypting
                } else {
                    WfState::Rekeying
                }
            }
            Request::Decrypt => {
                Known::before(&uv.info(), VolState::Decrypting, None)
                    .save(&self.inner.opts.known)
                    .map_err(|e| format!("decryption could not start: {e}"))?;
                let begun = uv.begin_decrypt();
                self.record_known(&uv);
                self.reseal_audit(&uv);
                begun.map_err(|e| format!("decryption could not start: {e}"))?;
                state.audit_key(
                    &server,
                    "decrypt",
                    uv.info().key_id.as_deref(),
                    "ok (decryption started; the key stays on the server)",
                );
                WfState::Decrypting
            }
        };
        let info = uv.info();
        events(Event::Started {
            conversion,
            key_id: info.key_id.clone(),
            servers: info.servers.clone(),
            cipher: cipher_text(info.cipher.as_deref(), info.key_bits),
        });
        self.inner.extra.lock().alerts.clear();
        Ok(uv)
    }
}

fn rfc3339(t: time::OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Where to fetch a key from, in order: the servers of the current settings, then the servers
/// its header token names (with the client settings of whichever saved settings name that
/// server, else the current ones), then those of the previous settings. Each server once.
fn key_sources(
    settings: Option<&crate::kmip_config::KmipSettings>,
    previous: Option<&crate::kmip_config::KmipSettings>,
    token_servers: &[String],
    timeouts: Timeouts,
) -> Vec<(String, ClientConfig)> {
    let mut out: Vec<(String, ClientConfig)> = Vec::new();
    let mut add = |name: String, cfg: ClientConfig| {
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, cfg));
        }
    };
    let all = || [settings, previous].into_iter().flatten();
    if let Some(k) = settings {
        for a in &k.servers {
            add(a.to_string(), k.client_config_for(a, timeouts));
        }
    }
    for t in token_servers {
        let Ok(addr) = t.parse::<atrest_kmip::client::ServerAddr>() else {
            continue;
        };
        let from = all()
            .find(|k| k.servers.contains(&addr))
            .or(settings)
            .or(previous);
        if let Some(k) = from {
            add(addr.to_string(), k.client_config_for(&addr, timeouts));
        }
    }
    for k in all() {
        for a in &k.servers {
            add(a.to_string(), k.client_config_for(a, timeouts));
        }
    }
    out
}

/// The volume state a request converts in.
fn wf_vol(req: Request) -> VolState {
    match req {
        Request::Encrypt => VolState::Encrypting,
        Request::Rekey => VolState::Rekeying,
        Request::Decrypt => VolState::Decrypting,
    }
}

fn key_error_class(e: &KeyError) -> &'static str {
    match e {
        KeyError::Kmip { source, .. } => source.class(),
        KeyError::NotActive { state, .. } if *state == KeyState::COMPROMISED => "compromised",
        KeyError::NotActive { .. } => "not-active",
        KeyError::BadMaterial { .. } => "bad-key",
        KeyError::WrongKey { .. } => "wrong-key",
    }
}

impl VolumeBackend for DataVolume {
    fn start(&self, req: Request, kmip: ClientConfig, events: EventSink) -> Result<(), String> {
        let _starting = self.inner.starting.lock();
        // Checked again under the lock: a conversion another request started meanwhile wins.
        if let Some(state) = self.app() {
            state.check(req)?;
        }
        let uv = self.begin(req, kmip, &events)?;
        self.spawn_convert(uv, events);
        Ok(())
    }

    fn set_full_conversion(&self, full: bool) -> Result<(), String> {
        let marker = self.full_marker();
        let r = if full {
            crate::files::write_private(
                &marker,
                b"the next conversion overwrites the free space too\n",
            )
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        r.map_err(|e| {
            format!(
                "cannot record the conversion's scope in {} ({e})",
                marker.display()
            )
        })
    }

    fn grow(&self) -> Result<(u64, u64), String> {
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => {
                return Err(
                    "the content volume is locked; it can grow once it is unlocked (the \
                            grown header is signed under its key)"
                        .into(),
                );
            }
        };
        self.grow_volume(&uv, "on request")
    }

    fn status(&self) -> VolumeStatus {
        let (vol, store_space) = match &*self.inner.slot.lock() {
            Slot::Open(uv) => {
                let i = uv.info();
                (Some(i), true)
            }
            Slot::Locked(v) => (Some(v.info()), false),
            Slot::Unlocking(i) => (Some((**i).clone()), false),
            Slot::Empty => (None, false),
        };
        let space = if store_space {
            self.app().and_then(|s| match s.content() {
                Content::Ready(st) => {
                    let sp = st.space();
                    let path = &self.inner.opts.path;
                    Some(SpaceView {
                        capacity: sp.capacity,
                        used: sp.used,
                        reserve: sp.reserve,
                        filesystem_free: path
                            .metadata()
                            .is_ok_and(|m| m.is_file())
                            .then(|| crate::hostspace::free_bytes(path))
                            .flatten(),
                    })
                }
                _ => None,
            })
        } else {
            None
        };
        let x = self.inner.extra.lock();
        let rotation = vol
            .as_ref()
            .and_then(|i| self.rotation_view(&x.rotation, i));
        VolumeStatus {
            volume: vol.map(|i| VolumeView {
                path: self.shown_path(),
                state: i.state.as_str().into(),
                data_size: i.data_size,
                sector_size: i.sector_size,
                key_bits: i.key_bits,
                uuid: i.uuid,
            }),
            space,
            last_conversion: x.last_conversion.clone(),
            key_check: x.key_check.clone(),
            alerts: x.alerts.clone(),
            next_retry_at: x.next_retry_at.clone(),
            hold: x.hold.as_ref().map(|h| HoldView {
                class: h.class.into(),
                reason: h.reason.clone(),
                resume: h.resumable,
            }),
            unlock_attempts: self.unlock_attempts(),
            audit: x.audit.clone(),
            rotation,
        }
    }

    fn resume(&self, _events: EventSink) -> Result<(), String> {
        let hold = self.inner.extra.lock().hold.clone();
        match hold {
            Some(h) if !h.resumable => Err(format!("Resume cannot lift this lock: {}", h.reason)),
            Some(_) => match self.try_unlock(true) {
                Attempt::Done => Ok(()),
                _ => Err(self
                    .inner
                    .extra
                    .lock()
                    .hold
                    .as_ref()
                    .map(|h| h.reason.clone())
                    .unwrap_or_else(|| {
                        "the volume's key could not be fetched; see the reasons per server".into()
                    })),
            },
            None => Err(
                "there is nothing to resume: the volume is not held locked by a header that \
                 needs the administrator's decision"
                    .into(),
            ),
        }
    }

    fn recovery(
        &self,
        op: crate::recovery::Op,
    ) -> Result<crate::recovery::Outcome, crate::recovery::Refusal> {
        crate::recovery::run(self, op)
    }

    fn note_audit_check(&self, check: AuditCheck) {
        // GET /api/encryption's warnings (and the page) carry it from here.
        if let Some(w) = check.warning() {
            tracing::error!("{w}");
        }
        self.inner.extra.lock().audit = Some(check);
    }

    fn key_servers(&self) -> Vec<String> {
        let info = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.info(),
            Slot::Locked(v) => v.info(),
            Slot::Unlocking(i) => (**i).clone(),
            Slot::Empty => return Vec::new(),
        };
        info.keys
            .iter()
            .flat_map(|k| k.reference.servers.clone())
            .collect()
    }

    fn retry_now(&self) {
        let (m, cv) = &self.inner.wake;
        *m.lock() += 1;
        cv.notify_all();
    }

    fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.retry_now();
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for h in threads {
            let _ = h.join();
        }
        // Detach: the content is no longer served and another appliance may take the volume.
        if let Some(state) = self.app() {
            state.set_content(Content::Locked(
                "the appliance is stopping; try again once it is back".into(),
            ));
        }
        *self.inner.slot.lock() = Slot::Empty;
        self.inner.lock_file.lock().take();
    }
}

/// What a finished conversion says: the rate is over the bytes of this run (a resumed
/// conversion did the rest before), the whole volume beside it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RunSummary<'a> {
    kind: &'a str,
    /// Bytes of the volume in their new form.
    total: u64,
    /// Bytes converted by this run.
    run: u64,
    secs: f64,
}

impl RunSummary<'_> {
    fn rate(&self) -> Option<f64> {
        (self.secs > 0.0 && self.run > 0).then(|| self.run as f64 / self.secs)
    }

    fn text(&self) -> String {
        let mut t = format!(
            "{} finished: {} bytes in {:.1} s",
            self.kind, self.run, self.secs
        );
        if let Some(r) = self.rate() {
            t.push_str(&format!(" ({:.0} bytes/s)", r));
        }
        if self.run != self.total {
            t.push_str(&format!(
                "; resumed, {} bytes of {} were done before",
                self.total.saturating_sub(self.run),
                self.total
            ));
        }
        t
    }
}

#[cfg(test)]
mod run_summary_tests {
    #[test]
    fn a_resumed_conversion_reports_the_rate_of_its_own_run() {
        let r = super::RunSummary {
            kind: "encrypting",
            total: 2_000_000_000,
            run: 100_000_000,
            secs: 0.5,
        };
        assert_eq!(r.rate(), Some(200_000_000.0));
        let t = r.text();
        assert!(
            t.starts_with("encrypting finished: 100000000 bytes in 0.5 s (200000000 bytes/s)"),
            "{t}"
        );
        assert!(
            t.contains("1900000000 bytes of 2000000000 were done before"),
            "{t}"
        );
        let whole = super::RunSummary {
            run: 2_000_000_000,
            ..r
        };
        assert!(!whole.text().contains("resumed"));
    }
}
