//! The header MAC (`atrest-header-mac` token): binds everything in the header that steers what
//! atrest writes to a volume key, so that someone who can write the disk but has no key cannot
//! make atrest decrypt the volume in place, write with another key, or move a conversion
//! boundary (the class of cryptsetup's CVE-2021-4122).
//!
//! `mac_key = HKDF-SHA256(IKM = volume key, salt = none, info = MAC_KEY_INFO, 32 bytes)`;
//! `mac = HMAC-SHA256(mac_key, mac_input(metadata))`. [`mac_input`] is a canonical byte string
//! (not the JSON text, whose order and spacing may change), laid out byte by byte in
//! docs/volume-format.md, section "Token atrest-header-mac". Which key authenticates a header
//! follows from its state ([`Metadata::authenticating_digest`]): the data segment's key when
//! encrypted, the old key of a rekey or decrypt, the new key (which atrest created) of an
//! encrypt. A plain volume has no key and no MAC.

use std::fmt;

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey};
use openssl::pkey_ctx::PkeyCtx;
use openssl::sign::Signer;
use serde_json::{Map, Value, json};

use super::TOKEN_MAC;
use super::json::{b64, bad, str_field};
use super::model::{ConversionKind, Metadata, RecordVersion, SegmentKind, Token};
use crate::error::{Check, Error, Result};
use crate::secret::SecretBytes;

/// HKDF `info` of the MAC key: a fixed label, so the MAC key is unrelated to any other use of
/// the volume key.
pub const MAC_KEY_INFO: &[u8] = b"atrest LUKS2 header MAC key v1";
/// First bytes of every MAC input (domain separation and format version).
pub const MAC_INPUT_TAG: &[u8] = b"atrest-header-mac-v1";
/// `alg` of the token.
pub const MAC_ALG: &str = "hmac-sha256";
/// MAC length, bytes.
pub const MAC_BYTES: usize = 32;

/// The header MAC as stored in its token.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderMac {
    /// HMAC-SHA256 of the MAC input.
    pub mac: [u8; MAC_BYTES],
}

impl fmt::Debug for HeaderMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeaderMac({})", hex_short(&self.mac))
    }
}

fn hex_short(b: &[u8]) -> String {
    b.iter()
        .take(4)
        .map(|x| format!("{x:02x}"))
        .collect::<String>()
        + "…"
}

impl HeaderMac {
    pub(super) fn from_json(to: &Map<String, Value>, what: &str) -> Result<HeaderMac> {
        let alg = str_field(to, "alg", what, Check::Mac)?;
        if alg != MAC_ALG {
            return Err(bad(
                Check::Mac,
                format!("{what}.alg `{alg}`; atrest writes {MAC_ALG}"),
            ));
        }
        let v = b64(to, "mac", what, Check::Mac)?;
        let mac: [u8; MAC_BYTES] = v
            .try_into()
            .map_err(|_| bad(Check::Mac, format!("{what}.mac is not {MAC_BYTES} bytes")))?;
        Ok(HeaderMac { mac })
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "type": TOKEN_MAC,
            "keyslots": [],
            "alg": MAC_ALG,
            "mac": openssl::base64::encode_block(&self.mac),
        })
    }
}

/// The MAC key of one volume key. Locked in memory, zeroed on drop.
#[derive(Clone)]
pub struct MacKey {
    key: SecretBytes,
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey([REDACTED])")
    }
}

/// HKDF-SHA256 (RFC 5869) without salt.
pub(crate) fn hkdf_sha256(ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    let mut ctx = PkeyCtx::new_id(Id::HKDF).map_err(Error::crypto)?;
    ctx.derive_init().map_err(Error::crypto)?;
    ctx.set_hkdf_md(openssl::md::Md::sha256())
        .map_err(Error::crypto)?;
    ctx.set_hkdf_key(ikm).map_err(Error::crypto)?;
    ctx.add_hkdf_info(info).map_err(Error::crypto)?;
    ctx.derive(Some(out)).map_err(Error::crypto)?;
    Ok(())
}

impl MacKey {
    /// Derives the MAC key of a volume key's raw bytes.
    pub(crate) fn derive(volume_key: &[u8]) -> Result<MacKey> {
        let mut key = SecretBytes::zeroed(32);
        hkdf_sha256(volume_key, MAC_KEY_INFO, key.expose_mut())?;
        Ok(MacKey { key })
    }

