//! The object store: one file per managed object, sealed under the master key, written
//! atomically (temporary file, fsync, rename, fsync of the directory) before any response
//! that depends on it is sent.
//!
//! File `objects/<uid>.obj` = `ATRKMSO1` (8 bytes) ‖ AES-256-GCM(master key,
//! AAD = `ATRKMSO1` ‖ uid, JSON record) as `nonce ‖ ciphertext ‖ tag`. The GCM tag is the
//! checksum: a torn, truncated, altered or swapped file is detected when it is read.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, MasterKey};
use crate::error::{KmsError, Result};

const MAGIC: &[u8; 8] = b"ATRKMSO1";
const SUFFIX: &str = ".obj";

/// One managed object: its server-kept attributes, client-supplied attributes and (until
/// destroyed) its key material.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub uid: String,
    /// The name of the client that made the object; no other client sees it.
    pub owner: String,
    /// Creation order, for stable Locate results.
    pub seq: u64,
    pub object_type: u32,
    pub state: u32,
    pub algorithm: Option<u32>,
    pub length: Option<i32>,
    pub usage_mask: Option<i32>,
    pub key_format: u32,
    pub secret_data_type: Option<u32>,
    /// Key material; `None` once destroyed.
    #[serde(with = "hex_material")]
    pub material: Option<Zeroizing<Vec<u8>>>,
    /// Name attributes: (Name Value, Name Type).
    pub names: Vec<(String, u32)>,
    pub initial_date: i64,
    pub last_change_date: i64,
    pub activation_date: Option<i64>,
    pub deactivation_date: Option<i64>,
    pub destroy_date: Option<i64>,
    pub compromise_date: Option<i64>,
    pub compromise_occurrence_date: Option<i64>,
    /// Revocation Reason: code and message.
    pub revocation: Option<(u32, Option<String>)>,
    /// SHA-256 of the key material as created or registered (kept after Destroy).
    pub digest: Option<String>,
    /// Other attributes the client supplied, each a 1.x `Attribute` structure in TTLV, hex.
    pub extra: Vec<String>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("uid", &self.uid)
            .field("owner", &self.owner)
            .field("object_type", &self.object_type)
            .field("state", &self.state)
            .field(
                "material",
                &self
                    .material
                    .as_ref()
                    .map(|m| format!("<{} bytes>", m.len())),
            )
            .finish_non_exhaustive()
    }
}

