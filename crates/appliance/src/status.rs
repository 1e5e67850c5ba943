//! The status of Storage > Encryption as one typed value: GET /api/encryption serializes it and
//! the page renders it, so a field renamed on one side is a compile error on the other.

use serde::Serialize;

use crate::kmip_config::{CertSummary, ClientFormat, Source};
use crate::kmip_test::TestReport;
use crate::state::AppState;
use crate::workflow::{LockReason, Progress, Request, State};

/// The warning shown while the appliance uses its bundled KMIP server.
pub const EMBEDDED_KMS_WARNING: &str = "the KMIP server in use is the one bundled with this \
     appliance (--embedded-kms): its master key and the volume key live on the same disk as the \
     volume, so whoever takes the disk takes the data. Run `atrest kms serve` on another machine \
     and move the volume's key to it (README, \"Moving off the bundled KMIP server\")";

/// GET /api/encryption.
#[derive(Debug, Clone, Serialize)]
pub struct EncryptionStatus {
    /// `plain`, `encrypting`, `encrypted`, `locked`, `rekeying` or `decrypting`.
    pub state: State,
    /// While locked: the conversion that resumes after unlock.
    pub pending: Option<State>,
    /// How far the conversion under way is (bytes done, rate, time left).
    pub progress: Option<Progress>,
    /// The KMIP unique identifier of the volume's current key.
    pub key_id: Option<String>,
    /// The KMIP servers (`host:port`) that hold the volume's key; those of the saved
    /// settings while the volume has none.
    pub servers: Vec<String>,
    /// The volume's cipher and key length, for a person (`aes-xts-plain64 (XTS-AES-256,
    /// 512-bit key)`).
    pub cipher: Option<String>,
    /// While locked: why, per server.
    pub lock_reasons: Vec<LockReason>,
    /// The last conversion error, until the next success.
    pub last_error: Option<String>,
    /// The result of the last Save and Test.
    pub last_test: Option<TestReport>,
    /// The last test tested the settings saved now.
    pub last_test_current: bool,
    /// Whether Encrypt (POST /api/encryption/encrypt) may start now, and why not.
    pub encrypt: EncryptGate,
    /// Whether "Move to these settings" (POST /api/encryption/move) may start now, and why not.
    #[serde(rename = "move")]
    pub move_to: EncryptGate,
    /// The saved KMIP settings, without secrets (None until saved).
    pub settings: Option<SettingsView>,
    /// Things the administrator should act on (expiring certificates, the bundled KMIP
    /// server's weakness).
    pub warnings: Vec<String>,
    /// The appliance uses its bundled KMIP server.
    pub embedded_kms: bool,
    /// A content volume is attached to this appliance.
    pub volume_attached: bool,
    /// The attached content volume's header, space, checks and alerts.
    pub volume: Option<VolumeStatus>,
    /// What happens to retired keys, and the rotation interval.
    pub policy: crate::keylife::Policy,
    /// Keys a Rekey or Decrypt retired that a KMIP server may still hold (id, last known state,
    /// server).
    pub old_keys: Vec<crate::keylife::OldKey>,
    /// Why the content is read-only (the volume key is Deactivated or Compromised), or null.
    pub read_only: Option<crate::readonly::ReadOnlyView>,
    /// A Compromised volume key that waits for the administrator's confirmation, or null.
    pub compromised_key: Option<crate::readonly::Confirmation>,
}

/// Whether Encrypt may start now, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct EncryptGate {
    /// The action may start now.
    pub allowed: bool,
    /// Why it may not, for a person (None when allowed).
    pub reason: Option<String>,
}

/// The saved KMIP settings, without secrets.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsView {
    /// The KMIP servers, tried in this order.
    pub servers: Vec<ServerView>,
    /// The name checked against the servers' certificates instead of their host names.
    pub server_name: Option<String>,
    /// The KMIP user name sent in each request's authentication, if any.
    pub username: Option<String>,
    /// A KMIP password is saved (never shown).
    pub password_set: bool,
    /// A passphrase of the client key or PKCS#12 file is saved (never shown).
    pub passphrase_set: bool,
    /// How the client certificate and key were given: PEM files or one PKCS#12 file.
    pub client_format: ClientFormat,
    /// The CA certificate that signs the servers' certificates.
    pub ca: Option<CertSummary>,
    /// The appliance's client certificate.
    pub client_certificate: Option<CertSummary>,
    /// Where the settings came from: the administrator, or the bundled KMIP server.
    pub source: Source,
    /// Salted SHA-256 over everything the client uses: a test result applies while it is the
    /// same.
    pub fingerprint: String,
}

/// One KMIP server of the settings.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    /// Host name or IP address.
    pub host: String,
    /// TCP port (5696 by default).
    pub port: u16,
}

