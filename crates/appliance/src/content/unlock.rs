//! Unlocking: the retry loop that fetches the volume's key(s) from the KMIP servers (each
//! server once, with bounded timeouts; failures kept per server and retried with the backoff),
//! the holds that only the administrator lifts (header authentication, a changed volume), and
//! the unlock with keys from the recovery key.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientConfig, Timeouts};
use atrest_kmip::message::State as KeyState;
use atrest_volume::{State as VolState, Volume};

use crate::state::{AppState, Content};
use crate::workflow::{Event, LockReason};
use atrest_keys::{self as keys, KeyError};

use super::{Attempt, DataVolume, Hold, Slot, cipher_text, is_converting, wf_state};

/// How long an unlock with the recovery key waits for an attempt with the KMIP server that
/// holds the volume (each server is tried with bounded timeouts).
const RECOVERY_UNLOCK_WAIT: Duration = Duration::from_secs(60);

/// Where to fetch a key from, in order: the servers of the current settings, then the servers
/// its header token names (with the client settings of whichever saved settings name that
/// server, else the current ones), then those of the previous settings. Each server once.
fn key_sources(
    settings: Option<&crate::kmip_config::KmipSettings>,
    previous: Option<&crate::kmip_config::KmipSettings>,
    token_servers: &[String],
    timeouts: Timeouts,
) -> Vec<(String, ClientConfig)> {
    let mut out: Vec<(String, ClientConfig)> = Vec::new();
    let mut add = |name: String, cfg: ClientConfig| {
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, cfg));
        }
    };
    let all = || [settings, previous].into_iter().flatten();
    if let Some(k) = settings {
        for a in &k.servers {
            add(a.to_string(), k.client_config_for(a, timeouts));
        }
    }
    for t in token_servers {
        let Ok(addr) = t.parse::<atrest_kmip::client::ServerAddr>() else {
            continue;
        };
        let from = all()
            .find(|k| k.servers.contains(&addr))
            .or(settings)
            .or(previous);
        if let Some(k) = from {
            add(addr.to_string(), k.client_config_for(&addr, timeouts));
        }
    }
    for k in all() {
        for a in &k.servers {
            add(a.to_string(), k.client_config_for(a, timeouts));
        }
    }
    out
}

pub(super) fn key_error_class(e: &KeyError) -> &'static str {
    match e {
        KeyError::Kmip { source, .. } => source.class(),
        KeyError::NotActive { state, .. } if *state == KeyState::COMPROMISED => "compromised",
        KeyError::NotActive { .. } => "not-active",
        KeyError::BadMaterial { .. } => "bad-key",
        KeyError::WrongKey { .. } => "wrong-key",
    }
}

impl DataVolume {
    pub(super) fn set_locked(&self, state: &AppState, vol: Volume, why: String) {
        let info = vol.info();
        state.apply(Event::OpenedEncrypted {
            key_id: info.key_id.clone().unwrap_or_default(),
            servers: info.servers.clone(),
            cipher: cipher_text(info.cipher.as_deref(), info.key_bits).unwrap_or_default(),
            pending: Some(wf_state(info.state)),
        });
        state.set_content(Content::Locked(format!(
            "the content volume is locked: {why}; the appliance retries by itself (see GET \
             /api/encryption)"
        )));
        *self.inner.slot.lock() = Slot::Locked(vol);
    }

    pub(super) fn spawn_unlock_loop(&self) {
        if self.inner.unlock_running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.spawn("atrest-unlock", |me| {
            let mut failures = 0u32;
            loop {
                if me.inner.stop.load(Ordering::Acquire) {
                    break;
                }
                match me.try_unlock(false) {
                    Attempt::Done | Attempt::Hold => break,
                    Attempt::Retry => {
                        failures += 1;
                        let d = me.inner.opts.backoff.delay(failures);
                        let at = time::OffsetDateTime::now_utc() + d;
                        me.inner.extra.lock().next_retry_at = at
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok();
                        if me.sleep(d) {
                            // Woken: new settings, try again at once with a fresh backoff.
                            failures = 0;
                        }
                    }
                }
            }
            me.inner.extra.lock().next_retry_at = None;
            me.inner.unlock_running.store(false, Ordering::Release);
        });
    }

