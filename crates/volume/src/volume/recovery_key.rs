//! The recovery key: adding and removing its keyslots, and unlocking with it.

use super::*;

/// Recovery key (docs/volume-format.md, "Recovery keyslot").
impl UnlockedVolume {
    /// Whether the volume has a recovery key (atrest's recovery keyslots).
    pub fn has_recovery_key(&self) -> bool {
        !recovery_slots::recovery_keyslots(&self.meta()).is_empty()
    }

    /// Makes a new recovery key for the data segment's key: a LUKS2 argon2id keyslot that
    /// stock cryptsetup opens. A recovery key the volume had is replaced in the same header
    /// commit (its keyslot area is wiped afterwards). Only in the steady encrypted state (a
    /// conversion changes the keys; rekey renews the recovery key itself). Returns the key, to
    /// be shown once: it is stored nowhere.
    pub fn add_recovery_key(&self, kdf: &RecoveryKdf) -> Result<RecoveryKey> {
        let _busy = self.not_converting("adding a recovery key")?;
        let state = self.state();
        if state != State::Encrypted {
            return Err(Error::State(format!(
                "the volume is {}: a recovery key is added to an encrypted volume with no \
                 conversion under way",
                state.as_str()
            )));
        }
        let (did, old) = {
            let m = self.meta();
            if recovery_slots::region(&m).is_none() {
                return Err(Error::State(format!(
                    "the volume's keyslots area ({} bytes) is too small for a recovery keyslot; \
                     volumes formatted with the default 16 MiB header area have room",
                    m.keyslots_size
                )));
            }
            let did = m
                .segment_digest()
                .ok_or_else(|| Error::State("no digest belongs to the data segment".into()))?;
            (did, recovery_slots::recovery_keyslots(&m))
        };
        let raw = self.raw_key(did)?;
        let rk = RecoveryKey::generate()?;
        let slots = self.write_recovery_slots(&rk, &[(did, raw.expose())], kdf)?;
        self.commit_and_wipe(|m| {
            recovery_slots::remove(m, &old);
            for (id, json, digest) in slots {
                recovery_slots::add(m, id, json, digest);
            }
        })?;
        Ok(rk)
    }

    /// Removes the recovery key: its keyslots leave the header (one commit) and their areas
    /// are overwritten with zeros. Returns whether there was one.
    pub fn remove_recovery_key(&self) -> Result<bool> {
        let _busy = self.not_converting("removing the recovery key")?;
        let old = recovery_slots::recovery_keyslots(&self.meta());
        if old.is_empty() {
            return Ok(false);
        }
        self.commit_and_wipe(|m| recovery_slots::remove(m, &old))?;
        Ok(true)
    }

    pub(super) fn not_converting(&self, what: &str) -> Result<parking_lot::MutexGuard<'_, ()>> {
        self.inner.converting.try_lock().ok_or_else(|| {
            Error::State(format!(
                "a conversion is running on this volume; {what} waits until it has finished"
            ))
        })
    }

    /// The verified raw key of digest `digest`.
    pub(super) fn raw_key(&self, digest: u32) -> Result<SecretBytes> {
        self.inner
            .derived
            .lock()
            .get(&digest)
            .map(|k| k.raw.clone())
            .ok_or_else(|| Error::State(format!("no verified key for digest {digest}")))
    }

    /// Writes one recovery keyslot area per `(digest, key)` under `rk` and flushes; returns the
    /// keyslots to add in the next commit.
    pub(super) fn write_recovery_slots(
        &self,
        rk: &RecoveryKey,
        keys: &[(u32, &[u8])],
        kdf: &RecoveryKdf,
    ) -> Result<Vec<(u32, serde_json::Value, u32)>> {
        if self.inner.read_only {
            return Err(Error::State(
                "the volume was opened read-only; its header is not written".into(),
            ));
        }
        let (areas, ids) = {
            let m = self.meta();
            let areas = recovery_slots::free_areas(&m, keys.len());
            let ids = recovery_slots::free_ids(&m, keys.len());
            match (areas, ids) {
                (Some(a), Some(i)) => (a, i),
                _ => {
                    return Err(Error::State(
                        "no free recovery keyslot area or keyslot id is left in the header; \
                         remove the recovery key, then add it again"
                            .into(),
                    ));
                }
            }
        };
        let mut out = Vec::new();
        for (((digest, key), area), id) in keys.iter().zip(areas).zip(ids) {
            let (json, bytes) = crate::recovery::make_keyslot(rk, key, kdf, area)?;
            self.inner
                .dev
                .write_at(&bytes, area)
                .map_err(Error::io("writing the recovery keyslot area"))?;
            out.push((id, json, *digest));
        }
        self.inner
            .dev
            .flush()
            .map_err(Error::io("flushing the recovery keyslot area"))?;
        Ok(out)
    }

    /// Commits like [`UnlockedVolume::commit`], then overwrites with zeros the areas of the
    /// recovery keyslots the commit removed, so a removed recovery key opens nothing even with
    /// an old copy of the header.
    pub(super) fn commit_and_wipe(&self, f: impl FnOnce(&mut Metadata)) -> Result<()> {
        let before = self.meta().clone();
        self.commit(f)?;
        let gone = recovery_slots::removed_areas(&before, &self.meta());
        if gone.is_empty() {
            return Ok(());
        }
        for (off, size) in gone {
            let zeros = vec![0u8; size as usize];
            self.inner
                .dev
                .write_at(&zeros, off)
                .map_err(Error::io("wiping a removed recovery keyslot area"))?;
        }
        self.inner
            .dev
            .flush()
            .map_err(Error::io("flushing the wiped recovery keyslot area"))
    }
}

