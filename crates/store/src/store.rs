//! The store: one embedded database on a block device, shared by the configuration, the audit
//! history and the recordings.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use atrest_volume::BlockDevice;
use parking_lot::{Mutex, RwLock};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::backend::{OpenError, PHYS_SHIFT, Shared, VolumeBackend};
use crate::error::{Error, Result, storage};
use crate::extents::{BLOCK, Extents};
use crate::superblock::SHADOW_LEN;

/// Store-wide values: format version, configuration schema version, audit head, counters.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "store.format";
/// Version of the store's table layout: 2 keeps recording data in blocks beside the database
/// (docs/store.md). A format-1 store is taken over at open: its recordings stay readable where
/// they are (inside the database) until they are replaced or deleted.
pub const STORE_FORMAT: u32 = 2;

pub(crate) fn recorded_format(store: &Store) -> Result<u32> {
    let txn = store.read()?;
    let meta = txn.open_table(META).map_err(storage("open its tables"))?;
    let v = meta.get(FORMAT_KEY).map_err(storage("read its format"))?;
    v.and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| Error::Corrupt {
            what: "the store format number".into(),
        })
}

/// A point in time: microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0
    }
}

/// Options of [`Store::create`] and [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Memory for the database's page cache (and its write buffer).
    pub cache_bytes: usize,
    /// Bytes kept free above the database for deletions, so that a full store can always
    /// be emptied. `None`: 1/64 of the volume, at least 256 KiB and at most 64 MiB.
    pub reserve_bytes: Option<u64>,
    /// Recording bytes buffered by an upload before they are committed (memory bound of one
    /// upload, allocated as the data arrives; rounded to whole chunks).
    pub upload_batch_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 << 20,
            reserve_bytes: None,
            upload_batch_bytes: 8 << 20,
        }
    }
}

/// Space on the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes the store can use (the volume's data area less the superblock).
    pub capacity: u64,
    /// Bytes kept back for deletions.
    pub reserve: u64,
    /// Bytes of the database's region (from the start of the volume's data area up to the
    /// highest byte the database wrote).
    pub high_water: u64,
    /// Bytes in use: the database's region and every recording block in use (published,
    /// being uploaded, or freed but still visible to a reader).
    pub used: u64,
}

struct Current {
    db: Arc<Database>,
    shared: Arc<Shared>,
}

pub(crate) struct Inner {
    dev: Arc<dyn BlockDevice>,
    pub(crate) opts: StoreOptions,
    /// The key that seals the audit history (see [`crate::audit::Audit::set_seal_key`]).
    seal_key: Mutex<Option<zeroize::Zeroizing<[u8; 32]>>>,
    current: RwLock<Current>,
    /// Which bytes of the device hold content (recording blocks, the database's region).
    pub(crate) extents: Arc<Extents>,
}

impl Inner {
    /// Bytes the store can use: read from the device each time, so a volume grown while the
    /// store is open ([`atrest_volume::UnlockedVolume::grow`]) is used at once (every write
    /// checks the device's size too).
    fn capacity(&self) -> u64 {
        VolumeBackend::capacity(self.dev.len())
    }

    /// Bytes kept for deletions: computed from the device's size each time, like
    /// [`Inner::capacity`], so it follows a growth.
    pub(crate) fn reserve(&self) -> u64 {
        reserve_for(self.dev.len(), self.opts.reserve_bytes)
    }
}

/// Bytes kept back for deletions on a device of `dev_len` bytes: `fixed` if set
/// ([`StoreOptions::reserve_bytes`]), else 1/64 of the capacity between 256 KiB and 64 MiB;
/// never more than a quarter of the capacity.
pub(crate) fn reserve_for(dev_len: u64, fixed: Option<u64>) -> u64 {
    let capacity = VolumeBackend::capacity(dev_len);
    fixed
        .unwrap_or_else(|| (capacity / 64).clamp(256 << 10, 64 << 20))
        .min(capacity / 4)
}

/// The appliance's content store on a volume. Cheap to clone; all clones share one database.
/// Reads run concurrently with each other and with the (one at a time) writes, and always see
/// a committed state.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("capacity", &self.inner.capacity())
            .finish_non_exhaustive()
    }
}

fn open_error(e: OpenError) -> Error {
    match e {
        OpenError::NoStore { slot0, slot1 } => Error::NoStore { slot0, slot1 },
        OpenError::TooSmall(n) => Error::TooSmall(n),
        OpenError::Io(e) => {
            crate::error::classify("read or write its superblock", redb::Error::Io(e))
        }
    }
}

