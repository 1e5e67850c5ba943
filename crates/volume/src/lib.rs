//! The atrest volume: a LUKS2-format volume whose data segment is encrypted with
//! XTS-AES (`aes-xts-plain64`) under a key held by a KMIP server.
//!
//! - [`luks2`]: the header (binary copies, JSON metadata, validation, repair, commit);
//! - [`xts`]: XTS-AES sectors with the LUKS2 tweak rule;
//! - [`BlockDevice`]: one interface for files, raw devices and unlocked volumes;
//! - [`Volume`] / [`UnlockedVolume`]: format, open, key check, unlock, and crash-safe online
//!   in-place conversion (encrypt, rekey, decrypt);
//! - [`VolumeLock`]: the lock every process takes before it opens a volume (exclusive to
//!   write, shared to read).
//!
//! The on-disk format and the crash-safety argument are in docs/volume-format.md.
//!
//! # The life of a volume
//!
//! ```
//! use std::sync::Arc;
//! use atrest_volume::*;
//!
//! # fn main() -> Result<()> {
//! // A plain volume with the header area reserved (on a file: `FileDevice::create`).
//! let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(2 << 20));
//! let opts = FormatOptions { data_offset: 1 << 20, ..Default::default() };
//! let plain = Volume::format(dev.clone(), &opts)?.unlock(Vec::new())?;
//! plain.write_at(b"hello", 0).map_err(Error::io_at("writing"))?;
//!
//! // Encrypt with a key from the KMIP server; only its reference goes into the header.
//! let key = KeyMaterial::generate(KeySize::Bits256)?; // in the product: the KMIP Get result
//! let key_bytes = key.expose().to_vec();
//! let reference = KeyReference {
//!     unique_identifier: "42".into(),
//!     servers: vec!["kms.example:5696".into()],
//!     created: "2026-11-27T11:00:00Z".into(),
//! };
//! let fast = EncryptOptions { pbkdf2_iterations: 1000, ..Default::default() };
//! plain.begin_encrypt(key, reference, &fast)?;
//! plain.convert(&ConvertOptions::default(), &mut |p: &Progress| {
//!     let _ = (p.done, p.total, p.bytes_per_sec, p.eta);
//! })?;
//! drop(plain);
//!
//! // At every start: which keys are needed, fetch them, verify, unlock (resumes a conversion
//! // interrupted by a crash; `convert` finishes it).
//! let volume = Volume::open(dev)?;
//! assert_eq!(volume.required_keys()[0].reference.unique_identifier, "42");
//! let material = KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut key_bytes.clone()))?;
//! let verified = volume.verify_key(material)?; // a wrong key stops here
//! let unlocked = volume.unlock(vec![verified])?;
//! let mut buf = [0u8; 5];
//! unlocked.read_at(&mut buf, 0).map_err(Error::io_at("reading"))?;
//! assert_eq!(&buf, b"hello");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod device;
pub mod error;
pub mod key;
pub mod lock;
pub mod luks2;
mod rangelock;
pub mod recovery;
pub mod recovery_slots;
pub mod secret;
#[cfg(feature = "testing")]
pub mod testing;
mod used;
#[cfg(target_arch = "x86_64")]
mod vaes;
pub mod volume;
pub mod xts;

pub use device::{BlockDevice, FileDevice, MemDevice};
pub use error::{Check, Error, HeaderAuthError, HeaderAuthFailure, HeaderError, KeyError, Result};
pub use key::{KeyMaterial, VolumeKey};
pub use lock::{LockError, LockMode, VolumeLock};
pub use luks2::{ConversionKind, KmipToken};
pub use recovery::{RecoveryKdf, RecoveryKey};
pub use secret::{Hardening, MemoryLock, SecretBytes, UnlockedBytes, harden_process};
pub use used::UsedRanges;
pub use volume::{
    ConvertOptions, EncryptOptions, FormatOptions, KeyInfo, KeyReference, Progress, State,
    UnlockedVolume, Volume, VolumeInfo,
};
pub use xts::{KeySize, XtsBackend, XtsCipher};
