//! The `keyslots` section. atrest writes no keyslot; cryptsetup's are kept as read.

use serde_json::{Map, Value};

use super::MAX_OBJECTS;
use super::json::{bad, id_key, obj, str_field};
use crate::error::{Check, Result};

/// `keyslots`: at most [`MAX_OBJECTS`] objects with small decimal ids and a `type`.
pub(super) fn check_keyslots(v: &Value) -> Result<Map<String, Value>> {
    let keyslots = obj(v, "keyslots", Check::Keyslots)?.clone();
    if keyslots.len() > MAX_OBJECTS {
        return Err(bad(Check::Keyslots, "more than 32 keyslots"));
    }
    for (k, ks) in &keyslots {
        id_key(k, "keyslot", Check::Keyslots)?;
        let ks = obj(ks, "keyslot", Check::Keyslots)?;
        str_field(ks, "type", "keyslot", Check::Keyslots)?;
    }
    Ok(keyslots)
}
