//! The life of the volume's keys after they stop protecting it (DATA_DIR/key-life.json):
//!
//! - When a Rekey or Decrypt finishes, the key(s) it retired are recorded as old keys (id,
//!   servers, last known state) and the policy is applied: `keep` leaves them Active, `revoke`
//!   deactivates them (Revoke, Cessation of Operation), `destroy` revokes them and destroys them
//!   once `destroy_after_days` have passed (at once for 0).
//! - The administrator may Revoke or Destroy an old key at any time (Destroy takes the admin
//!   password: it is crypto-shredding, backups made under that key become unreadable).
//! - Every step goes into the audit history (server, operation, key id, result).
//!
//! Only keys in the record can be revoked or destroyed here: never the key in use.

use std::path::{Path, PathBuf};

use atrest_kmip::client::{Client, ClientError};
use atrest_kmip::message::RevocationReasonCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::files;
use crate::state::AppState;

/// The record in the data directory.
pub const KEYLIFE_FILE: &str = "key-life.json";

/// Shortest rotation interval the API accepts.
pub const MIN_ROTATION_SECONDS: u64 = 60;

/// What happens to a key a Rekey or Decrypt retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OldKeys {
    /// Left Active on the KMIP server until the administrator acts.
    #[default]
    Keep,
    /// Revoked (Deactivated) at once.
    Revoke,
    /// Revoked at once and destroyed after `destroy_after_days`.
    Destroy,
}

impl OldKeys {
    /// The policy's JSON name: `keep`, `revoke` or `destroy`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OldKeys::Keep => "keep",
            OldKeys::Revoke => "revoke",
            OldKeys::Destroy => "destroy",
        }
    }
}

/// What happens when the volume key is found Deactivated (or Compromised, once confirmed) and
/// the content opens read-only ([`crate::readonly`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDeactivated {
    /// Stay read-only until the administrator presses Rekey.
    #[default]
    Wait,
    /// Start a Rekey to a new key at once.
    Rekey,
}

impl OnDeactivated {
    /// The policy's JSON name: `wait` or `rekey`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnDeactivated::Wait => "wait",
            OnDeactivated::Rekey => "rekey",
        }
    }
}

/// The key policy (`PUT /api/encryption/policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What happens to a key once a Rekey or Decrypt retired it.
    pub old_keys: OldKeys,
    /// With `destroy`: days between retirement and Destroy (0: at once).
    #[serde(default)]
    pub destroy_after_days: u32,
    /// Scheduled Rekey: seconds between rotations (None: off).
    #[serde(default)]
    pub rotation_interval_seconds: Option<u64>,
    /// The volume key is no longer Active but may still decrypt: wait for the administrator,
    /// or Rekey at once.
    #[serde(default)]
    pub on_deactivated: OnDeactivated,
}

impl Policy {
    /// The rotation interval in whole days, for the page (0: off).
    pub fn rotation_days(&self) -> u64 {
        self.rotation_interval_seconds
            .map_or(0, |s| s.div_ceil(86_400))
    }

    /// Checks a policy the API received.
    pub fn check(&self) -> Result<(), String> {
        if let Some(s) = self.rotation_interval_seconds
            && s < MIN_ROTATION_SECONDS
        {
            return Err(format!(
                "rotation_interval_seconds must be at least {MIN_ROTATION_SECONDS} (or null to \
                 turn scheduled rotation off); {s} was given"
            ));
        }
        if self.destroy_after_days > 36500 {
            return Err("destroy_after_days must be at most 36500".into());
        }
        Ok(())
    }
}

/// A key that no longer protects the volume but may still be held by a KMIP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldKey {
    /// Its KMIP unique identifier.
    pub id: String,
    /// Last known state on the KMIP server: `Active`, `Deactivated` or `Destroyed`.
    pub state: String,
    /// The KMIP server(s) that held it (as named in the volume header).
    pub servers: Vec<String>,
    /// The server of the last operation on it, or the first of `servers`.
    pub server: Option<String>,
    /// When the Rekey or Decrypt that retired it finished (RFC 3339).
    pub retired_at: String,
    /// Unix time of the retirement (for `destroy_after_days`).
    pub retired_unix: i64,
    /// Why the last automatic step failed, for a person (retried at the next key check).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// What the appliance records about its keys' life.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyLife {
    /// The key policy the administrator set.
    #[serde(default)]
    pub policy: Policy,
    /// The keys Rekeys and Decrypts retired, oldest first, with their last known state.
    #[serde(default)]
    pub old_keys: Vec<OldKey>,
}