struct MaintenanceGuard<'a>(&'a Shared, bool);

impl Drop for MaintenanceGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.maintenance.store(false, Ordering::Release);
        }
    }
}

impl Store {
    /// Creates an empty store on `dev` (the data segment of an unlocked volume, or any block
    /// device), replacing whatever the device held.
    pub fn create(dev: Arc<dyn BlockDevice>, opts: &StoreOptions) -> Result<Store> {
        let shared = Store::shared(opts);
        let backend = VolumeBackend::create(dev.clone(), shared.clone()).map_err(open_error)?;
        Store::start(dev, opts, backend, shared)
    }

    fn shared(opts: &StoreOptions) -> Arc<Shared> {
        Arc::new(Shared::new(
            Arc::new(Extents::default()),
            opts.reserve_bytes,
        ))
    }

    /// Opens the store on `dev`, recovering the last committed state after a crash or power
    /// loss, and reclaiming the space of uploads that were not finished.
    pub fn open(dev: Arc<dyn BlockDevice>, opts: &StoreOptions) -> Result<Store> {
        let shared = Store::shared(opts);
        let backend = VolumeBackend::open(dev.clone(), shared.clone()).map_err(open_error)?;
        Store::start(dev, opts, backend, shared)
    }

    fn start(
        dev: Arc<dyn BlockDevice>,
        opts: &StoreOptions,
        backend: VolumeBackend,
        shared: Arc<Shared>,
    ) -> Result<Store> {
        let extents = shared.extents.clone();
        let db = Store::database(backend, opts)?;
        let store = Store {
            inner: Arc::new(Inner {
                dev,
                opts: opts.clone(),
                current: RwLock::new(Current {
                    db: Arc::new(db),
                    shared,
                }),
                seal_key: Mutex::new(None),
                extents,
            }),
        };
        store.init()?;
        Ok(store)
    }

    fn database(backend: VolumeBackend, opts: &StoreOptions) -> Result<Database> {
        redb::Builder::new()
            .set_cache_size(opts.cache_bytes)
            .create_with_backend(backend)
            .map_err(storage("open its database"))
    }

    fn init(&self) -> Result<()> {
        self.write("initialise its tables", true, |txn| {
            let mut meta = txn.open_table(META).map_err(storage("open its tables"))?;
            let format = meta
                .get(FORMAT_KEY)
                .map_err(storage("read its format"))?
                .map(|v| v.value().to_vec());
            match format {
                None => {
                    meta.insert(FORMAT_KEY, &STORE_FORMAT.to_le_bytes()[..])
                        .map_err(storage("write its format"))?;
                }
                Some(v) => {
                    let f = <[u8; 4]>::try_from(&v[..]).map(u32::from_le_bytes).map_err(|_| {
                        Error::Corrupt {
                            what: "the store format number".into(),
                        }
                    })?;
                    if f > STORE_FORMAT {
                        return Err(Error::Invalid(format!(
                            "this content store has format {f}, newer than this program's {STORE_FORMAT}: run a newer atrest"
                        )));
                    }
                    if f < STORE_FORMAT {
                        // Format 1 keeps recording data inside the database; those recordings
                        // stay readable there, new ones go to blocks beside it.
                        meta.insert(FORMAT_KEY, &STORE_FORMAT.to_le_bytes()[..])
                            .map_err(storage("write its format"))?;
                    }
                }
            }
            drop(meta);
            crate::config::init_tables(txn)?;
            crate::audit::init_tables(txn)?;
            crate::recordings::init_tables(txn)?;
            Ok(())
        })?;
        // Only now are the blocks of the committed state known: until here the database could
        // not grow past the extent floor persisted with that state.
        let blocks = crate::recordings::referenced_blocks(self)?;
        self.inner.extents.load(blocks);
        crate::recordings::collect_garbage(self)
    }

    fn current(&self) -> (Arc<Database>, Arc<Shared>) {
        let c = self.inner.current.read();
        (c.db.clone(), c.shared.clone())
    }

    /// The current database, replaced first by one opened from the last durable state when
    /// the device failed under it.
    fn healthy(&self) -> Result<(Arc<Database>, Arc<Shared>)> {
        let (db, shared) = self.current();
        if shared.io_failed.load(Ordering::Acquire) {
            self.reopen(&db)?;
            return Ok(self.current());
        }
        Ok((db, shared))
    }

    /// A read transaction on the newest committed state.
    pub(crate) fn read(&self) -> Result<ReadTransaction> {
        let (db, _) = self.healthy()?;
        db.begin_read().map_err(storage("start a read"))
    }