    /// Keeps the volume locked with `hold` until the administrator acts.
    pub(super) fn hold(&self, state: &AppState, hold: Hold) {
        state.apply(Event::UnlockFailed(vec![LockReason {
            server: "-".into(),
            class: hold.class.into(),
            reason: hold.reason.clone(),
        }]));
        state.set_content(Content::Locked(format!(
            "the content volume is locked: {}",
            hold.reason
        )));
        self.inner.extra.lock().hold = Some(hold);
    }

    /// One attempt to fetch the key(s) and unlock; reasons per server are applied on failure.
    /// With `accept`, a header whose MAC is missing or wrong is accepted and signed anew (the
    /// administrator's Resume).
    pub(super) fn try_unlock(&self, accept: bool) -> Attempt {
        let Some(state) = self.app() else {
            return Attempt::Done;
        };
        if self.inner.extra.lock().hold.is_some() && !accept {
            return Attempt::Hold;
        }
        self.inner.attempts.fetch_add(1, Ordering::Relaxed);
        let vol = {
            let mut slot = self.inner.slot.lock();
            let info = match &*slot {
                Slot::Locked(v) => Box::new(v.info()),
                // Held by another attempt (the recovery key's): look again after the backoff.
                Slot::Unlocking(_) => return Attempt::Retry,
                _ => return Attempt::Done,
            };
            match std::mem::replace(&mut *slot, Slot::Unlocking(info)) {
                Slot::Locked(v) => v,
                _ => return Attempt::Done,
            }
        };
        let put_back = |vol: Volume| {
            let mut slot = self.inner.slot.lock();
            if matches!(&*slot, Slot::Unlocking(_)) {
                *slot = Slot::Locked(vol);
            }
        };
        let settings = state.kmip();
        let previous = state.previous_kmip();
        if settings.is_none() && previous.is_none() {
            let reasons = vec![LockReason {
                server: "-".into(),
                class: "config".into(),
                reason: "no KMIP settings are saved; fill in Storage > Encryption with the \
                         servers that hold this volume's key"
                    .into(),
            }];
            put_back(vol);
            self.unlock_failed(&state, reasons);
            return Attempt::Retry;
        }
        // Every key from the servers its header token names, then the configured ones (the
        // saved settings, and the previous ones kept while a key of the volume needs them):
        // in the middle of a move, the old key and the new one live on different servers.
        let mut reasons = Vec::new();
        let mut keys = Vec::new();
        // Keys fetched although no longer Active (Deactivated, or Compromised once confirmed):
        // the content opens read-only (crate::readonly).
        let mut inactive: Vec<(String, KeyState)> = Vec::new();
        for rk in vol.required_keys() {
            let uid = &rk.reference.unique_identifier;
            let accept = keys::key_accept(rk.role, state.read_only().accept_for(uid));
            let mut got = None;
            for (name, cfg) in key_sources(
                settings.as_ref(),
                previous.as_ref(),
                &rk.reference.servers,
                self.inner.opts.timeouts,
            ) {
                let result = Client::new(cfg)
                    .map_err(|e| (e.class().to_owned(), e.to_string()))
                    .and_then(|mut c| {
                        keys::fetch_key_accepting(&mut c, &vol, uid, rk.reference.key_bits, accept)
                            .map_err(|e| {
                                if let KeyError::NotActive { uid, state: s } = &e
                                    && *s == KeyState::COMPROMISED
                                {
                                    state.read_only().note_compromised(uid);
                                }
                                (key_error_class(&e).to_owned(), e.to_string())
                            })
                    });
                match result {
                    Ok((k, ks)) => {
                        let note = if ks == KeyState::ACTIVE {
                            String::new()
                        } else {
                            inactive.push((uid.clone(), ks));
                            format!("; the key is {ks}: the content opens read-only")
                        };
                        state.audit_key(
                            &name,
                            "get",
                            Some(uid),
                            &format!("ok (verified against the header digest{note})"),
                        );
                        got = Some(k);
                        break;
                    }
                    Err((class, reason)) => {
                        tracing::warn!(server = %name, "cannot fetch the volume key: {reason}");
                        state.audit_key(
                            &name,
                            "get",
                            Some(uid),
                            &format!("failed ({class}): {reason}"),
                        );
                        reasons.push(LockReason {
                            server: name,
                            class,
                            reason,
                        });
                    }
                }
            }
            match got {
                Some(k) => keys.push(k),
                None => {
                    put_back(vol);
                    self.unlock_failed(&state, reasons);
                    return Attempt::Retry;
                }
            }
        }
        self.complete_unlock(&state, vol, keys, accept, &inactive)
    }

