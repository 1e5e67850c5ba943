//! Power loss at random points of random operation sequences, on a plain, an encrypted and a
//! half-converted volume (recordings in blocks beside the database, a block batch per commit), checked against an in-memory model: after every restart the store
//! holds exactly the committed operations, plus at most the one that was under way.
//!
//! The power fails inside the device *under* the volume (`atrest_volume::testing::CrashDevice`):
//! writes since the last flush are lost (or, half of the time, an arbitrary subset of them
//! survives), and one sector of the write in flight is torn, which on an encrypted volume
//! garbles the whole sector. Sometimes the power fails again during recovery.
//!
//! `ATREST_STORE_CRASH_CYCLES` sets the crash points per volume kind (default 500).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_store::*;
use atrest_volume::testing::{CrashDevice, LossMode};
use atrest_volume::{BlockDevice, MemDevice};
use common::*;

#[derive(Debug, Clone, PartialEq, Default)]
struct Model {
    config: BTreeMap<String, Value>,
    schema: u32,
    events: Vec<NewEvent>,
    recs: BTreeMap<String, (String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Op {
    Set(String, Value),
    Apply(Vec<Change>),
    Delete(String),
    Append(Vec<NewEvent>),
    Put(String, String, Vec<u8>),
    DeleteRecording(String),
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Set(k, v) => {
                self.config.insert(k.clone(), v.clone());
            }
            Op::Apply(cs) => {
                for c in cs {
                    match c {
                        Change::Set(k, v) => {
                            self.config.insert(k.clone(), v.clone());
                        }
                        Change::Delete(k) => {
                            self.config.remove(k);
                        }
                        Change::SchemaVersion(n) => self.schema = *n,
                    }
                }
            }
            Op::Delete(k) => {
                self.config.remove(k);
            }
            Op::Append(es) => self.events.extend(es.iter().cloned()),
            Op::Put(id, s, d) => {
                self.recs.insert(id.clone(), (s.clone(), d.clone()));
            }
            Op::DeleteRecording(id) => {
                self.recs.remove(id);
            }
        }
    }
}

fn value(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => Value::Bool(rng.below(2) == 0),
        1 => Value::Int(rng.next() as i64),
        2 => Value::Float(rng.below(1000) as f64 / 8.0),
        3 => Value::Text(format!("text {}", rng.next())),
        _ => {
            let n = rng.below(3000) as usize;
            Value::Bytes(rng.bytes(n))
        }
    }
}

const WORDS: [&str; 8] = [
    "login", "sudo", "reboot", "copy", "shell", "exit", "error", "admin",
];

fn event(rng: &mut Rng) -> NewEvent {
    let w1 = WORDS[rng.below(8) as usize];
    let w2 = WORDS[rng.below(8) as usize];
    NewEvent {
        time: Timestamp(1_700_000_000_000_000 + rng.below(1_000_000_000) as i64),
        session: format!("s{}", rng.below(4)),
        actor: format!("user{}", rng.below(3)),
        kind: "command".into(),
        text: format!("{w1} then {w2} #{}", rng.below(100)),
    }
}

fn gen_op(rng: &mut Rng) -> Op {
    let key = |rng: &mut Rng| format!("k{}", rng.below(12));
    match rng.below(20) {
        0..=3 => Op::Set(key(rng), value(rng)),
        4..=5 => {
            let n = 2 + rng.below(3);
            let mut cs: Vec<Change> = (0..n)
                .map(|_| {
                    if rng.below(4) == 0 {
                        Change::Delete(key(rng))
                    } else {
                        Change::Set(key(rng), value(rng))
                    }
                })
                .collect();
            if rng.below(3) == 0 {
                cs.push(Change::SchemaVersion(rng.below(50) as u32));
            }
            Op::Apply(cs)
        }
        6 => Op::Delete(key(rng)),
        7..=11 => {
            let n = 1 + rng.below(5);
            Op::Append((0..n).map(|_| event(rng)).collect())
        }
        12..=16 => {
            let size = match rng.below(4) {
                0 => rng.below(100),
                1 => rng.below(200_000),
                2 => recordings::CHUNK_LEN as u64 + rng.below(400_000),
                _ => 2 * recordings::CHUNK_LEN as u64 + rng.below(300_000),
            } as usize;
            Op::Put(
                format!("r{}", rng.below(4)),
                format!("s{}", rng.below(4)),
                rng.bytes(size),
            )
        }
        _ => Op::DeleteRecording(format!("r{}", rng.below(4))),
    }
}

fn run(s: &Store, op: &Op) -> Result<()> {
    match op {
        Op::Set(k, v) => s.config().set(k, v.clone()),
        Op::Apply(cs) => s.config().apply(cs),
        Op::Delete(k) => s.config().delete(k).map(|_| ()),
        Op::Append(es) => s.audit().append_batch(es).map(|_| ()),
        Op::Put(id, sess, d) => {
            let mut u = s.recordings().upload(id, sess)?;
            for part in d.chunks(300_000) {
                u.write(part)?;
            }
            u.finish().map(|_| ())
        }
        Op::DeleteRecording(id) => s.recordings().delete(id).map(|_| ()),
    }
}

