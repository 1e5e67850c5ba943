//! Small cryptographic building blocks over OpenSSL: random bytes, AES-256-GCM sealing of
//! records under the master key, password hashing (PBKDF2-HMAC-SHA256) and atomic file writes.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use openssl::hash::MessageDigest;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// Length of the master key: AES-256.
pub const MASTER_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// `n` bytes from OpenSSL's CSPRNG.
pub fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut b = Zeroizing::new(vec![0u8; n]);
    openssl::rand::rand_bytes(&mut b).map_err(KmsError::crypto("reading random bytes"))?;
    Ok(b)
}

/// A random secret for an operator: 24 random bytes, URL-safe base64-like hex groups.
pub fn random_secret() -> Result<Zeroizing<String>> {
    let b = random_bytes(18)?;
    Ok(Zeroizing::new(hex::encode(&*b)))
}

/// A random version-4 UUID, as text, from OpenSSL's random generator.
pub fn random_uuid() -> Result<String> {
    let b = random_bytes(16)?;
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&b);
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string())
}

/// The key that wraps every object record at rest. Zeroed on drop; never printed.
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// The key of `bytes`; `None` unless they are [`MASTER_KEY_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; MASTER_KEY_LEN] = bytes.try_into().ok()?;
        Some(MasterKey(Zeroizing::new(arr)))
    }

    /// A new random key.
    pub fn generate() -> Result<Self> {
        let b = random_bytes(MASTER_KEY_LEN)?;
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        key.copy_from_slice(&b);
        Ok(MasterKey(key))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0[..]
    }

    /// AES-256-GCM: `nonce (12) || ciphertext || tag (16)`, authenticating `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce = random_bytes(NONCE_LEN)?;
        let mut tag = [0u8; TAG_LEN];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0[..],
            Some(&nonce),
            aad,
            plaintext,
            &mut tag,
        )
        .map_err(KmsError::crypto("encrypting a record"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] made; `None` if it was altered, truncated, or sealed under
    /// another key or `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0[..],
            Some(nonce),
            aad,
            ct,
            tag,
        )
        .ok()
        .map(Zeroizing::new)
    }
}

/// PBKDF2-HMAC-SHA256 iterations for stored password hashes.
pub const PBKDF2_ITERATIONS: u32 = 200_000;

/// PBKDF2-HMAC-SHA256 of `password` with `salt`, 32 bytes.
pub fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        password,
        salt,
        iterations as usize,
        MessageDigest::sha256(),
        &mut out,
    )
    .map_err(KmsError::crypto("hashing a password"))?;
    Ok(out)
}

/// Constant-time equality of two byte strings of the same length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

/// Writes `contents` to `path` atomically and durably: a temporary file in the same directory
/// (`tempfile`, a random name, created 0600 and then given `mode`), fsync, rename over `path`,
/// fsync of the directory. After a crash `path` holds either the old or the new contents,
/// never a mix; a leftover temporary file is never mistaken for it. The one atomic writer of
/// the project (the appliance's private files use it too).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| KmsError::Config(format!("{} has no parent directory", path.display())))?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".atrest-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(KmsError::io("creating a temporary file in", dir))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .map_err(KmsError::io("setting the mode of", tmp.path()))?;
    tmp.write_all(contents)
        .map_err(KmsError::io("writing", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(KmsError::io("syncing", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| KmsError::io("renaming into place", path)(e.error))?;
    sync_dir(dir)
}

/// fsync of a directory, so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(KmsError::io("syncing the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = MasterKey::generate().unwrap();
        let s = k.seal(b"aad", b"secret").unwrap();
        assert_eq!(&k.open(b"aad", &s).unwrap()[..], b"secret");
        assert!(k.open(b"other", &s).is_none());
        let mut t = s.clone();
        t[15] ^= 1;
        assert!(k.open(b"aad", &t).is_none());
        assert!(k.open(b"aad", &s[..10]).is_none());
        let k2 = MasterKey::generate().unwrap();
        assert!(k2.open(b"aad", &s).is_none());
    }

    #[test]
    fn uuid_shape() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
