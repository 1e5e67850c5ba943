//! A full volume is reported clearly, keeps working for reads and deletions, and space freed
//! by deletions is reused.

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