/// What the content volume adds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VolumeStatus {
    /// What the volume header says (None when detached).
    pub volume: Option<VolumeView>,
    /// The content store's space (None while the volume is locked).
    pub space: Option<SpaceView>,
    /// The last conversion that finished since the appliance started.
    pub last_conversion: Option<LastConversion>,
    /// The last check of the key's state on the KMIP server.
    pub key_check: Option<KeyCheck>,
    /// Alerts of the key's state checks (a key no longer Active), each once.
    pub alerts: Vec<String>,
    /// While locked: when the next unlock attempt runs (RFC 3339).
    pub next_retry_at: Option<String>,
    /// Locked until the administrator acts (header authentication, a volume that does not
    /// match the appliance's record).
    pub hold: Option<HoldView>,
    /// Unlock attempts since the appliance started.
    pub unlock_attempts: u64,
    /// The last check of the audit history (at start, and by GET /api/audit/verify).
    pub audit: Option<AuditCheck>,
    /// The current key's age and the next scheduled rotation (while encrypted).
    pub rotation: Option<RotationView>,
}

/// The current key's age and the scheduled rotation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RotationView {
    /// The policy's rotation interval (None: scheduled rotation is off).
    pub interval_seconds: Option<u64>,
    /// When the current key was created (RFC 3339, from the volume header).
    pub key_created: Option<String>,
    /// The current key's age in seconds.
    pub key_age_seconds: Option<u64>,
    /// When the scheduler starts the next Rekey (RFC 3339; None while rotation is off). In
    /// the past: at the next look, once the volume is unlocked and no conversion runs.
    pub next_rotation_at: Option<String>,
    /// Why the last scheduled attempt failed (retried after a backoff).
    pub last_error: Option<String>,
}

/// GET /api/audit/verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditCheck {
    /// The whole chain checks (and its seal, when sealed).
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// The head was checked against its seal under a key derived from the volume key.
    pub sealed: bool,
    /// The first event that does not check.
    pub first_bad: Option<AuditBreak>,
    /// When it was checked (RFC 3339).
    pub checked_at: String,
}

/// Where the audit history breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    /// The sequence number of the first event that does not check.
    pub seq: u64,
    /// Why it does not, for a person.
    pub reason: String,
}

impl AuditCheck {
    /// Verifies the store's audit history now.
    pub fn of(store: &atrest_store::Store) -> Result<AuditCheck, atrest_store::Error> {
        let v = store.audit().verify()?;
        Ok(AuditCheck {
            ok: v.first_broken.is_none(),
            events: v.events,
            sealed: v.sealed,
            first_bad: v.first_broken.map(|b| AuditBreak {
                seq: b.seq,
                reason: b.reason,
            }),
            checked_at: crate::now_rfc3339(),
        })
    }

    /// The warning a broken history raises.
    pub fn warning(&self) -> Option<String> {
        let b = self.first_bad.as_ref()?;
        Some(format!(
            "alert: the audit history failed its check at event {}: {}. Keep the volume as it is \
             and find out who had access to it (GET /api/audit/verify checks it again)",
            b.seq, b.reason
        ))
    }
}

/// The volume header's facts.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeView {
    /// `volume.img` for the image in the data directory, else the whole path (an image file
    /// or a block device).
    pub path: String,
    /// `plain`, `encrypted`, `encrypting`, `rekeying` or `decrypting`, as the header says.
    pub state: String,
    /// Bytes of the data segment.
    pub data_size: u64,
    /// Bytes per sector.
    pub sector_size: u32,
    /// Key length in bits (256 or 512), when encrypted.
    pub key_bits: Option<u32>,
    /// The volume's UUID.
    pub uuid: String,
}

/// The content store's space.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpaceView {
    /// Bytes the content store can use.
    pub capacity: u64,
    /// Bytes in use (the database and every recording block in use).
    pub used: u64,
    /// Bytes kept back so that deletions still work on a full store.
    pub reserve: u64,
    /// Free bytes of the file system holding the volume's image file (`null` for a block
    /// device): a sparse image can run out of these before its own capacity.
    pub filesystem_free: Option<u64>,
    /// Bytes the disk (image file or block device) has beyond the volume's data segment: it
    /// grew, and Grow (`POST /api/volume/grow`) would add them. 0 when it did not.
    pub growable: u64,
}

/// The last finished conversion.
#[derive(Debug, Clone, Serialize)]
pub struct LastConversion {
    /// `encrypting`, `rekeying` or `decrypting`.
    pub kind: String,
    /// When this run started (RFC 3339).
    pub started_at: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// The volume's bytes, all converted now.
    pub bytes: u64,
    /// Bytes this run converted (less than `bytes` when it resumed an earlier run).
    pub run_bytes: u64,
    /// This run's seconds.
    pub seconds: f64,
    /// This run's rate.
    pub bytes_per_sec: Option<f64>,
    /// Always 100: the volume is all converted.
    pub percent: f64,
    /// Whether it also overwrote the free space; otherwise only the space the content store
    /// had in use was converted (docs/workflow.md, "Used-space-only conversion").
    pub full: bool,
}

