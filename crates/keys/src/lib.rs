//! The KMIP side of a volume's keys, shared by `atrest volume` and the appliance:
//!
//! - [`create_volume_key`]: Create an AES key on the KMIP server, Activate it, Get it, and check
//!   what came back (length, not wrapped, two different halves) before anything is written.
//! - [`fetch_volume_keys`]: for every key a volume needs (one, or two while rekeying), Get it by
//!   the Unique Identifier in the header, check that the server still holds it Active, and verify
//!   it against the header's digest. Only verified keys ([`VolumeKey`]) can unlock a volume.
//! - [`fetch_volume_keys_accepting`]: the same, but a key the server holds Deactivated (or, once
//!   the administrator confirmed, Compromised) is accepted too, for reading only: NIST SP 800-57
//!   lets such a key process (decrypt) the data it protected, never protect new data. The caller
//!   learns each key's state and must keep the content read-only until a Rekey replaced it.
//!   The key being rekeyed *to* must always be Active.
//! - [`settings`]: the one way KMIP connection settings are resolved from flags, a TOML
//!   settings file, a client env file and the environment, with one documented precedence.
//!
//! Key material only passes through zeroizing buffers into locked memory
//! ([`atrest_volume::SecretBytes`]); it never appears in an error.
//!
//! This crate has no web or async dependency: the `atrest volume` commands use it without the
//! appliance.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod settings;

use std::fmt;

use atrest_kmip::client::{Client, ClientError};
use atrest_kmip::message::{KeyBlock, RevocationReasonCode, State};
use atrest_volume::{KeyMaterial, KeyReference, SecretBytes, Volume, VolumeKey};

/// Why a volume key could not be created or fetched.
#[derive(Debug)]
pub enum KeyError {
    /// The KMIP server could not be used, or failed the operation.
    Kmip {
        /// The key's Unique Identifier, once the server gave one.
        uid: Option<String>,
        /// The operation that failed, as a verb ("create", "get", "check the state of").
        what: &'static str,
        /// The KMIP client's error.
        source: Box<ClientError>,
    },
    /// The key exists but is not Active (revoked, compromised, destroyed, or never activated).
    NotActive {
        /// The key's Unique Identifier.
        uid: String,
        /// The state the server holds it in.
        state: State,
    },
    /// The server returned something that cannot be this volume's key.
    BadMaterial {
        /// The key's Unique Identifier.
        uid: String,
        /// Why it is unusable (never the material itself).
        reason: String,
    },
    /// The key does not match the volume's digest: it is not this volume's key.
    WrongKey {
        /// The key's Unique Identifier.
        uid: String,
        /// The volume's verdict.
        source: atrest_volume::Error,
    },
}

impl KeyError {
    /// The KMIP client error, when the failure came from the KMIP side.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            KeyError::Kmip { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Kmip { uid, what, source } => match uid {
                Some(u) => write!(f, "cannot {what} key {u:?} on the KMIP server: {source}"),
                None => write!(f, "cannot {what} a key on the KMIP server: {source}"),
            },
            KeyError::NotActive { uid, state } if *state == State::COMPROMISED => write!(
                f,
                "the KMIP server holds key {uid:?} in state Compromised, not Active: it is used \
                 only after the administrator confirms (read-only, to Rekey: POST \
                 /api/encryption/read-only/confirm with the admin password, or \
                 --allow-compromised on the command line)"
            ),
            KeyError::NotActive { uid, state } => write!(
                f,
                "the KMIP server holds key {uid:?} in state {state}, not Active: a revoked, \
                 compromised or destroyed key is refused here; if this is unexpected, ask the \
                 key manager's administrator, and restore access to the key before unlocking"
            ),
            KeyError::BadMaterial { uid, reason } => write!(
                f,
                "key {uid:?} from the KMIP server is unusable: {reason}; check the key's \
                 algorithm and length on the server"
            ),
            KeyError::WrongKey { uid, source } => write!(
                f,
                "key {uid:?} from the KMIP server is not this volume's key ({source}); check that \
                 the KMIP settings point at the key manager that holds this volume's key"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// A key created for a volume: its material and the reference that goes into the header.
pub struct NewKey {
    /// The key material, checked (length, not wrapped), in locked memory.
    pub material: KeyMaterial,
    /// The Unique Identifier, the servers and the creation time, for the volume header.
    pub reference: KeyReference,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("material", &self.material)
            .field("reference", &self.reference)
            .finish()
    }
}

