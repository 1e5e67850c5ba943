//! Where recovery keyslots live in the header and the keyslots area (docs/volume-format.md,
//! "Recovery keyslot"): their areas are the last [`RECOVERY_REGION_BYTES`] of the keyslots
//! area, below which the conversion checksum tables stay; a keyslot whose area lies there is
//! atrest's, any other keyslot is someone else's (cryptsetup `luksAddKey`) and is kept as read.

use serde_json::Value;

use crate::luks2::Metadata;
use crate::recovery::{RECOVERY_AREA_BYTES, RECOVERY_AREAS, RECOVERY_REGION_BYTES, area_of};

/// The recovery region `[start, end)` of device offsets, when the keyslots area is big enough
/// (at least twice the region, so conversion tables keep half of it).
pub(crate) fn region(m: &Metadata) -> Option<(u64, u64)> {
    if m.keyslots_size < 2 * RECOVERY_REGION_BYTES {
        return None;
    }
    let end = m.keyslots_offset() + m.keyslots_size;
    Some((end - RECOVERY_REGION_BYTES, end))
}

/// Bytes of the keyslots area the conversion tables may use.
pub(crate) fn table_space(keyslots_size: u64) -> u64 {
    if keyslots_size >= 2 * RECOVERY_REGION_BYTES {
        keyslots_size - RECOVERY_REGION_BYTES
    } else {
        keyslots_size
    }
}

fn in_region(m: &Metadata, v: &Value) -> bool {
    match (region(m), area_of(v)) {
        (Some((start, end)), Some((off, size))) => {
            off >= start && off.checked_add(size).is_some_and(|e| e <= end)
        }
        _ => false,
    }
}

/// Ids of atrest's recovery keyslots.
pub fn recovery_keyslots(m: &Metadata) -> Vec<u32> {
    m.keyslots
        .iter()
        .filter(|(_, v)| in_region(m, v))
        .filter_map(|(k, _)| k.parse().ok())
        .collect()
}

/// Ids of keyslots atrest did not make.
pub(crate) fn foreign_keyslots(m: &Metadata) -> Vec<u32> {
    m.keyslots
        .iter()
        .filter(|(_, v)| !in_region(m, v))
        .filter_map(|(k, _)| k.parse().ok())
        .collect()
}

/// `n` free recovery area offsets (no keyslot's area overlaps them), or `None`.
pub(crate) fn free_areas(m: &Metadata, n: usize) -> Option<Vec<u64>> {
    let (start, _) = region(m)?;
    let used: Vec<(u64, u64)> = m.keyslots.values().filter_map(area_of).collect();
    let free: Vec<u64> = (0..RECOVERY_AREAS)
        .map(|i| start + i * RECOVERY_AREA_BYTES)
        .filter(|&a| {
            used.iter()
                .all(|&(o, s)| o.saturating_add(s) <= a || o >= a + RECOVERY_AREA_BYTES)
        })
        .collect();
    (free.len() >= n).then(|| free[..n].to_vec())
}

/// `n` unused keyslot ids (LUKS2 allows 0…31).
pub(crate) fn free_ids(m: &Metadata, n: usize) -> Option<Vec<u32>> {
    let ids: Vec<u32> = (0..32u32)
        .filter(|i| !m.keyslots.contains_key(&i.to_string()))
        .take(n)
        .collect();
    (ids.len() == n).then_some(ids)
}

/// Removes keyslots `ids` and every digest's reference to them.
pub(crate) fn remove(m: &mut Metadata, ids: &[u32]) {
    for id in ids {
        m.keyslots.remove(&id.to_string());
    }
    for d in m.digests.values_mut() {
        d.keyslots.retain(|k| !ids.contains(k));
    }
}

/// Adds keyslot `id` bound to digest `digest`.
pub(crate) fn add(m: &mut Metadata, id: u32, json: Value, digest: u32) {
    m.keyslots.insert(id.to_string(), json);
    if let Some(d) = m.digests.get_mut(&digest) {
        d.keyslots.push(id);
        d.keyslots.sort_unstable();
    }
}

/// Areas of keyslots present in `before` and gone from `after` (to be wiped after the commit).
pub(crate) fn removed_areas(before: &Metadata, after: &Metadata) -> Vec<(u64, u64)> {
    before
        .keyslots
        .iter()
        .filter(|(k, _)| !after.keyslots.contains_key(*k))
        .filter(|(_, v)| in_region(before, v))
        .filter_map(|(_, v)| area_of(v))
        .collect()
}
