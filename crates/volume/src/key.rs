//! Volume keys: unverified key material, and the "proof of check" type [`VolumeKey`].

use std::fmt;

use openssl::hash::MessageDigest;

use crate::error::{Error, KeyError, Result};
use crate::luks2::{Digest, Metadata};
use crate::secret::SecretBytes;
use crate::xts::{KeySize, check_key};

/// XTS key material of a valid shape (32 or 64 bytes, halves different), not yet checked against
/// any volume. Locked in memory, zeroed on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct KeyMaterial {
    bytes: SecretBytes,
    size: KeySize,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial({} bits, [REDACTED])", self.size.bits())
    }
}

impl KeyMaterial {
    /// Checks the shape of `bytes`.
    pub fn new(bytes: SecretBytes) -> Result<KeyMaterial, KeyError> {
        let size = check_key(bytes.expose())?;
        Ok(KeyMaterial { bytes, size })
    }

    /// Random key material (for tests and tools; the product's keys come from the KMIP server).
    pub fn generate(size: KeySize) -> Result<KeyMaterial> {
        loop {
            let bytes = SecretBytes::random(size.bytes()).map_err(Error::crypto)?;
            if let Ok(k) = KeyMaterial::new(bytes) {
                return Ok(k);
            }
        }
    }

    /// Key length.
    pub fn size(&self) -> KeySize {
        self.size
    }

    /// The raw bytes (for writing a key file for `cryptsetup --volume-key-file`, or tests).
    pub fn expose(&self) -> &[u8] {
        self.bytes.expose()
    }

    pub(crate) fn secret(&self) -> &SecretBytes {
        &self.bytes
    }
}

/// A key proven to match digest `digest_id` of the volume whose UUID is `volume_uuid`. Only
/// [`crate::Volume::verify_key`] makes one, so holding a `VolumeKey` means the check was done.
pub struct VolumeKey {
    pub(crate) material: KeyMaterial,
    pub(crate) digest_id: u32,
    pub(crate) volume_uuid: String,
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeKey")
            .field("digest_id", &self.digest_id)
            .field("volume_uuid", &self.volume_uuid)
            .field("bits", &self.material.size.bits())
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl VolumeKey {
    /// The digest it matched.
    pub fn digest_id(&self) -> u32 {
        self.digest_id
    }

    /// Key length.
    pub fn size(&self) -> KeySize {
        self.material.size
    }

    /// The raw key, e.g. for `cryptsetup open --volume-key-file`.
    pub fn expose(&self) -> &[u8] {
        self.material.expose()
    }
}

fn md(hash: &str) -> Result<MessageDigest> {
    match hash {
        "sha1" => Ok(MessageDigest::sha1()),
        "sha256" => Ok(MessageDigest::sha256()),
        "sha512" => Ok(MessageDigest::sha512()),
        h => Err(Error::State(format!("digest hash {h} is not supported"))),
    }
}

/// Computes a LUKS2 pbkdf2 digest of `key`.
pub(crate) fn make_digest(
    key: &KeyMaterial,
    iterations: u32,
    segments: Vec<u32>,
) -> Result<Digest> {
    let mut salt = vec![0u8; 32];
    openssl::rand::rand_bytes(&mut salt).map_err(Error::crypto)?;
    let mut digest = vec![0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        key.expose(),
        &salt,
        iterations as usize,
        MessageDigest::sha256(),
        &mut digest,
    )
    .map_err(Error::crypto)?;
    Ok(Digest {
        keyslots: Vec::new(),
        segments,
        hash: "sha256".into(),
        iterations,
        salt,
        digest,
    })
}

/// Checks `key` against digest `d`.
pub(crate) fn digest_matches(d: &Digest, key: &[u8]) -> Result<bool> {
    let mut out = vec![0u8; d.digest.len()];
    openssl::pkcs5::pbkdf2_hmac(key, &d.salt, d.iterations as usize, md(&d.hash)?, &mut out)
        .map_err(Error::crypto)?;
    Ok(openssl::memcmp::eq(&out, &d.digest))
}

/// The key length a digest expects, from the atrest token or a keyslot's `key_size`.
pub(crate) fn expected_bits(m: &Metadata, digest_id: u32) -> Option<u32> {
    if let Some(t) = m.kmip_token_for(digest_id) {
        return Some(t.key_bits);
    }
    let d = m.digests.get(&digest_id)?;
    d.keyslots.iter().find_map(|ks| {
        m.keyslots
            .get(&ks.to_string())?
            .get("key_size")?
            .as_u64()
            .map(|b| b as u32 * 8)
    })
}
