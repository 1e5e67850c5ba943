//! Errors. Every message says what failed and what to do next; none carries key material.

use std::fmt;
use std::io;

/// Which validation check of a LUKS2 header failed. Each has a stable name (shown in messages,
/// `Check::name`) and one malformed-header fixture in the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Check {
    /// The device is too small to hold the two header copies.
    DeviceSize,
    /// Magic bytes (`LUKS\xba\xbe` primary, `SKUL\xba\xbe` secondary).
    Magic,
    /// Binary header version must be 2.
    Version,
    /// `hdr_size` must be one of the LUKS2 sizes (16 KiB … 4 MiB).
    HeaderSize,
    /// `hdr_offset` must be where the copy was read.
    HeaderOffset,
    /// A text field (label, checksum algorithm, UUID, subsystem) must be NUL-terminated UTF-8.
    TextField,
    /// Checksum algorithm must be `sha256`.
    ChecksumAlgorithm,
    /// The SHA-256 over the header copy must match.
    Checksum,
    /// JSON area: NUL-terminated UTF-8 JSON object within the area.
    JsonArea,
    /// Mandatory top-level sections (keyslots, tokens, segments, digests, config).
    Sections,
    /// `config`: json_size matches the area, keyslots_size aligned and within the header area.
    Config,
    /// `config.requirements.mandatory` names a feature this version does not implement.
    Requirements,
    /// `segments`: exactly one data segment, a supported type and cipher, aligned and in bounds.
    Segment,
    /// `digests`: pbkdf2 with a known hash, parameters within the named limits.
    Digest,
    /// `keyslots`: an object of objects (atrest itself writes none).
    Keyslots,
    /// `tokens`: well-formed, and the atrest tokens' fields valid.
    Token,
    /// The conversion record (`atrest-conversion` token) is consistent with the rest.
    Conversion,
    /// The header MAC token is well-formed, at most one, and a plain volume names no key.
    Mac,
}

impl Check {
    /// Stable short name of the check.
    pub fn name(self) -> &'static str {
        match self {
            Check::DeviceSize => "device-size",
            Check::Magic => "magic",
            Check::Version => "version",
            Check::HeaderSize => "hdr-size",
            Check::HeaderOffset => "hdr-offset",
            Check::TextField => "text-field",
            Check::ChecksumAlgorithm => "checksum-algorithm",
            Check::Checksum => "checksum",
            Check::JsonArea => "json-area",
            Check::Sections => "json-sections",
            Check::Config => "config",
            Check::Requirements => "requirements",
            Check::Segment => "segment",
            Check::Digest => "digest",
            Check::Keyslots => "keyslots",
            Check::Token => "token",
            Check::Conversion => "conversion",
            Check::Mac => "mac",
        }
    }
}

/// A header that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    /// The failed check.
    pub check: Check,
    /// Which copy (`primary`, `secondary`, or `metadata` once a copy was chosen).
    pub copy: &'static str,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LUKS2 header check `{}` failed ({}): {}",
            self.check.name(),
            self.copy,
            self.detail
        )
    }
}

impl std::error::Error for HeaderError {}

/// Why a header failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderAuthFailure {
    /// The header carries no MAC (changed outside atrest, or written by an atrest without
    /// header MACs).
    Missing,
    /// The MAC does not match the header under its volume key.
    Mismatch,
}

/// A header whose MAC failed, with what the header claims (so that an administrator can judge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAuthError {
    /// Missing or wrong.
    pub failure: HeaderAuthFailure,
    /// What the header claims, in words: state, conversion and boundary, key id.
    pub claim: String,
}

