//! The data directory of a key server: its PKI, master key, client registry, objects and the
//! `client.env` file for the first client.
//!
//! ```text
//! DIR/master.key          32-byte AES-256 master key (0600): wraps every object file
//! DIR/clients.json        registered clients: certificate fingerprints, usernames, password hashes
//! DIR/objects/<uid>.obj   one sealed file per managed object
//! DIR/pki/ca.crt, ca.key  the CA (key 0600)
//! DIR/pki/server.crt/.key the server's ECDSA P-256 identity; server-rsa.crt/.key its RSA one
//! DIR/clients/<name>.crt, .key, .p12, .env   each client's identity and its secrets (0600)
//! DIR/client.env          the first client's settings, shaped like the PyKMIP peer's env file
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use zeroize::Zeroizing;

use crate::clients::{Client, Clients, PasswordHash};
use crate::crypto::{self, MasterKey};
use crate::error::{KmsError, Result};
use crate::pki::{self, Role};

/// The name of the client issued on first start.
pub const FIRST_CLIENT: &str = "appliance";

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    /// The directory.
    pub root: PathBuf,
}

/// A client identity just issued, with its secrets (zeroed on drop).
pub struct IssuedClient {
    /// The client's name.
    pub name: String,
    /// Its certificate (`DIR/clients/<name>.crt`).
    pub cert: PathBuf,
    /// Its private key (`DIR/clients/<name>.key`, 0600).
    pub key: PathBuf,
    /// Certificate and key as PKCS#12 (`DIR/clients/<name>.p12`, 0600).
    pub p12: PathBuf,
    /// The PKCS#12 file's passphrase.
    pub p12_passphrase: Zeroizing<String>,
    /// Its KMIP Credential username.
    pub username: String,
    /// Its KMIP Credential password.
    pub password: Zeroizing<String>,
    /// The client's env file (`DIR/clients/<name>.env`).
    pub env: PathBuf,
}

impl std::fmt::Debug for IssuedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClient")
            .field("name", &self.name)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// The lock on a data directory ([`DataDir::lock`]); released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// What [`DataDir::open_or_init`] did.
#[derive(Debug)]
pub struct Opened {
    /// The directory was empty and has been set up.
    pub created: bool,
    /// The files worth telling the operator about: (what, path).
    pub files: Vec<(&'static str, PathBuf)>,
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(KmsError::io("creating the directory", path))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(KmsError::io("creating", path))?;
    f.write_all(contents)
        .map_err(KmsError::io("writing", path))?;
    f.sync_all().map_err(KmsError::io("syncing", path))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(KmsError::io("reading", path))
}

/// Whether `name` is usable as a client name (and file name).
pub fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl DataDir {
    /// The data directory at `root` (nothing is read or created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// `DIR/master.key`: the master key that seals every object file.
    pub fn master_key(&self) -> PathBuf {
        self.root.join("master.key")
    }

    /// `DIR/clients.json`: the client registry.
    pub fn clients_file(&self) -> PathBuf {
        self.root.join("clients.json")
    }

    /// `DIR/objects`: one sealed file per object.
    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// `DIR/pki`.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// `DIR/pki/ca.crt`: the CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }

    /// `DIR/pki/ca.key`: the CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.pki().join("ca.key")
    }

