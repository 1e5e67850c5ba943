//! The three stores' behaviour on each kind of volume.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use atrest_store::*;
use atrest_volume::{BlockDevice, MemDevice};
use common::*;

fn store_on(kind: Kind, mib: usize, opts: &StoreOptions) -> (TestVolume, Store) {
    let medium: Arc<dyn BlockDevice> = Arc::new(MemDevice::new((1 + mib) << 20));
    let (tv, u) = TestVolume::format(medium, kind, 1);
    let s = Store::create(Arc::new(u), opts).unwrap();
    (tv, s)
}

fn reopen(tv: &TestVolume, opts: &StoreOptions) -> Store {
    Store::open(Arc::new(tv.unlock()), opts).unwrap()
}

#[test]
fn config_on_every_volume_kind() {
    for kind in KINDS {
        let opts = StoreOptions::default();
        let (tv, s) = store_on(kind, 8, &opts);
        let c = s.config();
        assert_eq!(c.schema_version().unwrap(), 0);
        c.set("net.port", Value::Int(5696)).unwrap();
        c.set("net.host", Value::Text("kms".into())).unwrap();
        c.apply(&[
            Change::Set("a".into(), Value::Bool(true)),
            Change::Set("b".into(), Value::Bytes(vec![1, 2])),
            Change::Delete("net.host".into()),
            Change::SchemaVersion(3),
        ])
        .unwrap();
        // A failing update changes nothing.
        let e = c
            .update(|t| {
                t.set("a", &Value::Bool(false))?;
                t.set("", &Value::Int(1))
            })
            .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        drop(s);
        let s = reopen(&tv, &opts);
        let c = s.config();
        assert_eq!(c.schema_version().unwrap(), 3);
        assert_eq!(c.get("a").unwrap(), Some(Value::Bool(true)));
        assert_eq!(c.get("net.host").unwrap(), None);
        assert_eq!(
            c.list_prefix("net.").unwrap(),
            vec![("net.port".to_string(), Value::Int(5696))]
        );
        assert_eq!(c.list().unwrap().len(), 3);
        assert!(c.delete("a").unwrap());
        assert!(!c.delete("a").unwrap());
        assert_eq!(s.unaligned_writes(), 0);
    }
}

#[test]
fn recordings_ranges_and_hashes_on_every_volume_kind() {
    for kind in KINDS {
        let opts = StoreOptions {
            upload_batch_bytes: 1,
            ..StoreOptions::default()
        };
        let (tv, s) = store_on(kind, 16, &opts);
        let data = Rng(kind as u64 + 5).bytes(3 * recordings::CHUNK_LEN + 1234);
        let r = s.recordings();
        let mut up = r.upload("rec-1", "sess-1").unwrap();
        for part in data.chunks(100_000) {
            up.write(part).unwrap();
        }
        let info = up.finish().unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.sha256, openssl::sha::sha256(&data));
        drop(s);
        let s = reopen(&tv, &opts);
        let r = s.recordings();
        assert_eq!(r.list().unwrap(), vec![info.clone()]);
        let mut rd = r.open("rec-1").unwrap();
        let mut all = Vec::new();
        rd.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        for (start, len) in [
            (0, 10),
            (recordings::CHUNK_LEN as u64 - 5, 10),
            (data.len() as u64 - 7, 100),
        ] {
            let got = r.read_range("rec-1", start, len).unwrap();
            let end = (start as usize + len).min(data.len());
            assert_eq!(got, data[start as usize..end]);
        }
        rd.seek(SeekFrom::Start(2 * recordings::CHUNK_LEN as u64 + 3))
            .unwrap();
        let mut b = [0u8; 50];
        rd.read_exact(&mut b).unwrap();
        assert_eq!(b[..], data[2 * recordings::CHUNK_LEN + 3..][..50]);
        // Unfinished uploads leave nothing.
        let mut up = r.upload("rec-2", "sess-1").unwrap();
        up.write(&data[..2 * recordings::CHUNK_LEN]).unwrap();
        drop(up);
        assert_eq!(r.list().unwrap().len(), 1);
        assert!(r.delete("rec-1").unwrap());
        assert!(!r.delete("rec-1").unwrap());
        assert!(matches!(r.open("rec-1"), Err(Error::NotFound(_))));
        assert_eq!(s.unaligned_writes(), 0);
    }
}