impl fmt::Display for HeaderAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failure {
            HeaderAuthFailure::Missing => write!(
                f,
                "the volume header ({}) carries no authentication code: it was changed outside \
                 atrest, or written by an atrest version without header authentication. Nothing \
                 was read or written. If you know where this header comes from, accept it \
                 explicitly (the page's Resume, POST /api/encryption/resume, or `atrest volume \
                 unlock --accept-header`); otherwise restore the header from a backup",
                self.claim
            ),
            HeaderAuthFailure::Mismatch => write!(
                f,
                "the volume header ({}) fails its authentication code under the volume key: it \
                 was changed outside atrest (by someone with write access to the disk, or by \
                 copying another volume's header). Nothing was read or written. Find out who \
                 changed it; restore the header from a backup, or, if the change was yours, \
                 accept it explicitly (the page's Resume, POST /api/encryption/resume, or \
                 `atrest volume unlock --accept-header`)",
                self.claim
            ),
        }
    }
}

impl std::error::Error for HeaderAuthError {}

/// Key material of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// XTS keys are 32 bytes (XTS-AES-128) or 64 bytes (XTS-AES-256).
    #[error(
        "the key is {bytes} bytes long; XTS-AES needs 32 (XTS-AES-128) or 64 (XTS-AES-256) bytes: check the key length asked of the KMIP server"
    )]
    WrongLength {
        /// Length received.
        bytes: usize,
    },
    /// Key1 == Key2 makes XTS degenerate.
    #[error(
        "the key's two halves are equal, which XTS-AES forbids: create a new key on the KMIP server"
    )]
    EqualHalves,
}

/// Errors of the volume library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on the device failed.
    #[error("{what}: {source}; check the device and its permissions, then retry")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The header failed validation.
    #[error("{0}; the volume was not changed. {next}", next = header_next_step(.0))]
    Header(HeaderError),
    /// Key material of the wrong shape.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key does not match the volume's digest(s).
    #[error(
        "the key does not match {what} (LUKS2 digest check); nothing was read or written with it: check that the KMIP server returned the key whose identifier the header names"
    )]
    WrongKey {
        /// Which digest(s) it was checked against.
        what: String,
    },
    /// The header's MAC is missing or wrong under the volume key: the metadata that steers what
    /// atrest writes was changed outside atrest (or written by a version without header MACs).
    /// Nothing was read or written.
    #[error("{0}")]
    HeaderAuth(HeaderAuthError),
    /// A recovery key opened no keyslot of the volume (the reason says why). Nothing was read
    /// or written with it.
    #[error("{0}")]
    RecoveryKey(String),
    /// The operation is not possible in the volume's current state.
    #[error("{0}")]
    State(String),
    /// A caller mistake (arguments out of range).
    #[error("{0}")]
    Usage(String),
    /// OpenSSL failed.
    #[error("cryptographic library error: {0}; check the OpenSSL installation")]
    Crypto(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// Maps an I/O error of `what` (e.g. a [`crate::BlockDevice`] call) into an [`Error`].
    pub fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        Error::io(what)
    }

    pub(crate) fn crypto(e: openssl::error::ErrorStack) -> Error {
        Error::Crypto(e.to_string())
    }

    pub(crate) fn header(check: Check, copy: &'static str, detail: impl Into<String>) -> Error {
        Error::Header(HeaderError {
            check,
            copy,
            detail: detail.into(),
        })
    }

    /// The failed header check, if this is a header validation error.
    pub fn header_check(&self) -> Option<Check> {
        match self {
            Error::Header(h) => Some(h.check),
            _ => None,
        }
    }
}

fn header_next_step(h: &HeaderError) -> &'static str {
    match h.check {
        Check::Magic | Check::DeviceSize => {
            "This is not a LUKS2 volume: check the path, or make one with `atrest volume format`"
        }
        Check::Mac => {
            "Check who had access to the disk; keep the volume as it is (it was not changed) until you know"
        }
        Check::Requirements | Check::Version => {
            "Use the tool that made this volume (e.g. cryptsetup) to bring it to a state atrest knows"
        }
        _ => {
            "Both copies fail validation (a single damaged copy is repaired from the other): restore the header from a backup (`cryptsetup luksHeaderRestore`)"
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
