//! Errors of the store. Each message says what failed and what to do next.

use crate::codec::DecodeError;

/// A store error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device holds no store (neither superblock slot is valid).
    #[error(
        "no content store was found on this volume (slot 0: {slot0}; slot 1: {slot1}): create one on a new volume, or check that the right volume is unlocked with the right key"
    )]
    NoStore {
        /// Why slot 0 was refused.
        slot0: String,
        /// Why slot 1 was refused.
        slot1: String,
    },
    /// The device is too small to hold a store.
    #[error(
        "the volume's data area ({0} bytes) is too small for a content store: format a bigger volume"
    )]
    TooSmall(u64),
    /// No room is left.
    #[error(
        "the content store is full: the volume's data area holds {capacity} bytes and {reserve} of them are kept for deletions; delete recordings to free space, or move the content to a bigger volume"
    )]
    Full {
        /// Bytes the store can use on this volume.
        capacity: u64,
        /// Bytes kept back so that deletions always succeed.
        reserve: u64,
    },
    /// A value given by the caller is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Something the caller named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Stored bytes are damaged or were changed outside the store.
    #[error("{what}: the stored data is damaged; restore the content from a backup")]
    Corrupt {
        /// What was found damaged.
        what: String,
    },
    /// A stored record could not be decoded.
    #[error("{0}: the stored data is damaged; restore the content from a backup")]
    Decode(#[from] DecodeError),
    /// The embedded database or the device failed.
    #[error(
        "the content store could not {op}: {source}; check the volume (it may have been locked, removed or damaged) and reopen the store"
    )]
    Storage {
        /// What the store was doing.
        op: &'static str,
        /// The database's error.
        source: redb::Error,
    },
}

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn storage<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Storage {
        op,
        source: e.into(),
    }
}
