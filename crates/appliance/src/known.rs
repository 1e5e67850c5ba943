//! What the appliance knows about its content volume, kept outside the volume (in the data
//! directory, `volume-known.json`): the volume's UUID and the header states (with their KMIP key
//! ids) it may be found in at the next start.
//!
//! The header MAC proves a header was written by someone holding the volume key; it cannot
//! tell a genuine header from an older genuine one, nor a plain header from a header whose keys
//! were all removed. This record can: once the appliance has encrypted its volume, a header
//! that claims to be plain, names another key, or belongs to another volume is refused (the
//! appliance stays locked with the reason) instead of being written in the clear or under a
//! key the appliance did not create.
//!
//! The record is updated around every header change the appliance makes: before the commit it
//! accepts both the old and the new state, after it only the new one, so that a crash between
//! the two writes never locks the appliance out of its own volume.

use std::path::Path;

use atrest_volume::{State as VolState, VolumeInfo};
use serde::{Deserialize, Serialize};

use crate::files;

/// File name in the data directory.
pub const KNOWN_FILE: &str = "volume-known.json";
/// Largest record read (it holds a few ids).
const MAX_KNOWN_BYTES: u64 = 64 << 10;

/// One header state the volume may be in, with the KMIP ids of the keys it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// `plain`, `encrypting`, `encrypted`, `rekeying` or `decrypting`.
    pub state: String,
    /// KMIP Unique Identifiers the header names in that state, sorted.
    pub keys: Vec<String>,
}

/// The record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// The volume's LUKS2 UUID.
    pub uuid: String,
    /// States the header may be found in.
    pub accept: Vec<Accept>,
}

fn accept(state: VolState, keys: &[&str]) -> Accept {
    let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    keys.sort();
    keys.dedup();
    Accept {
        state: state.as_str().to_string(),
        keys,
    }
}

fn ids(info: &VolumeInfo, role: &str) -> Vec<String> {
    info.keys
        .iter()
        .filter(|k| k.role == role)
        .map(|k| k.reference.unique_identifier.clone())
        .collect()
}

impl Known {
    /// The states a volume whose header is `info` may be found in next: itself, and where its
    /// conversion leads when it finishes.
    pub fn of(info: &VolumeInfo) -> Known {
        let all: Vec<String> = info
            .keys
            .iter()
            .map(|k| k.reference.unique_identifier.clone())
            .collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let new = ids(info, "new");
        let new: Vec<&str> = new.iter().map(String::as_str).collect();
        let mut list = vec![accept(info.state, &all)];
        match info.state {
            VolState::Encrypting | VolState::Rekeying => {
                list.push(accept(VolState::Encrypted, &new));
            }
            VolState::Decrypting => list.push(accept(VolState::Plain, &[])),
            VolState::Plain | VolState::Encrypted => {}
        }
        Known {
            uuid: info.uuid.clone(),
            accept: list,
        }
    }

    /// This record, also accepting the states a conversion to key `new_key` (None: decrypt)
    /// from the current state passes through.
    pub fn before(info: &VolumeInfo, conversion: VolState, new_key: Option<&str>) -> Known {
        let mut k = Known::of(info);
        let cur: Vec<String> = info
            .keys
            .iter()
            .map(|k| k.reference.unique_identifier.clone())
            .collect();
        let mut during: Vec<&str> = cur.iter().map(String::as_str).collect();
        during.extend(new_key);
        k.accept.push(accept(conversion, &during));
        match (conversion, new_key) {
            (VolState::Decrypting, _) => k.accept.push(accept(VolState::Plain, &[])),
            (_, Some(n)) => k.accept.push(accept(VolState::Encrypted, &[n])),
            _ => {}
        }
        k
    }

    /// Checks a header against the record. The refusal is a sentence for a person.
    pub fn check(&self, info: &VolumeInfo, record: &Path) -> Result<(), String> {
        let now = Known::of(info).accept.swap_remove(0);
        let last = self
            .accept
            .iter()
            .map(|a| {
                if a.keys.is_empty() {
                    a.state.clone()
                } else {
                    format!("{} with key {}", a.state, a.keys.join(" and "))
                }
            })
            .collect::<Vec<_>>()
            .join(", or ");
        let what = if info.uuid != self.uuid {
            format!(
                "the content volume is not the one this appliance encrypted (its UUID is {}, \
                 this appliance's volume is {})",
                info.uuid, self.uuid
            )
        } else if self.accept.contains(&now) {
            return Ok(());
        } else if now.state == VolState::Plain.as_str() {
            "the content volume's header now says it is plain, but this appliance encrypted it"
                .to_string()
        } else {
            format!(
                "the content volume's header now says {}{}, which this appliance did not write",
                now.state,
                if now.keys.is_empty() {
                    String::new()
                } else {
                    format!(" with key {}", now.keys.join(" and "))
                }
            )
        };
        Err(format!(
            "{what}; this appliance last left it {last}. The header was changed outside atrest, \
             or the volume was replaced: nothing was read or written. Find out who changed it and \
             restore the genuine volume; if you replaced it on purpose, remove {} and restart",
            record.display()
        ))
    }

