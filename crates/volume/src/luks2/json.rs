//! The JSON metadata (docs/volume-format.md, section 3): the five sections are parsed in the
//! order of the format document, each by the function named after its check.

use serde_json::{Map, Value, json};

use super::model::{Metadata, RecordVersion, SegmentKind, Token};
use super::{
    BINARY_HEADER_SIZE, HOTZONE_UNIT, MAX_OBJECTS, MAX_TOKEN_TEXT, TOKEN_CONVERSION, TOKEN_KMIP,
    config, conversion, digest, keyslots, segment, token,
};
use crate::error::{Check, Error, Result};

/// An error of check `check` in the chosen copy's metadata.
pub(super) fn bad(check: Check, detail: impl Into<String>) -> Error {
    Error::header(check, "metadata", detail)
}

/// Parses and checks the JSON text of a copy whose binary header gave `hdr_size` and the rest.
pub(super) fn from_json(
    v: &Value,
    hdr_size: u64,
    seqid: u64,
    label: String,
    subsystem: String,
    uuid: String,
) -> Result<Metadata> {
    let top = check_sections(v)?;
    let config = config::check_config(&top["config"], hdr_size)?;
    let keyslots = keyslots::check_keyslots(&top["keyslots"])?;
    let segment = segment::check_segment(&top["segments"], hdr_size, config.keyslots_size)?;
    let digests = digest::check_digests(&top["digests"], &keyslots, &segment)?;
    let tokens = token::check_tokens(&top["tokens"], &digests, &segment)?;
    let meta = Metadata {
        hdr_size,
        seqid,
        label,
        subsystem,
        uuid,
        keyslots_size: config.keyslots_size,
        keyslots,
        segment,
        digests,
        tokens,
        flags: config.flags,
        requirements: config.requirements,
    };
    token::check_plain_has_no_keys(&meta)?;
    conversion::check_conversion(&meta)?;
    Ok(meta)
}

/// `json-sections`: the text is an object with the five LUKS2 sections, each an object.
fn check_sections(v: &Value) -> Result<&Map<String, Value>> {
    let top = v
        .as_object()
        .ok_or_else(|| bad(Check::Sections, "the JSON text is not an object"))?;
    for s in ["keyslots", "tokens", "segments", "digests", "config"] {
        match top.get(s) {
            Some(Value::Object(_)) => {}
            _ => {
                return Err(bad(
                    Check::Sections,
                    format!("section `{s}` is missing or not an object"),
                ));
            }
        }
    }
    Ok(top)
}

pub(super) fn obj<'a>(v: &'a Value, what: &str, check: Check) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::header(check, "metadata", format!("`{what}` is not a JSON object")))
}

pub(super) fn field<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    what: &str,
    check: Check,
) -> Result<&'a Value> {
    o.get(key)
        .ok_or_else(|| Error::header(check, "metadata", format!("`{what}` has no `{key}`")))
}

pub(super) fn str_field<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    what: &str,
    check: Check,
) -> Result<&'a str> {
    field(o, key, what, check)?
        .as_str()
        .ok_or_else(|| Error::header(check, "metadata", format!("`{what}.{key}` is not a string")))
}

/// A u64 written as a decimal string, as LUKS2 does for offsets and sizes.
pub(super) fn u64_str(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<u64> {
    let s = str_field(o, key, what, check)?;
    parse_u64(s).ok_or_else(|| {
        Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` = {s:?} is not a decimal number within 64 bits"),
        )
    })
}

pub(super) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(super) fn u64_num(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<u64> {
    field(o, key, what, check)?.as_u64().ok_or_else(|| {
        Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` is not a non-negative integer"),
        )
    })
}

pub(super) fn id_key(k: &str, what: &str, check: Check) -> Result<u32> {
    parse_u64(k)
        .filter(|&n| n < 1000)
        .map(|n| n as u32)
        .ok_or_else(|| {
            Error::header(
                check,
                "metadata",
                format!("{what} id {k:?} is not a small decimal number"),
            )
        })
}

pub(super) fn id_list(
    o: &Map<String, Value>,
    key: &str,
    what: &str,
    check: Check,
) -> Result<Vec<u32>> {
    let arr = field(o, key, what, check)?.as_array().ok_or_else(|| {
        Error::header(check, "metadata", format!("`{what}.{key}` is not an array"))
    })?;
    if arr.len() > MAX_OBJECTS {
        return Err(Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` lists too many ids"),
        ));
    }
    arr.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| {
                    Error::header(
                        check,
                        "metadata",
                        format!("`{what}.{key}` holds a non-string"),
                    )
                })
                .and_then(|s| id_key(s, what, check))
        })
        .collect()
}

pub(super) fn b64(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<Vec<u8>> {
    let s = str_field(o, key, what, check)?;
    if s.len() > 200 {
        return Err(Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` is too long"),
        ));
    }
    openssl::base64::decode_block(s)
        .map_err(|_| Error::header(check, "metadata", format!("`{what}.{key}` is not base64")))
}

