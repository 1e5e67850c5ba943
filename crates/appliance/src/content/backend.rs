//! [`DataVolume`] as the appliance's [`VolumeBackend`]: what the API and the pages ask of the
//! volume (start a conversion, grow, status, Resume, the recovery key, shutdown).

use std::sync::atomic::Ordering;

use atrest_kmip::client::ClientConfig;

use crate::state::{Content, EventSink, VolumeBackend};
use crate::status::{AuditCheck, HoldView, SpaceView, VolumeStatus, VolumeView};
use crate::workflow::Request;

use super::{Attempt, DataVolume, Slot};

impl VolumeBackend for DataVolume {
    fn start(&self, req: Request, kmip: ClientConfig, events: EventSink) -> Result<(), String> {
        let _starting = self.inner.starting.lock();
        // Checked again under the lock: a conversion another request started meanwhile wins.
        if let Some(state) = self.app() {
            state.check(req)?;
        }
        let uv = self.begin(req, kmip, &events)?;
        self.spawn_convert(uv, events);
        Ok(())
    }

    fn set_full_conversion(&self, full: bool) -> Result<(), String> {
        let marker = self.full_marker();
        let r = if full {
            crate::files::write_private(
                &marker,
                b"the next conversion overwrites the free space too\n",
            )
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        r.map_err(|e| {
            format!(
                "cannot record the conversion's scope in {} ({e})",
                marker.display()
            )
        })
    }

    fn grow(&self) -> Result<(u64, u64), String> {
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => {
                return Err(
                    "the content volume is locked; it can grow once it is unlocked (the \
                            grown header is signed under its key)"
                        .into(),
                );
            }
        };
        self.grow_volume(&uv, "on request")
    }

    fn status(&self) -> VolumeStatus {
        let (vol, store_space, growable) = match &*self.inner.slot.lock() {
            Slot::Open(uv) => {
                let i = uv.info();
                (Some(i), true, uv.growable().unwrap_or(0))
            }
            Slot::Locked(v) => (Some(v.info()), false, 0),
            Slot::Unlocking(i) => (Some((**i).clone()), false, 0),
            Slot::Empty => (None, false, 0),
        };
        let space = if store_space {
            self.app().and_then(|s| match s.content() {
                Content::Ready(st) => {
                    let sp = st.space();
                    let path = &self.inner.opts.path;
                    Some(SpaceView {
                        capacity: sp.capacity,
                        used: sp.used,
                        reserve: sp.reserve,
                        filesystem_free: path
                            .metadata()
                            .is_ok_and(|m| m.is_file())
                            .then(|| crate::hostspace::free_bytes(path))
                            .flatten(),
                        growable,
                    })
                }
                _ => None,
            })
        } else {
            None
        };
        let x = self.inner.extra.lock();
        let rotation = vol
            .as_ref()
            .and_then(|i| self.rotation_view(&x.rotation, i));
        VolumeStatus {
            volume: vol.map(|i| VolumeView {
                path: self.shown_path(),
                state: i.state.as_str().into(),
                data_size: i.data_size,
                sector_size: i.sector_size,
                key_bits: i.key_bits,
                uuid: i.uuid,
            }),
            space,
            last_conversion: x.last_conversion.clone(),
            key_check: x.key_check.clone(),
            alerts: x.alerts.clone(),
            next_retry_at: x.next_retry_at.clone(),
            hold: x.hold.as_ref().map(|h| HoldView {
                class: h.class.into(),
                reason: h.reason.clone(),
                resume: h.resumable,
            }),
            unlock_attempts: self.unlock_attempts(),
            audit: x.audit.clone(),
            rotation,
        }
    }

    fn resume(&self, _events: EventSink) -> Result<(), String> {
        let hold = self.inner.extra.lock().hold.clone();
        match hold {
            Some(h) if !h.resumable => Err(format!("Resume cannot lift this lock: {}", h.reason)),
            Some(_) => match self.try_unlock(true) {
                Attempt::Done => Ok(()),
                _ => Err(self
                    .inner
                    .extra
                    .lock()
                    .hold
                    .as_ref()
                    .map(|h| h.reason.clone())
                    .unwrap_or_else(|| {
                        "the volume's key could not be fetched; see the reasons per server".into()
                    })),
            },
            None => Err(
                "there is nothing to resume: the volume is not held locked by a header that \
                 needs the administrator's decision"
                    .into(),
            ),
        }
    }

    fn recovery(
        &self,
        op: crate::recovery::Op,
    ) -> Result<crate::recovery::Outcome, crate::recovery::Refusal> {
        crate::recovery::run(self, op)
    }

    fn note_audit_check(&self, check: AuditCheck) {
        // GET /api/encryption's warnings (and the page) carry it from here.
        if let Some(w) = check.warning() {
            tracing::error!("{w}");
        }
        self.inner.extra.lock().audit = Some(check);
    }

    fn key_servers(&self) -> Vec<String> {
        let info = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.info(),
            Slot::Locked(v) => v.info(),
            Slot::Unlocking(i) => (**i).clone(),
            Slot::Empty => return Vec::new(),
        };
        info.keys
            .iter()
            .flat_map(|k| k.reference.servers.clone())
            .collect()
    }

    fn retry_now(&self) {
        let (m, cv) = &self.inner.wake;
        *m.lock() += 1;
        cv.notify_all();
    }

    fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.retry_now();
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for h in threads {
            let _ = h.join();
        }
        // Detach: the content is no longer served and another appliance may take the volume.
        if let Some(state) = self.app() {
            state.set_content(Content::Locked(
                "the appliance is stopping; try again once it is back".into(),
            ));
        }
        *self.inner.slot.lock() = Slot::Empty;
        self.inner.lock_file.lock().take();
    }
}
