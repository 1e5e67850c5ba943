//! Recording data in blocks beside the database: the whole volume is usable, deleted space is
//! written again, and the store's answer to "which bytes hold content" (for a conversion that
//! converts only the space in use) is right under concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use atrest_store::*;
use atrest_volume::{BlockDevice, FileDevice, MemDevice, UsedRanges};
use common::*;

fn read_all(s: &Store, id: &str) -> Vec<u8> {
    let mut r = s.recordings().open(id).unwrap();
    let mut d = Vec::new();
    r.read_to_end(&mut d).unwrap();
    d
}

fn recording(n: u64, len: usize) -> Vec<u8> {
    let mut v = Rng(n + 1).bytes(len);
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

/// Fills an encrypted volume with 8 MiB recordings until the store says "full"; at least 95 %
/// of the data area holds recordings. Half of them deleted, the same space takes as many
/// again; everything reads back after a reopen.
#[test]
fn fill_to_full_holds_95_percent_then_delete_half_and_refill() {
    let dir = tempfile::tempdir().unwrap();
    let data_area: u64 = 256 << 20;
    let medium: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::create(&dir.path().join("vol.img"), (1 << 20) + data_area).unwrap());
    let (tv, u) = TestVolume::format(medium, Kind::Encrypted, 21);
    let opts = StoreOptions::default();
    let s = Store::create(Arc::new(u), &opts).unwrap();
    const REC: usize = 8 << 20;
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0u64;
    let fill = |s: &Store, stored: &mut BTreeMap<String, u64>, n: &mut u64| -> usize {
        let mut added = 0;
        loop {
            let id = format!("r{n}");
            match s.recordings().put(&id, "s", &recording(*n, REC)) {
                Ok(_) => {
                    stored.insert(id, *n);
                    *n += 1;
                    added += 1;
                }
                Err(Error::Full { .. }) => return added,
                Err(e) => panic!("{e}"),
            }
            assert!(added < 50, "a 256 MiB volume took more than 400 MiB");
        }
    };
    let first = fill(&s, &mut stored, &mut n);
    let space = s.space();
    let fraction = (first * REC) as f64 / data_area as f64;
    eprintln!(
        "filled: {first} recordings of 8 MiB in a {} MiB data area = {:.1} % (database region {} KiB, reserve {} KiB, used {} MiB)",
        data_area >> 20,
        fraction * 100.0,
        space.high_water >> 10,
        space.reserve >> 10,
        space.used >> 20
    );
    assert!(
        fraction >= 0.95,
        "only {:.1} % of the data area holds recordings",
        fraction * 100.0
    );
    // Delete every other one, then fill again: the freed space is written again.
    let victims: Vec<String> = stored.keys().step_by(2).cloned().collect();
    for v in &victims {
        assert!(s.recordings().delete(v).unwrap());
        stored.remove(v);
    }
    let again = fill(&s, &mut stored, &mut n);
    assert!(
        again >= victims.len(),
        "{} recordings deleted, only {again} fit again",
        victims.len()
    );
    drop(s);
    let s = Store::open(Arc::new(tv.unlock()), &opts).unwrap();
    let listed = s.recordings().list().unwrap();
    assert_eq!(listed.len(), stored.len());
    for (id, k) in &stored {
        assert_eq!(read_all(&s, id), recording(*k, REC), "{id}");
    }
}

/// The data area as the store sees it, with a lock that an online conversion would hold on a
/// range: every write takes it shared; the "conversion" takes it exclusively, asks the store
/// whether the range is in use and, when it is not, overwrites it with noise (as a conversion
/// that skips unused space leaves whatever the sectors decrypt to). Every write is also checked
/// to fall in a range the store already marked in use.
struct Scribbled {
    inner: MemDevice,
    lock: RwLock<()>,
    used: OnceLock<Arc<dyn UsedRanges>>,
    unmarked_writes: AtomicU64,
}

