//! The `config` section: JSON area size, keyslots area size, flags and requirements.

use serde_json::Value;

use super::json::{bad, obj, u64_str};
use super::{
    BINARY_HEADER_SIZE, MAX_KEYSLOTS_SIZE, MAX_OBJECTS, REQUIREMENT_CONVERSION,
    REQUIREMENT_CONVERSION_V1,
};
use crate::error::{Check, Result};

/// What the `config` section says.
#[derive(Debug)]
pub(super) struct Config {
    pub keyslots_size: u64,
    pub flags: Vec<String>,
    pub requirements: Vec<String>,
}

/// `config` and `requirements`: `json_size` matches the copy, `keyslots_size` is aligned and at
/// most [`MAX_KEYSLOTS_SIZE`], flags are short lists of strings, and the only mandatory
/// requirement is atrest's conversion flag.
pub(super) fn check_config(v: &Value, hdr_size: u64) -> Result<Config> {
    let config = obj(v, "config", Check::Config)?;
    let json_size = u64_str(config, "json_size", "config", Check::Config)?;
    if Some(json_size) != hdr_size.checked_sub(BINARY_HEADER_SIZE as u64) {
        return Err(bad(
            Check::Config,
            format!("config.json_size {json_size} does not match hdr_size {hdr_size} − 4096"),
        ));
    }
    let keyslots_size = u64_str(config, "keyslots_size", "config", Check::Config)?;
    if !keyslots_size.is_multiple_of(4096) || keyslots_size > MAX_KEYSLOTS_SIZE {
        return Err(bad(
            Check::Config,
            format!(
                "config.keyslots_size {keyslots_size} is not a multiple of 4096 of at most {} MiB",
                MAX_KEYSLOTS_SIZE >> 20
            ),
        ));
    }
    let flags = strings(config.get("flags"), "config.flags", Check::Config)?;
    let requirements = match config.get("requirements") {
        None => Vec::new(),
        Some(r) => {
            let r = obj(r, "config.requirements", Check::Requirements)?;
            strings(
                r.get("mandatory"),
                "config.requirements.mandatory",
                Check::Requirements,
            )?
        }
    };
    for r in &requirements {
        if r != REQUIREMENT_CONVERSION && r != REQUIREMENT_CONVERSION_V1 {
            return Err(bad(
                Check::Requirements,
                format!(
                    "the volume requires `{r}`, which atrest does not implement (a cryptsetup reencryption in progress? finish it with `cryptsetup reencrypt --resume-only`)"
                ),
            ));
        }
    }
    Ok(Config {
        keyslots_size,
        flags,
        requirements,
    })
}

fn strings(v: Option<&Value>, what: &str, check: Check) -> Result<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= MAX_OBJECTS => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(check, format!("`{what}` holds a non-string")))
            })
            .collect(),
        Some(_) => Err(bad(check, format!("`{what}` is not a short array"))),
    }
}
