//! The object store: one file per managed object, sealed under the master key, written
//! atomically (temporary file, fsync, rename, fsync of the directory) before any response
//! that depends on it is sent.
//!
//! File `objects/<uid>.obj` = `ATRKMSO1` (8 bytes) ‖ AES-256-GCM(master key,
//! AAD = `ATRKMSO1` ‖ uid, JSON record) as `nonce ‖ ciphertext ‖ tag`. The GCM tag is the
//! checksum: a torn, truncated, altered or swapped file is detected when it is read.
//!
//! The key material inside a record is sealed once more, under a key of its own (a random
//! AES-256 key per object). Those per-object keys live only in the key table
//! `objects/keys.sealed` (`ATRKMSK1` ‖ AES-256-GCM(master key, AAD = `ATRKMSK1`, JSON)), never in
//! the object file. Destroy rewrites the object file without material and then the key table
//! without the object's key: from then on no copy of the object file, old or new, yields the
//! material, even with the master key.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, MasterKey};
use crate::error::{KmsError, Result};

const MAGIC: &[u8; 8] = b"ATRKMSO1";
const SUFFIX: &str = ".obj";
const KEYS_MAGIC: &[u8; 8] = b"ATRKMSK1";
/// The key table's file name inside the object directory.
pub const KEYS_FILE: &str = "keys.sealed";
/// Associated data of a material sealed under its object's key.
const MATERIAL_AAD: &[u8] = b"ATRKMS-material:";

/// One managed object: its server-kept attributes, client-supplied attributes and (until
/// destroyed) its key material.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The Unique Identifier.
    pub uid: String,
    /// The name of the client that made the object; no other client sees it.
    pub owner: String,
    /// Creation order, for stable Locate results.
    pub seq: u64,
    /// Object Type (a KMIP Object Type value).
    pub object_type: u32,
    /// State (a KMIP State value).
    pub state: u32,
    /// Cryptographic Algorithm (a KMIP value).
    pub algorithm: Option<u32>,
    /// Cryptographic Length, in bits.
    pub length: Option<i32>,
    /// Cryptographic Usage Mask.
    pub usage_mask: Option<i32>,
    /// Key Format Type the material is kept in (a KMIP value).
    pub key_format: u32,
    /// Secret Data Type, for Secret Data objects.
    pub secret_data_type: Option<u32>,
    /// Key material; `None` once destroyed. In memory only: the file holds it sealed under
    /// the object's own key (`sealed_material`). Files written before per-object keys hold it
    /// here; they are rewritten at the next start.
    #[serde(
        deserialize_with = "hex_material::deserialize",
        default,
        skip_serializing
    )]
    pub material: Option<Zeroizing<Vec<u8>>>,
    /// On disk only: `nonce ‖ ciphertext ‖ tag` (hex) of the material under the object's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_material: Option<String>,
    /// Name attributes: (Name Value, Name Type).
    pub names: Vec<(String, u32)>,
    /// Initial Date: when the object was made, POSIX seconds.
    pub initial_date: i64,
    /// Last Change Date, POSIX seconds.
    pub last_change_date: i64,
    /// Activation Date, POSIX seconds.
    pub activation_date: Option<i64>,
    /// Deactivation Date, POSIX seconds.
    pub deactivation_date: Option<i64>,
    /// Destroy Date, POSIX seconds.
    pub destroy_date: Option<i64>,
    /// Compromise Date: when the object entered the Compromised state, POSIX seconds.
    pub compromise_date: Option<i64>,
    /// Compromise Occurrence Date: when the compromise happened, as the client said it, POSIX
    /// seconds.
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
    use serde::{Deserialize, Deserializer};
    use zeroize::Zeroizing;

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
    /// The per-object keys of the objects that still have material (zeroed on drop).
    keys: HashMap<String, MasterKey>,
    next_seq: u64,
}

/// The key table as it is sealed on disk: uid → hex of the object's key.
#[derive(Default, Serialize, Deserialize)]
struct KeyTable {
    keys: HashMap<String, String>,
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        for (_, mut v) in self.keys.drain() {
            zeroize::Zeroize::zeroize(&mut v);
        }
    }
}

