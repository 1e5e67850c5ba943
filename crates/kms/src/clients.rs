//! The clients a server knows: for each, the SHA-256 fingerprints of its TLS certificates,
//! its KMIP username and a PBKDF2-HMAC-SHA256 hash of its password (never the password).
//! Kept in `clients.json` (0600), rewritten atomically.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::{KmsError, Result};
pub use crate::password::PasswordHash;

/// One known client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    /// The client's name: its certificates' common name and the owner of its objects.
    pub name: String,
    /// The KMIP Credential username.
    pub username: String,
    /// The hash of the KMIP Credential password.
    pub password: PasswordHash,
    /// SHA-256 fingerprints (hex) of the certificates this client may present.
    pub certificates: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientsFile {
    clients: Vec<Client>,
    /// Names of removed clients: never issued again, because their objects stay (owned by
    /// the name) and a new client of the same name would inherit them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
}

/// What identifies one version of the registry file: every save renames a new file into
/// place, so a new inode (or size or time) means the file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// The registry of clients, backed by a file.
#[derive(Debug)]
pub struct Clients {
    path: PathBuf,
    list: Vec<Client>,
    removed: Vec<String>,
    /// The file as it was when read.
    stamp: Option<FileStamp>,
}

impl Clients {
    /// Loads `path`; a missing file is an empty registry.
    pub fn load(path: &Path) -> Result<Clients> {
        let before = stamp(path);
        let f = match fs::read(path) {
            Ok(b) => {
                let f: ClientsFile = serde_json::from_slice(&b).map_err(|e| KmsError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!(
                        "does not parse ({e}); restore it from a backup, or remove it and \
                         issue new client identities with `atrest kms add-client`"
                    ),
                })?;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientsFile::default(),
            Err(e) => return Err(KmsError::io("reading", path)(e)),
        };
        Ok(Clients {
            path: path.to_path_buf(),
            list: f.clients,
            removed: f.removed,
            stamp: before,
        })
    }

    /// Whether the file changed since it was read (a client added or removed by another
    /// process). One `stat` call.
    pub fn is_stale(&self) -> bool {
        stamp(&self.path) != self.stamp
    }

    /// Reads the registry's file again (to see clients added by another process).
    pub fn reload(&self) -> Result<Clients> {
        Clients::load(&self.path)
    }

    /// Every registered client.
    pub fn list(&self) -> &[Client] {
        &self.list
    }

    /// The client named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Client> {
        self.list.iter().find(|c| c.name == name)
    }

    /// The client that owns the certificate with this fingerprint.
    pub fn by_certificate(&self, fingerprint: &str) -> Option<&Client> {
        self.list
            .iter()
            .find(|c| c.certificates.iter().any(|f| f == fingerprint))
    }

    /// Adds a client and saves the registry.
    pub fn add(&mut self, client: Client) -> Result<()> {
        if self.by_name(&client.name).is_some() {
            return Err(KmsError::Config(format!(
                "a client named {:?} exists already; choose another name",
                client.name
            )));
        }
        if self.removed.contains(&client.name) {
            return Err(KmsError::Config(format!(
                "a client named {:?} was removed and its objects are still kept under that \
                 name; choose another name",
                client.name
            )));
        }
        self.list.push(client);
        self.save()
    }

    /// Whether `name` belonged to a removed client.
    pub fn was_removed(&self, name: &str) -> bool {
        self.removed.iter().any(|n| n == name)
    }

    /// Removes the client `name` and saves the registry: its certificates and credential are
    /// refused from then on. Returns the removed client.
    pub fn remove(&mut self, name: &str) -> Result<Client> {
        let Some(i) = self.list.iter().position(|c| c.name == name) else {
            return Err(KmsError::Config(format!(
                "no client named {name:?}; `atrest kms remove-client` takes one of: {}",
                self.list
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let c = self.list.remove(i);
        self.removed.push(c.name.clone());
        if let Err(e) = self.save() {
            self.removed.pop();
            self.list.insert(i, c);
            return Err(e);
        }
        Ok(c)
    }

    fn save(&mut self) -> Result<()> {
        let f = ClientsFile {
            clients: self.list.clone(),
            removed: self.removed.clone(),
        };
        let json = serde_json::to_vec_pretty(&f)
            .map_err(|e| KmsError::Config(format!("encoding the client registry: {e}")))?;
        crypto::write_atomic(&self.path, &json, 0o600)?;
        self.stamp = stamp(&self.path);
        Ok(())
    }
}

/// A generated password, zeroed on drop.
pub type Secret = Zeroizing<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_password() {
        let h = PasswordHash::new("right", 1000).unwrap();
        assert!(h.verify("right"));
        assert!(!h.verify("wrong"));
        assert!(!h.verify(""));
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("right"));
    }
}
