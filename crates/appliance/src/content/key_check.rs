//! The check of the key's state on the KMIP server while unlocked: a key that is no longer
//! Active raises an alert, opens the content read-only, or locks the volume ([`KeyPolicy`]).

use std::sync::atomic::Ordering;

use atrest_kmip::client::Client;
use atrest_kmip::message::State as KeyState;
use atrest_volume::Volume;

use crate::state::AppState;
use crate::status::KeyCheck;
use crate::workflow::{LockReason, State as WfState};

use super::{DataVolume, KeyPolicy, Slot};

impl DataVolume {
    pub(super) fn spawn_key_checks(&self) {
        self.spawn("atrest-key-check", |me| {
            loop {
                me.sleep(me.inner.opts.key_check_interval);
                if me.inner.stop.load(Ordering::Acquire) {
                    break;
                }
                me.check_key_state();
                if let Some(st) = me.app() {
                    crate::keylife::apply_policy(&st);
                }
            }
        });
    }

    /// Checks that the current key is still Active on the KMIP server.
    pub fn check_key_state(&self) {
        let Some(state) = self.app() else { return };
        if state.workflow().state != WfState::Encrypted {
            return;
        }
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => return,
        };
        let Some(settings) = state.kmip() else { return };
        let ids: Vec<String> = uv
            .info()
            .keys
            .iter()
            .map(|k| k.reference.unique_identifier.clone())
            .collect();
        let cfg = settings.client_config(self.inner.opts.timeouts);
        let checked_at = crate::now_rfc3339();
        let mut client = match Client::new(cfg) {
            Ok(c) => c,
            Err(e) => {
                self.note_key_check(KeyCheck {
                    checked_at,
                    ok: false,
                    key_id: None,
                    key_state: None,
                    error: Some(e.to_string()),
                });
                return;
            }
        };
        for id in ids {
            match client.get_attributes(&id, &["State"]) {
                Ok(a) => match a.state() {
                    Some(KeyState::ACTIVE) => {
                        self.note_key_check(KeyCheck {
                            checked_at: checked_at.clone(),
                            ok: true,
                            key_id: Some(id.clone()),
                            key_state: Some("Active".into()),
                            error: None,
                        });
                    }
                    other => {
                        let st = other
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "unknown".into());
                        // Still usable to read, never to write (crate::readonly): a
                        // Deactivated key always, a Compromised one unless the policy locks
                        // (then the unlock waits for the administrator's confirmation).
                        let readable = match other {
                            Some(s) if s == KeyState::DEACTIVATED => true,
                            Some(s) if s == KeyState::COMPROMISED => {
                                self.inner.opts.key_policy == KeyPolicy::Alert
                            }
                            _ => false,
                        };
                        let alert = format!(
                            "the KMIP server reports the volume key {id:?} as {st}, no longer \
                             Active: {}; ask the key manager's administrator, or Rekey to a new \
                             key now",
                            if readable {
                                "the content is read-only (the key may still decrypt, never \
                                 protect new data) until a Rekey"
                            } else if other == Some(KeyState::COMPROMISED) {
                                "the content is locked until the administrator confirms that it \
                                 may be read with this key, to Rekey"
                            } else {
                                "the volume cannot be unlocked at the next start"
                            }
                        );
                        self.note_key_check(KeyCheck {
                            checked_at: checked_at.clone(),
                            ok: false,
                            key_id: Some(id.clone()),
                            key_state: Some(st),
                            error: Some(alert.clone()),
                        });
                        self.raise_alert(&state, &id, alert, !readable);
                        if readable && let Some(s) = other {
                            state.enter_read_only(&id, s, false);
                            crate::readonly::apply_policy(&state);
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!("cannot check the state of the volume key: {e}");
                    self.note_key_check(KeyCheck {
                        checked_at: checked_at.clone(),
                        ok: false,
                        key_id: Some(id.clone()),
                        key_state: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
    }

    fn note_key_check(&self, v: KeyCheck) {
        self.inner.extra.lock().key_check = Some(v);
    }

    /// Records and reports the alert; with `lock` and the policy `lock`, locks the content.
    fn raise_alert(&self, state: &AppState, id: &str, alert: String, lock_it: bool) {
        let new = {
            let mut x = self.inner.extra.lock();
            let new = !x.alerts.contains(&alert);
            if new {
                x.alerts.push(alert.clone());
            }
            new
        };
        if new {
            tracing::error!("{alert}");
            state.audit_key("-", "check-state", Some(id), &format!("alert: {alert}"));
        }
        if lock_it && self.inner.opts.key_policy == KeyPolicy::Lock {
            let mut slot = self.inner.slot.lock();
            if matches!(&*slot, Slot::Open(_)) {
                *slot = Slot::Empty;
                drop(slot);
                match Volume::open(self.inner.dev.clone()) {
                    Ok(v) => {
                        self.set_locked(state, v, alert.clone());
                        self.unlock_failed(
                            state,
                            vec![LockReason {
                                server: "-".into(),
                                class: "not-active".into(),
                                reason: alert,
                            }],
                        );
                        self.spawn_unlock_loop();
                    }
                    Err(e) => tracing::error!("cannot reopen the content volume: {e}"),
                }
            }
        }
    }
}
