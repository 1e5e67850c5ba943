//! The conversion record (`atrest-conversion` token) of an in-place encrypt, rekey or decrypt,
//! and its hotzone.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::json::{b64, bad, id_key, obj, str_field, u64_num, u64_str};
use super::model::{
    Conversion, ConversionKind, Digest, Hotzone, Metadata, RecordVersion, Segment, SegmentKind,
    Token,
};
use super::{
    HOTZONE_UNIT, MAX_HOTZONE_SIZE, REQUIREMENT_CONVERSION, REQUIREMENT_CONVERSION_V1, SKIP_GRANULE,
};
use crate::error::{Check, Result};

/// `conversion`, across sections: at most one record, present if and only if the requirement
/// flag of its version is (and no other conversion flag); its hotzone table lies inside the
/// keyslots area (computed without overflow).
pub(super) fn check_conversion(meta: &Metadata) -> Result<()> {
    let c = Check::Conversion;
    let n_conv = meta
        .tokens
        .values()
        .filter(|t| matches!(t, Token::Conversion(_)))
        .count();
    let flags: Vec<&str> = meta
        .requirements
        .iter()
        .map(String::as_str)
        .filter(|r| *r == REQUIREMENT_CONVERSION || *r == REQUIREMENT_CONVERSION_V1)
        .collect();
    let want: Vec<&str> = meta
        .conversion()
        .map(|(_, c)| c.version.requirement())
        .into_iter()
        .collect();
    if n_conv > 1 || flags != want {
        return Err(bad(
            c,
            format!(
                "{n_conv} conversion record(s) but the requirement flag is {} (a record of \
                 version 1 needs `{REQUIREMENT_CONVERSION_V1}`, of version 2 \
                 `{REQUIREMENT_CONVERSION}`)",
                if flags.is_empty() {
                    "not set".to_string()
                } else {
                    format!("{flags:?}")
                }
            ),
        ));
    }
    check_digest_roles(meta)?;
    if let Some((_, conv)) = meta.conversion()
        && let Some(h) = conv.hotzone
    {
        let tlen = conv.version.table_len(h.size);
        let ks_start = meta.hdr_size.checked_mul(2);
        let ks_end = ks_start.and_then(|s| s.checked_add(meta.keyslots_size));
        let inside = match (ks_start, ks_end, h.table_offset.checked_add(tlen)) {
            (Some(s), Some(e), Some(t_end)) => h.table_offset >= s && t_end <= e,
            _ => false,
        };
        if !inside {
            return Err(bad(c, "the hotzone table lies outside the keyslots area"));
        }
    }
    Ok(())
}

