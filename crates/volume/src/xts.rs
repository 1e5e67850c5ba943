//! XTS-AES sectors (IEEE 1619) as LUKS2 `aes-xts-plain64` uses them.
//!
//! The cipher work is OpenSSL's (AES-NI assembly). Each worker keeps one initialised
//! `EVP_CIPHER_CTX` per direction, so the AES key schedules are computed once per key and only
//! the 16-byte tweak is set per sector; see docs/volume-format.md ("Why OpenSSL").

use parking_lot::Mutex;

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;

use crate::error::{Error, KeyError};
use crate::secret::SecretBytes;

/// Bytes per tweak unit: the LUKS2 `plain64` IV counts 512-byte units from the segment start,
/// whatever the sector size.
pub const TWEAK_UNIT: u64 = 512;

/// XTS key length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySize {
    /// 256 bits of key material (two AES-128 keys): XTS-AES-128, the default.
    Bits256,
    /// 512 bits of key material (two AES-256 keys): XTS-AES-256.
    Bits512,
}

impl KeySize {
    /// Key material length in bytes (32 or 64).
    pub fn bytes(self) -> usize {
        match self {
            KeySize::Bits256 => 32,
            KeySize::Bits512 => 64,
        }
    }

    /// Key material length in bits (256 or 512).
    pub fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    /// From a length in bits.
    pub fn from_bits(bits: u64) -> Option<KeySize> {
        match bits {
            256 => Some(KeySize::Bits256),
            512 => Some(KeySize::Bits512),
            _ => None,
        }
    }

    fn cipher(self) -> &'static CipherRef {
        match self {
            KeySize::Bits256 => Cipher::aes_128_xts(),
            KeySize::Bits512 => Cipher::aes_256_xts(),
        }
    }
}

/// Checks the shape of XTS key material: 32 or 64 bytes, the two halves different
/// (equal halves make XTS degenerate; IEEE 1619-2018 and FIPS forbid them).
pub fn check_key(key: &[u8]) -> Result<KeySize, KeyError> {
    let size = match key.len() {
        32 => KeySize::Bits256,
        64 => KeySize::Bits512,
        n => return Err(KeyError::WrongLength { bytes: n }),
    };
    let (a, b) = key.split_at(key.len() / 2);
    if openssl::memcmp::eq(a, b) {
        return Err(KeyError::EqualHalves);
    }
    Ok(size)
}

struct Contexts {
    enc: CipherCtx,
    dec: CipherCtx,
}

/// Which implementation runs whole sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XtsBackend {
    /// VAES (512-bit AES instructions) when the CPU has it, else OpenSSL.
    Auto,
    /// OpenSSL's EVP AES-XTS only.
    OpenSsl,
}

