//! Errors of the key server, each naming what failed and, where it helps, what to do next.

use std::path::{Path, PathBuf};

/// An error of the key server outside the KMIP protocol (files, PKI, TLS setup).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating the directory", …).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A cryptographic operation of OpenSSL failed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// OpenSSL's errors.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// A file holds something unreadable or inconsistent.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Anything else (unusable settings, names, addresses), with what to do where it helps.
    #[error("{0}")]
    Config(String),
}

impl KmsError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KmsError {
        let path = path.to_path_buf();
        move |source| KmsError::Io { what, path, source }
    }

    pub(crate) fn crypto(
        what: &'static str,
    ) -> impl FnOnce(openssl::error::ErrorStack) -> KmsError {
        move |source| KmsError::Crypto { what, source }
    }
}

/// A result whose error is a [`KmsError`] unless told otherwise.
pub type Result<T, E = KmsError> = std::result::Result<T, E>;
