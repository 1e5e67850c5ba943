//! The `digests` section: LUKS2 `pbkdf2` digests of volume keys.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::json::{b64, bad, id_key, id_list, obj, str_field, u64_num};
use super::model::{Digest, Segment, SegmentKind};
use super::{DIGEST_BYTES, MAX_DIGESTS, MAX_PBKDF2_ITERATIONS, MIN_PBKDF2_ITERATIONS, SALT_BYTES};
use crate::error::{Check, Result};

/// `digest`: at most [`MAX_DIGESTS`] `pbkdf2` digests with a known hash, iterations within the
/// named bounds (and at most [`MAX_PBKDF2_ITERATIONS`] in all, so that one unlock attempt's key
/// checks are bounded whatever the number of digests), salt and value lengths within bounds,
/// references to existing segments and keyslots; a crypt segment has a digest.
pub(super) fn check_digests(
    v: &Value,
    keyslots: &Map<String, Value>,
    segment: &Segment,
) -> Result<BTreeMap<u32, Digest>> {
    let c = Check::Digest;
    let mut digests = BTreeMap::new();
    let dj = obj(v, "digests", c)?;
    if dj.len() > MAX_DIGESTS {
        return Err(bad(c, "more than 8 digests"));
    }
    let mut work: u64 = 0;
    for (k, d) in dj {
        let id = id_key(k, "digest", c)?;
        let d = obj(d, "digest", c)?;
        let what = format!("digests.{k}");
        let ty = str_field(d, "type", &what, c)?;
        if ty != "pbkdf2" {
            return Err(bad(c, format!("{what}: type `{ty}`, expected pbkdf2")));
        }
        let hash = str_field(d, "hash", &what, c)?.to_string();
        if !["sha1", "sha256", "sha512"].contains(&hash.as_str()) {
            return Err(bad(c, format!("{what}: hash `{hash}` not supported")));
        }
        let iterations = u64_num(d, "iterations", &what, c)?;
        if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
            return Err(bad(
                c,
                format!(
                    "{what}: {iterations} PBKDF2 iterations, outside {MIN_PBKDF2_ITERATIONS}…{MAX_PBKDF2_ITERATIONS}"
                ),
            ));
        }
        work = work.saturating_add(iterations);
        if work > MAX_PBKDF2_ITERATIONS {
            return Err(bad(
                c,
                format!(
                    "the digests ask for more than {MAX_PBKDF2_ITERATIONS} PBKDF2 iterations in all"
                ),
            ));
        }
        let salt = b64(d, "salt", &what, c)?;
        let digest = b64(d, "digest", &what, c)?;
        if !SALT_BYTES.contains(&salt.len()) || !DIGEST_BYTES.contains(&digest.len()) {
            return Err(bad(
                c,
                format!("{what}: salt or digest length out of bounds"),
            ));
        }
        let segments = id_list(d, "segments", &what, c)?;
        if segments.iter().any(|&s| s != 0) {
            return Err(bad(c, format!("{what} refers to a missing segment")));
        }
        let keyslots_ref = id_list(d, "keyslots", &what, c)?;
        if keyslots_ref
            .iter()
            .any(|s| !keyslots.contains_key(&s.to_string()))
        {
            return Err(bad(c, format!("{what} refers to a missing keyslot")));
        }
        digests.insert(
            id,
            Digest {
                keyslots: keyslots_ref,
                segments,
                hash,
                iterations: iterations as u32,
                salt,
                digest,
            },
        );
    }
    if let SegmentKind::Crypt { .. } = segment.kind
        && !digests.values().any(|d| d.segments.contains(&0))
    {
        return Err(bad(c, "no digest is assigned to the crypt segment"));
    }
    Ok(digests)
}
