//! Audit history queries checked against a brute-force filter of the same events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use atrest_store::*;
use atrest_volume::MemDevice;
use common::Rng;

const WORDS: [&str; 10] = [
    "login", "logout", "sudo", "reboot", "Copy", "shell", "exit", "error", "admin", "ÉTÉ",
];

fn matches(e: &Event, q: &Query) -> bool {
    if q.session.as_ref().is_some_and(|s| *s != e.session) {
        return false;
    }
    if q.from.is_some_and(|f| e.time < f) || q.to.is_some_and(|t| e.time >= t) {
        return false;
    }
    let have = audit::words(&e.text);
    q.words
        .as_deref()
        .map(audit::words)
        .unwrap_or_default()
        .iter()
        .all(|w| have.contains(w))
}

#[test]
fn queries_match_a_brute_force_filter() {
    let s = Store::create(Arc::new(MemDevice::new(32 << 20)), &StoreOptions::default()).unwrap();
    let mut rng = Rng(42);
    let mut batch = Vec::new();
    for i in 0..1500 {
        let n = 1 + rng.below(3) as usize;
        let text: Vec<&str> = (0..n).map(|_| WORDS[rng.below(10) as usize]).collect();
        batch.push(NewEvent {
            time: Timestamp(1000 + rng.below(500) as i64),
            session: format!("sess-{}", rng.below(7)),
            actor: "admin".into(),
            kind: if i % 3 == 0 { "login" } else { "command" }.into(),
            text: text.join(", "),
        });
        if batch.len() == 100 {
            s.audit().append_batch(&batch).unwrap();
            batch.clear();
        }
    }
    let all: Vec<Event> = (1..=1500)
        .map(|i| s.audit().get(i).unwrap().unwrap())
        .collect();
    for round in 0..300 {
        let q = Query {
            session: (rng.below(2) == 0).then(|| format!("sess-{}", rng.below(8))),
            from: (rng.below(2) == 0).then(|| Timestamp(1000 + rng.below(500) as i64)),
            to: (rng.below(2) == 0).then(|| Timestamp(1000 + rng.below(500) as i64)),
            words: (rng.below(2) == 0).then(|| {
                let n = 1 + rng.below(2) as usize;
                (0..n)
                    .map(|_| WORDS[rng.below(10) as usize].to_uppercase())
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
            order: if rng.below(2) == 0 {
                Order::NewestFirst
            } else {
                Order::OldestFirst
            },
            offset: rng.below(40),
            limit: rng.below(30) as usize,
        };
        let mut want: Vec<&Event> = all.iter().filter(|e| matches(e, &q)).collect();
        want.sort_by_key(|e| e.seq);
        if q.order == Order::NewestFirst {
            want.reverse();
        }
        let page = s.audit().query(&q).unwrap();
        assert_eq!(page.total, want.len() as u64, "round {round}: {q:?}");
        let limit = if q.limit == 0 {
            audit::DEFAULT_PAGE
        } else {
            q.limit
        };
        let expect: Vec<u64> = want
            .iter()
            .skip(q.offset as usize)
            .take(limit)
            .map(|e| e.seq)
            .collect();
        let got: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(got, expect, "round {round}: {q:?}");
    }
    let v = s.audit().verify().unwrap();
    assert_eq!(v.events, 1500);
    assert_eq!(v.first_broken, None);
    assert_eq!(v.head.unwrap().1, all[1499].hash);
}

#[test]
fn events_are_checked_and_linked() {
    let s = Store::create(Arc::new(MemDevice::new(8 << 20)), &StoreOptions::default()).unwrap();
    let ok = NewEvent {
        time: Timestamp::now(),
        session: "s".into(),
        actor: "a".into(),
        kind: "k".into(),
        text: "hello world".into(),
    };
    let a = s.audit().append(&ok).unwrap();
    let b = s.audit().append(&ok).unwrap();
    assert_eq!((a, b), (1, 2));
    let e1 = s.audit().get(1).unwrap().unwrap();
    let e2 = s.audit().get(2).unwrap().unwrap();
    assert_eq!(e1.prev_hash, [0; 32]);
    assert_eq!(e2.prev_hash, e1.hash);
    assert_ne!(e1.hash, e2.hash, "the sequence number is hashed");
    for bad in [
        NewEvent {
            session: String::new(),
            ..ok.clone()
        },
        NewEvent {
            kind: String::new(),
            ..ok.clone()
        },
        NewEvent {
            text: "x".repeat(audit::MAX_TEXT_LEN + 1),
            ..ok.clone()
        },
    ] {
        let e = s.audit().append(&bad).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }
    // A batch is all or nothing.
    let e = s
        .audit()
        .append_batch(&[
            ok.clone(),
            NewEvent {
                session: String::new(),
                ..ok.clone()
            },
        ])
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)));
    assert_eq!(s.audit().len().unwrap(), 2);
    // An empty time range, words nobody wrote.
    let q = Query {
        from: Some(Timestamp(5)),
        to: Some(Timestamp(5)),
        ..Query::default()
    };
    assert_eq!(s.audit().query(&q).unwrap().total, 0);
    let q = Query {
        words: Some("absent".into()),
        ..Query::default()
    };
    assert_eq!(s.audit().query(&q).unwrap().total, 0);
    let q = Query {
        words: Some("HELLO".into()),
        ..Query::default()
    };
    assert_eq!(s.audit().query(&q).unwrap().total, 2);
}