impl Store {
    /// Opens (creating if needed) the object directory `dir`. Returns the store and a line for
    /// each file that could not be read; such files are left untouched and their objects are
    /// unavailable until the file is repaired (restored from a backup, or the right master key).
    pub fn open(dir: &Path, key: MasterKey) -> Result<(Store, Vec<String>)> {
        fs::create_dir_all(dir).map_err(KmsError::io("creating the object directory", dir))?;
        let mut keys = read_key_table(&dir.join(KEYS_FILE), &key)?;
        let mut objects = HashMap::new();
        let mut problems = Vec::new();
        let mut legacy = Vec::new();
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
            match read_record(&path, uid, &key, &keys) {
                Ok((r, old_format)) => {
                    next_seq = next_seq.max(r.seq + 1);
                    if old_format {
                        legacy.push(r.uid.clone());
                    }
                    objects.insert(r.uid.clone(), r);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        // Keys of destroyed objects left by a crash between the two writes of a Destroy.
        let before = keys.len();
        keys.retain(|uid, _| objects.get(uid).is_none_or(|r| r.material.is_some()));
        let mut store = Store {
            dir: dir.to_path_buf(),
            key,
            objects,
            keys,
            next_seq,
        };
        if store.keys.len() != before {
            store.write_key_table()?;
        }
        // Files written before per-object keys: seal their material under a key of its own.
        for uid in legacy {
            if let Some(r) = store.objects.get(&uid).cloned() {
                store.put(r)?;
            }
        }
        Ok((store, problems))
    }

    /// The object `uid`.
    pub fn get(&self, uid: &str) -> Option<&Record> {
        self.objects.get(uid)
    }

    /// Number of objects (destroyed ones included).
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there is no object.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Number of objects `owner` holds (destroyed ones included: their attributes are kept).
    pub fn count_owned(&self, owner: &str) -> usize {
        self.objects.values().filter(|r| r.owner == owner).count()
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
    ///
    /// A record with material: its object key (new for a new object) is in the key table on
    /// disk before the object file names it. A record without material (destroyed): the object
    /// file is rewritten first, then the key table without the object's key, so that the key
    /// is erased as soon as the object is.
    pub fn put(&mut self, record: Record) -> Result<()> {
        if !valid_uid(&record.uid) {
            return Err(KmsError::Config(format!(
                "refusing to store an object with the identifier {:?}",
                record.uid
            )));
        }
        let mut disk = record.clone();
        disk.material = None;
        let mut new_key = false;
        if let Some(m) = &record.material {
            if !self.keys.contains_key(&record.uid) {
                self.keys.insert(record.uid.clone(), MasterKey::generate()?);
                new_key = true;
            }
            let k = &self.keys[&record.uid];
            let sealed = k.seal(&material_aad(&record.uid), m);
            let sealed = match sealed {
                Ok(s) => s,
                Err(e) => {
                    if new_key {
                        self.keys.remove(&record.uid);
                    }
                    return Err(e);
                }
            };
            disk.sealed_material = Some(hex::encode(sealed));
            if new_key && let Err(e) = self.write_key_table() {
                self.keys.remove(&record.uid);
                return Err(e);
            }
        } else {
            disk.sealed_material = None;
        }
        let json = Zeroizing::new(
            serde_json::to_vec(&disk)
                .map_err(|e| KmsError::Config(format!("encoding object {}: {e}", record.uid)))?,
        );
        let mut aad = MAGIC.to_vec();
        aad.extend_from_slice(record.uid.as_bytes());
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&self.key.seal(&aad, &json)?);
        let path = self.dir.join(format!("{}{SUFFIX}", record.uid));
        crypto::write_atomic(&path, &file, 0o600)?;
        let erase = record.material.is_none() && self.keys.contains_key(&record.uid);
        self.next_seq = self.next_seq.max(record.seq + 1);
        self.objects.insert(record.uid.clone(), record);
        if erase {
            let old = self.keys.remove(&disk.uid);
            if let Err(e) = self.write_key_table() {
                // The object is destroyed on disk; its key stays in the table until the next
                // write of the table (or the next start) succeeds.
                if let Some(k) = old {
                    self.keys.insert(disk.uid.clone(), k);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_key_table(&self) -> Result<()> {
        let mut t = KeyTable::default();
        for (uid, k) in &self.keys {
            t.keys.insert(uid.clone(), hex::encode(k.expose()));
        }
        let json = Zeroizing::new(
            serde_json::to_vec(&t)
                .map_err(|e| KmsError::Config(format!("encoding the key table: {e}")))?,
        );
        let mut file = KEYS_MAGIC.to_vec();
        file.extend_from_slice(&self.key.seal(KEYS_MAGIC, &json)?);
        crypto::write_atomic(&self.dir.join(KEYS_FILE), &file, 0o600)
    }
}

impl Record {
    /// The names of the client-supplied attributes kept with the object.
    pub fn extra_names(&self) -> impl Iterator<Item = String> + '_ {
        self.extra.iter().filter_map(|x| {
            let item = hex::decode(x)
                .ok()
                .and_then(|b| atrest_kmip::ttlv::decode(&b, &Default::default()).ok())?;
            item.children().first().and_then(|n| match &n.value {
                atrest_kmip::ttlv::Value::TextString(s) => Some(s.clone()),
                _ => None,
            })
        })
    }
}

fn material_aad(uid: &str) -> Vec<u8> {
    let mut aad = MATERIAL_AAD.to_vec();
    aad.extend_from_slice(uid.as_bytes());
    aad
}

/// Reads the key table; a missing file is an empty table (a new directory, or one written
/// before per-object keys).
fn read_key_table(path: &Path, key: &MasterKey) -> Result<HashMap<String, MasterKey>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(KmsError::io("reading the key table", path)(e)),
    };
    let corrupt = |reason: &str| KmsError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "{reason}; without it no object's key material can be read: restore it from a \
             backup taken together with the objects"
        ),
    };
    let sealed = bytes
        .strip_prefix(KEYS_MAGIC)
        .ok_or_else(|| corrupt("not an atrest KMS key table (bad magic)"))?;
    let json = key.open(KEYS_MAGIC, sealed).ok_or_else(|| {
        corrupt("cannot be opened with this data directory's master key (altered, truncated, or sealed under another key)")
    })?;
    let t: KeyTable =
        serde_json::from_slice(&json).map_err(|e| corrupt(&format!("does not parse: {e}")))?;
    let mut out = HashMap::new();
    for (uid, h) in &t.keys {
        let b = Zeroizing::new(hex::decode(h).map_err(|_| corrupt("holds a malformed key"))?);
        let k =
            MasterKey::from_bytes(&b).ok_or_else(|| corrupt("holds a key of the wrong length"))?;
        out.insert(uid.clone(), k);
    }
    Ok(out)
}

/// Opens the object file `path` with the master key and the key table `keys`. Returns the
/// record (with its material, unless destroyed) and whether the file is of the format before
/// per-object keys.
pub fn read_record(
    path: &Path,
    uid: &str,
    key: &MasterKey,
    keys: &HashMap<String, MasterKey>,
) -> Result<(Record, bool)> {
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
    let mut r: Record = serde_json::from_slice(&json)
        .map_err(|e| corrupt(&format!("record does not parse: {e}")))?;
    if r.uid != uid {
        return Err(corrupt("the record inside names another object"));
    }
    let old_format = r.material.is_some();
    if let Some(h) = r.sealed_material.take() {
        let Some(k) = keys.get(uid) else {
            return Err(corrupt(
                "its key is not in the key table (objects/keys.sealed is older than the object)",
            ));
        };
        let sealed = hex::decode(&h).map_err(|_| corrupt("malformed sealed material"))?;
        let m = k
            .open(&material_aad(uid), &sealed)
            .ok_or_else(|| corrupt("its material does not open with its key"))?;
        r.material = Some(m);
    }
    Ok((r, old_format))
}

/// Opens one object file the way the server does at start: the master key and the key table
/// of the object directory `dir`. For tools and tests.
pub fn open_object_file(path: &Path, dir: &Path, key: &MasterKey) -> Result<Record> {
    let uid = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(SUFFIX))
        .ok_or_else(|| KmsError::Config(format!("{} is not an object file", path.display())))?;
    let keys = read_key_table(&dir.join(KEYS_FILE), key)?;
    read_record(path, uid, key, &keys).map(|(r, _)| r)
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
            sealed_material: None,
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
        // Another master key opens nothing: the key table already refuses it.
        let e = Store::open(d.path(), MasterKey::from_bytes(&[1; 32]).unwrap()).unwrap_err();
        assert!(e.to_string().contains(KEYS_FILE), "{e}");
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