/// The record and where it is kept.
#[derive(Debug)]
pub struct KeyLifeStore {
    path: PathBuf,
    life: Mutex<KeyLife>,
}

impl KeyLifeStore {
    /// Loads DIR/key-life.json (an empty record when there is none).
    pub fn open(dir: &Path) -> Result<KeyLifeStore, String> {
        let path = dir.join(KEYLIFE_FILE);
        let life = match files::read_bounded(&path, 1 << 20) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "the key life record {} is unreadable ({e}); restore it from a backup or \
                     remove it (the policy returns to keep, old keys are forgotten)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyLife::default(),
            Err(e) => return Err(format!("cannot read {} ({e})", path.display())),
        };
        Ok(KeyLifeStore {
            path,
            life: Mutex::new(life),
        })
    }

    /// The record now.
    pub fn get(&self) -> KeyLife {
        self.life.lock().clone()
    }

    /// Changes the record and saves it.
    pub fn update<R>(&self, f: impl FnOnce(&mut KeyLife) -> R) -> Result<R, String> {
        let mut life = self.life.lock();
        let mut next = life.clone();
        let r = f(&mut next);
        let bytes = serde_json::to_vec_pretty(&next).unwrap_or_default();
        files::write_private(&self.path, &bytes).map_err(|e| {
            format!(
                "cannot save the key life record {} ({e}); check the data directory",
                self.path.display()
            )
        })?;
        *life = next;
        Ok(r)
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Why an old-key action failed, with the HTTP status it maps to.
#[derive(Debug)]
pub enum ActionError {
    /// Not an old key of this volume.
    NotFound(String),
    /// The KMIP server refused or could not be reached.
    Kmip(String),
    /// The record could not be saved.
    Save(String),
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::NotFound(s) | ActionError::Kmip(s) | ActionError::Save(s) => {
                f.write_str(s)
            }
        }
    }
}

/// A client for the old key `key`: the previous KMIP settings when they name a server that
/// held it (a move to another KMIP server), the saved ones otherwise.
fn client(state: &AppState, key: &OldKey) -> Result<(Client, String), ActionError> {
    let previous = state.previous_kmip().filter(|p| {
        p.servers
            .iter()
            .any(|a| key.servers.contains(&a.to_string()))
    });
    let k = previous.or_else(|| state.kmip()).ok_or_else(|| {
        ActionError::Kmip(
            "no KMIP settings are saved; fill in Storage > Encryption before retiring keys".into(),
        )
    })?;
    let server = k.servers.first().map(|s| s.to_string()).unwrap_or_default();
    let c = Client::new(k.client_config(state.config().kmip_timeouts))
        .map_err(|e| ActionError::Kmip(format!("cannot use the KMIP settings: {e}")))?;
    Ok((c, server))
}

fn server_of(c: &Client, fallback: &str) -> String {
    c.connection_info()
        .map(|i| i.server.to_string())
        .unwrap_or_else(|| fallback.to_owned())
}

/// Revokes (Deactivates) the old key `id`; a key already revoked is left as it is.
pub fn revoke(state: &AppState, id: &str, actor: &str) -> Result<OldKey, ActionError> {
    let key = find(state, id)?;
    if key.state != "Active" {
        return Ok(key);
    }
    run_on_server(
        state,
        &key,
        "revoke",
        "Deactivated",
        &format!("ok (old key, {actor})"),
        |c| {
            c.revoke(
                id,
                RevocationReasonCode::CESSATION_OF_OPERATION,
                Some("retired by atrest"),
            )
        },
    )
}

