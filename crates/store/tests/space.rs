//! A full volume is reported clearly, keeps working for reads and deletions, and space freed
//! by deletions is reused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use atrest_store::*;
use atrest_volume::{BlockDevice, MemDevice};
use common::*;

#[test]
fn full_is_reported_and_deleting_frees_space_for_reuse() {
    let medium: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(17 << 20));
    let (tv, u) = TestVolume::format(medium, Kind::Encrypted, 3);
    let opts = StoreOptions {
        upload_batch_bytes: 2 << 20,
        ..StoreOptions::default()
    };
    let s = Store::create(Arc::new(u), &opts).unwrap();
    let data = Rng(9).bytes(2 << 20);
    let mut stored = Vec::new();
    let err = loop {
        let id = format!("r{}", stored.len());
        match s.recordings().put(&id, "s", &data) {
            Ok(_) => stored.push(id),
            Err(e) => break e,
        }
        assert!(stored.len() < 20, "a 16 MiB volume took 40 MiB");
    };
    assert!(matches!(err, Error::Full { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("full") && msg.contains("delete recordings"),
        "{msg}"
    );
    assert!(
        stored.len() >= 4,
        "only {} recordings of 2 MiB fit in 16 MiB",
        stored.len()
    );
    // Everything committed before is intact, and small writes may still fail or succeed, but
    // the store keeps answering.
    assert_eq!(s.recordings().list().unwrap().len(), stored.len());
    assert_eq!(
        s.recordings().read_range(&stored[0], 0, 100).unwrap(),
        data[..100]
    );
    // Deleting works on a full store, and the space is reused.
    for round in 0..10 {
        let victim = stored.remove(round % stored.len());
        assert!(s.recordings().delete(&victim).unwrap());
        let id = format!("again{round}");
        s.recordings()
            .put(&id, "s", &data)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        stored.push(id);
    }
    let space = s.space();
    assert!(space.high_water <= space.capacity);
    drop(s);
    let s = Store::open(Arc::new(tv.unlock()), &opts).unwrap();
    assert_eq!(s.recordings().list().unwrap().len(), stored.len());
    for id in &stored {
        assert_eq!(s.recordings().read_range(id, 0, data.len()).unwrap(), data);
    }
}

#[test]
fn repeated_replacement_does_not_grow_the_store() {
    let s = Store::create(Arc::new(MemDevice::new(24 << 20)), &StoreOptions::default()).unwrap();
    let data = Rng(1).bytes(3 << 20);
    s.recordings().put("r", "s", &data).unwrap();
    s.recordings().put("r", "s", &data).unwrap();
    let mark = s.space().high_water;
    for _ in 0..15 {
        s.recordings().put("r", "s", &data).unwrap();
    }
    assert!(
        s.space().high_water <= mark + (2 << 20),
        "the store grew from {mark} to {} bytes while replacing one recording",
        s.space().high_water
    );
}

#[test]
fn not_a_store_and_too_small() {
    let noisy = Arc::new(MemDevice::from_vec(Rng(5).bytes(4 << 20)));
    let e = Store::open(noisy, &StoreOptions::default()).unwrap_err();
    assert!(matches!(e, Error::NoStore { .. }), "{e}");
    assert!(e.to_string().contains("no content store"), "{e}");
    let e = Store::create(Arc::new(MemDevice::new(4096)), &StoreOptions::default()).unwrap_err();
    assert!(matches!(e, Error::TooSmall(_)), "{e}");
}

/// A device whose writes (and, on request, reads) fail with an OS error while `fail` is set, as
/// a file system that ran out of space or a failing disk.
struct FailingDevice {
    inner: MemDevice,
    /// 0: works; otherwise the errno writes fail with.
    fail: std::sync::atomic::AtomicI32,
    fail_reads: std::sync::atomic::AtomicBool,
}

impl FailingDevice {
    fn new(len: usize) -> FailingDevice {
        FailingDevice {
            inner: MemDevice::new(len),
            fail: 0.into(),
            fail_reads: false.into(),
        }
    }
    fn set(&self, errno: i32, reads: bool) {
        self.fail.store(errno, std::sync::atomic::Ordering::SeqCst);
        self.fail_reads
            .store(reads, std::sync::atomic::Ordering::SeqCst);
    }
    fn check(&self, read: bool) -> std::io::Result<()> {
        let e = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        if e != 0 && (!read || self.fail_reads.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(std::io::Error::from_raw_os_error(e));
        }
        Ok(())
    }
}

impl BlockDevice for FailingDevice {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.check(true)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.check(false)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.check(false)?;
        self.inner.flush()
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[test]
fn a_full_disk_under_the_volume_is_recovered_in_place() {
    let dev = Arc::new(FailingDevice::new(64 << 20));
    let s = Store::create(dev.clone(), &StoreOptions::default()).unwrap();
    let old = Rng(1).bytes(3 << 20);
    let new = Rng(2).bytes(5 << 20);
    let before = s.recordings().put("r", "s", &old).unwrap();
    s.audit()
        .append_batch(&[NewEvent {
            time: Timestamp(1),
            session: "s".into(),
            actor: "a".into(),
            kind: "k".into(),
            text: "before".into(),
        }])
        .unwrap();

    // The disk fills during a replacing upload: 507-worthy error, the old version stays.
    let mut up = s.recordings().upload("r", "s").unwrap();
    up.write(&new[..2 << 20]).unwrap();
    dev.set(ENOSPC, false);
    let err = up
        .write(&new[2 << 20..])
        .and_then(|_| up.finish().map(|_| ()))
        .unwrap_err();
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("the disk under the volume is full"),
        "{err}"
    );
    // Every write fails the same way while the disk is full; reads answer the acknowledged data.
    let err = s.config().set("k", Value::Int(1)).unwrap_err();
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert_eq!(s.recordings().info("r").unwrap().unwrap(), before);
    assert_eq!(s.recordings().read_range("r", 0, 3 << 20).unwrap(), old);

    // Space freed: the next requests succeed without reopening the store.
    dev.set(0, false);
    s.config().set("k", Value::Int(2)).unwrap();
    let after = s.recordings().put("r", "s", &new).unwrap();
    assert_eq!(after.size, new.len() as u64);
    assert_eq!(s.recordings().read_range("r", 0, 5 << 20).unwrap(), new);
    assert!(s.audit().verify().unwrap().first_broken.is_none());
    assert_eq!(s.recordings().list().unwrap().len(), 1);
}

#[test]
fn an_upload_across_another_requests_disk_error_is_whole_or_absent() {
    let dev = Arc::new(FailingDevice::new(64 << 20));
    let opts = StoreOptions {
        upload_batch_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let s = Store::create(dev.clone(), &opts).unwrap();
    let old = Rng(3).bytes(1 << 20);
    s.recordings().put("r", "s", &old).unwrap();
    // Batches committed, then another request meets the full disk and the store goes back to
    // its durable state: the upload publishes all of its bytes or fails, never a recording
    // with holes.
    let new = Rng(4).bytes(3 << 20);
    let mut up = s.recordings().upload("r", "s").unwrap();
    up.write(&new).unwrap();
    dev.set(ENOSPC, false);
    assert!(s.config().set("k", Value::Int(1)).is_err());
    dev.set(0, false);
    match up.finish() {
        Ok(i) => {
            assert_eq!(i.size, new.len() as u64);
            assert_eq!(s.recordings().read_range("r", 0, 3 << 20).unwrap(), new);
        }
        Err(e) => {
            assert!(matches!(e, Error::Interrupted), "{e}");
            assert_eq!(s.recordings().read_range("r", 0, 1 << 20).unwrap(), old);
        }
    }
}

#[test]
fn a_failing_disk_gives_errors_never_wrong_data_and_recovers() {
    let dev = Arc::new(FailingDevice::new(64 << 20));
    let opts = StoreOptions {
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let s = Store::create(dev.clone(), &opts).unwrap();
    let data = Rng(5).bytes(4 << 20);
    s.recordings().put("r", "s", &data).unwrap();
    dev.set(EIO, true);
    let err = s.recordings().read_range("r", 0, 4 << 20).unwrap_err();
    assert!(matches!(err, Error::DiskIo { .. }), "{err}");
    assert!(err.to_string().contains("check the disk"), "{err}");
    assert!(s.recordings().put("q", "s", &data[..100]).is_err());
    dev.set(0, false);
    assert_eq!(s.recordings().read_range("r", 0, 4 << 20).unwrap(), data);
    s.recordings().put("q", "s", &data[..100]).unwrap();
    assert_eq!(s.recordings().list().unwrap().len(), 2);
}

#[test]
fn a_grown_volume_is_used_at_once_by_the_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let dev = Arc::new(atrest_volume::FileDevice::create(&img, (1 << 20) + (8 << 20)).unwrap());
    let u = atrest_volume::Volume::format(
        dev,
        &atrest_volume::FormatOptions {
            data_offset: 1 << 20,
            label: String::new(),
        },
    )
    .unwrap()
    .unlock(vec![])
    .unwrap();
    let opts = StoreOptions {
        upload_batch_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let s = Store::create(Arc::new(u.clone()), &opts).unwrap();
    let before = s.space().capacity;
    let reserve_before = s.space().reserve;
    let data = Rng(4).bytes(1 << 20);
    let mut n = 0;
    let err = loop {
        match s.recordings().put(&format!("r{n}"), "s", &data) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 20, "an 8 MiB volume took 20 MiB");
    };
    assert!(matches!(err, Error::Full { .. }), "{err}");
    // The image grows by 16 MiB and the volume with it: the same store writes there.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len((1 << 20) + (24 << 20))
        .unwrap();
    assert_eq!(u.grow().unwrap(), (8 << 20, 24 << 20));
    assert_eq!(s.space().capacity, before + (16 << 20));
    // The reserve kept for deletions follows the growth (1/64 of the capacity here).
    let reserve = s.space().reserve;
    assert!(
        reserve > reserve_before,
        "{reserve} after, {reserve_before} before"
    );
    assert_eq!(reserve, s.space().capacity / 64);
    let mut more = 0;
    for i in 0..8 {
        s.recordings().put(&format!("g{i}"), "s", &data).unwrap();
        more += 1;
    }
    assert!(more > 0);
    drop(s);
    // Reopened, everything is there.
    let s = Store::open(Arc::new(u), &opts).unwrap();
    assert_eq!(s.recordings().list().unwrap().len(), n + more);
    assert_eq!(
        s.space().reserve,
        reserve,
        "a reopened store keeps the same reserve"
    );
    assert_eq!(
        s.recordings().read_range("g7", 0, 100).unwrap(),
        data[..100]
    );
}