    #[test]
    fn destroy_erases_the_object_key_and_old_files_stay_sealed() {
        let d = tempfile::tempdir().unwrap();
        let key = [9u8; 32];
        let uid = crypto::random_uuid().unwrap();
        let (mut s, _) = Store::open(d.path(), MasterKey::from_bytes(&key).unwrap()).unwrap();
        s.put(sample(&uid, 1)).unwrap();
        let file = d.path().join(format!("{uid}.obj"));
        let old = fs::read(&file).unwrap();
        let mut gone = sample(&uid, 1);
        gone.material = None;
        s.put(gone).unwrap();
        drop(s);
        // The old object file, put back, with the master key and the table as it is now.
        fs::write(&file, &old).unwrap();
        let mk = MasterKey::from_bytes(&key).unwrap();
        let e = open_object_file(&file, d.path(), &mk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the key table"), "{e}");
        // The record itself opens with the master key alone, but holds no material.
        let json = mk
            .open(&[&MAGIC[..], uid.as_bytes()].concat(), &old[8..])
            .unwrap();
        let r: Record = serde_json::from_slice(&json).unwrap();
        assert!(r.material.is_none());
        assert!(r.sealed_material.is_some());
    }

    #[test]
    fn files_of_the_old_format_are_resealed_at_start() {
        let d = tempfile::tempdir().unwrap();
        let key = [9u8; 32];
        let uid = crypto::random_uuid().unwrap();
        let mk = MasterKey::from_bytes(&key).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(sample(&uid, 1)).unwrap();
        json["material"] = serde_json::Value::String(hex::encode([7u8; 16]));
        let mut file = MAGIC.to_vec();
        let aad = [&MAGIC[..], uid.as_bytes()].concat();
        file.extend(mk.seal(&aad, &serde_json::to_vec(&json).unwrap()).unwrap());
        fs::write(d.path().join(format!("{uid}.obj")), &file).unwrap();
        let (s, p) = Store::open(d.path(), mk).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.get(&uid).unwrap(), &sample(&uid, 1));
        drop(s);
        let b = fs::read(d.path().join(format!("{uid}.obj"))).unwrap();
        let mk = MasterKey::from_bytes(&key).unwrap();
        let json = mk.open(&aad, &b[8..]).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains(&hex::encode([7u8; 16])));
        let (s, _) = Store::open(d.path(), mk).unwrap();
        assert_eq!(s.get(&uid).unwrap(), &sample(&uid, 1));
    }
}