/// The last check of the key's state on the KMIP server.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCheck {
    /// When it was checked (RFC 3339).
    pub checked_at: String,
    /// The key is Active.
    pub ok: bool,
    /// The KMIP unique identifier of the key checked (None when no server answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key's state as the server reports it (`Active`, `Deactivated`, `Compromised`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_state: Option<String>,
    /// Why the check failed, or the alert for a key that is no longer Active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why the volume is held locked.
#[derive(Debug, Clone, Serialize)]
pub struct HoldView {
    /// `header-auth` (the header failed its authentication) or `volume-changed` (it does not
    /// match the appliance's record).
    pub class: String,
    /// What happened and what to do, for a person.
    pub reason: String,
    /// Resume may lift it.
    pub resume: bool,
}

impl EncryptionStatus {
    /// The status now.
    pub fn of(state: &AppState) -> EncryptionStatus {
        let w = state.workflow();
        let kmip = state.kmip();
        let test = state.last_test();
        let fp = kmip.as_ref().map(|k| k.fingerprint());
        let current = matches!((&test, &fp), (Some(t), Some(f)) if &t.fingerprint == f);
        let check = state.check(Request::Encrypt);
        let servers: Vec<String> = if w.servers.is_empty() {
            kmip.as_ref()
                .map(|k| k.servers.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        } else {
            w.servers.clone()
        };
        let mut warnings = Vec::new();
        let embedded_kms = kmip
            .as_ref()
            .is_some_and(|k| k.source() == Source::Embedded);
        if embedded_kms {
            warnings.push(EMBEDDED_KMS_WARNING.to_string());
        }
        if let Some(k) = &kmip {
            for (what, c) in [
                ("client certificate", k.client_summary()),
                ("server CA certificate", k.ca_summary()),
            ] {
                if let Some(c) = c
                    && c.expiring
                {
                    warnings.push(match c.days_left {
                        Some(d) if d < 0 => format!(
                            "the {what} expired on {}; upload a renewed one",
                            c.not_after
                        ),
                        Some(d) => format!(
                            "the {what} expires in {d} days ({}); upload a renewed one before then",
                            c.not_after
                        ),
                        None => format!("the {what} expires soon ({})", c.not_after),
                    });
                }
            }
        }
        let backend = state.backend();
        let volume = backend.map(|b| b.status());
        let life = state.keylife().get();
        for k in &life.old_keys {
            if k.state == "Active" {
                warnings.push(format!(
                    "the old key {} is still Active on the KMIP server {}: revoke or destroy it \
                     once no backup needs it (or set the key policy)",
                    k.id,
                    k.server.as_deref().unwrap_or("-")
                ));
            }
        }
        if let Some(w) = volume
            .as_ref()
            .and_then(|v| v.audit.as_ref())
            .and_then(AuditCheck::warning)
        {
            warnings.push(w);
        }
        EncryptionStatus {
            state: w.state,
            pending: w.pending,
            progress: w.progress,
            key_id: w.key_id.clone(),
            servers,
            cipher: w.cipher.clone(),
            lock_reasons: w.lock_reasons.clone(),
            last_error: w.last_error.clone(),
            last_test: test,
            last_test_current: current,
            encrypt: EncryptGate {
                allowed: check.is_ok(),
                reason: check.err(),
            },
            move_to: {
                let m = move_gate(state);
                EncryptGate {
                    allowed: m.is_ok(),
                    reason: m.err(),
                }
            },
            settings: kmip.as_ref().map(|k| k.view()),
            warnings,
            embedded_kms,
            volume_attached: volume.is_some(),
            volume,
            policy: life.policy,
            old_keys: life.old_keys,
            read_only: state.read_only().get(),
            compromised_key: state.read_only().waiting(),
        }
    }
}

/// Whether "Move to these settings" may start: the volume is encrypted and idle, the saved
/// settings passed their last Save and Test, and they name none of the servers that hold the
/// volume key now (that is a Rekey).
pub fn move_gate(state: &AppState) -> Result<(), String> {
    state.check(Request::Rekey)?;
    let kmip = state
        .kmip()
        .ok_or("no KMIP settings are saved; enter the new server's and press Save and Test")?;
    let test = state.last_test().ok_or(
        "the KMIP settings have not been tested; press Save and Test Changes and fix what fails",
    )?;
    if test.fingerprint != kmip.fingerprint() {
        return Err(
            "the KMIP settings changed since the last test; press Save and Test \
                    Changes again"
                .into(),
        );
    }
    if !test.ok {
        return Err(format!(
            "the last test of the KMIP settings failed ({}); fix it and press Save and Test \
             Changes",
            test.summary
        ));
    }
    let held = state.workflow().servers;
    if kmip.servers.iter().any(|s| held.contains(&s.to_string())) {
        return Err(format!(
            "the saved settings already point at a server that holds the volume key ({}); \
             save and test the new KMIP server's settings first, or use Rekey",
            held.join(", ")
        ));
    }
    Ok(())
}
