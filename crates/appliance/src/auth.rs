//! The admin account, login sessions, API tokens and CSRF protection.
//!
//! - One admin account. Its password is stored only as a PBKDF2-HMAC-SHA256 hash
//!   (DIR/admin.json, 0600). The first start generates a password, prints it and keeps it in
//!   DIR/initial-admin-password (0600) until the admin changes it.
//! - A browser logs in on /login and gets an HttpOnly, Secure, SameSite=Strict session cookie.
//!   Each browser session has its own CSRF token: every request that changes state must carry
//!   it in the `X-CSRF-Token` header (or a `csrf_token` form field).
//! - API clients POST /api/session and send the token as `Authorization: Bearer`; browsers never
//!   attach that header by themselves, so such requests need no CSRF token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::files;

/// The admin's user name.
pub const ADMIN_USER: &str = "admin";
/// PBKDF2 iterations for new password hashes (OWASP's figure for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Shortest admin password accepted when changing it.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password considered (longer ones are refused before hashing).
pub use atrest_kms::password::MAX_PASSWORD_LEN;
pub use atrest_kms::password::PasswordHash;
/// A session unused this long ends (OWASP ASVS level 2: at most 30 minutes idle).
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, however busy (ASVS level 2: at most 12 hours).
pub const SESSION_ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Most live sessions and tokens; the oldest is dropped beyond it.
pub const MAX_SESSIONS: usize = 256;
/// The session cookie's name. The `__Host-` prefix makes browsers accept it only when Secure,
/// with Path=/ and no Domain: a sibling host cannot set or overwrite it.
pub const COOKIE: &str = "__Host-atrest_session";

/// Random bytes as lowercase hex.
#[allow(
    clippy::expect_used,
    reason = "without a working random generator no session or password can be made safely"
)]
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).expect("the system random generator failed");
    hex::encode(b)
}