    /// Reads the record; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Known>, String> {
        let bytes = match files::read_bounded(path, MAX_KNOWN_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot read {} ({e}); check the data directory",
                    path.display()
                ));
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); restore it from a backup of the data directory, or remove \
                 it to trust the volume's header as it is",
                path.display()
            )
        })
    }

    /// Writes the record (atomically, 0600).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        files::write_private(path, &text).map_err(|e| {
            format!(
                "cannot record the volume's state in {} ({e}); check the data directory's free \
                 space and permissions",
                path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrest_volume::{KeyInfo, KmipToken};

    fn info(state: VolState, keys: &[(&'static str, &str)]) -> VolumeInfo {
        VolumeInfo {
            state,
            uuid: "u-1".into(),
            label: String::new(),
            cipher: None,
            key_bits: None,
            sector_size: 4096,
            data_offset: 0,
            data_size: 0,
            key_id: None,
            servers: vec![],
            keys: keys
                .iter()
                .map(|(role, id)| KeyInfo {
                    role,
                    token: 0,
                    digest: 0,
                    reference: KmipToken {
                        unique_identifier: id.to_string(),
                        servers: vec!["s:5696".into()],
                        key_bits: 256,
                        created: "t".into(),
                        digest: 0,
                    },
                })
                .collect(),
            progress: None,
            seqid: 1,
            header_repair: None,
            header_mac: true,
            recovery_key: false,
        }
    }

    #[test]
    fn an_encrypted_volume_is_not_accepted_as_plain_or_with_another_key() {
        let p = Path::new("DIR/volume-known.json");
        let k = Known::of(&info(VolState::Encrypted, &[("current", "A")]));
        k.check(&info(VolState::Encrypted, &[("current", "A")]), p)
            .unwrap();
        let e = k.check(&info(VolState::Plain, &[]), p).unwrap_err();
        assert!(e.contains("says it is plain"), "{e}");
        let e = k
            .check(&info(VolState::Encrypted, &[("current", "B")]), p)
            .unwrap_err();
        assert!(e.contains("encrypted with key B"), "{e}");
        let e = k
            .check(&info(VolState::Decrypting, &[("old", "A")]), p)
            .unwrap_err();
        assert!(e.contains("decrypting with key A"), "{e}");
        let mut other = info(VolState::Encrypted, &[("current", "A")]);
        other.uuid = "u-2".into();
        assert!(k.check(&other, p).unwrap_err().contains("not the one"));
    }

    #[test]
    fn transitions_the_appliance_makes_are_accepted_across_a_crash() {
        let p = Path::new("k");
        let enc = info(VolState::Encrypted, &[("current", "A")]);
        let k = Known::before(&enc, VolState::Rekeying, Some("B"));
        k.check(&enc, p).unwrap();
        k.check(&info(VolState::Rekeying, &[("old", "A"), ("new", "B")]), p)
            .unwrap();
        k.check(&info(VolState::Encrypted, &[("current", "B")]), p)
            .unwrap();
        let k = Known::of(&info(VolState::Rekeying, &[("old", "A"), ("new", "B")]));
        k.check(&info(VolState::Encrypted, &[("current", "B")]), p)
            .unwrap();
        assert!(
            k.check(&info(VolState::Encrypted, &[("current", "A")]), p)
                .is_err(),
            "an older genuine header (before the rekey) is refused"
        );
        let k = Known::before(&enc, VolState::Decrypting, None);
        k.check(&info(VolState::Plain, &[]), p).unwrap();
        let plain = info(VolState::Plain, &[]);
        let k = Known::of(&plain);
        // An encryption the appliance did not start (to a key it did not create) is refused.
        let e = k
            .check(&info(VolState::Encrypting, &[("new", "X")]), p)
            .unwrap_err();
        assert!(e.contains("encrypting with key X"), "{e}");
        let k = Known::before(&plain, VolState::Encrypting, Some("B"));
        k.check(&info(VolState::Encrypting, &[("new", "B")]), p)
            .unwrap();
        k.check(&info(VolState::Encrypted, &[("current", "B")]), p)
            .unwrap();
    }
}
