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
    /// The file system or disk under the volume ran out of space (ENOSPC, EDQUOT). The store
    /// went back to its last durable state and keeps working once space is freed.
    #[error(
        "the disk under the volume is full (the content store could not {op}: {detail}); free space on the file system that holds the volume (delete or move other files there, or grow it), then send the request again; nothing acknowledged was lost"
    )]
    DiskFull {
        /// What the store was doing.
        op: &'static str,
        /// The system's error.
        detail: String,
    },
    /// The disk under the volume failed a read or a write (EIO and the like). The store went
    /// back to its last durable state.
    #[error(
        "the disk under the volume failed (the content store could not {op}: {detail}); check the disk and the system log, then send the request again"
    )]
    DiskIo {
        /// What the store was doing.
        op: &'static str,
        /// The system's error.
        detail: String,
    },
    /// The store went back to its last durable state (after a full disk or an I/O error) in
    /// the middle of this request; nothing of it was kept.
    #[error(
        "the content store recovered from a disk error while this request was under way; nothing of it was kept: send it again"
    )]
    Interrupted,
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
    move |e| classify(op, e.into())
}

/// Tells a failure of the disk under the volume (which the store recovers from by going back
/// to its last durable state) from the database's own errors.
pub(crate) fn classify(op: &'static str, source: redb::Error) -> Error {
    match &source {
        // Only errors from the system carry an OS error number; the store's own refusals
        // ("full" within the volume, a retired instance) do not.
        redb::Error::Io(io) if io.raw_os_error().is_some() => {
            let detail = io.to_string();
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                Error::DiskFull { op, detail }
            } else {
                Error::DiskIo { op, detail }
            }
        }
        redb::Error::PreviousIo => Error::DiskIo {
            op,
            detail: "an earlier read or write of the disk failed".into(),
        },
        _ => Error::Storage { op, source },
    }
}
