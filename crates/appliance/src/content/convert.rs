//! Conversions: starting Encrypt, Rekey and Decrypt (creating the new key on the KMIP server
//! and committing the header), and the background thread that converts the volume at the
//! configured pace, then records, audits and retires what the finished conversion leaves.

use std::time::{Duration, Instant};

use atrest_kmip::client::{Client, ClientConfig};
use atrest_kmip::message::RevocationReasonCode;
use atrest_volume::{ConvertOptions, EncryptOptions, State as VolState, UnlockedVolume};

use crate::known::Known;
use crate::state::{Content, EventSink};
use crate::status::LastConversion;
use crate::workflow::{Event, Progress, Request, State as WfState};
use atrest_keys as keys;

use super::unlock::key_error_class;
use super::{DataVolume, Slot, cipher_text, is_converting, wf_state};

/// The volume state a request converts in.
fn wf_vol(req: Request) -> VolState {
    match req {
        Request::Encrypt => VolState::Encrypting,
        Request::Rekey => VolState::Rekeying,
        Request::Decrypt => VolState::Decrypting,
    }
}

/// What a finished conversion says: the rate is over the bytes of this run (a resumed
/// conversion did the rest before), the whole volume beside it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RunSummary<'a> {
    kind: &'a str,
    /// Bytes of the volume in their new form.
    total: u64,
    /// Bytes converted by this run.
    run: u64,
    secs: f64,
}

impl RunSummary<'_> {
    fn rate(&self) -> Option<f64> {
        (self.secs > 0.0 && self.run > 0).then(|| self.run as f64 / self.secs)
    }

    fn text(&self) -> String {
        let mut t = format!(
            "{} finished: {} bytes in {:.1} s",
            self.kind, self.run, self.secs
        );
        if let Some(r) = self.rate() {
            t.push_str(&format!(" ({:.0} bytes/s)", r));
        }
        if self.run != self.total {
            t.push_str(&format!(
                "; resumed, {} bytes of {} were done before",
                self.total.saturating_sub(self.run),
                self.total
            ));
        }
        t
    }
}