/// Runs `op` on the old key's KMIP server: audits the outcome, records the key's new state
/// (or, on failure, the error beside its old state) and says what to do next.
fn run_on_server(
    state: &AppState,
    key: &OldKey,
    what: &str,
    new_state: &str,
    ok_text: &str,
    op: impl FnOnce(&mut Client) -> Result<(), ClientError>,
) -> Result<OldKey, ActionError> {
    let id = key.id.as_str();
    let (mut c, fallback) = client(state, key)?;
    let r = op(&mut c);
    let server = server_of(&c, &fallback);
    c.disconnect();
    match r {
        Ok(()) => {
            state.audit_key(&server, what, Some(id), ok_text);
            set_state(state, id, new_state, &server, None)
        }
        Err(e) => {
            let msg = format!(
                "cannot {what} the old key {id} on the KMIP server: {e}; check that the KMIP \
                 settings point at the server that holds it, then try again"
            );
            state.audit_key(
                &server,
                what,
                Some(id),
                &format!("failed ({}): {e}", e.class()),
            );
            let _ = set_state(state, id, &key.state, &server, Some(msg.clone()));
            Err(ActionError::Kmip(msg))
        }
    }
}

/// Destroys the old key `id` (revoking it first when it is still Active).
pub fn destroy(state: &AppState, id: &str, actor: &str) -> Result<OldKey, ActionError> {
    let mut key = find(state, id)?;
    if key.state == "Destroyed" {
        return Ok(key);
    }
    if key.state == "Active" {
        key = revoke(state, id, actor)?;
    }
    run_on_server(
        state,
        &key,
        "destroy",
        "Destroyed",
        &format!("ok (old key, {actor}; data and backups under it are unreadable)"),
        |c| c.destroy(id),
    )
}

fn find(state: &AppState, id: &str) -> Result<OldKey, ActionError> {
    state
        .keylife()
        .get()
        .old_keys
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| {
            ActionError::NotFound(format!(
                "{id:?} is not an old key of this volume (see old_keys in GET /api/encryption); \
                 the key in use cannot be revoked or destroyed here"
            ))
        })
}

fn set_state(
    state: &AppState,
    id: &str,
    new: &str,
    server: &str,
    error: Option<String>,
) -> Result<OldKey, ActionError> {
    state
        .keylife()
        .update(|l| {
            let k = l.old_keys.iter_mut().find(|k| k.id == id)?;
            k.state = new.to_owned();
            if !server.is_empty() {
                k.server = Some(server.to_owned());
            }
            k.last_error = error;
            Some(k.clone())
        })
        .map_err(ActionError::Save)?
        .ok_or_else(|| ActionError::NotFound(format!("{id:?} is no longer an old key")))
}

/// Records the keys a finished Rekey or Decrypt retired, then applies the policy.
pub fn retire(state: &AppState, keys: Vec<(String, Vec<String>)>) {
    if keys.is_empty() {
        return;
    }
    let now = crate::now_rfc3339();
    let unix = unix_now();
    let saved = state.keylife().update(|l| {
        for (id, servers) in &keys {
            if l.old_keys.iter().any(|k| &k.id == id) {
                continue;
            }
            l.old_keys.push(OldKey {
                id: id.clone(),
                state: "Active".into(),
                server: servers.first().cloned(),
                servers: servers.clone(),
                retired_at: now.clone(),
                retired_unix: unix,
                last_error: None,
            });
        }
    });
    if let Err(e) = saved {
        tracing::error!("{e}");
    }
    for (id, servers) in &keys {
        state.audit_key(
            servers.first().map_or("-", String::as_str),
            "retire",
            Some(id),
            "ok (no longer protects the volume)",
        );
    }
    apply_policy(state);
}

/// Applies the policy to the old keys (after a retirement and at every key check): revokes
/// what `revoke` and `destroy` want revoked, destroys what is due. Failures are recorded on the
/// key and retried at the next call.
pub fn apply_policy(state: &AppState) {
    let life = state.keylife().get();
    let now = unix_now();
    for k in life.old_keys {
        let r = match life.policy.old_keys {
            OldKeys::Keep => continue,
            OldKeys::Revoke => {
                if k.state != "Active" {
                    continue;
                }
                revoke(state, &k.id, "policy revoke").map(|_| ())
            }
            OldKeys::Destroy => {
                let due = k.retired_unix + i64::from(life.policy.destroy_after_days) * 86_400;
                if k.state == "Destroyed" {
                    continue;
                } else if now >= due {
                    destroy(state, &k.id, "policy destroy").map(|_| ())
                } else if k.state == "Active" {
                    revoke(state, &k.id, "policy destroy, revoked until due").map(|_| ())
                } else {
                    continue;
                }
            }
        };
        if let Err(e) = r {
            tracing::warn!("key policy: {e}");
        }
    }
}
