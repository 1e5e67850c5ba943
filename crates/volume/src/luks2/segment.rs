//! The `segments` section: exactly one data segment, `linear` (plain) or `crypt`.

use serde_json::Value;

use super::json::{bad, obj, str_field, u64_num, u64_str};
use super::model::{Segment, SegmentKind};
use crate::error::{Check, Result};

/// `segment`: one segment with id `"0"`; its offset 4096-aligned and after the header area
/// (computed without overflow), its size a multiple of the sector size, a known type; a crypt
/// segment's sector size a power of two in 512…4096 and no integrity.
pub(super) fn check_segment(v: &Value, hdr_size: u64, keyslots_size: u64) -> Result<Segment> {
    let c = Check::Segment;
    let segments = obj(v, "segments", c)?;
    if segments.len() != 1 {
        return Err(bad(
            c,
            format!(
                "{} data segments; atrest handles exactly one (a cryptsetup reencryption in progress? finish it with cryptsetup first)",
                segments.len()
            ),
        ));
    }
    let Some((sid, seg)) = segments.iter().next() else {
        return Err(bad(c, "no data segment"));
    };
    if sid != "0" {
        return Err(bad(c, format!("the segment id is {sid:?}, expected \"0\"")));
    }
    let seg = obj(seg, "segments.0", c)?;
    let offset = u64_str(seg, "offset", "segments.0", c)?;
    let size = match str_field(seg, "size", "segments.0", c)? {
        "dynamic" => None,
        _ => Some(u64_str(seg, "size", "segments.0", c)?),
    };
    let hdr_end = hdr_size
        .checked_mul(2)
        .and_then(|h| h.checked_add(keyslots_size));
    if hdr_end.is_none_or(|e| offset < e) || !offset.is_multiple_of(4096) {
        return Err(bad(
            c,
            format!(
                "data offset {offset} must be 4096-aligned and at or after the header area end ({} bytes)",
                hdr_end.map_or("beyond 64 bits".to_string(), |e| e.to_string())
            ),
        ));
    }
    if size.is_some_and(|s| offset.checked_add(s).is_none()) {
        return Err(bad(c, "data offset plus size does not fit in 64 bits"));
    }
    let kind = match str_field(seg, "type", "segments.0", c)? {
        "linear" => SegmentKind::Linear,
        "crypt" => {
            let encryption = str_field(seg, "encryption", "segments.0", c)?.to_string();
            let sector_size = u64_num(seg, "sector_size", "segments.0", c)?;
            if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
                return Err(bad(
                    c,
                    format!("sector_size {sector_size} is not a power of two in 512…4096"),
                ));
            }
            let iv_tweak = u64_str(seg, "iv_tweak", "segments.0", c)?;
            if let Some(sz) = size
                && !sz.is_multiple_of(sector_size)
            {
                return Err(bad(
                    c,
                    format!("segment size {sz} is not a multiple of the sector size {sector_size}"),
                ));
            }
            if !offset.is_multiple_of(sector_size) {
                return Err(bad(c, "data offset not sector-aligned"));
            }
            if seg.contains_key("integrity") {
                return Err(bad(c, "segments with integrity are not supported"));
            }
            SegmentKind::Crypt {
                encryption,
                sector_size: sector_size as u32,
                iv_tweak,
            }
        }
        other => {
            return Err(bad(
                c,
                format!("segment type `{other}` is not supported (linear or crypt)"),
            ));
        }
    };
    Ok(Segment { offset, size, kind })
}