mod hex_material {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(
        m: &Option<Zeroizing<Vec<u8>>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => {
                let h = Zeroizing::new(hex::encode(&**m));
                s.serialize_some(h.as_str())
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, D::Error> {
        let h: Option<String> = Option::deserialize(d)?;
        match h.map(Zeroizing::new) {
            None => Ok(None),
            Some(h) => hex::decode(h.as_bytes())
                .map(|v| Some(Zeroizing::new(v)))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Whether `uid` is one this server could have made (and so a safe file name).
pub fn valid_uid(uid: &str) -> bool {
    uid.len() == 36
        && uid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// The objects of a data directory, all held in memory (key material zeroed on drop) and
/// each persisted in its own sealed file.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    key: MasterKey,
    objects: HashMap<String, Record>,
    next_seq: u64,
}

impl Store {
    /// Opens (creating if needed) the object directory `dir`. Returns the store and a line for
    /// each file that could not be read; such files are left untouched and their objects are
    /// unavailable until the file is repaired (restored from a backup, or the right master key).
    pub fn open(dir: &Path, key: MasterKey) -> Result<(Store, Vec<String>)> {
        fs::create_dir_all(dir).map_err(KmsError::io("creating the object directory", dir))?;
        let mut objects = HashMap::new();
        let mut problems = Vec::new();
        let mut next_seq = 1;
        let entries = fs::read_dir(dir).map_err(KmsError::io("listing", dir))?;
        for entry in entries {
            let entry = entry.map_err(KmsError::io("listing", dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write that never reached its rename: the object file still holds the
                // previous contents, so the temporary file is garbage.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(uid) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            match read_record(&path, uid, &key) {
                Ok(r) => {
                    next_seq = next_seq.max(r.seq + 1);
                    objects.insert(r.uid.clone(), r);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok((
            Store {
                dir: dir.to_path_buf(),
                key,
                objects,
                next_seq,
            },
            problems,
        ))
    }

    pub fn get(&self, uid: &str) -> Option<&Record> {
        self.objects.get(uid)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object, in creation order.
    pub fn iter_ordered(&self) -> Vec<&Record> {
        let mut v: Vec<&Record> = self.objects.values().collect();
        v.sort_by_key(|r| r.seq);
        v
    }

    /// The sequence number for a new object.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Writes `record` durably, then makes it visible. On error nothing changes in memory.
    pub fn put(&mut self, record: Record) -> Result<()> {
        if !valid_uid(&record.uid) {
            return Err(KmsError::Config(format!(
                "refusing to store an object with the identifier {:?}",
                record.uid
            )));
        }
        let json = Zeroizing::new(
            serde_json::to_vec(&record)
                .map_err(|e| KmsError::Config(format!("encoding object {}: {e}", record.uid)))?,
        );
        let mut aad = MAGIC.to_vec();
        aad.extend_from_slice(record.uid.as_bytes());
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&self.key.seal(&aad, &json)?);
        let path = self.dir.join(format!("{}{SUFFIX}", record.uid));
        crypto::write_atomic(&path, &file, 0o600)?;
        self.next_seq = self.next_seq.max(record.seq + 1);
        self.objects.insert(record.uid.clone(), record);
        Ok(())
    }
}

fn read_record(path: &Path, uid: &str, key: &MasterKey) -> Result<Record> {
    let corrupt = |reason: &str| KmsError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "{reason}; the object is unavailable until the file is restored from a backup \
             (or moved aside if the object is not needed)"
        ),
    };
    if !valid_uid(uid) {
        return Err(corrupt("not an object file name this server makes"));
    }
    let bytes = fs::read(path).map_err(KmsError::io("reading", path))?;
    let Some(sealed) = bytes.strip_prefix(MAGIC) else {
        return Err(corrupt("not an atrest KMS object file (bad magic)"));
    };
    let mut aad = MAGIC.to_vec();
    aad.extend_from_slice(uid.as_bytes());
    let json = key.open(&aad, sealed).ok_or_else(|| {
        corrupt("cannot be opened with this data directory's master key (altered, truncated, or sealed under another key)")
    })?;
    let r: Record = serde_json::from_slice(&json)
        .map_err(|e| corrupt(&format!("record does not parse: {e}")))?;
    if r.uid != uid {
        return Err(corrupt("the record inside names another object"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(uid: &str, seq: u64) -> Record {
        Record {
            uid: uid.into(),
            owner: "alice".into(),
            seq,
            object_type: 2,
            state: 1,
            algorithm: Some(3),
            length: Some(128),
            usage_mask: Some(12),
            key_format: 1,
            secret_data_type: None,
            material: Some(Zeroizing::new(vec![7; 16])),
            names: vec![("k".into(), 1)],
            initial_date: 1,
            last_change_date: 1,
            activation_date: None,
            deactivation_date: None,
            destroy_date: None,
            compromise_date: None,
            compromise_occurrence_date: None,
            revocation: None,
            digest: None,
            extra: vec![],
        }
    }

    #[test]
    fn persist_reload_and_detect_corruption() {
        let d = tempfile::tempdir().unwrap();
        let key = [9u8; 32];
        let uid = crypto::random_uuid().unwrap();
        let uid2 = crypto::random_uuid().unwrap();
        {
            let (mut s, p) = Store::open(d.path(), MasterKey::from_bytes(&key).unwrap()).unwrap();
            assert!(p.is_empty());
            s.put(sample(&uid, 1)).unwrap();
            s.put(sample(&uid2, 2)).unwrap();
        }
        let f = d.path().join(format!("{uid2}.obj"));
        let mut b = fs::read(&f).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        fs::write(&f, b).unwrap();
        fs::write(d.path().join(".x.obj.tmp"), b"junk").unwrap();
        let (s, p) = Store::open(d.path(), MasterKey::from_bytes(&key).unwrap()).unwrap();
        assert_eq!(s.get(&uid).unwrap(), &sample(&uid, 1));
        assert!(s.get(&uid2).is_none());
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains(&uid2));
        assert!(!d.path().join(".x.obj.tmp").exists());
        // Another master key opens nothing.
        let (s, p) = Store::open(d.path(), MasterKey::from_bytes(&[1; 32]).unwrap()).unwrap();
        assert!(s.is_empty());
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn file_holds_no_plain_material() {
        let d = tempfile::tempdir().unwrap();
        let uid = crypto::random_uuid().unwrap();
        let (mut s, _) = Store::open(d.path(), MasterKey::from_bytes(&[9; 32]).unwrap()).unwrap();
        let mut r = sample(&uid, 1);
        r.material = Some(Zeroizing::new(b"SECRETSECRETSECR".to_vec()));
        s.put(r).unwrap();
        let b = fs::read(d.path().join(format!("{uid}.obj"))).unwrap();
        let hay = String::from_utf8_lossy(&b);
        assert!(!hay.contains("SECRET"));
        assert!(!hay.contains(&hex::encode(b"SECRETSECRETSECR")));
        assert!(!hay.contains("alice"));
    }
}