impl BlockDevice for Scribbled {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let _g = self.lock.read().unwrap();
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let _g = self.lock.read().unwrap();
        if let Some(u) = self.used.get() {
            // Byte by 4 KiB sector: the whole write must be marked, not just a part of it.
            let mut at = offset;
            while at < offset + buf.len() as u64 {
                if !u.in_use(at, 1) {
                    self.unmarked_writes.fetch_add(1, Ordering::Relaxed);
                }
                at += 4096;
            }
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Scribbled {
    /// Overwrites `[offset, offset + len)` with noise if the store says it holds no content.
    fn scribble(&self, offset: u64, len: u64, rng: &mut Rng) -> bool {
        let _g = self.lock.write().unwrap();
        let used = self.used.get().unwrap();
        if used.in_use(offset, len) {
            return false;
        }
        self.inner
            .write_at(&rng.bytes(len as usize), offset)
            .unwrap();
        true
    }
}

#[test]
fn used_ranges_answer_is_right_under_concurrency() {
    let len: u64 = 96 << 20;
    let dev = Arc::new(Scribbled {
        inner: MemDevice::new(len as usize),
        lock: RwLock::new(()),
        used: OnceLock::new(),
        unmarked_writes: AtomicU64::new(0),
    });
    let opts = StoreOptions {
        upload_batch_bytes: 2 << 20,
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let s = Store::create(dev.clone(), &opts).unwrap();
    let _ = dev.used.set(s.used_ranges());
    let stop = AtomicBool::new(false);
    let scribbled = AtomicU64::new(0);
    let asked = AtomicU64::new(0);
    let model: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|sc| {
        // The "conversion".
        sc.spawn(|| {
            let mut rng = Rng(77);
            while !stop.load(Ordering::Relaxed) {
                let sectors = len / 4096;
                let at = rng.below(sectors) * 4096;
                let n = (1 + rng.below(512)) * 4096;
                let n = n.min(len - at);
                asked.fetch_add(1, Ordering::Relaxed);
                if dev.scribble(at, n, &mut rng) {
                    scribbled.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::yield_now();
            }
        });
        // Readers: every published recording reads back whole and right.
        sc.spawn(|| {
            let mut rng = Rng(5);
            while !stop.load(Ordering::Relaxed) {
                let id = format!("t{}-{}", rng.below(2), rng.below(6));
                let mut r = match s.recordings().open(&id) {
                    Ok(r) => r,
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => panic!("{e}"),
                };
                let mut d = Vec::new();
                r.read_to_end(&mut d)
                    .unwrap_or_else(|e| panic!("reading {id}: {e}"));
                let sum: [u8; 32] = openssl::sha::sha256(&d);
                assert_eq!(sum, r.info().sha256, "{id}");
            }
        });
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let s = &s;
                let model = &model;
                sc.spawn(move || {
                    let mut rng = Rng(100 + t);
                    for step in 0..120u64 {
                        let id = format!("t{t}-{}", rng.below(6));
                        match rng.below(6) {
                            0 => {
                                s.recordings().delete(&id).unwrap();
                                model.lock().unwrap().remove(&id);
                            }
                            1 => {
                                s.audit()
                                    .append_batch(&[NewEvent {
                                        time: Timestamp(step as i64),
                                        session: format!("s{t}"),
                                        actor: "a".into(),
                                        kind: "k".into(),
                                        text: "x".repeat(rng.below(4000) as usize),
                                    }])
                                    .unwrap();
                            }
                            _ => {
                                let size = rng.below(5 << 20) as usize;
                                let data = Rng(rng.next()).bytes(size);
                                match s.recordings().put(&id, "s", &data) {
                                    Ok(_) => {
                                        model.lock().unwrap().insert(id, data);
                                    }
                                    Err(Error::Full { .. }) => {}
                                    Err(e) => panic!("{e}"),
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "{} ranges asked, {} of them not in use and overwritten with noise",
        asked.load(Ordering::Relaxed),
        scribbled.load(Ordering::Relaxed)
    );
    assert_eq!(dev.unmarked_writes.load(Ordering::Relaxed), 0);
    assert!(scribbled.load(Ordering::Relaxed) > 10);
    let check = |s: &Store| {
        let model = model.lock().unwrap();
        let ids: Vec<String> = s
            .recordings()
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, model.keys().cloned().collect::<Vec<_>>());
        for (id, d) in model.iter() {
            assert_eq!(&read_all(s, id), d, "{id}");
        }
        assert!(s.audit().verify().unwrap().first_broken.is_none());
    };
    check(&s);
    // Deleted space is not in use any more (nothing but the database's region and live
    // recordings' blocks is).
    let used = s.space().used;
    let live: u64 = model
        .lock()
        .unwrap()
        .values()
        .map(|d| (d.len() as u64).div_ceil(1 << 20) << 20)
        .sum();
    assert!(
        used <= live + s.space().high_water + (1 << 20),
        "{used} bytes in use for {live} bytes of recordings"
    );
    drop(s);
    let s = Store::open(dev.clone(), &opts).unwrap();
    check(&s);
}

/// A store whose device is a plain memory device, for quick checks of the map.
#[test]
fn the_map_covers_the_database_and_the_blocks_and_is_rebuilt_at_open() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    let s = Store::create(dev.clone(), &StoreOptions::default()).unwrap();
    let used = s.used_ranges();
    assert!(used.in_use(0, 1), "the superblock");
    assert!(!used.in_use(40 << 20, 8 << 20));
    s.recordings()
        .put("a", "s", &recording(1, (3 << 20) + 200_000))
        .unwrap();
    // Four blocks at the top of the device.
    assert!(used.in_use(60 << 20, 4 << 20));
    assert!(used.in_use((64 << 20) - 1, 1));
    assert!(!used.in_use(40 << 20, 8 << 20));
    drop(s);
    let s = Store::open(dev.clone(), &StoreOptions::default()).unwrap();
    let used = s.used_ranges();
    assert!(used.in_use(60 << 20, 1));
    assert!(used.in_use(63 << 20, 1));
    // A reader opened before the deletion keeps the blocks; after it is gone they are free.
    let mut r = s.recordings().open("a").unwrap();
    assert!(s.recordings().delete("a").unwrap());
    assert!(used.in_use(60 << 20, 4 << 20));
    let mut d = Vec::new();
    r.read_to_end(&mut d).unwrap();
    assert_eq!(d, recording(1, (3 << 20) + 200_000));
    drop(r);
    s.recordings().put("b", "s", &[1u8; 300_000]).unwrap();
    assert!(used.in_use((64 << 20) - 1, 1));
    assert!(!used.in_use(60 << 20, 3 << 20));
    // A short recording (or last chunk) stays inside the database: no block.
    let before = s.space();
    s.recordings()
        .put("small", "s", &recording(3, 100_000))
        .unwrap();
    assert!(!used.in_use(60 << 20, 3 << 20));
    assert!(s.space().used < before.used + (1 << 20), "{before:?}");
    assert_eq!(read_all(&s, "small"), recording(3, 100_000));
    drop(s);
    let s = Store::open(dev, &StoreOptions::default()).unwrap();
    assert_eq!(read_all(&s, "small"), recording(3, 100_000));
    assert_eq!(read_all(&s, "b"), vec![1u8; 300_000]);
}

/// A store of format 1 (recordings inside the database) is taken over at open: its
/// recordings read back, deleting them frees their space, new ones go to blocks.
#[test]
fn a_format_1_store_is_taken_over_at_open() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(48 << 20));
    let s = Store::create(dev.clone(), &StoreOptions::default()).unwrap();
    let old = recording(7, (2 << 20) + 99);
    atrest_store::testing::put_format_1_recording(&s, "old", "s", &old).unwrap();
    assert_eq!(atrest_store::testing::recorded_format(&s).unwrap(), 1);
    drop(s);
    let s = Store::open(dev.clone(), &StoreOptions::default()).unwrap();
    assert_eq!(
        atrest_store::testing::recorded_format(&s).unwrap(),
        STORE_FORMAT
    );
    assert_eq!(read_all(&s, "old"), old);
    assert_eq!(
        s.recordings().read_range("old", 1044480 - 3, 6).unwrap(),
        old[1044480 - 3..][..6]
    );
    let new = recording(8, 3 << 20);
    s.recordings().put("new", "s", &new).unwrap();
    assert!(s.used_ranges().in_use((48 << 20) - 1, 1));
    let before = s.space().high_water;
    assert!(before >= 2 << 20, "the old chunks are in the database");
    // Replacing the old recording retires its chunks inside the database.
    s.recordings().put("old", "s", &new).unwrap();
    assert_eq!(read_all(&s, "old"), new);
    assert_eq!(read_all(&s, "new"), new);
    drop(s);
    let s = Store::open(dev, &StoreOptions::default()).unwrap();
    assert_eq!(s.recordings().list().unwrap().len(), 2);
    assert_eq!(read_all(&s, "old"), new);
}

/// The child of [`kill_9_during_uploads_loses_nothing_acknowledged`]: uploads and deletes on
/// the store in the file `path` until it is killed, saying on stdout what it begins and what
/// was acknowledged.
fn kill_child(path: &str, round: u64) -> ! {
    use std::io::Write;
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(std::path::Path::new(path)).unwrap());
    let opts = StoreOptions {
        upload_batch_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let s = if round == 0 {
        Store::create(dev, &opts).unwrap()
    } else {
        Store::open(dev, &opts).unwrap()
    };
    let mut out = std::io::stdout();
    let mut rng = Rng(round + 1000);
    for i in (round << 32).. {
        let k = rng.below(6);
        if rng.below(5) == 0 {
            writeln!(out, "\n@op begin del r{k}").unwrap();
            out.flush().unwrap();
            s.recordings().delete(&format!("r{k}")).unwrap();
        } else {
            let size = (rng.below(3 << 20) + 1) as usize;
            writeln!(out, "\n@op begin put r{k} {i} {size}").unwrap();
            out.flush().unwrap();
            match s
                .recordings()
                .put(&format!("r{k}"), "s", &recording(i, size))
            {
                Ok(_) => {}
                Err(Error::Full { .. }) => {
                    writeln!(out, "\n@op full").unwrap();
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
        writeln!(out, "\n@op done").unwrap();
        out.flush().unwrap();
    }
    unreachable!()
}

/// Killed with SIGKILL in the middle of uploads (several times over, on the same store): every
/// acknowledged upload and deletion is there after a restart, the one under way is there whole
/// or not at all, and no space leaks.
#[test]
fn kill_9_during_uploads_loses_nothing_acknowledged() {
    use std::io::BufRead;
    if let (Ok(path), Ok(round)) = (
        std::env::var("ATREST_STORE_KILL_CHILD"),
        std::env::var("ATREST_STORE_KILL_ROUND"),
    ) {
        kill_child(&path, round.parse().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.img");
    drop(FileDevice::create(&path, 40 << 20).unwrap());
    let mut model: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    let mut rng = Rng(3);
    for round in 0..4u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "kill_9_during_uploads_loses_nothing_acknowledged",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ATREST_STORE_KILL_CHILD", &path)
            .env("ATREST_STORE_KILL_ROUND", round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = 5 + rng.below(25);
        let mut done = 0;
        let mut in_flight: Option<Vec<String>> = None;
        for line in lines {
            let line = line.unwrap();
            let Some(line) = line.strip_prefix("@op ") else {
                continue;
            };
            let w: Vec<String> = std::iter::once("op")
                .chain(line.split(' '))
                .map(String::from)
                .collect();
            match w[1].as_str() {
                "begin" => in_flight = Some(w[2..].to_vec()),
                "full" => in_flight = None,
                "done" => {
                    let op = in_flight.take().unwrap();
                    match op[0].as_str() {
                        "del" => {
                            model.remove(&op[1]);
                        }
                        _ => {
                            model.insert(
                                op[1].clone(),
                                (op[2].parse().unwrap(), op[3].parse().unwrap()),
                            );
                        }
                    }
                    done += 1;
                    if done == kill_after {
                        // Let the next operation get under way, then kill.
                        std::thread::sleep(std::time::Duration::from_millis(rng.below(40)));
                        child.kill().unwrap();
                    }
                }
                _ => panic!("{line}"),
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child ended by itself: {status}");
        let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&path).unwrap());
        let s = Store::open(dev, &StoreOptions::default()).unwrap();
        let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for info in s.recordings().list().unwrap() {
            got.insert(info.id.clone(), read_all(&s, &info.id));
        }
        // The interrupted operation may have completed.
        let mut after = model.clone();
        if let Some(op) = &in_flight {
            if op[0] == "del" {
                after.remove(&op[1]);
            } else {
                after.insert(
                    op[1].clone(),
                    (op[2].parse().unwrap(), op[3].parse().unwrap()),
                );
            }
        }
        let expect = |m: &BTreeMap<String, (u64, usize)>| -> BTreeMap<String, Vec<u8>> {
            m.iter()
                .map(|(id, (i, n))| (id.clone(), recording(*i, *n)))
                .collect()
        };
        if got != expect(&model) {
            assert!(
                got == expect(&after),
                "round {round}: neither the acknowledged state nor that plus {in_flight:?}"
            );
            model = after;
        }
        // Nothing but the database and the live recordings' blocks is in use.
        let live: u64 = model
            .values()
            .map(|(_, n)| (*n as u64).div_ceil(1 << 20) << 20)
            .sum();
        let sp = s.space();
        assert!(
            sp.used <= live + sp.high_water + (64 << 10),
            "round {round}: {} bytes in use for {live} bytes of recordings",
            sp.used
        );
    }
}