    /// Unlocks `vol` (taken out of the slot) with its verified keys: the header's MAC first
    /// (a failure holds the volume locked), then the known record, the store, and a
    /// conversion under way resumes. `inactive` names the keys fetched although no longer
    /// Active (the content opens read-only); keys from the recovery key have no such state.
    fn complete_unlock(
        &self,
        state: &AppState,
        vol: Volume,
        keys: Vec<atrest_volume::VolumeKey>,
        accept: bool,
        inactive: &[(String, KeyState)],
    ) -> Attempt {
        let state = state.clone();
        let mut slot = self.inner.slot.lock();
        if !matches!(&*slot, Slot::Unlocking(_)) {
            return Attempt::Done; // stopping
        }
        let decrypting = vol.state() == VolState::Decrypting;
        let unlocked = if accept {
            vol.unlock_accepting_header(keys)
        } else {
            vol.unlock(keys)
        };
        let uv = match unlocked {
            Ok(uv) => uv,
            Err(atrest_volume::Error::HeaderAuth(e)) => {
                // Never resumed by itself: the administrator decides (Resume on the page).
                let reason = format!(
                    "{e}. On this appliance: press Resume on Storage > Encryption (POST \
                     /api/encryption/resume{}) once you know where this header comes from",
                    if decrypting {
                        ", with the admin password: the header asks to decrypt"
                    } else {
                        ""
                    }
                );
                tracing::error!("content volume header: {reason}");
                state.audit(
                    "volume",
                    "appliance",
                    format!("the content volume header failed its authentication: {e}"),
                );
                match Volume::open(self.inner.dev.clone()) {
                    Ok(v) => *slot = Slot::Locked(v),
                    Err(e2) => tracing::error!("cannot reopen the content volume: {e2}"),
                }
                drop(slot);
                self.hold(
                    &state,
                    Hold {
                        class: "header-auth",
                        reason,
                        resumable: true,
                    },
                );
                return Attempt::Hold;
            }
            Err(e) => {
                let reason = format!("the volume could not be unlocked with the fetched key: {e}");
                match Volume::open(self.inner.dev.clone()) {
                    Ok(v) => *slot = Slot::Locked(v),
                    Err(e2) => tracing::error!("cannot reopen the content volume: {e2}"),
                }
                drop(slot);
                self.unlock_failed(
                    &state,
                    vec![LockReason {
                        server: "-".into(),
                        class: "volume".into(),
                        reason,
                    }],
                );
                return Attempt::Retry;
            }
        };
        self.inner.extra.lock().hold = None;
        if accept {
            state.audit(
                "volume",
                "appliance",
                "the administrator accepted the content volume header as it is; it is signed \
                 under the volume key again"
                    .to_string(),
            );
        }
        // Authenticated: this is now what the appliance knows about its volume.
        self.record_known(&uv);
        // Before the store opens: nothing is appended to it while read-only.
        state.read_only().opened();
        if let Some((uid, ks)) = inactive.first() {
            state.enter_read_only(uid, *ks, uv.state() == VolState::Rekeying);
        }
        if inactive.is_empty() {
            self.grow_at_start(&uv);
        }
        if let Err(e) = self.open_store(&state, &uv) {
            tracing::error!("{e}");
            state.set_content(Content::Locked(format!(
                "{e}; the volume is unlocked but its content cannot be read"
            )));
        }
        let vs = uv.state();
        *slot = Slot::Open(uv.clone());
        drop(slot);
        state.apply(Event::Unlocked);
        tracing::info!("content volume unlocked");
        if is_converting(vs) {
            // The record is authenticated (or the administrator accepted it): resume.
            tracing::info!("resuming the {} conversion", vs.as_str());
            self.spawn_convert(uv, state.event_sink());
        }
        crate::readonly::apply_policy(&state);
        Attempt::Done
    }