/// One `atrest-conversion` token: the kind fits its digests, the boundary is a sector boundary
/// inside the segment, the hotzone (at most [`MAX_HOTZONE_SIZE`]) starts at the boundary.
pub(super) fn conversion_from_json(
    to: &Map<String, Value>,
    what: &str,
    digests: &BTreeMap<u32, Digest>,
    segment: &Segment,
) -> Result<Conversion> {
    let c = Check::Conversion;
    let kind = match str_field(to, "kind", what, c)? {
        "encrypt" => ConversionKind::Encrypt,
        "rekey" => ConversionKind::Rekey,
        "decrypt" => ConversionKind::Decrypt,
        k => {
            return Err(bad(c, format!("{what}.kind `{k}` unknown")));
        }
    };
    let digest_ref = |key: &str| -> Result<Option<u32>> {
        match to.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let id = id_key(s, "digest", c)?;
                if !digests.contains_key(&id) {
                    return Err(bad(
                        c,
                        format!("{what}.{key} refers to missing digest {id}"),
                    ));
                }
                Ok(Some(id))
            }
            Some(_) => Err(bad(c, format!("{what}.{key} is not a string"))),
        }
    };
    let old_digest = digest_ref("old_digest")?;
    let new_digest = digest_ref("new_digest")?;
    let shape_ok = match kind {
        ConversionKind::Encrypt => old_digest.is_none() && new_digest.is_some(),
        ConversionKind::Rekey => {
            old_digest.is_some() && new_digest.is_some() && old_digest != new_digest
        }
        ConversionKind::Decrypt => old_digest.is_some() && new_digest.is_none(),
    };
    if !shape_ok {
        return Err(bad(
            c,
            format!(
                "{what}: old/new digests do not fit a {} conversion",
                kind.as_str()
            ),
        ));
    }
    let sector = match segment.kind {
        SegmentKind::Crypt { sector_size, .. } => sector_size as u64,
        SegmentKind::Linear => {
            return Err(bad(c, "a conversion needs a crypt segment"));
        }
    };
    let version = match to.get("version") {
        None => RecordVersion::V1,
        Some(_) => match u64_num(to, "version", what, c)? {
            2 => RecordVersion::V2,
            v => {
                return Err(bad(
                    c,
                    format!("{what}.version {v} unknown; atrest reads versions 1 and 2"),
                ));
            }
        },
    };
    let boundary = u64_str(to, "boundary", what, c)?;
    if !boundary.is_multiple_of(sector) || segment.size.is_some_and(|s| boundary > s) {
        return Err(bad(
            c,
            format!("{what}.boundary {boundary} is not a sector boundary inside the segment"),
        ));
    }
    let hotzone = match to.get("hotzone") {
        None | Some(Value::Null) => None,
        Some(h) => {
            let h = obj(h, "hotzone", c)?;
            match h.get("hash") {
                None if version == RecordVersion::V1 => {}
                Some(Value::String(s)) if s == version.hash_name() => {}
                _ => {
                    return Err(bad(
                        c,
                        format!(
                            "{what}.hotzone.hash is not `{}`, the checksum of a version {} record",
                            version.hash_name(),
                            version.number()
                        ),
                    ));
                }
            }
            if h.get("unit").is_some() && u64_num(h, "unit", "hotzone", c)? != HOTZONE_UNIT {
                return Err(bad(c, format!("{what}.hotzone.unit is not {HOTZONE_UNIT}")));
            }
            let (table_sha256, skip) = match version {
                RecordVersion::V1 => (None, 0),
                RecordVersion::V2 => {
                    let d: [u8; 32] =
                        b64(h, "table_sha256", "hotzone", c)?
                            .try_into()
                            .map_err(|_| {
                                bad(c, format!("{what}.hotzone.table_sha256 is not 32 bytes"))
                            })?;
                    (Some(d), u64_str(h, "skip", "hotzone", c)?)
                }
            };
            let hz = Hotzone {
                offset: u64_str(h, "offset", "hotzone", c)?,
                size: u64_str(h, "size", "hotzone", c)?,
                table_offset: u64_str(h, "table_offset", "hotzone", c)?,
                table_sha256,
                skip,
            };
            let granules = hz.size.div_ceil(SKIP_GRANULE);
            if granules < 64 && hz.skip >> granules != 0 {
                return Err(bad(
                    c,
                    format!("{what}.hotzone.skip names sub-ranges past the hotzone's end"),
                ));
            }
            if hz.offset != boundary
                || hz.size == 0
                || !hz.size.is_multiple_of(sector)
                || hz.size > MAX_HOTZONE_SIZE
                || !hz.table_offset.is_multiple_of(512)
                || hz
                    .offset
                    .checked_add(hz.size)
                    .is_none_or(|end| segment.size.is_some_and(|s| end > s))
            {
                return Err(bad(
                    c,
                    format!(
                        "{what}.hotzone is not a sector-aligned region starting at the boundary"
                    ),
                ));
            }
            Some(hz)
        }
    };
    Ok(Conversion {
        kind,
        old_digest,
        new_digest,
        boundary,
        hotzone,
        version,
    })
}

/// The digests are exactly those the state needs, in their roles: one assigned to the data
/// segment when encrypted; while encrypting only the new key's (assigned to the segment); while
/// rekeying the old key's (assigned) and the new key's (not yet); while decrypting only the
/// old key's. Each digest has at most one `atrest-kmip` token. A header with a stray digest
/// (e.g. an encrypt record added to an encrypted volume) is refused before any key is checked.
fn check_digest_roles(meta: &Metadata) -> Result<()> {
    let c = Check::Conversion;
    let assigned: Vec<u32> = meta
        .digests
        .iter()
        .filter(|(_, d)| d.segments.contains(&0))
        .map(|(id, _)| *id)
        .collect();
    let all: Vec<u32> = meta.digests.keys().copied().collect();
    let (want_all, want_assigned): (Vec<Option<u32>>, Option<u32>) =
        match (meta.conversion(), &meta.segment.kind) {
            (None, SegmentKind::Linear) => (vec![], None),
            (None, SegmentKind::Crypt { .. }) => {
                if assigned.len() != 1 || all.len() != 1 {
                    return Err(bad(
                        c,
                        format!(
                            "an encrypted volume has one key digest assigned to its segment; this \
                             header has {} digest(s), {} assigned",
                            all.len(),
                            assigned.len()
                        ),
                    ));
                }
                (vec![Some(all[0])], Some(all[0]))
            }
            (Some((_, conv)), _) => match conv.kind {
                ConversionKind::Encrypt => (vec![conv.new_digest], conv.new_digest),
                ConversionKind::Rekey => (vec![conv.old_digest, conv.new_digest], conv.old_digest),
                ConversionKind::Decrypt => (vec![conv.old_digest], conv.old_digest),
            },
        };
    let mut want: Vec<u32> = want_all.into_iter().flatten().collect();
    want.sort_unstable();
    if want != all || assigned.first().copied() != want_assigned || assigned.len() > 1 {
        return Err(bad(
            c,
            format!(
                "the key digests ({all:?}, assigned to the segment: {assigned:?}) do not fit the \
                 volume's state, which needs {want:?} (assigned: {want_assigned:?})"
            ),
        ));
    }
    for d in &all {
        let n = meta
            .tokens
            .values()
            .filter(|t| matches!(t, Token::Kmip(k) if k.digest == *d))
            .count();
        if n > 1 {
            return Err(bad(
                Check::Token,
                format!("{n} atrest-kmip tokens name digest {d}; atrest writes one per key"),
            ));
        }
    }
    Ok(())
}
