//! The `tokens` section: atrest's key references (`atrest-kmip`), the conversion record
//! (`atrest-conversion`, in [`super::conversion`]), the header MAC (`atrest-header-mac`, in
//! [`super::mac`]); tokens of other types are kept as read.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::json::{bad, field, id_key, id_list, obj, str_field, token_text, u64_num};
use super::mac::HeaderMac;
use super::model::{Digest, KmipToken, Metadata, Segment, SegmentKind, Token};
use super::{
    MAX_OBJECTS, MAX_SERVERS, MAX_TOKEN_TEXT, TOKEN_CONVERSION, TOKEN_KMIP, TOKEN_MAC, conversion,
};
use crate::error::{Check, Result};

/// `token`: at most [`MAX_OBJECTS`] tokens, each with a string `type` and a `keyslots` array;
/// atrest's own types parsed and checked, at most one header MAC.
pub(super) fn check_tokens(
    v: &Value,
    digests: &BTreeMap<u32, Digest>,
    segment: &Segment,
) -> Result<BTreeMap<u32, Token>> {
    let c = Check::Token;
    let mut tokens = BTreeMap::new();
    let tj = obj(v, "tokens", c)?;
    if tj.len() > MAX_OBJECTS {
        return Err(bad(c, "more than 32 tokens"));
    }
    for (k, t) in tj {
        let id = id_key(k, "token", c)?;
        let to = obj(t, "token", c)?;
        let what = format!("tokens.{k}");
        let ty = str_field(to, "type", &what, c)?;
        id_list(to, "keyslots", &what, c)?;
        let token = match ty {
            TOKEN_KMIP => Token::Kmip(check_kmip_token(to, &what, digests)?),
            TOKEN_CONVERSION => Token::Conversion(conversion::conversion_from_json(
                to, &what, digests, segment,
            )?),
            TOKEN_MAC => Token::Mac(HeaderMac::from_json(to, &what)?),
            _ => Token::Other(t.clone()),
        };
        tokens.insert(id, token);
    }
    let macs = tokens
        .values()
        .filter(|t| matches!(t, Token::Mac(_)))
        .count();
    if macs > 1 {
        return Err(bad(
            Check::Mac,
            format!("{macs} header MAC tokens; atrest writes one"),
        ));
    }
    Ok(tokens)
}

/// An `atrest-kmip` token: the KMIP key reference of one digest.
fn check_kmip_token(
    to: &Map<String, Value>,
    what: &str,
    digests: &BTreeMap<u32, Digest>,
) -> Result<KmipToken> {
    let c = Check::Token;
    let servers_v = field(to, "servers", what, c)?
        .as_array()
        .ok_or_else(|| bad(c, format!("{what}.servers is not an array")))?;
    if servers_v.is_empty() || servers_v.len() > MAX_SERVERS {
        return Err(bad(
            c,
            format!("{what}.servers must list 1…{MAX_SERVERS} servers"),
        ));
    }
    let mut servers = Vec::new();
    for s in servers_v {
        match s.as_str() {
            Some(s)
                if !s.is_empty()
                    && s.len() <= MAX_TOKEN_TEXT
                    && !s.chars().any(char::is_control) =>
            {
                servers.push(s.to_string())
            }
            _ => return Err(bad(c, format!("{what}.servers holds an invalid entry"))),
        }
    }
    let key_bits = u64_num(to, "key_bits", what, c)?;
    if key_bits != 256 && key_bits != 512 {
        return Err(bad(
            c,
            format!("{what}.key_bits {key_bits}, expected 256 or 512"),
        ));
    }
    let digest = id_key(str_field(to, "digest", what, c)?, "digest", c)?;
    if !digests.contains_key(&digest) {
        return Err(bad(c, format!("{what} refers to missing digest {digest}")));
    }
    Ok(KmipToken {
        unique_identifier: token_text(to, "unique_identifier", what)?,
        servers,
        key_bits: key_bits as u32,
        created: token_text(to, "created", what)?,
        digest,
    })
}

/// A plain (`linear`) volume has no key: a header that says plain but still carries key
/// digests, KMIP key references or a header MAC was changed outside atrest (a genuine
/// decryption removes them in the same commit that makes the segment `linear`).
pub(super) fn check_plain_has_no_keys(m: &Metadata) -> Result<()> {
    if m.segment.kind != SegmentKind::Linear {
        return Ok(());
    }
    let kmip = m
        .tokens
        .values()
        .any(|t| matches!(t, Token::Kmip(_) | Token::Mac(_)));
    if !m.digests.is_empty() || kmip {
        return Err(bad(
            Check::Mac,
            "the data segment is marked plain (`linear`) but the header still names a volume \
             key: the header was changed outside atrest, which would make atrest write the \
             content unencrypted. Nothing was read or written. Restore the header from a backup \
             (`cryptsetup luksHeaderRestore`) or ask whoever has access to the disk what changed",
        ));
    }
    Ok(())
}