impl DataVolume {
    pub(super) fn begin(
        &self,
        req: Request,
        kmip: ClientConfig,
        events: &EventSink,
    ) -> Result<UnlockedVolume, String> {
        let state = self.app().ok_or("the appliance is stopping")?;
        let uv = match &*self.inner.slot.lock() {
            Slot::Open(uv) => uv.clone(),
            _ => {
                return Err("the content volume is locked; wait until it is unlocked".into());
            }
        };
        let server = kmip
            .servers
            .first()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let bits = self.inner.opts.key_bits;
        let eopts = EncryptOptions {
            pbkdf2_iterations: self.inner.opts.digest_iterations,
            ..EncryptOptions::default()
        };
        if wf_state(uv.state()) == req.conversion() {
            // The conversion stopped on an error: resume it where the header says.
            tracing::info!("resuming the {} conversion", uv.state().as_str());
            let info = uv.info();
            events(Event::Started {
                conversion: req.conversion(),
                key_id: info.key_id.clone(),
                servers: info.servers.clone(),
                cipher: cipher_text(info.cipher.as_deref(), info.key_bits),
            });
            return Ok(uv);
        }
        let conversion = match req {
            Request::Encrypt | Request::Rekey => {
                let op = if req == Request::Encrypt {
                    "create"
                } else {
                    "rekey"
                };
                let mut client = Client::new(kmip).map_err(|e| {
                    state.audit_key(&server, op, None, &format!("failed ({}): {e}", e.class()));
                    format!("cannot reach the KMIP server to create the volume key: {e}")
                })?;
                let info = uv.info();
                let current = (req == Request::Rekey)
                    .then_some(info.key_id.as_deref())
                    .flatten();
                let generation = keys::next_generation(&mut client, &info.uuid, current);
                let appliance = &self.inner.opts.appliance_name;
                let name = keys::volume_key_name(appliance, &info.uuid, generation);
                let group = keys::volume_key_group(appliance);
                let nk =
                    keys::create_volume_key_in_group(&mut client, bits, Some(&name), Some(&group))
                        .map_err(|e| {
                            state.audit_key(
                                &server,
                                op,
                                None,
                                &format!("failed ({}): {e}", key_error_class(&e)),
                            );
                            format!("the volume key could not be created: {e}")
                        })?;
                let server = client
                    .connection_info()
                    .map(|c| c.server.to_string())
                    .unwrap_or(server);
                let uid = nk.reference.unique_identifier.clone();
                state.audit_key(&server, op, Some(&uid), "ok (created, activated, fetched)");
                let before = uv.info();
                let begun = Known::before(&before, wf_vol(req), Some(&uid))
                    .save(&self.inner.opts.known)
                    .map_err(atrest_volume::Error::State)
                    .and_then(|()| {
                        if req == Request::Encrypt {
                            uv.begin_encrypt(nk.material, nk.reference, &eopts)
                        } else {
                            // Renews or removes the recovery key in the same header commit.
                            crate::recovery::begin_rekey(
                                self,
                                &uv,
                                nk.material,
                                nk.reference,
                                &eopts,
                            )
                        }
                    });
                self.record_known(&uv);
                self.reseal_audit(&uv);
                if let Err(e) = begun {
                    // The new key is of no use: take it off the server again.
                    let r = client
                        .revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
                        .and_then(|_| client.destroy(&uid));
                    state.audit_key(
                        &server,
                        "destroy",
                        Some(&uid),
                        &match &r {
                            Ok(()) => "ok (unused new key)".to_string(),
                            Err(e) => format!("failed ({}): {e}", e.class()),
                        },
                    );
                    return Err(format!("the conversion could not start: {e}"));
                }
                if req == Request::Rekey {
                    crate::recovery::audit_rekey(self, &state, &uid);
                }
                if req == Request::Encrypt {
                    WfState::Encrypting
                } else {
                    WfState::Rekeying
                }
            }
            Request::Decrypt => {
                Known::before(&uv.info(), VolState::Decrypting, None)
                    .save(&self.inner.opts.known)
                    .map_err(|e| format!("decryption could not start: {e}"))?;
                let begun = uv.begin_decrypt();
                self.record_known(&uv);
                self.reseal_audit(&uv);
                begun.map_err(|e| format!("decryption could not start: {e}"))?;
                state.audit_key(
                    &server,
                    "decrypt",
                    uv.info().key_id.as_deref(),
                    "ok (decryption started; the key stays on the server)",
                );
                WfState::Decrypting
            }
        };
        let info = uv.info();
        events(Event::Started {
            conversion,
            key_id: info.key_id.clone(),
            servers: info.servers.clone(),
            cipher: cipher_text(info.cipher.as_deref(), info.key_bits),
        });
        self.inner.extra.lock().alerts.clear();
        Ok(uv)
    }

