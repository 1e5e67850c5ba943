//! Errors of the key server, each naming what failed and, where it helps, what to do next.

use std::path::{Path, PathBuf};

/// An error of the key server outside the KMIP protocol (files, PKI, TLS setup).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Crypto {
        what: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
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

pub type Result<T, E = KmsError> = std::result::Result<T, E>;