    /// The MAC of `m` (its MAC token, if any, is not part of the input).
    pub fn sign(&self, m: &Metadata) -> Result<HeaderMac> {
        let pkey = PKey::hmac(self.key.expose()).map_err(Error::crypto)?;
        let mut signer = Signer::new(MessageDigest::sha256(), &pkey).map_err(Error::crypto)?;
        signer.update(&mac_input(m)).map_err(Error::crypto)?;
        let v = signer.sign_to_vec().map_err(Error::crypto)?;
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&v[..MAC_BYTES]);
        Ok(HeaderMac { mac })
    }

    /// Whether `m` carries a MAC and it is the MAC of `m` under this key (constant time).
    pub fn verify(&self, m: &Metadata) -> Result<bool> {
        let Some((_, stored)) = m.mac() else {
            return Ok(false);
        };
        let expect = self.sign(m)?;
        Ok(openssl::memcmp::eq(&expect.mac, &stored.mac))
    }
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn ids(&mut self, ids: &[u32]) {
        self.u32(ids.len() as u32);
        for &i in ids {
            self.u32(i);
        }
    }
    fn opt_id(&mut self, id: Option<u32>) {
        self.u8(id.is_some() as u8);
        self.u32(id.unwrap_or(0));
    }
}

/// The canonical MAC input of `m` (docs/volume-format.md, "Token atrest-header-mac").
/// Covered: the UUID, the header and keyslots area sizes, the data segment (type, offset, size,
/// cipher, sector size, IV tweak), the mandatory requirements, every digest, every
/// `atrest-kmip` token and the conversion record with its hotzone. Not covered: the label and
/// subsystem, the sequence id, cryptsetup's keyslots and tokens of other types (none of them
/// steers what atrest writes).
pub fn mac_input(m: &Metadata) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(512));
    e.0.extend_from_slice(MAC_INPUT_TAG);
    e.bytes(m.uuid.as_bytes());
    e.u64(m.hdr_size);
    e.u64(m.keyslots_size);
    // Segment.
    e.u64(m.segment.offset);
    e.u64(m.segment.size.unwrap_or(u64::MAX));
    match &m.segment.kind {
        SegmentKind::Linear => {
            e.bytes(b"linear");
            e.bytes(b"");
            e.u32(0);
            e.u64(0);
        }
        SegmentKind::Crypt {
            encryption,
            sector_size,
            iv_tweak,
        } => {
            e.bytes(b"crypt");
            e.bytes(encryption.as_bytes());
            e.u32(*sector_size);
            e.u64(*iv_tweak);
        }
    }
    // Requirements.
    e.u32(m.requirements.len() as u32);
    for r in &m.requirements {
        e.bytes(r.as_bytes());
    }
    // Digests, by id.
    e.u32(m.digests.len() as u32);
    for (id, d) in &m.digests {
        e.u32(*id);
        e.bytes(d.hash.as_bytes());
        e.u32(d.iterations);
        e.bytes(&d.salt);
        e.bytes(&d.digest);
        e.ids(&d.segments);
        e.ids(&d.keyslots);
    }
    // atrest-kmip tokens, by token id.
    let kmip: Vec<_> = m
        .tokens
        .iter()
        .filter_map(|(id, t)| match t {
            Token::Kmip(k) => Some((*id, k)),
            _ => None,
        })
        .collect();
    e.u32(kmip.len() as u32);
    for (id, k) in kmip {
        e.u32(id);
        e.u32(k.digest);
        e.bytes(k.unique_identifier.as_bytes());
        e.u32(k.servers.len() as u32);
        for s in &k.servers {
            e.bytes(s.as_bytes());
        }
        e.u32(k.key_bits);
        e.bytes(k.created.as_bytes());
    }
    // The conversion record.
    match m.conversion() {
        None => e.u8(0),
        Some((id, c)) => {
            // The record's version (1 or 2); version 1 keeps its original layout, so a header
            // an earlier atrest signed still verifies.
            e.u8(c.version.number());
            e.u32(id);
            e.u8(match c.kind {
                ConversionKind::Encrypt => 1,
                ConversionKind::Rekey => 2,
                ConversionKind::Decrypt => 3,
            });
            e.opt_id(c.old_digest);
            e.opt_id(c.new_digest);
            e.u64(c.boundary);
            match c.hotzone {
                None => {
                    e.u8(0);
                    e.u64(0);
                    e.u64(0);
                    e.u64(0);
                }
                Some(h) => {
                    e.u8(1);
                    e.u64(h.offset);
                    e.u64(h.size);
                    e.u64(h.table_offset);
                }
            }
            if c.version == RecordVersion::V2 {
                let h = c.hotzone;
                e.0.extend_from_slice(&h.and_then(|h| h.table_sha256).unwrap_or_default());
                e.u64(h.map_or(0, |h| h.skip));
            }
        }
    }
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869, test case 3 (SHA-256, no salt, no info).
    #[test]
    fn hkdf_matches_rfc5869_case_3() {
        let ikm = [0x0bu8; 22];
        let mut okm = [0u8; 42];
        hkdf_sha256(&ikm, b"", &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }
}