/// An XTS-AES cipher for one key, shareable between threads.
pub struct XtsCipher {
    size: KeySize,
    key: SecretBytes,
    pool: Mutex<Vec<Contexts>>,
    #[cfg(target_arch = "x86_64")]
    fast: Option<crate::vaes::LockedSchedule>,
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XtsCipher")
            .field("size", &self.size)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl XtsCipher {
    /// A cipher for `key` (Key1 ‖ Key2, 32 or 64 bytes, halves different).
    pub fn new(key: &SecretBytes) -> Result<XtsCipher, Error> {
        XtsCipher::with_backend(key, XtsBackend::Auto)
    }

    /// A cipher for `key` using `backend` for whole sectors.
    pub fn with_backend(key: &SecretBytes, backend: XtsBackend) -> Result<XtsCipher, Error> {
        let size = check_key(key.expose())?;
        let cipher = XtsCipher {
            size,
            key: key.clone(),
            pool: Mutex::new(Vec::new()),
            #[cfg(target_arch = "x86_64")]
            fast: (backend == XtsBackend::Auto && crate::vaes::available())
                .then(|| crate::vaes::LockedSchedule::new(key.expose())),
        };
        // Build one pair now so that an OpenSSL refusal shows up here, not mid-I/O.
        let ctx = cipher.make_contexts()?;
        cipher.put(ctx);
        Ok(cipher)
    }

    /// Key length.
    pub fn key_size(&self) -> KeySize {
        self.size
    }

    /// Name of the implementation used for whole sectors (`vaes` or `openssl`).
    pub fn backend_name(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if self.fast.is_some() {
            return "vaes";
        }
        "openssl"
    }

    fn make_contexts(&self) -> Result<Contexts, Error> {
        let mut enc = CipherCtx::new().map_err(Error::crypto)?;
        enc.encrypt_init(Some(self.size.cipher()), Some(self.key.expose()), None)
            .map_err(Error::crypto)?;
        let mut dec = CipherCtx::new().map_err(Error::crypto)?;
        dec.decrypt_init(Some(self.size.cipher()), Some(self.key.expose()), None)
            .map_err(Error::crypto)?;
        Ok(Contexts { enc, dec })
    }

    fn take(&self) -> Result<Contexts, Error> {
        let popped = self.pool.lock().pop();
        match popped {
            Some(ctx) => Ok(ctx),
            None => self.make_contexts(),
        }
    }

    fn put(&self, ctx: Contexts) {
        self.pool.lock().push(ctx);
    }

    /// Encrypts one data unit in place with the 16-byte tweak `tweak` (ciphertext stealing when
    /// the length is not a multiple of 16; at least 16 bytes).
    pub fn encrypt_unit(&self, tweak: &[u8; 16], data: &mut [u8]) -> Result<(), Error> {
        let len = data.len();
        self.units(true, data, len, u128::from_le_bytes(*tweak), 0)
    }

    /// Decrypts one data unit in place; see [`XtsCipher::encrypt_unit`].
    pub fn decrypt_unit(&self, tweak: &[u8; 16], data: &mut [u8]) -> Result<(), Error> {
        let len = data.len();
        self.units(false, data, len, u128::from_le_bytes(*tweak), 0)
    }

    /// Encrypts whole sectors in place: sector `i` of `data` gets tweak
    /// `le128(first_tweak + i * sector_size / 512)`.
    pub fn encrypt_sectors(
        &self,
        first_tweak: u128,
        sector_size: usize,
        data: &mut [u8],
    ) -> Result<(), Error> {
        let step = (sector_size as u64 / TWEAK_UNIT) as u128;
        self.units(true, data, sector_size, first_tweak, step)
    }

    /// Decrypts whole sectors in place; see [`XtsCipher::encrypt_sectors`].
    pub fn decrypt_sectors(
        &self,
        first_tweak: u128,
        sector_size: usize,
        data: &mut [u8],
    ) -> Result<(), Error> {
        let step = (sector_size as u64 / TWEAK_UNIT) as u128;
        self.units(false, data, sector_size, first_tweak, step)
    }

    fn units(
        &self,
        encrypt: bool,
        data: &mut [u8],
        unit: usize,
        first: u128,
        step: u128,
    ) -> Result<(), Error> {
        if unit < 16 || !data.len().is_multiple_of(unit) {
            return Err(Error::Usage(format!(
                "XTS data of {} bytes is not a whole number of {unit}-byte units of at least 16 bytes",
                data.len()
            )));
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(fast) = &self.fast
            && unit.is_multiple_of(256)
        {
            fast.crypt(encrypt, first, step, unit, data);
            return Ok(());
        }
        let mut ctx = self.take()?;
        let result = (|| {
            let c = if encrypt { &mut ctx.enc } else { &mut ctx.dec };
            for (i, chunk) in data.chunks_exact_mut(unit).enumerate() {
                let iv = first.wrapping_add(i as u128 * step).to_le_bytes();
                if encrypt {
                    c.encrypt_init(None, None, Some(&iv))
                } else {
                    c.decrypt_init(None, None, Some(&iv))
                }
                .map_err(Error::crypto)?;
                let n = c
                    .cipher_update_inplace(chunk, unit)
                    .map_err(Error::crypto)?;
                if n != unit {
                    return Err(Error::Usage(format!(
                        "OpenSSL XTS returned {n} bytes for a {unit}-byte unit"
                    )));
                }
            }
            Ok(())
        })();
        self.put(ctx);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_keys() {
        assert!(matches!(
            check_key(&[1u8; 31]),
            Err(KeyError::WrongLength { bytes: 31 })
        ));
        assert!(matches!(check_key(&[1u8; 32]), Err(KeyError::EqualHalves)));
        assert!(matches!(check_key(&[1u8; 64]), Err(KeyError::EqualHalves)));
        let mut k = [1u8; 64];
        k[63] = 2;
        assert_eq!(check_key(&k).unwrap(), KeySize::Bits512);
    }

    #[test]
    fn vaes_matches_openssl() {
        for len in [32usize, 64] {
            let mut key = SecretBytes::zeroed(len);
            openssl::rand::rand_bytes(key.expose_mut()).unwrap();
            let auto = XtsCipher::new(&key).unwrap();
            let ossl = XtsCipher::with_backend(&key, XtsBackend::OpenSsl).unwrap();
            for sector in [512usize, 4096] {
                let mut a = vec![0u8; 3 * sector];
                openssl::rand::rand_bytes(&mut a).unwrap();
                let plain = a.clone();
                let mut b = a.clone();
                let first = u128::MAX - 9; // tweak arithmetic near the top wraps like OpenSSL's input
                auto.encrypt_sectors(first / 2, sector, &mut a).unwrap();
                ossl.encrypt_sectors(first / 2, sector, &mut b).unwrap();
                assert_eq!(
                    a,
                    b,
                    "{} vs openssl, key {len}, sector {sector}",
                    auto.backend_name()
                );
                auto.decrypt_sectors(first / 2, sector, &mut a).unwrap();
                assert_eq!(a, plain);
            }
        }
    }

    #[test]
    fn sector_tweak_counts_512_byte_units() {
        let mut key = SecretBytes::zeroed(32);
        for (i, b) in key.expose_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        let x = XtsCipher::new(&key).unwrap();
        let mut two = vec![0x5au8; 8192];
        x.encrypt_sectors(10, 4096, &mut two).unwrap();
        let mut second = vec![0x5au8; 4096];
        x.encrypt_unit(&(10u128 + 8).to_le_bytes(), &mut second)
            .unwrap();
        assert_eq!(&two[4096..], &second[..]);
        x.decrypt_sectors(10, 4096, &mut two).unwrap();
        assert!(two.iter().all(|&b| b == 0x5a));
    }
}
