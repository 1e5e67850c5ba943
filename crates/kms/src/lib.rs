//! The KMIP server bundled with atrest (`atrest kms serve`): the embedded default key manager.
//!
//! - [`engine`]: the operation dispatcher, bytes in and bytes out, no sockets: Discover
//!   Versions, Query, Create, Register, Activate, Get, Get Attributes, Get Attribute List,
//!   Locate, Revoke and Destroy, for KMIP 1.0–1.4 and 2.0–2.1, with the key life cycle of the
//!   specification and per-client ownership.
//! - [`server`]: TLS 1.2/1.3 with mutual authentication over OpenSSL, bounded connections,
//!   timeouts, message size and depth limits, graceful stop.
//! - [`store`]: durable objects, sealed under the master key.
//! - [`clients`]: registered clients (certificate fingerprints, usernames, password hashes).
//! - [`datadir`]: the data directory, its PKI and the `client.env` file.
//!
//! # Authentication
//!
//! A request is served only if the TLS client certificate (chained to the directory's CA and
//! registered by fingerprint) and the request header's Username and Password credential both
//! belong to the same registered client. Anything else gets Authentication Not Successful and
//! a log line naming the reason, never the password. Objects belong to the client that made
//! them; to every other client they do not exist (Item Not Found / Object Not Found).
//!
//! # Storage
//!
//! One file per object, `objects/<uid>.obj`: the magic `ATRKMSO1`, then the object's JSON
//! record (attributes and key material) sealed with AES-256-GCM under the master key
//! (`master.key`, 0600, kept beside but apart from the objects so that it can be moved to
//! other storage), with the magic and the identifier as associated data. Each change is
//! written to a temporary file, fsync'd, renamed over the old file, and the directory is
//! fsync'd — all before the response is sent. A crash leaves either the old or the new
//! record. The key material inside is sealed once more under the object's own key, kept only
//! in the key table `objects/keys.sealed` and erased from it on Destroy, so that no copy of a
//! destroyed object's file yields its material, even with the master key. The GCM tag doubles as the checksum: a damaged file is reported at start and its
//! object is unavailable; nothing else is affected and nothing is deleted.
//!
//! Why not an append-only log: objects are few (one per encrypted volume and key rotation),
//! changes are rare, and a file per object keeps recovery trivial (a damaged file touches one
//! object) with no compaction to get wrong.
//!
//! # Key lengths
//!
//! Create makes AES keys of 128, 192 and 256 bits, and also accepts 512 bits: 64 bytes, the
//! material of an XTS-AES-256 key in one object, as PyKMIP does. 512 is not an AES key length
//! in the specification, so a client that must work with any server uses two 256-bit keys.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod clients;
pub mod crypto;
pub mod datadir;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod password;
pub mod pki;
pub mod server;
pub mod store;

pub use engine::{Engine, Session};
pub use error::KmsError;

/// Opens the engine of a set-up data directory: master key, objects and clients. Object files
/// that cannot be read are logged (each with what to do) and left untouched.
pub fn open_engine(dir: &datadir::DataDir) -> Result<Engine, KmsError> {
    let key = dir.load_master_key()?;
    let (store, problems) = store::Store::open(&dir.objects(), key)?;
    for p in &problems {
        tracing::error!(problem = %p, "an object file cannot be read");
    }
    let clients = clients::Clients::load(&dir.clients_file())?;
    tracing::info!(
        objects = store.len(),
        clients = clients.list().len(),
        "key store opened"
    );
    Ok(Engine::new(store, clients))
}