fn material(uid: &str, kb: &KeyBlock, bits: u32) -> Result<KeyMaterial, KeyError> {
    let bad = |reason: String| KeyError::BadMaterial {
        uid: uid.to_owned(),
        reason,
    };
    if kb.wrapped {
        return Err(bad("it came back wrapped".into()));
    }
    if kb.material.len() * 8 != bits as usize {
        return Err(bad(format!(
            "it has {} bits, the volume needs exactly {bits}",
            kb.material.len() * 8
        )));
    }
    let mut copy = kb.material.clone();
    KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut copy)).map_err(|e| bad(e.to_string()))
}

/// The Name of a volume key atrest creates: `atrest/<appliance name>/<volume uuid>/<generation>`,
/// so that a key manager's administrator sees whose key it is and which one in the volume's
/// life (the first key is generation 1, every Rekey adds one).
pub fn volume_key_name(appliance: &str, uuid: &str, generation: u64) -> String {
    format!("atrest/{appliance}/{uuid}/{generation}")
}

/// The Object Group of the keys an appliance creates: `atrest/<appliance name>`.
pub fn volume_key_group(appliance: &str) -> String {
    format!("atrest/{appliance}")
}

/// The generation in a volume key's Name made by [`volume_key_name`] for the volume `uuid`
/// (whichever appliance made it), or None.
pub fn name_generation(name: &str, uuid: &str) -> Option<u64> {
    let rest = name.strip_prefix("atrest/")?;
    let (head, generation) = rest.rsplit_once('/')?;
    let (_, u) = head.rsplit_once('/')?;
    if u != uuid {
        return None;
    }
    generation.parse().ok().filter(|g| *g > 0)
}

/// The generation of the key to create for the volume `uuid`: one more than the current key's
/// (read from its Name on the server), 1 when there is no current key, 2 when the current key
/// carries no such Name or cannot be read.
pub fn next_generation(client: &mut Client, uuid: &str, current: Option<&str>) -> u64 {
    let Some(uid) = current else { return 1 };
    client
        .get_attributes(uid, &["Name"])
        .ok()
        .and_then(|a| {
            a.names()
                .iter()
                .filter_map(|n| name_generation(n, uuid))
                .max()
        })
        .map_or(2, |g| g.saturating_add(1))
}

/// The host name, the default appliance name in key names; `atrest` when it cannot be read.
///
/// Read from `/proc/sys/kernel/hostname`: on Linux the same name `gethostname(2)` returns (the
/// UTS namespace's node name), without unsafe code.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() {
        "atrest".to_owned()
    } else {
        name.to_owned()
    }
}

/// Now, RFC 3339 in UTC: the form of a key reference's creation time (and of every other time
/// atrest records).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks an appliance name for key names: 1 to 64 characters, no `/`, no control characters.
pub fn check_appliance_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 64 {
        return Err("the appliance name must have 1 to 64 characters".into());
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!(
            "the appliance name {name:?} may not contain '/' or control characters; choose \
             another with --appliance-name"
        ));
    }
    Ok(())
}

/// Creates, activates and fetches an AES key of `bits` (256 for XTS-AES-128, 512 for
/// XTS-AES-256) named `name`. If anything after Create fails, the new key is revoked and
/// destroyed again (best effort) so that no unused key is left Active on the server.
pub fn create_volume_key(
    client: &mut Client,
    bits: u32,
    name: Option<&str>,
) -> Result<NewKey, KeyError> {
    create_volume_key_in_group(client, bits, name, None)
}

