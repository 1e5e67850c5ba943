//! The appliance's content on an atrest volume: configuration, session audit history and
//! session recordings, in one embedded database (redb) on the volume's block-device interface —
//! the same code on a plain volume, an encrypted one and one being converted.
//!
//! - [`Store`]: create/open on any [`atrest_volume::BlockDevice`], space, recovery;
//! - [`config`]: typed key → value settings with a schema version, atomic multi-key changes;
//! - [`audit`]: append-only events with a hash chain, queries by session, time and words;
//! - [`recordings`]: streamed chunked uploads, ranged downloads, hashes checked on read;
//! - [`testing`]: a power-loss simulating device for tests.
//!
//! How the store survives power loss on XTS media (torn sectors, unwritten sectors that read
//! as noise) is explained in docs/store.md.

pub mod audit;
mod backend;
pub mod codec;
pub mod config;
pub mod error;
pub mod recordings;
mod store;
pub mod superblock;
pub mod testing;

pub use audit::{Audit, BrokenLink, Event, NewEvent, Order, Page, Query, Verification};
pub use config::{Change, Config, ConfigTxn, Value};
pub use error::{Error, Result};
pub use recordings::{RecordingInfo, RecordingReader, Recordings, Upload};
pub use store::{STORE_FORMAT, Space, Store, StoreOptions, Timestamp};

/// Entry points for the fuzz targets: each decodes untrusted bytes and must never panic.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `data` as a superblock slot.
    pub fn superblock(data: &[u8]) {
        let _ = crate::superblock::Superblock::decode(data);
    }

    /// Decodes `data` as each kind of stored record.
    pub fn records(data: &[u8]) {
        let _ = crate::config::Value::decode(data);
        let _ = crate::audit::decode(1, data);
        let _ = crate::recordings::decode_info(data);
    }
}