impl Volume {
    /// Whether the volume has a recovery key (atrest's recovery keyslots).
    pub fn has_recovery_key(&self) -> bool {
        !recovery_slots::recovery_keyslots(&self.meta).is_empty()
    }

    /// The volume keys a recovery key opens, verified against their digests: one in the steady
    /// encrypted state, both keys of a rekey under way. Runs the keyslots' KDF (argon2id, about
    /// a second each), only for keyslots whose cost is within the bounds of
    /// [`crate::recovery::RecoveryKdf::check`]. No KMIP server is involved.
    pub fn keys_from_recovery_key(&self, rk: &RecoveryKey) -> Result<Vec<VolumeKey>> {
        let m = &*self.meta;
        let ks_start = m.keyslots_offset();
        let ks_end = ks_start + m.keyslots_size;
        let read = |buf: &mut [u8], off: u64| self.dev.read_at(buf, off);
        let mut keys: Vec<VolumeKey> = Vec::new();
        let mut refused = Vec::new();
        let mut tried = 0;
        for (did, d) in &m.digests {
            for ks in &d.keyslots {
                let Some(v) = m.keyslots.get(&ks.to_string()) else {
                    continue;
                };
                if keys.iter().any(|k| k.digest_id == *did) {
                    continue;
                }
                tried += 1;
                if tried > crate::recovery::MAX_RECOVERY_SLOTS_TRIED {
                    break;
                }
                let raw = match crate::recovery::open_keyslot(
                    &ks.to_string(),
                    v,
                    ks_start,
                    ks_end,
                    rk,
                    &read,
                ) {
                    Ok(raw) => raw,
                    Err(Error::State(why)) => {
                        refused.push(why);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Ok(material) = KeyMaterial::new(raw) else {
                    continue;
                };
                if expected_bits(m, *did).is_some_and(|b| b != material.size().bits()) {
                    continue;
                }
                if digest_matches(d, material.expose())? {
                    keys.push(VolumeKey {
                        material,
                        digest_id: *did,
                        volume_uuid: m.uuid.clone(),
                    });
                }
            }
        }
        if keys.is_empty() {
            let why = if tried == 0 {
                "the volume has no recovery key (no passphrase keyslot): unlock it with its key \
                 from the KMIP server"
                    .to_string()
            } else if !refused.is_empty() && refused.len() == tried {
                format!(
                    "no keyslot of this volume could be tried: {}",
                    refused.join("; ")
                )
            } else {
                "the recovery key opens no keyslot of this volume: check that it is the latest \
                 recovery key made for this volume (a rekey replaces it)"
                    .to_string()
            };
            return Err(Error::RecoveryKey(why));
        }
        Ok(keys)
    }
}