/// [`create_volume_key`] with an Object Group, where the server supports it.
pub fn create_volume_key_in_group(
    client: &mut Client,
    bits: u32,
    name: Option<&str>,
    group: Option<&str>,
) -> Result<NewKey, KeyError> {
    let uid = client
        .create_aes_key_in_group(bits as i32, name, group)
        .map_err(|source| KeyError::Kmip {
            uid: None,
            what: "create",
            source: Box::new(source),
        })?;
    let fetched = (|| {
        client.activate(&uid).map_err(|source| KeyError::Kmip {
            uid: Some(uid.clone()),
            what: "activate",
            source: Box::new(source),
        })?;
        let kb = client.get_key(&uid).map_err(|source| KeyError::Kmip {
            uid: Some(uid.clone()),
            what: "get",
            source: Box::new(source),
        })?;
        material(&uid, &kb, bits)
    })();
    let material = match fetched {
        Ok(m) => m,
        Err(e) => {
            let _ = client.revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None);
            let _ = client.destroy(&uid);
            return Err(e);
        }
    };
    Ok(NewKey {
        material,
        reference: KeyReference {
            unique_identifier: uid,
            servers: client
                .config()
                .servers
                .iter()
                .map(|s| s.to_string())
                .collect(),
            created: now_rfc3339(),
        },
    })
}

/// Which key states, besides Active, an unlock accepts (for reading only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accept {
    /// Active only.
    #[default]
    Active,
    /// Active or Deactivated (revoked for a reason other than compromise).
    Deactivated,
    /// Active, Deactivated or Compromised (the administrator confirmed).
    Compromised,
}

impl Accept {
    /// Whether a key in `state` may be used under this acceptance.
    pub fn allows(self, state: State) -> bool {
        match self {
            Accept::Active => state == State::ACTIVE,
            Accept::Deactivated => state == State::ACTIVE || state == State::DEACTIVATED,
            Accept::Compromised => {
                state == State::ACTIVE || state == State::DEACTIVATED || state == State::COMPROMISED
            }
        }
    }
}

/// Fetches one key by its Unique Identifier, checks it is Active, and verifies it against the
/// volume's digests.
pub fn fetch_key(
    client: &mut Client,
    volume: &Volume,
    uid: &str,
    bits: u32,
) -> Result<VolumeKey, KeyError> {
    fetch_key_accepting(client, volume, uid, bits, Accept::Active).map(|(k, _)| k)
}

/// [`fetch_key`] accepting the states `accept` allows; returns the key's state beside it.
pub fn fetch_key_accepting(
    client: &mut Client,
    volume: &Volume,
    uid: &str,
    bits: u32,
    accept: Accept,
) -> Result<(VolumeKey, State), KeyError> {
    let kmip = |what: &'static str| {
        let uid = uid.to_owned();
        move |source| KeyError::Kmip {
            uid: Some(uid),
            what,
            source: Box::new(source),
        }
    };
    let attrs = client
        .get_attributes(uid, &["State"])
        .map_err(kmip("check the state of"))?;
    let state = match attrs.state() {
        Some(state) if accept.allows(state) => state,
        Some(state) => {
            return Err(KeyError::NotActive {
                uid: uid.to_owned(),
                state,
            });
        }
        None => {
            return Err(KeyError::BadMaterial {
                uid: uid.to_owned(),
                reason: "the server did not report its State".into(),
            });
        }
    };
    let kb = client.get_key(uid).map_err(kmip("get"))?;
    let m = material(uid, &kb, bits)?;
    let key = volume.verify_key(m).map_err(|source| KeyError::WrongKey {
        uid: uid.to_owned(),
        source,
    })?;
    Ok((key, state))
}

/// Fetches and verifies every key `volume` needs to unlock (see [`Volume::required_keys`]).
pub fn fetch_volume_keys(client: &mut Client, volume: &Volume) -> Result<Vec<VolumeKey>, KeyError> {
    fetch_volume_keys_accepting(client, volume, Accept::Active).map(|(k, _)| k)
}