/// Everything the store holds, read back (checking every hash on the way).
fn snapshot(s: &Store) -> Model {
    let c = s.config();
    let v = s.audit().verify().unwrap();
    assert_eq!(v.first_broken, None, "audit chain broken after recovery");
    let n = s.audit().len().unwrap();
    let events = (1..=n)
        .map(|i| {
            let e = s.audit().get(i).unwrap().expect("event missing");
            NewEvent {
                time: e.time,
                session: e.session,
                actor: e.actor,
                kind: e.kind,
                text: e.text,
            }
        })
        .collect();
    let mut recs = BTreeMap::new();
    for info in s.recordings().list().unwrap() {
        let mut r = s.recordings().open(&info.id).unwrap();
        let mut d = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut d).unwrap();
        recs.insert(info.id.clone(), (info.session.clone(), d));
    }
    Model {
        config: c.list().unwrap().into_iter().collect(),
        schema: c.schema_version().unwrap(),
        events,
        recs,
    }
}

fn open_after_power_loss(
    tv: &TestVolume,
    dev: &CrashDevice,
    rng: &mut Rng,
    opts: &StoreOptions,
    recovery_crashes: &mut u64,
) -> Store {
    loop {
        dev.power_cycle();
        let mode = if rng.below(2) == 0 {
            LossMode::DropAll
        } else {
            LossMode::Reorder
        };
        if rng.below(4) == 0 {
            dev.arm(1 + rng.below(12), mode);
        }
        let u = tv.unlock();
        match Store::open(Arc::new(u), opts) {
            Ok(s) if !dev.crashed() => {
                dev.disarm();
                return s;
            }
            Ok(_) => *recovery_crashes += 1,
            Err(e) => {
                assert!(dev.crashed(), "open failed without a power loss: {e}");
                *recovery_crashes += 1;
            }
        }
    }
}

fn power_loss(kind: Kind) {
    let cycles: u64 = std::env::var("ATREST_STORE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let runs = 3;
    let opts = StoreOptions {
        upload_batch_bytes: 1,
        cache_bytes: 4 << 20,
        ..StoreOptions::default()
    };
    let mut crash_points = 0u64;
    let mut recovery_crashes = 0u64;
    let mut in_flight_kept = 0u64;
    let mut in_flight_lost = 0u64;
    let mut committed_ops = 0u64;
    for run_no in 0..runs {
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((kind as u64) << 32) ^ run_no;
        let mut rng = Rng(seed);
        let medium: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(25 << 20));
        let dev = Arc::new(CrashDevice::new(medium, seed));
        let (tv, u) = TestVolume::format(dev.clone(), kind, seed);
        let mut store = Store::create(Arc::new(u), &opts).unwrap();
        let mut model = Model::default();
        for cycle in 0..cycles.div_ceil(runs) {
            let mode = if rng.below(2) == 0 {
                LossMode::DropAll
            } else {
                LossMode::Reorder
            };
            dev.arm(1 + rng.below(250), mode);
            let mut in_flight = None;
            for _ in 0..40 {
                let op = gen_op(&mut rng);
                match run(&store, &op) {
                    Ok(()) => {
                        model.apply(&op);
                        committed_ops += 1;
                    }
                    Err(_) if dev.crashed() => {
                        in_flight = Some(op);
                        break;
                    }
                    Err(Error::Full { .. }) => {}
                    Err(e) => panic!("seed {seed:#x} cycle {cycle}: {op:?} failed: {e}"),
                }
            }
            if !dev.crashed() {
                dev.cut_power(LossMode::DropAll).unwrap();
            }
            crash_points += 1;
            drop(store);
            store = open_after_power_loss(&tv, &dev, &mut rng, &opts, &mut recovery_crashes);
            let got = snapshot(&store);
            if got != model {
                let mut after = model.clone();
                match &in_flight {
                    Some(op) => after.apply(op),
                    None => panic!(
                        "seed {seed:#x} cycle {cycle}: state differs from the committed operations"
                    ),
                }
                assert!(
                    got == after,
                    "seed {seed:#x} cycle {cycle}: state is neither before nor after the interrupted {:?}",
                    in_flight
                );
                model = after;
                in_flight_kept += 1;
            } else if in_flight.is_some() {
                in_flight_lost += 1;
            }
            assert_eq!(store.unaligned_writes(), 0);
            // The map rebuilt at open holds exactly the live recordings' blocks and the
            // database's region: no block leaked by the crash, none lost.
            let blocks: u64 = model
                .recs
                .values()
                .map(|(_, d)| {
                    let (full, tail) = (
                        d.len() / recordings::CHUNK_LEN,
                        d.len() % recordings::CHUNK_LEN,
                    );
                    (full + usize::from(tail > recordings::INLINE_MAX)) as u64
                })
                .sum();
            let sp = store.space();
            assert_eq!(
                sp.used,
                sp.high_water + 4096 + blocks * recordings::CHUNK_LEN as u64,
                "seed {seed:#x} cycle {cycle}: blocks in use after recovery"
            );
        }
    }
    eprintln!(
        "{kind:?}: {crash_points} crash points during operations, {recovery_crashes} more during recovery; \
         {committed_ops} operations committed; interrupted operation kept {in_flight_kept}, rolled back {in_flight_lost}"
    );
    assert!(crash_points + recovery_crashes >= cycles);
}

#[test]
fn power_loss_on_a_plain_volume() {
    power_loss(Kind::Plain);
}

#[test]
fn power_loss_on_an_encrypted_volume() {
    power_loss(Kind::Encrypted);
}

#[test]
fn power_loss_on_a_volume_mid_conversion() {
    power_loss(Kind::Converting);
}