    /// `DIR/pki/server.crt`: the server's ECDSA P-256 certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.pki().join("server.crt")
    }

    /// `DIR/pki/server.key`: the server's ECDSA P-256 private key.
    pub fn server_key(&self) -> PathBuf {
        self.pki().join("server.key")
    }

    /// `DIR/pki/server-rsa.crt`: the server's RSA certificate.
    pub fn server_rsa_cert(&self) -> PathBuf {
        self.pki().join("server-rsa.crt")
    }

    /// `DIR/pki/server-rsa.key`: the server's RSA private key.
    pub fn server_rsa_key(&self) -> PathBuf {
        self.pki().join("server-rsa.key")
    }

    /// `DIR/clients`: each client's identity and env file.
    pub fn client_dir(&self) -> PathBuf {
        self.root.join("clients")
    }

    /// `DIR/client.env`: the first client's settings.
    pub fn client_env(&self) -> PathBuf {
        self.root.join("client.env")
    }

    /// Whether the directory has been set up (the client registry is written last).
    pub fn is_initialized(&self) -> bool {
        self.clients_file().exists()
    }

    /// Sets up an empty (or missing) directory, or checks a set-up one. `server_names` go into
    /// the server certificate's SANs on first start.
    pub fn open_or_init(&self, server_names: &[String]) -> Result<Opened> {
        let created = if self.is_initialized() {
            for p in [
                self.master_key(),
                self.ca_cert(),
                self.server_cert(),
                self.server_key(),
            ] {
                if !p.exists() {
                    return Err(KmsError::Config(format!(
                        "{} is missing from the data directory; restore it from a backup \
                         (without the master key no object can be read)",
                        p.display()
                    )));
                }
            }
            false
        } else {
            self.init(server_names)?;
            true
        };
        let mut files = vec![
            ("CA certificate", self.ca_cert()),
            ("server certificate (ECDSA)", self.server_cert()),
            ("server certificate (RSA)", self.server_rsa_cert()),
            ("master key", self.master_key()),
            ("client registry", self.clients_file()),
            ("objects", self.objects()),
        ];
        let first = self.client_dir();
        files.push((
            "client certificate",
            first.join(format!("{FIRST_CLIENT}.crt")),
        ));
        files.push(("client key", first.join(format!("{FIRST_CLIENT}.key"))));
        files.push(("client PKCS#12", first.join(format!("{FIRST_CLIENT}.p12"))));
        files.push(("client settings and secrets", self.client_env()));
        Ok(Opened { created, files })
    }

    fn init(&self, server_names: &[String]) -> Result<()> {
        if self.master_key().exists() || self.ca_cert().exists() || self.objects().exists() {
            return Err(KmsError::Config(format!(
                "{} holds a partial setup (an interrupted first start?) but no clients.json; \
                 remove the directory or use an empty one",
                self.root.display()
            )));
        }
        mkdir(&self.root, 0o700)?;
        mkdir(&self.pki(), 0o700)?;
        mkdir(&self.client_dir(), 0o700)?;
        mkdir(&self.objects(), 0o700)?;
        let mk = MasterKey::generate()?;
        write_new(&self.master_key(), mk.expose(), 0o600)?;

        let (ca_key, ca) = pki::make_ca("atrest KMS CA")?;
        write_new(&self.ca_key(), &pem_key(&ca_key)?, 0o600)?;
        write_new(&self.ca_cert(), &pem_cert(&ca)?, 0o644)?;

        let mut names: Vec<String> = Vec::new();
        for n in server_names
            .iter()
            .map(String::as_str)
            .chain(["localhost", "127.0.0.1", "::1"])
        {
            if !n.is_empty() && n != "0.0.0.0" && n != "::" && !names.iter().any(|x| x == n) {
                names.push(n.to_owned());
            }
        }
        let cn = names.first().cloned().unwrap_or_else(|| "localhost".into());
        let k = pki::ec_key()?;
        let c = pki::issue(&ca_key, &ca, &k, &cn, Role::Server, &names)?;
        write_new(&self.server_key(), &pem_key(&k)?, 0o600)?;
        write_new(&self.server_cert(), &pem_cert(&c)?, 0o644)?;
        let k = pki::rsa_key()?;
        let c = pki::issue(&ca_key, &ca, &k, &cn, Role::Server, &names)?;
        write_new(&self.server_rsa_key(), &pem_key(&k)?, 0o600)?;
        write_new(&self.server_rsa_cert(), &pem_cert(&c)?, 0o644)?;

        let mut clients = Clients::load(&self.clients_file())?;
        let issued = self.issue_client(&ca_key, &ca, FIRST_CLIENT, &mut clients)?;
        // The first client's env file doubles as DIR/client.env (host and port filled in by
        // `write_client_env` once the listener is bound).
        let _ = issued;
        crypto::sync_dir(&self.root)?;
        Ok(())
    }

    /// Issues a new client identity and user, registers it, and writes its env file.
    pub fn add_client(&self, name: &str) -> Result<IssuedClient> {
        if !self.is_initialized() {
            return Err(KmsError::Config(format!(
                "{} is not a key server data directory yet; run `atrest kms serve --data-dir {}` once first",
                self.root.display(),
                self.root.display()
            )));
        }
        let ca_key = PKey::private_key_from_pem(&Zeroizing::new(read(&self.ca_key())?))
            .map_err(KmsError::crypto("reading the CA key"))?;
        let ca = X509::from_pem(&read(&self.ca_cert())?)
            .map_err(KmsError::crypto("reading the CA certificate"))?;
        let mut clients = Clients::load(&self.clients_file())?;
        self.issue_client(&ca_key, &ca, name, &mut clients)
    }

    fn issue_client(
        &self,
        ca_key: &PKey<Private>,
        ca: &X509,
        name: &str,
        clients: &mut Clients,
    ) -> Result<IssuedClient> {
        if !valid_client_name(name) {
            return Err(KmsError::Config(format!(
                "{name:?} is not a valid client name: use 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        if clients.by_name(name).is_some() {
            return Err(KmsError::Config(format!(
                "a client named {name:?} exists already; choose another name"
            )));
        }
        if clients.was_removed(name) {
            return Err(KmsError::Config(format!(
                "a client named {name:?} was removed and its objects are still kept under that \
                 name; choose another name"
            )));
        }
        let dir = self.client_dir();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        let p12_path = dir.join(format!("{name}.p12"));
        let env_path = dir.join(format!("{name}.env"));
        let key = pki::ec_key()?;
        let cert = pki::issue(ca_key, ca, &key, name, Role::Client, &[])?;
        let passphrase = crypto::random_secret()?;
        let password = crypto::random_secret()?;
        let p12 = pki::pkcs12(name, &key, &cert, ca, &passphrase)?;
        write_new(&key_path, &pem_key(&key)?, 0o600)?;
        write_new(&cert_path, &pem_cert(&cert)?, 0o644)?;
        write_new(&p12_path, &p12, 0o600)?;
        let issued = IssuedClient {
            name: name.to_owned(),
            cert: abs(&cert_path),
            key: abs(&key_path),
            p12: abs(&p12_path),
            p12_passphrase: passphrase,
            username: name.to_owned(),
            password,
            env: abs(&env_path),
        };
        let env = env_text(self, &issued, "127.0.0.1", 5696);
        crypto::write_atomic(&env_path, env.as_bytes(), 0o600)?;
        clients.add(Client {
            name: name.to_owned(),
            username: name.to_owned(),
            password: PasswordHash::new(&issued.password, crate::crypto::PBKDF2_ITERATIONS)?,
            certificates: vec![pki::fingerprint(&cert)?],
        })?;
        Ok(issued)
    }

    /// Removes the client `name`: it is taken out of the registry (a running server refuses
    /// its connections from their next request), and its key, PKCS#12, certificate and env
    /// file are deleted (and `DIR/client.env` for the first client). Its objects stay, owned by
    /// the name, which is never issued again. Returns the files deleted.
    pub fn remove_client(&self, name: &str) -> Result<Vec<PathBuf>> {
        if !self.is_initialized() {
            return Err(KmsError::Config(format!(
                "{} is not a key server data directory (no clients.json); check --data-dir",
                self.root.display()
            )));
        }
        if !valid_client_name(name) {
            return Err(KmsError::Config(format!(
                "{name:?} is not a valid client name: use 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let mut clients = Clients::load(&self.clients_file())?;
        clients.remove(name)?;
        let dir = self.client_dir();
        let mut files: Vec<PathBuf> = ["key", "p12", "env", "crt"]
            .iter()
            .map(|ext| dir.join(format!("{name}.{ext}")))
            .collect();
        if name == FIRST_CLIENT {
            files.push(self.client_env());
        }
        let mut deleted = Vec::new();
        for f in files {
            match fs::remove_file(&f) {
                Ok(()) => deleted.push(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(KmsError::io("deleting", &f)(e)),
            }
        }
        crypto::sync_dir(&dir)?;
        Ok(deleted)
    }

    /// Whether the first client (`appliance`) is still there (it may have been removed).
    pub fn has_first_client(&self) -> bool {
        self.client_dir()
            .join(format!("{FIRST_CLIENT}.env"))
            .exists()
    }

    /// Rewrites `DIR/client.env` (and the first client's own env file) for a server listening
    /// on `host:port`: the first client's env file with KMIP_HOST and KMIP_PORT replaced.
    pub fn write_client_env(&self, host: &str, port: u16) -> Result<PathBuf> {
        let src = self.client_dir().join(format!("{FIRST_CLIENT}.env"));
        let text =
            Zeroizing::new(
                String::from_utf8(read(&src)?).map_err(|_| KmsError::Corrupt {
                    path: src.clone(),
                    reason: "is not UTF-8 text".into(),
                })?,
            );
        let mut out = Zeroizing::new(String::new());
        for line in text.lines() {
            if line.starts_with("export KMIP_HOST=") {
                out.push_str(&format!("export KMIP_HOST={host}\n"));
            } else if line.starts_with("export KMIP_PORT=") {
                out.push_str(&format!("export KMIP_PORT={port}\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        crypto::write_atomic(&src, out.as_bytes(), 0o600)?;
        crypto::write_atomic(&self.client_env(), out.as_bytes(), 0o600)?;
        Ok(self.client_env())
    }

    /// Takes the data directory's lock (`DIR/lock`, an exclusive `flock`), held until the
    /// returned file is dropped (or the process ends, however it ends). A second server on the
    /// same directory would serve from a copy of the objects that the first one no longer
    /// sees change, and overwrite its writes: it is refused with one line saying who holds it.
    pub fn lock(&self) -> Result<DirLock> {
        mkdir(&self.root, 0o700)?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(KmsError::io("opening the lock file", &path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
        #[allow(unsafe_code)]
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(KmsError::Config(format!(
                    "another key server is running on {}{}; stop it first, or give this one \
                     another --data-dir",
                    self.root.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (process {holder})")
                    }
                )));
            }
            return Err(KmsError::io("locking", &path)(e));
        }
        let mut f = &file;
        let _ = f.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
        Ok(DirLock { _file: file })
    }

    /// Reads the master key.
    pub fn load_master_key(&self) -> Result<MasterKey> {
        let p = self.master_key();
        let b = Zeroizing::new(read(&p)?);
        MasterKey::from_bytes(&b).ok_or_else(|| KmsError::Corrupt {
            path: p,
            reason: format!(
                "holds {} bytes, not a {}-byte master key; restore it from a backup",
                b.len(),
                crypto::MASTER_KEY_LEN
            ),
        })
    }
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn pem_key(k: &PKey<Private>) -> Result<Zeroizing<Vec<u8>>> {
    k.private_key_to_pem_pkcs8()
        .map(Zeroizing::new)
        .map_err(KmsError::crypto("encoding a private key"))
}

fn pem_cert(c: &X509) -> Result<Vec<u8>> {
    c.to_pem()
        .map_err(KmsError::crypto("encoding a certificate"))
}

/// Quotes a value for a POSIX shell if it needs it.
fn sh(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b))
    {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

fn env_text(dir: &DataDir, c: &IssuedClient, host: &str, port: u16) -> Zeroizing<String> {
    let p = |p: &Path| sh(&p.display().to_string());
    let ca = abs(&dir.ca_cert());
    Zeroizing::new(format!(
        "# atrest KMS client settings; generated by `atrest kms`. Source it: . <this file>\n\
         export KMIP_HOST={host}\n\
         export KMIP_PORT={port}\n\
         export KMIP_SERVER_NAME=localhost\n\
         export KMIP_CA={}\n\
         export KMIP_CLIENT_CERT={}\n\
         export KMIP_CLIENT_KEY={}\n\
         export KMIP_CLIENT_P12={}\n\
         export KMIP_CLIENT_P12_PASSPHRASE={}\n\
         export KMIP_USERNAME={}\n\
         export KMIP_PASSWORD={}\n",
        p(&ca),
        p(&c.cert),
        p(&c.key),
        p(&c.p12),
        sh(&c.p12_passphrase),
        sh(&c.username),
        sh(&c.password),
    ))
}

/// Reads `export NAME=value` lines of an env file (values unquoted as a shell would for the
/// quoting `env_text` writes).
pub use atrest_kmip::client::parse_env;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_reuse_and_add_client() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path().join("kms"));
        let o = d.open_or_init(&["kms.example".into()]).unwrap();
        assert!(o.created);
        d.write_client_env("127.0.0.1", 4242).unwrap();
        let env = fs::read_to_string(d.client_env()).unwrap();
        let vars = parse_env(&env);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("KMIP_PORT").as_deref(), Some("4242"));
        for k in [
            "KMIP_HOST",
            "KMIP_CA",
            "KMIP_CLIENT_CERT",
            "KMIP_CLIENT_KEY",
            "KMIP_CLIENT_P12",
            "KMIP_CLIENT_P12_PASSPHRASE",
            "KMIP_USERNAME",
            "KMIP_PASSWORD",
        ] {
            assert!(get(k).is_some(), "{k} missing");
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.client_env()), 0o600);
        assert_eq!(mode(&d.master_key()), 0o600);
        assert_eq!(mode(&d.ca_key()), 0o600);
        // The password is stored only as a hash.
        let reg = fs::read_to_string(d.clients_file()).unwrap();
        assert!(!reg.contains(&get("KMIP_PASSWORD").unwrap()));
        let ca = fs::read(d.ca_cert()).unwrap();
        let o2 = d.open_or_init(&[]).unwrap();
        assert!(!o2.created);
        assert_eq!(fs::read(d.ca_cert()).unwrap(), ca);
        let c = d.add_client("backup-host").unwrap();
        assert!(c.p12.exists());
        assert!(d.add_client("backup-host").is_err());
        assert!(d.add_client("../evil").is_err());
        let reg = Clients::load(&d.clients_file()).unwrap();
        assert_eq!(reg.list().len(), 2);
        // The server certificate names what it was asked to.
        let sc = X509::from_pem(&fs::read(d.server_cert()).unwrap()).unwrap();
        let sans: Vec<String> = sc
            .subject_alt_names()
            .unwrap()
            .iter()
            .map(|n| {
                n.dnsname()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{:?}", n.ipaddress().unwrap()))
            })
            .collect();
        assert!(sans.contains(&"kms.example".to_string()), "{sans:?}");
        assert!(sans.contains(&"localhost".to_string()), "{sans:?}");
    }
}
