//! Readers running during writes always see a committed state, on every kind of volume; on
//! the half-converted one the volume's conversion runs at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_store::*;
use atrest_volume::{BlockDevice, ConvertOptions, MemDevice};
use common::*;

fn pattern(round: u64, len: usize) -> Vec<u8> {
    let mut v = Rng(round + 1).bytes(len);
    v[..8].copy_from_slice(&round.to_le_bytes());
    v
}

fn readers_during_writes(kind: Kind) {
    let medium: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(41 << 20));
    let (_tv, u) = TestVolume::format(medium, kind, 11);
    let vol = u.clone();
    let opts = StoreOptions {
        upload_batch_bytes: 1,
        ..StoreOptions::default()
    };
    let s = Store::create(Arc::new(u), &opts).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let rounds = 25u64;
    let len = recordings::CHUNK_LEN + 5000;
    std::thread::scope(|sc| {
        if kind == Kind::Converting {
            sc.spawn(|| {
                vol.convert(
                    &ConvertOptions {
                        chunk_size: 1 << 20,
                        threads: 1,
                        stop: None,
                    },
                    &mut |_| std::thread::yield_now(),
                )
                .unwrap();
            });
        }
        let writer = sc.spawn(|| {
            for i in 1..=rounds {
                s.config()
                    .apply(&[
                        Change::Set("a".into(), Value::Int(i as i64)),
                        Change::Set("b".into(), Value::Int(i as i64)),
                    ])
                    .unwrap();
                let ev = NewEvent {
                    time: Timestamp(i as i64),
                    session: "w".into(),
                    actor: "writer".into(),
                    kind: "step".into(),
                    text: format!("round {i}"),
                };
                s.audit()
                    .append_batch(&[ev.clone(), ev.clone(), ev])
                    .unwrap();
                s.recordings().put("r", "w", &pattern(i, len)).unwrap();
            }
            done.store(true, Ordering::Release);
        });
        for _ in 0..2 {
            sc.spawn(|| {
                let mut last_total = 0;
                let mut reads = 0u64;
                while !done.load(Ordering::Acquire) || reads < 3 {
                    reads += 1;
                    let c: std::collections::BTreeMap<_, _> =
                        s.config().list().unwrap().into_iter().collect();
                    assert_eq!(c.get("a"), c.get("b"), "a half-applied change is visible");
                    let page = s
                        .audit()
                        .query(&Query {
                            session: Some("w".into()),
                            ..Query::default()
                        })
                        .unwrap();
                    assert_eq!(page.total % 3, 0, "a half-applied batch is visible");
                    assert!(page.total >= last_total);
                    last_total = page.total;
                    if let Ok(mut r) = s.recordings().open("r") {
                        let mut d = Vec::new();
                        r.read_to_end(&mut d).unwrap();
                        let round = u64::from_le_bytes(d[..8].try_into().unwrap());
                        assert_eq!(d, pattern(round, len));
                    }
                }
            });
        }
        writer.join().unwrap();
    });
    assert_eq!(s.audit().verify().unwrap().first_broken, None);
    assert_eq!(s.audit().len().unwrap(), 3 * rounds);
    if kind == Kind::Converting {
        assert_eq!(vol.state().as_str(), "encrypted");
    }
}

#[test]
fn readers_during_writes_on_a_plain_volume() {
    readers_during_writes(Kind::Plain);
}

#[test]
fn readers_during_writes_on_an_encrypted_volume() {
    readers_during_writes(Kind::Encrypted);
}

#[test]
fn readers_during_writes_while_the_volume_is_being_encrypted() {
    readers_during_writes(Kind::Converting);
}
