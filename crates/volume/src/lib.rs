//! The atrest volume: a LUKS2-format volume whose data segment is encrypted with
//! XTS-AES (`aes-xts-plain64`) under a key held by a KMIP server.
//!
//! - [`luks2`]: the header (binary copies, JSON metadata, validation, repair, commit);
//! - [`xts`]: XTS-AES sectors with the LUKS2 tweak rule;
//! - [`BlockDevice`]: one interface for files, raw devices and unlocked volumes;
//! - [`Volume`] / [`UnlockedVolume`]: format, open, key check, unlock, and crash-safe online
//!   in-place conversion (encrypt, rekey, decrypt).
//!
//! The on-disk format and the crash-safety argument are in docs/volume-format.md.

pub mod device;
pub mod error;
pub mod key;
pub mod luks2;
mod rangelock;
pub mod secret;
#[cfg(target_arch = "x86_64")]
mod vaes;
pub mod volume;
pub mod xts;

pub use device::{BlockDevice, FileDevice, MemDevice};
pub use error::{Check, Error, HeaderError, KeyError, Result};
pub use key::{KeyMaterial, VolumeKey};
pub use luks2::{ConversionKind, KmipToken};
pub use secret::{SecretBytes, harden_process};
pub use volume::{
    ConvertOptions, EncryptOptions, FormatOptions, KeyInfo, KeyReference, Progress, State,
    UnlockedVolume, Volume, VolumeInfo,
};
pub use xts::{KeySize, XtsBackend, XtsCipher};
