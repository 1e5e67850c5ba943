//! Scheduled rotation: the scheduler's clock, its memory between looks, and the look itself
//! ([`DataVolume::rotation_tick`]), which starts a Rekey once the current key is as old as the
//! rotation interval.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use atrest_volume::State as VolState;

use crate::state::VolumeBackend;
use crate::status::RotationView;
use crate::workflow::{Request, State as WfState};

use super::{DataVolume, Slot};

/// "Now" for the rotation scheduler: the system clock, or a clock a test moves.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> time::OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system clock (UTC).
    pub fn system() -> Clock {
        Clock(Arc::new(time::OffsetDateTime::now_utc))
    }

    /// A clock that answers `f()`.
    pub fn new(f: impl Fn() -> time::OffsetDateTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    /// The time now, by this clock.
    pub fn now(&self) -> time::OffsetDateTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// What one look of the rotation scheduler did ([`DataVolume::rotation_tick`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationTick {
    /// No rotation interval is set, or the volume has no key to rotate.
    Off,
    /// The current key is younger than the interval.
    NotDue,
    /// Not now: the volume is locked or another conversion runs (why, for a person).
    Busy(String),
    /// A failed attempt is retried later (backoff).
    Waiting,
    /// The Rekey started.
    Started,
    /// The Rekey could not start (why); retried after the backoff.
    Failed(String),
}

/// The scheduler's memory between looks.
#[derive(Debug, Default, Clone)]
pub(super) struct Rotation {
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this (backoff after a failure).
    retry_at: Option<time::OffsetDateTime>,
    /// When the scheduler last started a Rekey: never another within one interval.
    last_started: Option<time::OffsetDateTime>,
    last_error: Option<String>,
}

fn rfc3339(t: time::OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl DataVolume {
    pub(super) fn spawn_rotation(&self) {
        self.spawn("atrest-rotation", |me| {
            loop {
                me.sleep(me.inner.opts.rotation_check_interval);
                if me.inner.stop.load(Ordering::Acquire) {
                    break;
                }
                let t = me.rotation_tick();
                tracing::debug!("rotation check: {t:?}");
            }
        });
    }

    /// When the current key of `info` is due for rotation under `interval` seconds: its
    /// `created` plus the interval, and never within one interval of the scheduler's last
    /// start. None when the volume has no current key (plain, or converting).
    fn rotation_due(
        &self,
        info: &atrest_volume::VolumeInfo,
        rot: &Rotation,
        interval: u64,
    ) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        if info.state != VolState::Encrypted {
            return None;
        }
        let current = info.keys.iter().find(|k| k.role == "current")?;
        let created = time::OffsetDateTime::parse(
            &current.reference.created,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        let since = rot.last_started.map_or(created, |s| s.max(created));
        let step = time::Duration::seconds(i64::try_from(interval).unwrap_or(i64::MAX / 2));
        Some((created, since.saturating_add(step)))
    }

    pub(super) fn rotation_view(
        &self,
        rot: &Rotation,
        info: &atrest_volume::VolumeInfo,
    ) -> Option<RotationView> {
        let current = info.keys.iter().find(|k| k.role == "current")?;
        let interval = self
            .app()
            .and_then(|s| s.keylife().get().policy.rotation_interval_seconds);
        let now = self.inner.opts.clock.now();
        let created = time::OffsetDateTime::parse(
            &current.reference.created,
            &time::format_description::well_known::Rfc3339,
        )
        .ok();
        let next = interval
            .and_then(|i| self.rotation_due(info, rot, i))
            .map(|(_, due)| rot.retry_at.map_or(due, |r| r.max(due)));
        Some(RotationView {
            interval_seconds: interval,
            key_created: Some(current.reference.created.clone()).filter(|c| !c.is_empty()),
            key_age_seconds: created.map(|c| (now - c).whole_seconds().max(0) as u64),
            next_rotation_at: next.and_then(rfc3339),
            last_error: rot.last_error.clone(),
        })
    }

    /// One look of the rotation scheduler: starts a Rekey when the policy has a rotation
    /// interval, the current key is at least that old, the volume is unlocked and no other
    /// conversion runs, and no failed attempt waits for its backoff. Every start and failure
    /// is audited (`operation=rotate`).
    pub fn rotation_tick(&self) -> RotationTick {
        let Some(state) = self.app() else {
            return RotationTick::Off;
        };
        let Some(interval) = state.keylife().get().policy.rotation_interval_seconds else {
            self.inner.extra.lock().rotation = Rotation::default();
            return RotationTick::Off;
        };
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => return RotationTick::Busy("the volume is locked".into()),
        };
        let wf = state.workflow().state;
        if wf != WfState::Encrypted || uv.state() != VolState::Encrypted {
            return if wf == WfState::Plain && uv.state() == VolState::Plain {
                RotationTick::Off
            } else {
                RotationTick::Busy(format!("the volume is {}", wf.as_str()))
            };
        }
        let now = self.inner.opts.clock.now();
        let info = uv.info();
        let rot = self.inner.extra.lock().rotation.clone();
        let Some((created, due)) = self.rotation_due(&info, &rot, interval) else {
            return RotationTick::Off;
        };
        if now < due {
            return RotationTick::NotDue;
        }
        if rot.retry_at.is_some_and(|r| now < r) {
            return RotationTick::Waiting;
        }
        let old = info.key_id.clone();
        let age = (now - created).whole_seconds();
        let settings = state.kmip();
        let server = settings
            .as_ref()
            .and_then(|k| k.servers.first().map(|s| s.to_string()))
            .unwrap_or_else(|| "-".into());
        let started = match settings {
            None => Err("no KMIP settings are saved; fill in Storage > Encryption".to_string()),
            Some(k) => self.start(
                Request::Rekey,
                k.client_config(state.config().kmip_timeouts),
                state.event_sink(),
            ),
        };
        match started {
            Ok(()) => {
                self.inner.extra.lock().rotation = Rotation {
                    last_started: Some(now),
                    ..Rotation::default()
                };
                state.audit_key(
                    &server,
                    "rotate",
                    old.as_deref(),
                    &format!(
                        "started (scheduled: the key is {age} s old, the rotation interval is \
                         {interval} s)"
                    ),
                );
                RotationTick::Started
            }
            Err(e) => {
                let failures = rot.failures.saturating_add(1);
                let wait = self.inner.opts.backoff.delay(failures);
                let retry = now + wait;
                let msg = format!(
                    "the scheduled rotation could not start: {e}; it is tried again at {} (or \
                     press Rekey)",
                    rfc3339(retry).unwrap_or_default()
                );
                tracing::warn!("{msg}");
                state.audit_key(
                    &server,
                    "rotate",
                    old.as_deref(),
                    &format!("failed: {e}; retried in {} s", wait.as_secs()),
                );
                self.inner.extra.lock().rotation = Rotation {
                    failures,
                    retry_at: Some(retry),
                    last_started: rot.last_started,
                    last_error: Some(msg.clone()),
                };
                RotationTick::Failed(msg)
            }
        }
    }
}