pub(super) fn token_text(o: &Map<String, Value>, key: &str, what: &str) -> Result<String> {
    let s = str_field(o, key, what, Check::Token)?;
    if s.is_empty() || s.len() > MAX_TOKEN_TEXT || s.chars().any(|c| c.is_control()) {
        return Err(Error::header(
            Check::Token,
            "metadata",
            format!("`{what}.{key}` must be 1…{MAX_TOKEN_TEXT} bytes without control characters"),
        ));
    }
    Ok(s.to_string())
}

/// The JSON text of `m`.
pub fn to_json(m: &Metadata) -> Value {
    let segment = match &m.segment.kind {
        SegmentKind::Linear => json!({
            "type": "linear",
            "offset": m.segment.offset.to_string(),
            "size": m.segment.size.map_or("dynamic".to_string(), |s| s.to_string()),
        }),
        SegmentKind::Crypt {
            encryption,
            sector_size,
            iv_tweak,
        } => json!({
            "type": "crypt",
            "offset": m.segment.offset.to_string(),
            "size": m.segment.size.map_or("dynamic".to_string(), |s| s.to_string()),
            "iv_tweak": iv_tweak.to_string(),
            "encryption": encryption,
            "sector_size": sector_size,
        }),
    };
    let ids = |v: &[u32]| Value::Array(v.iter().map(|i| Value::String(i.to_string())).collect());
    let mut digests = Map::new();
    for (id, d) in &m.digests {
        digests.insert(
            id.to_string(),
            json!({
                "type": "pbkdf2",
                "keyslots": ids(&d.keyslots),
                "segments": ids(&d.segments),
                "hash": d.hash,
                "iterations": d.iterations,
                "salt": openssl::base64::encode_block(&d.salt),
                "digest": openssl::base64::encode_block(&d.digest),
            }),
        );
    }
    let mut tokens = Map::new();
    for (id, t) in &m.tokens {
        let v = match t {
            Token::Kmip(k) => json!({
                "type": TOKEN_KMIP,
                "keyslots": [],
                "unique_identifier": k.unique_identifier,
                "servers": k.servers,
                "key_bits": k.key_bits,
                "created": k.created,
                "digest": k.digest.to_string(),
            }),
            Token::Conversion(c) => {
                let mut v = json!({
                    "type": TOKEN_CONVERSION,
                    "keyslots": [],
                    "kind": c.kind.as_str(),
                    "old_digest": c.old_digest.map(|d| d.to_string()),
                    "new_digest": c.new_digest.map(|d| d.to_string()),
                    "boundary": c.boundary.to_string(),
                    "hotzone": c.hotzone.map(|h| {
                        let mut hz = json!({
                            "offset": h.offset.to_string(),
                            "size": h.size.to_string(),
                            "table_offset": h.table_offset.to_string(),
                            "unit": HOTZONE_UNIT,
                            "hash": c.version.hash_name(),
                        });
                        if c.version == RecordVersion::V2 {
                            hz["table_sha256"] = json!(openssl::base64::encode_block(
                                &h.table_sha256.unwrap_or_default()
                            ));
                            hz["skip"] = json!(h.skip.to_string());
                        }
                        hz
                    }),
                });
                // Version 1 records carry no version field (as earlier atrest wrote them).
                if c.version == RecordVersion::V2 {
                    v["version"] = json!(2);
                }
                v
            }
            Token::Mac(mac) => mac.to_json(),
            Token::Other(v) => v.clone(),
        };
        tokens.insert(id.to_string(), v);
    }
    let mut config = Map::new();
    config.insert(
        "json_size".into(),
        Value::String((m.hdr_size - BINARY_HEADER_SIZE as u64).to_string()),
    );
    config.insert(
        "keyslots_size".into(),
        Value::String(m.keyslots_size.to_string()),
    );
    if !m.flags.is_empty() {
        config.insert("flags".into(), json!(m.flags));
    }
    if !m.requirements.is_empty() {
        config.insert(
            "requirements".into(),
            json!({ "mandatory": m.requirements }),
        );
    }
    json!({
        "keyslots": Value::Object(m.keyslots.clone()),
        "tokens": Value::Object(tokens),
        "segments": { "0": segment },
        "digests": Value::Object(digests),
        "config": Value::Object(config),
    })
}