    pub(super) fn unlock_failed(&self, state: &AppState, reasons: Vec<LockReason>) {
        let summary = reasons
            .iter()
            .map(|r| format!("{}: {}", r.server, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        state.set_content(Content::Locked(format!(
            "the content volume is locked because its key could not be fetched ({summary}); \
             the appliance retries by itself"
        )));
        state.apply(Event::UnlockFailed(reasons));
    }

    /// Unlocks the locked volume with the keys `get` finds in it (the recovery key), with
    /// everything an unlock with keys from the KMIP server does after the fetch. A volume held
    /// locked for the administrator's decision (header authentication, a changed volume) stays
    /// held: Resume or the record decides, not a recovery key.
    pub(crate) fn unlock_with_keys(
        &self,
        get: impl FnOnce(&Volume) -> Result<Vec<atrest_volume::VolumeKey>, crate::recovery::Refusal>,
    ) -> Result<(), crate::recovery::Refusal> {
        use crate::recovery::Refusal;
        let state = self
            .app()
            .ok_or(Refusal::Conflict("the appliance is stopping".into()))?;
        if let Some(h) = &self.inner.extra.lock().hold {
            return Err(Refusal::Conflict(format!(
                "the volume is held locked for your decision, which a recovery key does not \
                 change: {}",
                h.reason
            )));
        }
        // An attempt with the KMIP server may hold the volume meanwhile (the retry loop):
        // wait for it (bounded by its timeouts), then take the volume if it is still locked.
        let deadline = Instant::now() + RECOVERY_UNLOCK_WAIT;
        let vol = loop {
            let mut slot = self.inner.slot.lock();
            let info = match &*slot {
                Slot::Locked(v) => Box::new(v.info()),
                Slot::Unlocking(_) if Instant::now() < deadline => {
                    drop(slot);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Slot::Unlocking(_) => {
                    return Err(Refusal::Conflict(
                        "an unlock attempt with the KMIP server is still under way; try again in \
                         a minute"
                            .into(),
                    ));
                }
                _ => return Err(Refusal::Conflict("the volume is not locked".into())),
            };
            match std::mem::replace(&mut *slot, Slot::Unlocking(info)) {
                Slot::Locked(v) => break v,
                other => {
                    *slot = other;
                    return Err(Refusal::Conflict("the volume is not locked".into()));
                }
            }
        };
        let keys = match get(&vol) {
            Ok(k) => k,
            Err(e) => {
                let mut slot = self.inner.slot.lock();
                if matches!(&*slot, Slot::Unlocking(_)) {
                    *slot = Slot::Locked(vol);
                }
                return Err(e);
            }
        };
        match self.complete_unlock(&state, vol, keys, false, &[]) {
            Attempt::Done if matches!(&*self.inner.slot.lock(), Slot::Open(_)) => Ok(()),
            _ => Err(Refusal::Conflict(
                state
                    .workflow()
                    .lock_reasons
                    .iter()
                    .map(|r| r.reason.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}
