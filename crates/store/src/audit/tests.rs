//! Tests of the hash chain and the seal against raw edits of the stored events.

use super::*;
use crate::StoreOptions;
use atrest_volume::MemDevice;
use std::sync::Arc;

fn store_with(n: u64) -> Store {
    let s = Store::create(Arc::new(MemDevice::new(8 << 20)), &StoreOptions::default()).unwrap();
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            time: Timestamp(i as i64),
            session: "s".into(),
            actor: "a".into(),
            kind: "k".into(),
            text: format!("event {i}"),
        })
        .collect();
    s.audit().append_batch(&events).unwrap();
    s
}

fn raw_edit(s: &Store, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    s.write("tamper", false, |txn| {
        let mut t = txn.open_table(EVENTS).unwrap();
        f(&mut t);
        Ok(())
    })
    .unwrap();
}

fn broken(s: &Store) -> Option<u64> {
    s.audit().verify().unwrap().first_broken.map(|b| b.seq)
}

#[test]
fn the_seal_catches_a_rehashed_rewrite() {
    let s = store_with(10);
    let key = [7u8; 32];
    s.audit().set_seal_key(Some(key), false).unwrap();
    assert_eq!(broken(&s), None);
    assert!(s.audit().verify().unwrap().sealed);
    // Appends keep the seal current.
    s.audit()
        .append(&NewEvent {
            time: Timestamp(99),
            session: "s".into(),
            actor: "a".into(),
            kind: "k".into(),
            text: "after sealing".into(),
        })
        .unwrap();
    assert_eq!(broken(&s), None);
    // Every hash recomputed from event 4 to the head: the chain checks, the seal does not.
    rewrite_history(&s, 4, "forged").unwrap();
    let v = s.audit().verify().unwrap();
    let b = v.first_broken.unwrap();
    assert_eq!(b.seq, 11);
    assert!(b.reason.contains("seal"), "{}", b.reason);
    // Without the key the same rewrite goes unseen: that is what the seal adds.
    s.audit().set_seal_key(None, false).unwrap();
    assert_eq!(broken(&s), None);
    // A new key (rekey) reseals the history as it is.
    let s = store_with(3);
    s.audit().set_seal_key(Some(key), false).unwrap();
    s.audit().set_seal_key(Some([8u8; 32]), true).unwrap();
    assert_eq!(broken(&s), None);
    s.audit().set_seal_key(Some(key), false).unwrap();
    assert_eq!(broken(&s), Some(3), "sealed under the new key, not the old");
}

#[test]
fn verify_reports_the_first_broken_link() {
    let s = store_with(10);
    assert_eq!(broken(&s), None);
    // Changed text.
    raw_edit(&s, |t| {
        let v = t.get(4).unwrap().unwrap().value().to_vec();
        let mut e = decode(4, &v).unwrap();
        e.text = "forged".into();
        let ne = NewEvent {
            time: e.time,
            session: e.session,
            actor: e.actor,
            kind: e.kind,
            text: e.text,
        };
        t.insert(4, &encode(&ne, &e.prev_hash, &e.hash)[..])
            .unwrap();
    });
    let v = s.audit().verify().unwrap();
    assert_eq!(v.first_broken.as_ref().unwrap().seq, 4);
    assert!(v.first_broken.unwrap().reason.contains("changed"));

    // Rehashed forgery: its own hash checks, the next link does not.
    let s = store_with(10);
    raw_edit(&s, |t| {
        let v = t.get(4).unwrap().unwrap().value().to_vec();
        let e = decode(4, &v).unwrap();
        let ne = NewEvent {
            time: e.time,
            session: e.session,
            actor: e.actor,
            kind: e.kind,
            text: "forged".into(),
        };
        let h = hash_of(4, &e.prev_hash, &ne);
        t.insert(4, &encode(&ne, &e.prev_hash, &h)[..]).unwrap();
    });
    assert_eq!(broken(&s), Some(5));

    // A removed event in the middle, at the end; garbage bytes.
    let s = store_with(10);
    raw_edit(&s, |t| {
        t.remove(6).unwrap();
    });
    assert_eq!(broken(&s), Some(6));
    let s = store_with(10);
    raw_edit(&s, |t| {
        t.remove(10).unwrap();
    });
    let v = s.audit().verify().unwrap();
    assert_eq!(v.first_broken.as_ref().unwrap().seq, 10);
    assert!(v.first_broken.unwrap().reason.contains("removed"));
    let s = store_with(10);
    raw_edit(&s, |t| {
        t.insert(2, &[1u8, 2, 3][..]).unwrap();
    });
    assert_eq!(broken(&s), Some(2));
}