/// A key that was fetched although it is no longer Active: the volume may be read with it,
/// never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inactive {
    /// The key's Unique Identifier.
    pub uid: String,
    /// The state the server holds it in (Deactivated or Compromised).
    pub state: State,
}

/// [`fetch_volume_keys`] accepting, for the key(s) that protect the data now (the current key,
/// or the old key of a Rekey), the states `accept` allows; the key a Rekey moves to must be
/// Active. Returns the keys and those of them that are not Active.
pub fn fetch_volume_keys_accepting(
    client: &mut Client,
    volume: &Volume,
    accept: Accept,
) -> Result<(Vec<VolumeKey>, Vec<Inactive>), KeyError> {
    let mut keys = Vec::new();
    let mut inactive = Vec::new();
    for k in volume.required_keys() {
        let uid = &k.reference.unique_identifier;
        let accept = key_accept(k.role, accept);
        let (key, state) = fetch_key_accepting(client, volume, uid, k.reference.key_bits, accept)?;
        if state != State::ACTIVE {
            inactive.push(Inactive {
                uid: uid.clone(),
                state,
            });
        }
        keys.push(key);
    }
    Ok((keys, inactive))
}

/// The acceptance for a key of `role` (see [`atrest_volume::KeyInfo::role`]): the key a Rekey
/// moves to protects new data, so it must be Active.
pub fn key_accept(role: &str, accept: Accept) -> Accept {
    if role == "new" {
        Accept::Active
    } else {
        accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_carry_the_appliance_the_volume_and_the_generation() {
        let uuid = "0123abcd";
        let name = volume_key_name("app1", uuid, 3);
        assert_eq!(name, "atrest/app1/0123abcd/3");
        assert_eq!(volume_key_group("app1"), "atrest/app1");
        assert_eq!(name_generation(&name, uuid), Some(3));
        // Whichever appliance made it; never another volume's, never generation 0.
        assert_eq!(name_generation("atrest/other/0123abcd/7", uuid), Some(7));
        assert_eq!(name_generation("atrest/app1/ffff/3", uuid), None);
        assert_eq!(name_generation("atrest/app1/0123abcd/0", uuid), None);
        assert_eq!(name_generation("atrest/app1/0123abcd/x", uuid), None);
        assert_eq!(name_generation("other/app1/0123abcd/3", uuid), None);
    }

    #[test]
    fn appliance_names_are_checked() {
        assert!(check_appliance_name("appliance-7").is_ok());
        assert!(check_appliance_name(&"x".repeat(64)).is_ok());
        assert!(check_appliance_name("").is_err());
        assert!(check_appliance_name(&"x".repeat(65)).is_err());
        assert!(check_appliance_name("a/b").is_err());
        assert!(check_appliance_name("a\nb").is_err());
        assert!(!host_name().is_empty());
    }

    #[test]
    fn acceptance_widens_step_by_step_and_never_for_the_new_key() {
        let all = [
            State::PRE_ACTIVE,
            State::ACTIVE,
            State::DEACTIVATED,
            State::COMPROMISED,
            State::DESTROYED,
        ];
        let allowed = |a: Accept| all.iter().filter(|s| a.allows(**s)).count();
        assert_eq!(allowed(Accept::Active), 1);
        assert_eq!(allowed(Accept::Deactivated), 2);
        assert_eq!(allowed(Accept::Compromised), 3);
        assert!(!Accept::Compromised.allows(State::DESTROYED));
        assert_eq!(key_accept("new", Accept::Compromised), Accept::Active);
        assert_eq!(key_accept("old", Accept::Compromised), Accept::Compromised);
        assert_eq!(
            key_accept("current", Accept::Deactivated),
            Accept::Deactivated
        );
    }

    #[test]
    fn now_is_rfc3339_utc() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z'), "{now}");
        assert!(
            time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
    }
}
