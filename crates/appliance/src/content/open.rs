//! Attaching the content volume: making a new image, opening it (refusing a device atrest never
//! formatted), growing its data segment to its device, and opening the content store on it with
//! its audit history sealed under the volume key.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use atrest_store::{Store, StoreOptions};
use atrest_volume::{
    BlockDevice, Check, FileDevice, FormatOptions, State as VolState, UnlockedVolume, Volume,
    VolumeLock,
};
use parking_lot::{Condvar, Mutex};

use crate::known::Known;
use crate::state::{AppState, Content, VolumeBackend};
use crate::status::AuditCheck;
use crate::workflow::Event;
use atrest_keys as keys;

use super::{DataVolume, Extra, Hold, Inner, MIN_VOLUME_SIZE, Slot, VolumeOptions, is_converting};

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
    pub(super) fn grow_volume(
        &self,
        uv: &UnlockedVolume,
        when: &str,
    ) -> Result<(u64, u64), String> {
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
    pub(super) fn grow_at_start(&self, uv: &UnlockedVolume) {
        if is_converting(uv.state()) {
            return;
        }
        if let Err(e) = self.grow_volume(uv, "at start") {
            tracing::warn!("{e}");
        }
    }

    pub(super) fn open_store(&self, state: &AppState, uv: &UnlockedVolume) -> Result<(), String> {
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
    pub(super) fn reseal_audit(&self, uv: &UnlockedVolume) {
        if let Some(state) = self.app()
            && let Content::Ready(store) = state.content()
        {
            self.seal_audit(&store, uv, true);
        }
    }
}
