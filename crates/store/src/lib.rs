//! The appliance's content on an atrest volume: configuration, session audit history and
//! session recordings, on the volume's block-device interface — an embedded database (redb)
//! for everything but the recordings' bytes, which are in 1 MiB blocks beside it; the same code
//! on a plain volume, an encrypted one and one being converted.
//!
//! - [`Store`]: create/open on any [`atrest_volume::BlockDevice`], space, recovery;
//! - [`config`]: typed key → value settings with a schema version, atomic multi-key changes;
//! - [`audit`]: append-only events with a hash chain, queries by session, time and words;
//! - [`recordings`]: streamed chunked uploads into 1 MiB blocks beside the database, ranged
//!   downloads, hashes checked on read;
//! - [`Store::used_ranges`]: which bytes of the volume hold content, for a conversion of the
//!   space in use;
//! - [`testing`]: test access below the interface (rewritten history, format-1 recordings).
//!
//! How the store survives power loss on XTS media (torn sectors, unwritten sectors that read
//! as noise) is explained in docs/store.md.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
mod backend;
pub mod codec;
pub mod config;
pub mod error;
mod extents;
pub mod recordings;
mod store;
pub mod superblock;
pub mod testing;

pub use audit::{Audit, BrokenLink, Event, NewEvent, Order, Page, Query, Verification};
pub use config::{Change, Config, ConfigTxn, Value};
pub use error::{Error, Result};
pub use recordings::{RecordingInfo, RecordingReader, Recordings, Upload};
pub use store::{STORE_FORMAT, Space, Store, StoreOptions, Timestamp};

/// Entry points for the fuzz targets: each decodes untrusted bytes and must never panic, and
/// whatever it accepts must encode back to the same value.
#[doc(hidden)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "fuzz checks: a failed check is the finding"
)]
pub mod fuzzing {
    use crate::superblock::{SLOT_SIZE, Superblock};

    /// Decodes `data` as a superblock slot as it is; then as the fields of a slot (from byte 8
    /// on) with the magic and checksum made right, and — as the first byte asks — the version
    /// (2 or 1), the header-copy length and the reserved field made right, so that every field check is
    /// reached.
    pub fn superblock(data: &[u8]) {
        let _ = Superblock::decode(data);
        let Some((&fix, fields)) = data.split_first() else {
            return;
        };
        let mut slot = vec![0u8; SLOT_SIZE];
        slot[..8].copy_from_slice(b"ATRSTORE");
        let n = fields.len().min(SLOT_SIZE - 32 - 8);
        slot[8..8 + n].copy_from_slice(&fields[..n]);
        if fix & 1 != 0 {
            // Version 2, or 1 (read too, with its reserved field).
            let v: u32 = if fix & 8 != 0 { 1 } else { 2 };
            slot[8..12].copy_from_slice(&v.to_le_bytes());
        }
        if fix & 2 != 0 {
            slot[12..16].copy_from_slice(&4096u32.to_le_bytes());
        }
        if fix & 4 != 0 {
            slot[56..64].fill(0);
        }
        let sum = openssl::sha::sha256(&slot[..SLOT_SIZE - 32]);
        slot[SLOT_SIZE - 32..].copy_from_slice(&sum);
        if let Ok(sb) = Superblock::decode(&slot) {
            assert_eq!(Superblock::decode(&sb.encode()).ok(), Some(sb));
        }
    }

    /// Decodes `data` as each kind of stored record.
    pub fn records(data: &[u8]) {
        if let Ok(v) = crate::config::Value::decode(data) {
            let again = v.encode().expect("a decoded value is within the limits");
            assert_eq!(again, data);
        }
        if let Ok(e) = crate::audit::decode(1, data) {
            assert_eq!(crate::audit::encode_event(&e), data);
        }
        if let Ok(i) = crate::recordings::decode_info(data) {
            assert_eq!(crate::recordings::encode_info(&i), data);
        }
        if let Ok((block, sum)) = crate::recordings::decode_entry(data) {
            assert_eq!(crate::recordings::entry(block, &sum)[..], data[..]);
        }
    }
}