/// A generated password: 20 characters from an unambiguous alphabet (about 100 bits).
#[allow(
    clippy::expect_used,
    reason = "without a working random generator no password can be made safely"
)]
pub fn generate_password() -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679";
    let mut out = Zeroizing::new(String::with_capacity(20));
    let mut b = Zeroizing::new([0u8; 64]);
    while out.len() < 20 {
        openssl::rand::rand_bytes(&mut b[..]).expect("the system random generator failed");
        for &x in b.iter() {
            // Rejection sampling keeps the distribution uniform.
            let limit = 256 - (256 % ALPHABET.len());
            if (x as usize) < limit && out.len() < 20 {
                out.push(ALPHABET[x as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdminFile {
    username: String,
    password: PasswordHash,
    /// Whether the password is still the generated one.
    initial: bool,
}

/// The admin account, kept in DIR/admin.json.
///
/// Shared by every request without an outer lock: the account's own lock is held only to copy
/// or replace the stored hash, never while hashing or writing the file, so a page that asks
/// [`Admin::is_initial`] never waits behind a password check.
#[derive(Debug)]
pub struct Admin {
    path: PathBuf,
    initial_path: PathBuf,
    file: Mutex<AdminFile>,
    /// Serialises password changes (taken on the blocking pool only).
    change: Mutex<()>,
    iterations: u32,
}

/// A copy of the stored credentials, to check a password without holding any lock.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The admin's user name.
    pub username: String,
    /// The admin password's salted PBKDF2 hash.
    pub password: PasswordHash,
}

/// What opening the account did.
#[derive(Debug)]
pub struct AdminOpened {
    /// The opened (or new) account.
    pub admin: Admin,
    /// The password generated on this start (first start only).
    pub generated: Option<Zeroizing<String>>,
}

fn save_file(path: &Path, file: &AdminFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    files::write_private(path, &bytes)
}

impl Admin {
    fn new(path: PathBuf, initial_path: PathBuf, file: AdminFile, iterations: u32) -> Admin {
        Admin {
            path,
            initial_path,
            file: Mutex::new(file),
            change: Mutex::new(()),
            iterations,
        }
    }

    /// Opens DIR/admin.json, or creates the account with a generated password.
    pub fn open_or_create(dir: &Path, iterations: u32) -> std::io::Result<AdminOpened> {
        let path = dir.join("admin.json");
        let initial_path = dir.join("initial-admin-password");
        if path.exists() {
            let bytes = files::read_bounded(&path, 64 * 1024)?;
            let file: AdminFile = serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged ({e}); restore it from a backup, or delete it to generate \
                         a new admin password at the next start",
                        path.display()
                    ),
                )
            })?;
            return Ok(AdminOpened {
                admin: Admin::new(path, initial_path, file, iterations),
                generated: None,
            });
        }
        let password = generate_password();
        let file = AdminFile {
            username: ADMIN_USER.into(),
            password: PasswordHash::new(&password, iterations).map_err(std::io::Error::other)?,
            initial: true,
        };
        let mut text = Zeroizing::new(password.to_string());
        text.push('\n');
        files::write_private(&initial_path, text.as_bytes())?;
        save_file(&path, &file)?;
        Ok(AdminOpened {
            admin: Admin::new(path, initial_path, file, iterations),
            generated: Some(password),
        })
    }

    fn file(&self) -> MutexGuard<'_, AdminFile> {
        self.file.lock()
    }

    /// The admin's user name.
    pub fn username(&self) -> String {
        self.file().username.clone()
    }

    /// Whether the generated password is still in use.
    pub fn is_initial(&self) -> bool {
        self.file().initial
    }

    /// A copy of the stored user name and hash.
    pub fn credentials(&self) -> Credentials {
        let f = self.file();
        Credentials {
            username: f.username.clone(),
            password: f.password.clone(),
        }
    }

    /// Checks a login (slow: PBKDF2; call it on the blocking pool). No lock is held while
    /// hashing.
    pub fn check(&self, username: &str, password: &str) -> bool {
        let c = self.credentials();
        // Always hash, so a wrong user name takes as long as a wrong password.
        let ok = c.password.verify(password);
        ok && username == c.username
    }

    /// Changes the password after checking the current one; removes
    /// DIR/initial-admin-password. Slow (two PBKDF2 computations and a file write): call it on
    /// the blocking pool. No lock that requests take is held while hashing or writing.
    pub fn change_password(&self, current: &str, new: &str) -> Result<(), ApiError> {
        let _one_at_a_time = self.change.lock();
        let old = self.file().clone();
        if !old.password.verify(current) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "the current password is wrong; enter the password you logged in with",
            ));
        }
        if new.chars().count() < MIN_PASSWORD_LEN {
            return Err(ApiError::bad_request(format!(
                "the new password is too short; use at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        if new.len() > MAX_PASSWORD_LEN {
            return Err(ApiError::bad_request(format!(
                "the new password is too long; use at most {MAX_PASSWORD_LEN} bytes"
            )));
        }
        if new == current {
            return Err(ApiError::bad_request(
                "the new password is the same as the current one; choose another",
            ));
        }
        let hash = PasswordHash::new(new, self.iterations)
            .map_err(|e| ApiError::internal("hashing the new admin password", e))?;
        let updated = AdminFile {
            password: hash,
            initial: false,
            ..old
        };
        if let Err(e) = save_file(&self.path, &updated) {
            return Err(ApiError::internal("saving the new admin password", e));
        }
        *self.file() = updated;
        if let Err(e) = files::remove_if_exists(&self.initial_path) {
            tracing::warn!(
                "could not remove {}: {e}; delete it by hand",
                self.initial_path.display()
            );
        }
        Ok(())
    }
}

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A browser login (cookie); state changes need the CSRF token.
    Browser,
    /// An API token (`Authorization: Bearer`).
    Api,
}

#[derive(Debug, Clone)]
struct Session {
    kind: SessionKind,
    csrf: String,
    opened: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) >= SESSION_IDLE
            || now.duration_since(self.opened) >= SESSION_ABSOLUTE
    }
}

/// An authenticated request's session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// A browser session (cookie) or an API token (bearer).
    pub kind: SessionKind,
    /// The session's CSRF token: browser requests that change state carry it.
    pub csrf: String,
}

/// Live sessions and API tokens, in memory only (a restart logs everyone out).
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// Sessions are keyed by a hash of the token, so a memory dump of the map does not give
/// usable tokens.
fn key_of(token: &str) -> String {
    hex::encode(openssl::sha::sha256(token.as_bytes()))
}

