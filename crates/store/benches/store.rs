//! Content store benchmarks, as ratios measured in one run:
//! - recording upload and download MB/s on an encrypted vs a plain volume (both files on the
//!   same file system, every commit durable);
//! - audit appends per second (one durable commit each, and batches of 100), against the
//!   device's own flushes per second;
//! - query latency with 1 million events, against a full scan of the events.
//!
//! `cargo bench -p atrest-store --bench store`; `ATREST_BENCH_MB` (recording size, default
//! 256), `ATREST_BENCH_EVENTS` (default 1000000), `ATREST_BENCH_DIR` (where the volume files
//! go, default the system temporary directory), `ATREST_BENCH_ONLY` (`recordings` or `audit`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atrest_store::*;
use atrest_volume::{
    BlockDevice, ConvertOptions, EncryptOptions, FileDevice, FormatOptions, KeyMaterial,
    KeyReference, KeySize, UnlockedVolume, Volume,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts the flushes that reach the file.
struct Counting(FileDevice, AtomicU64);

impl BlockDevice for Counting {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.flush()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
}

fn volume(dir: &std::path::Path, name: &str, data: u64, encrypted: bool) -> UnlockedVolume {
    volume_counting(dir, name, data, encrypted).0
}

fn volume_counting(
    dir: &std::path::Path,
    name: &str,
    data: u64,
    encrypted: bool,
) -> (UnlockedVolume, Arc<Counting>) {
    let path = dir.join(name);
    let counting = Arc::new(Counting(
        FileDevice::create(&path, (16 << 20) + data).unwrap(),
        AtomicU64::new(0),
    ));
    let dev: Arc<dyn BlockDevice> = counting.clone();
    // Write every block of the file once, as the encryption does, so that neither volume pays
    // for the file system allocating blocks during the measurements.
    let zeros = vec![0u8; 8 << 20];
    let mut at = 0;
    while at < dev.len() {
        let n = (dev.len() - at).min(zeros.len() as u64) as usize;
        dev.write_at(&zeros[..n], at).unwrap();
        at += n as u64;
    }
    dev.flush().unwrap();
    let v = Volume::format(dev, &FormatOptions::default()).unwrap();
    let u = v.unlock(vec![]).unwrap();
    if encrypted {
        u.begin_encrypt(
            KeyMaterial::generate(KeySize::Bits256).unwrap(),
            KeyReference {
                unique_identifier: "bench".into(),
                servers: vec!["kms.example:5696".into()],
                created: "2026-11-27T00:00:00Z".into(),
            },
            &EncryptOptions::default(),
        )
        .unwrap();
        u.convert(&ConvertOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(u.state().as_str(), "encrypted");
    }
    (u, counting)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn recordings(dir: &std::path::Path, mb: u64) {
    let size = mb << 20;
    let data_len = size * 4 + (64 << 20);
    let stores = [("plain", false), ("encrypted", true)].map(|(name, enc)| {
        let u = volume(dir, &format!("rec-{name}.img"), data_len, enc);
        (
            name,
            Store::create(Arc::new(u), &StoreOptions::default()).unwrap(),
        )
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = Rng(7);
    for b in buf.chunks_mut(8) {
        b.copy_from_slice(&rng.next().to_le_bytes());
    }
    let mut up = [vec![], vec![]];
    let mut down = [vec![], vec![]];
    for round in 0..5 {
        // Alternate which volume goes first, so that neither always runs on a warmer cache.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let s = &stores[i].1;
            let id = format!("r{}", round % 2);
            let t = Instant::now();
            let mut u = s.recordings().upload(&id, "bench").unwrap();
            for _ in 0..mb {
                u.write(&buf).unwrap();
            }
            u.finish().unwrap();
            up[i].push(mbps(size, t.elapsed()));
            let t = Instant::now();
            let mut r = s.recordings().open(&id).unwrap();
            let mut out = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = r.read(&mut out).unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            assert_eq!(n, size);
            down[i].push(mbps(size, t.elapsed()));
        }
    }
    for (name, s) in &stores {
        let sp = s.space();
        println!(
            "{name} volume: 2 recordings of {mb} MiB stored, {} MiB in use (database region {} KiB) of {} MiB",
            sp.used >> 20,
            sp.high_water >> 10,
            sp.capacity >> 20
        );
    }
    let (up_p, up_e) = (median(up[0].clone()), median(up[1].clone()));
    let (dn_p, dn_e) = (median(down[0].clone()), median(down[1].clone()));
    println!(
        "recording upload ({mb} MiB, median of 5): plain {up_p:.0} MB/s, encrypted {up_e:.0} MB/s, ratio {:.2}",
        up_e / up_p
    );
    println!(
        "recording download ({mb} MiB, median of 5): plain {dn_p:.0} MB/s, encrypted {dn_e:.0} MB/s, ratio {:.2}",
        dn_e / dn_p
    );
}

fn event(i: u64, rng: &mut Rng) -> NewEvent {
    // Six words: each one of 20 common words (c0…c19) or of 5000 uncommon ones (u0…u4999).
    let words: Vec<String> = (0..6)
        .map(|_| {
            let r = rng.next();
            if r & 1 == 0 {
                format!("c{}", (r >> 1) % 20)
            } else {
                format!("u{}", (r >> 1) % 5000)
            }
        })
        .collect();
    NewEvent {
        time: Timestamp(1_700_000_000_000_000 + i as i64 * 1_000_000),
        session: format!("session-{}", i / 1000),
        actor: format!("user{}", i % 17),
        kind: if i.is_multiple_of(10) {
            "login"
        } else {
            "command"
        }
        .into(),
        text: format!("{} rare{}", words.join(" "), i),
    }
}

fn appends(dir: &std::path::Path) {
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::create(&dir.join("flush.img"), 64 << 20).unwrap());
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(2) {
        dev.write_at(&[n as u8; 4096], (n % 1000) * 4096).unwrap();
        dev.flush().unwrap();
        n += 1;
    }
    let flushes = n as f64 / t.elapsed().as_secs_f64();
    let (u, counting) = volume_counting(dir, "audit-append.img", 256 << 20, true);
    let s = Store::create(Arc::new(u), &StoreOptions::default()).unwrap();
    let mut rng = Rng(3);
    let t = Instant::now();
    let mut i = 0;
    let f0 = counting.1.load(Ordering::Relaxed);
    while t.elapsed() < Duration::from_secs(3) {
        s.audit().append(&event(i, &mut rng)).unwrap();
        i += 1;
    }
    let single = i as f64 / t.elapsed().as_secs_f64();
    let per_append = (counting.1.load(Ordering::Relaxed) - f0) as f64 / i as f64;
    let t = Instant::now();
    let mut k = 0;
    while t.elapsed() < Duration::from_secs(3) {
        let b: Vec<NewEvent> = (0..100).map(|j| event(i + k * 100 + j, &mut rng)).collect();
        s.audit().append_batch(&b).unwrap();
        k += 1;
    }
    let batched = (k * 100) as f64 / t.elapsed().as_secs_f64();
    println!(
        "audit appends (encrypted volume, durable): {single:.0}/s one per commit ({per_append:.1} device flushes each), \
         {batched:.0}/s in batches of 100; the device alone: {flushes:.0} write+flush/s, ratio {:.2}",
        single / flushes
    );
}

fn queries(dir: &std::path::Path, events: u64) {
    let u = volume(dir, "audit-query.img", (256 << 20) + events * 2048, true);
    let s = Store::create(Arc::new(u), &StoreOptions::default()).unwrap();
    let mut rng = Rng(5);
    let t = Instant::now();
    let mut i = 0;
    while i < events {
        let n = 5000.min(events - i);
        let b: Vec<NewEvent> = (0..n).map(|j| event(i + j, &mut rng)).collect();
        s.audit().append_batch(&b).unwrap();
        i += n;
    }
    let load = t.elapsed();
    println!(
        "loaded {events} events in {:.1} s ({:.0} events/s in batches of 5000); store high-water mark {} MiB",
        load.as_secs_f64(),
        events as f64 / load.as_secs_f64(),
        s.space().high_water >> 20
    );
    let t0 = 1_700_000_000_000_000i64;
    let mid = t0 + (events as i64 / 2) * 1_000_000;
    let cases: Vec<(&str, Query)> = vec![
        ("newest 50, no filter", Query::default()),
        (
            "one session (1000 events), newest 50",
            Query {
                session: Some(format!("session-{}", events / 2000)),
                ..Query::default()
            },
        ),
        (
            "one hour (3600 events), oldest 50",
            Query {
                from: Some(Timestamp(mid)),
                to: Some(Timestamp(mid + 3_600_000_000)),
                order: Order::OldestFirst,
                ..Query::default()
            },
        ),
        (
            "a common word (~14% of events), newest 50",
            Query {
                words: Some("c7".into()),
                ..Query::default()
            },
        ),
        (
            "a unique word (1 event)",
            Query {
                words: Some(format!("rare{}", events / 3)),
                ..Query::default()
            },
        ),
        (
            "an uncommon word (~0.06% of events), page 2",
            Query {
                words: Some("u123".into()),
                offset: 50,
                ..Query::default()
            },
        ),
        (
            "session + common word",
            Query {
                session: Some(format!("session-{}", events / 3000)),
                words: Some("c0".into()),
                ..Query::default()
            },
        ),
        (
            "one day (86400 events) + uncommon word",
            Query {
                from: Some(Timestamp(mid)),
                to: Some(Timestamp(mid + 86_400_000_000)),
                words: Some("u4000".into()),
                ..Query::default()
            },
        ),
    ];
    // The anchor: a full scan of the history, as without indexes.
    let t = Instant::now();
    let q = Query {
        words: Some(format!("rare{}", events / 3)),
        ..Query::default()
    };
    let mut found = 0;
    for seq in 1..=events {
        let e = s.audit().get(seq).unwrap().unwrap();
        if audit::words(&e.text).contains(q.words.as_deref().unwrap()) {
            found += 1;
        }
    }
    assert_eq!(found, 1);
    let scan = t.elapsed();
    println!(
        "full scan of {events} events (the anchor): {:.0} ms",
        scan.as_secs_f64() * 1e3
    );
    for (name, q) in cases {
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let p = s.audit().query(&q).unwrap();
            times.push(t.elapsed().as_secs_f64());
            total = p.total;
        }
        let m = median(times);
        println!(
            "query {name}: {:.0} µs median of 7 (total {total}); {:.0}× faster than the scan",
            m * 1e6,
            scan.as_secs_f64() / m
        );
    }
    let t = Instant::now();
    let v = s.audit().verify().unwrap();
    assert_eq!(v.first_broken, None);
    println!(
        "verify of {events} events: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("ATREST_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let only = std::env::var("ATREST_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "recordings" {
        recordings(dir.path(), env("ATREST_BENCH_MB", 256));
    }
    if only.is_empty() || only == "audit" {
        appends(dir.path());
        queries(dir.path(), env("ATREST_BENCH_EVENTS", 1_000_000));
    }
}