    /// Runs `f` in a write transaction and commits it (durably). `maintenance` transactions
    /// (deletions) may use the reserve.
    pub(crate) fn write<T>(
        &self,
        op: &'static str,
        maintenance: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let (db, shared) = self.healthy()?;
        let run = || -> Result<T> {
            let mut txn = db.begin_write().map_err(storage(op))?;
            txn.set_quick_repair(true);
            if maintenance {
                shared.maintenance.store(true, Ordering::Release);
            }
            let _guard = MaintenanceGuard(&shared, maintenance);
            let v = f(&txn)?;
            txn.commit().map_err(storage(op))?;
            Ok(v)
        };
        match run() {
            Ok(v) => Ok(v),
            Err(e) if shared.full_hit.load(Ordering::Acquire) => {
                drop(e);
                self.reopen(&db)?;
                Err(Error::Full {
                    capacity: self.inner.capacity(),
                    reserve: self.inner.reserve(),
                })
            }
            Err(e @ (Error::DiskFull { .. } | Error::DiskIo { .. })) => {
                self.reopen(&db)?;
                Err(e)
            }
            // Another request replaced the database while this one ran.
            Err(_) if shared.retired.load(Ordering::Acquire) => Err(Error::Interrupted),
            Err(e) if shared.io_failed.load(Ordering::Acquire) => {
                self.reopen(&db)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces a database instance that failed a write for lack of room, or whose device
    /// failed, by a fresh one opened from the last durable state (the same path as recovery
    /// after a power loss).
    fn reopen(&self, failed: &Arc<Database>) -> Result<()> {
        let mut cur = self.inner.current.write();
        if !Arc::ptr_eq(&cur.db, failed) {
            return Ok(());
        }
        // The failed instance never touches the device again. Should the new one not open
        // (the disk still full or failing), the next request tries again.
        cur.shared.retired.store(true, Ordering::Release);
        cur.shared.io_failed.store(true, Ordering::Release);
        let shared = Arc::new(Shared::new(
            self.inner.extents.clone(),
            self.inner.opts.reserve_bytes,
        ));
        let backend =
            VolumeBackend::open(self.inner.dev.clone(), shared.clone()).map_err(open_error)?;
        let db = Store::database(backend, &self.inner.opts)?;
        let old = std::mem::replace(
            &mut *cur,
            Current {
                db: Arc::new(db),
                shared,
            },
        );
        drop(cur);
        drop(old);
        Ok(())
    }

    /// Space on the volume.
    pub fn space(&self) -> Space {
        let (db_end, blocks) = self.inner.extents.usage();
        let capacity = self.inner.capacity();
        Space {
            capacity,
            reserve: self.inner.reserve(),
            high_water: db_end.saturating_sub(PHYS_SHIFT + SHADOW_LEN as u64),
            used: (db_end.saturating_sub(PHYS_SHIFT) + blocks * BLOCK).min(capacity),
        }
    }

    /// Which bytes of the device hold content, for an online conversion that converts only
    /// the space in use. The answer is conservative and right under concurrency: a recording
    /// block is marked in use before anything is written to it, the database's region before
    /// the database writes there, and a freed block stays marked while a reader may still
    /// see it.
    pub fn used_ranges(&self) -> Arc<dyn atrest_volume::UsedRanges> {
        self.inner.extents.clone()
    }

    pub(crate) fn full(&self) -> Error {
        Error::Full {
            capacity: self.inner.capacity(),
            reserve: self.inner.reserve(),
        }
    }

    pub(crate) fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.inner.dev
    }

    /// The configuration.
    pub fn config(&self) -> crate::config::Config<'_> {
        crate::config::Config { store: self }
    }

    pub(crate) fn seal_key(&self) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        self.inner.seal_key.lock().clone()
    }

    pub(crate) fn set_seal_key(&self, key: Option<[u8; 32]>) {
        *self.inner.seal_key.lock() = key.map(zeroize::Zeroizing::new);
    }

    /// The session audit history.
    pub fn audit(&self) -> crate::audit::Audit<'_> {
        crate::audit::Audit { store: self }
    }

    /// The session recordings.
    pub fn recordings(&self) -> crate::recordings::Recordings<'_> {
        crate::recordings::Recordings { store: self }
    }

    /// Writes the database made that were not aligned to whole pages (the crash-safety argument
    /// in docs/store.md relies on there being none). For tests.
    #[doc(hidden)]
    pub fn unaligned_writes(&self) -> u64 {
        self.current().1.unaligned_writes.load(Ordering::Relaxed)
    }
}