impl Sessions {
    /// Opens a session; returns its token.
    pub fn open(&self, kind: SessionKind) -> String {
        let token = random_hex(32);
        let mut map = self.map.lock();
        let now = Instant::now();
        map.retain(|_, s| !s.expired(now));
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            key_of(&token),
            Session {
                kind,
                csrf: random_hex(32),
                opened: now,
                last_used: now,
            },
        );
        token
    }

    /// Looks a token up (and refreshes it).
    pub fn get(&self, token: &str) -> Option<Authenticated> {
        let mut map = self.map.lock();
        let k = key_of(token);
        let now = Instant::now();
        let s = map.get_mut(&k)?;
        if s.expired(now) {
            map.remove(&k);
            return None;
        }
        s.last_used = now;
        Some(Authenticated {
            kind: s.kind,
            csrf: s.csrf.clone(),
        })
    }

    /// Closes the session of `token` (logout); an unknown token is ignored.
    pub fn close(&self, token: &str) {
        self.map.lock().remove(&key_of(token));
    }

    /// Closes every session (after a password change).
    pub fn close_all(&self) {
        self.map.lock().clear();
    }
}

/// Reads the session cookie from a Cookie header value.
pub fn cookie_token(header: &str) -> Option<&str> {
    header
        .split(';')
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// The Set-Cookie value for a new browser session.
pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict")
}

/// The Set-Cookie value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// Compares two tokens in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(*a, *b);
    }

    #[test]
    fn first_start_generates_then_change_removes_the_file() {
        let d = tempfile::tempdir().unwrap();
        let opened = Admin::open_or_create(d.path(), 1000).unwrap();
        let pw = opened.generated.unwrap();
        let file = d.path().join("initial-admin-password");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), pw.as_str());
        let admin_json = std::fs::read_to_string(d.path().join("admin.json")).unwrap();
        assert!(!admin_json.contains(pw.as_str()));
        let admin = opened.admin;
        assert!(admin.check("admin", &pw));
        assert!(!admin.check("root", &pw));
        assert_eq!(
            admin
                .change_password("wrong", "a new long password")
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(admin.change_password(&pw, "short").unwrap_err().status, 400);
        admin.change_password(&pw, "a new long password").unwrap();
        assert!(!file.exists());
        let again = Admin::open_or_create(d.path(), 1000).unwrap();
        assert!(again.generated.is_none());
        assert!(again.admin.check("admin", "a new long password"));
        assert!(!again.admin.is_initial());
    }

    #[test]
    fn sessions_open_get_close() {
        let s = Sessions::default();
        let t = s.open(SessionKind::Browser);
        let a = s.get(&t).unwrap();
        assert_eq!(a.kind, SessionKind::Browser);
        assert!(s.get("nope").is_none());
        s.close(&t);
        assert!(s.get(&t).is_none());
    }

    #[test]
    fn sessions_end_when_idle_and_after_their_absolute_lifetime() {
        let s = Sessions::default();
        for (idle, lifetime) in [
            (SESSION_IDLE, Duration::ZERO),
            (Duration::ZERO, SESSION_ABSOLUTE),
        ] {
            let t = s.open(SessionKind::Api);
            assert!(s.get(&t).is_some());
            {
                let mut map = s.map.lock();
                let sess = map.get_mut(&key_of(&t)).unwrap();
                let now = Instant::now();
                let (Some(used), Some(opened)) = (now.checked_sub(idle), now.checked_sub(lifetime))
                else {
                    return; // the clock started too recently to go back that far
                };
                sess.last_used = used;
                sess.opened = opened;
            }
            assert!(s.get(&t).is_none(), "idle {idle:?}, lifetime {lifetime:?}");
        }
    }

    #[test]
    fn cookie_parsing() {
        assert_eq!(
            cookie_token("a=b; __Host-atrest_session=xyz; c=d"),
            Some("xyz")
        );
        assert_eq!(cookie_token("__Host-atrest_sessionx=1"), None);
        assert_eq!(cookie_token("__Host-atrest_session="), None);
        // A cookie without the prefix (set by a sibling host, say) is not the session.
        assert_eq!(cookie_token("atrest_session=xyz"), None);
    }
}
