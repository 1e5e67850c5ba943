//! Password hashes for the accounts atrest keeps — the KMS's clients and the appliance's admin:
//! PBKDF2-HMAC-SHA256 (OpenSSL) over a 16-byte random salt, 32-byte hash, compared in constant
//! time. One type for both, so both store the same shape and treat the salt the same way.
//!
//! Stored as JSON `{"scheme": "pbkdf2-hmac-sha256", "iterations": N, "salt": HEX, "hash":
//! HEX}`. The appliance's `admin.json` written before this shape (`"algorithm"` instead of
//! `"scheme"`) used the salt's hex *text* as the salt bytes; such a hash is read as those bytes
//! and written back in the shape above, verifying the same passwords.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto;
use crate::error::Result;

/// The only scheme.
const SCHEME: &str = "pbkdf2-hmac-sha256";
/// Longest password considered: a longer one is refused before hashing.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Most iterations a stored hash may ask for: a forged file cannot make a check run for
/// minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// A stored password hash. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

impl PasswordHash {
    /// Hashes `password` with a new random salt and `iterations` rounds.
    pub fn new(password: &str, iterations: u32) -> Result<Self> {
        let salt = crypto::random_bytes(16)?;
        let hash = crypto::pbkdf2(password.as_bytes(), &salt, iterations.max(1))?;
        Ok(PasswordHash {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            hash,
        })
    }

    /// Whether `password` is the one hashed. A password longer than [`MAX_PASSWORD_LEN`]
    /// never is.
    pub fn verify(&self, password: &str) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        match crypto::pbkdf2(password.as_bytes(), &self.salt, self.iterations) {
            Ok(got) => crypto::ct_eq(&got, &self.hash),
            Err(_) => false,
        }
    }

    /// The rounds this hash was made with.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    /// The appliance's earlier name of the field; its salt was used as text.
    #[serde(default, skip_serializing)]
    algorithm: Option<String>,
    iterations: u32,
    salt: String,
    hash: String,
}

impl Serialize for PasswordHash {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Stored {
            scheme: Some(SCHEME.to_owned()),
            algorithm: None,
            iterations: self.iterations,
            salt: hex::encode(&self.salt),
            hash: hex::encode(self.hash),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let s = Stored::deserialize(d)?;
        let salt = match (s.scheme.as_deref(), s.algorithm.as_deref()) {
            (Some(SCHEME), None) => hex::decode(&s.salt)
                .map_err(|_| D::Error::custom("the password hash's salt is not hex"))?,
            (None, Some(SCHEME)) => s.salt.into_bytes(),
            _ => {
                return Err(D::Error::custom(format!(
                    "unknown password hash scheme; expected {SCHEME}"
                )));
            }
        };
        if salt.is_empty() || salt.len() > 64 {
            return Err(D::Error::custom(
                "the password hash's salt has a wrong length",
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&s.iterations) {
            return Err(D::Error::custom(format!(
                "the password hash's iterations must be 1 to {MAX_ITERATIONS}"
            )));
        }
        let hash: [u8; 32] = hex::decode(&s.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| D::Error::custom("the password hash is not 32 bytes of hex"))?;
        Ok(PasswordHash {
            iterations: s.iterations,
            salt,
            hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_round_trips() {
        let h = PasswordHash::new("correct horse", 1000).unwrap();
        assert!(h.verify("correct horse"));
        assert!(!h.verify("correct hors"));
        assert!(!h.verify(""));
        assert!(!h.verify(&"x".repeat(MAX_PASSWORD_LEN + 1)));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"scheme\":\"pbkdf2-hmac-sha256\""), "{json}");
        let back: PasswordHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert!(back.verify("correct horse"));
        assert_eq!(format!("{h:?}"), "PasswordHash(<redacted>)");
    }

    /// The appliance's earlier admin.json: salt text used as bytes, `algorithm` field.
    #[test]
    fn reads_the_appliance_s_earlier_shape() {
        let salt_text = "00112233445566778899aabbccddeeff";
        let hash = crypto::pbkdf2(b"old admin pw", salt_text.as_bytes(), 1000).unwrap();
        let old = serde_json::json!({
            "algorithm": "pbkdf2-hmac-sha256",
            "iterations": 1000,
            "salt": salt_text,
            "hash": hex::encode(hash),
        });
        let h: PasswordHash = serde_json::from_value(old).unwrap();
        assert!(h.verify("old admin pw"));
        assert!(!h.verify("other"));
        // Written back in the one shape, it verifies the same password.
        let again: PasswordHash =
            serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert!(again.verify("old admin pw"));
    }

    #[test]
    fn forged_hashes_are_refused_when_read() {
        let ok = serde_json::json!({"scheme": SCHEME, "iterations": 1000,
            "salt": "00", "hash": hex::encode([0u8; 32])});
        assert!(serde_json::from_value::<PasswordHash>(ok.clone()).is_ok());
        for (field, value) in [
            ("scheme", serde_json::json!("md5")),
            ("iterations", serde_json::json!(0)),
            ("iterations", serde_json::json!(MAX_ITERATIONS as u64 + 1)),
            ("salt", serde_json::json!("zz")),
            ("salt", serde_json::json!("")),
            ("hash", serde_json::json!("00")),
        ] {
            let mut v = ok.clone();
            v[field] = value;
            assert!(
                serde_json::from_value::<PasswordHash>(v).is_err(),
                "{field}"
            );
        }
    }
}