    pub(super) fn spawn_convert(&self, uv: UnlockedVolume, events: EventSink) {
        self.spawn("atrest-convert", move |me| {
            let opts = ConvertOptions {
                chunk_size: me.inner.opts.chunk_size,
                threads: me.inner.opts.threads,
                stop: Some(me.inner.stop.clone()),
            };
            let kind = uv.state();
            // The key(s) this conversion retires when it finishes: the old key of a Rekey,
            // the key of a Decrypt.
            let info = uv.info();
            let retiring: Vec<(String, Vec<String>)> = info
                .keys
                .iter()
                .filter(|k| match kind {
                    VolState::Rekeying => k.role == "old",
                    VolState::Decrypting => true,
                    _ => false,
                })
                .map(|k| {
                    (
                        k.reference.unique_identifier.clone(),
                        k.reference.servers.clone(),
                    )
                })
                .collect();
            // A resumed conversion starts part-way: its rate counts this run's bytes only.
            let start_done = uv.info().progress.map_or(0, |p| p.done);
            let started = Instant::now();
            let started_at = crate::now_rfc3339();
            let mut last = None;
            let mut first_done = None;
            let max_rate = me.inner.opts.max_rate.filter(|r| *r > 0);
            // Used-space-only unless the administrator asked to overwrite the free space too
            // (or the store is not open: then every byte, which is always right).
            let used = if me.full_marker().exists() {
                None
            } else {
                me.app().and_then(|st| match st.content() {
                    Content::Ready(store) => Some(store.used_ranges()),
                    _ => None,
                })
            };
            if used.is_none() {
                tracing::info!("the {} converts every byte of the volume", kind.as_str());
            }
            let r = uv.convert_with(&opts, used.clone(), &mut |p| {
                let run_done = p.done - *first_done.get_or_insert(p.done);
                let mut rate = (p.bytes_per_sec > 0.0).then_some(p.bytes_per_sec);
                if let Some(max) = max_rate {
                    // Hold the next chunk back until this run is within the rate.
                    let due = Duration::from_secs_f64(run_done as f64 / max as f64);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        me.sleep((due - elapsed).min(Duration::from_secs(10)));
                    }
                    let secs = started.elapsed().as_secs_f64();
                    if run_done > 0 && secs > 0.0 {
                        rate = Some(run_done as f64 / secs);
                    }
                }
                let prog = Progress::new(p.done, p.total, rate);
                last = Some(prog);
                events(Event::Progress(prog));
            });
            me.record_known(&uv);
            me.reseal_audit(&uv);
            match r {
                Ok(s) if !is_converting(s) => {
                    let secs = started.elapsed().as_secs_f64();
                    let total = last.map(|p| p.total_bytes).unwrap_or(0);
                    let run = last.map_or(0, |p| p.done_bytes).saturating_sub(start_done);
                    let done = RunSummary {
                        kind: kind.as_str(),
                        total,
                        run,
                        secs,
                    };
                    me.inner.extra.lock().last_conversion = Some(LastConversion {
                        kind: kind.as_str().to_string(),
                        started_at: started_at.clone(),
                        finished_at: crate::now_rfc3339(),
                        bytes: total,
                        run_bytes: run,
                        seconds: secs,
                        bytes_per_sec: done.rate(),
                        percent: 100.0,
                        full: used.is_none(),
                    });
                    // The choice was for this conversion only.
                    let _ = std::fs::remove_file(me.full_marker());
                    events(Event::Finished);
                    if let Some(st) = me.app() {
                        if matches!(kind, VolState::Rekeying | VolState::Decrypting) {
                            st.leave_read_only(&format!(
                                "{} finished: the data no longer depends on the old key",
                                kind.as_str()
                            ));
                        }
                        st.audit("volume", "appliance", done.text());
                        crate::keylife::retire(&st, retiring);
                        let servers: Vec<String> = uv
                            .info()
                            .keys
                            .iter()
                            .flat_map(|k| k.reference.servers.clone())
                            .collect();
                        st.forget_previous_kmip(&servers);
                    }
                    tracing::info!("{} finished", kind.as_str());
                }
                Ok(_) => tracing::info!("conversion paused; it resumes at the next start"),
                Err(e) => {
                    tracing::error!("conversion stopped: {e}");
                    events(Event::Failed(format!(
                        "the conversion stopped: {e}; it resumes at the next start of the \
                         appliance"
                    )));
                }
            }
        });
    }
}

#[cfg(test)]
mod run_summary_tests {
    #[test]
    fn a_resumed_conversion_reports_the_rate_of_its_own_run() {
        let r = super::RunSummary {
            kind: "encrypting",
            total: 2_000_000_000,
            run: 100_000_000,
            secs: 0.5,
        };
        assert_eq!(r.rate(), Some(200_000_000.0));
        let t = r.text();
        assert!(
            t.starts_with("encrypting finished: 100000000 bytes in 0.5 s (200000000 bytes/s)"),
            "{t}"
        );
        assert!(
            t.contains("1900000000 bytes of 2000000000 were done before"),
            "{t}"
        );
        let whole = super::RunSummary {
            run: 2_000_000_000,
            ..r
        };
        assert!(!whole.text().contains("resumed"));
    }
}
