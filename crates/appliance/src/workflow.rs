//! The Storage > Encryption workflow as a state machine, free of I/O.
//!
//! States (what GET /api/encryption reports as "state"):
//!
//! ```text
//!            Encrypt (settings tested OK)            Rekey
//!   plain ───────────────────────────▶ encrypting   encrypted ─────▶ rekeying
//!     ▲                                   │  ▲          ▲  │  ▲            │
//!     │ finished                 finished │  │ resumed  │  │  └─ finished ─┘
//!     │                                   ▼  │          │  │ Decrypt
//!  decrypting ◀───────────────────────── encrypted ◀── locked (no key: reason per server)
//! ```
//!
//! - `locked`: the volume is encrypted (or mid-conversion) and its key could not be fetched;
//!   the reason is kept per server. A successful unlock returns to `encrypted`, or to the
//!   conversion that was under way (it resumes).
//! - Requests ([`Request`]) are checked by [`Workflow::check`] before anything is done, and a
//!   refusal says why and what to do. Encrypt needs a passing test of the current settings
//!   (same fingerprint).
//! - Events ([`Event`]) come from the volume side; an event that does not fit the state is
//!   refused ([`Workflow::apply`] returns an error) and changes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kmip_test::TestReport;

/// The appliance's encryption state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The volume is not encrypted.
    Plain,
    /// The volume is being encrypted in place.
    Encrypting,
    /// The volume is encrypted and unlocked.
    Encrypted,
    /// The volume is encrypted (or mid-conversion) and its key could not be fetched yet.
    Locked,
    /// The volume is being re-encrypted under a new key.
    Rekeying,
    /// The volume is being decrypted in place.
    Decrypting,
}

impl State {
    /// The state's name, as GET /api/encryption reports it (`"plain"`, `"encrypting"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Plain => "plain",
            State::Encrypting => "encrypting",
            State::Encrypted => "encrypted",
            State::Locked => "locked",
            State::Rekeying => "rekeying",
            State::Decrypting => "decrypting",
        }
    }

    fn is_converting(self) -> bool {
        matches!(
            self,
            State::Encrypting | State::Rekeying | State::Decrypting
        )
    }
}

/// Progress of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes converted so far.
    pub done_bytes: u64,
    /// Bytes to convert in all.
    pub total_bytes: u64,
    /// `done_bytes` as a percentage of `total_bytes`, 0 to 100 (100 when there is nothing to
    /// convert).
    pub percent: f64,
    /// The recent conversion rate in bytes per second, once measured.
    pub bytes_per_second: Option<f64>,
    /// Seconds left at that rate, rounded up; `None` without a positive rate.
    pub eta_seconds: Option<u64>,
}

impl Progress {
    /// The progress after `done` of `total` bytes at `bytes_per_second`.
    pub fn new(done: u64, total: u64, bytes_per_second: Option<f64>) -> Self {
        let percent = if total == 0 {
            100.0
        } else {
            (done as f64 * 100.0 / total as f64).min(100.0)
        };
        let eta_seconds = bytes_per_second
            .filter(|r| *r > 0.0)
            .map(|r| (total.saturating_sub(done) as f64 / r).ceil() as u64);
        Progress {
            done_bytes: done,
            total_bytes: total,
            percent,
            bytes_per_second,
            eta_seconds,
        }
    }
}

/// Why a server could not give the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReason {
    /// The server (`host:port`), or `-` when the reason is not one server's.
    pub server: String,
    /// A short machine-readable class (`tcp-refused`, `tls-untrusted`, `not-active`,
    /// `wrong-key`, `config`, …).
    pub class: String,
    /// The sentence for a person: what failed and what to do.
    pub reason: String,
}

/// What the administrator (or an API client) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Encrypt the plain volume under a new key from the KMIP server.
    Encrypt,
    /// Re-encrypt the encrypted volume under a new key.
    Rekey,
    /// Decrypt the encrypted volume back to plain.
    Decrypt,
}

impl Request {
    /// The state the volume is in while this request runs.
    pub fn conversion(self) -> State {
        match self {
            Request::Encrypt => State::Encrypting,
            Request::Rekey => State::Rekeying,
            Request::Decrypt => State::Decrypting,
        }
    }
}

/// The facts besides the state that decide whether Encrypt may start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate<'a> {
    /// The fingerprint of the saved KMIP settings, if any are saved.
    pub settings_fingerprint: Option<&'a str>,
    /// The report of the last Save and Test, if any.
    pub last_test: Option<&'a TestReport>,
}

/// What the volume side reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// At start: the volume is plain.
    OpenedPlain,
    /// At start: the volume is encrypted or mid-conversion and not unlocked yet; `pending`
    /// is the conversion under way, if any.
    OpenedEncrypted {
        /// The KMIP Unique Identifier of the key the header names (the newest one).
        key_id: String,
        /// The KMIP servers the header names for that key (`host:port`), in failover order.
        servers: Vec<String>,
        /// The volume's cipher as shown (`aes-xts-plain64 (XTS-AES-256, 512-bit key)`).
        cipher: String,
        /// The conversion under way, if any (a state that is not a conversion is ignored).
        pending: Option<State>,
    },
    /// The key was fetched and verified.
    Unlocked,
    /// No server gave a usable key.
    UnlockFailed(Vec<LockReason>),
    /// A conversion started (after [`Workflow::check`] allowed it).
    Started {
        /// The conversion: [`State::Encrypting`], [`State::Rekeying`] or
        /// [`State::Decrypting`].
        conversion: State,
        /// The Unique Identifier of the key the volume converts to; `None` keeps the known
        /// one.
        key_id: Option<String>,
        /// The KMIP servers holding that key (`host:port`); empty keeps the known ones.
        servers: Vec<String>,
        /// The cipher as shown; `None` keeps the known one.
        cipher: Option<String>,
    },
    /// The conversion under way advanced.
    Progress(Progress),
    /// The conversion finished.
    Finished,
    /// The conversion stopped on an error; it resumes at the next start or request.
    Failed(String),
}

/// The workflow's state and what goes with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    /// The current state.
    pub state: State,
    /// While locked: the conversion that resumes after unlock.
    pub pending: Option<State>,
    /// The progress of the conversion under way, once it reported some.
    pub progress: Option<Progress>,
    /// The KMIP Unique Identifier of the volume's key; `None` while plain.
    pub key_id: Option<String>,
    /// The KMIP servers holding the volume's key (`host:port`), as its header names them.
    pub servers: Vec<String>,
    /// The volume's cipher as shown; `None` while plain.
    pub cipher: Option<String>,
    /// While locked: why each server tried could not give the key (empty once unlocked).
    pub lock_reasons: Vec<LockReason>,
    /// The last conversion error, until the next success.
    pub last_error: Option<String>,
}

impl Default for Workflow {
    fn default() -> Self {
        Workflow {
            state: State::Plain,
            pending: None,
            progress: None,
            key_id: None,
            servers: Vec::new(),
            cipher: None,
            lock_reasons: Vec::new(),
            last_error: None,
        }
    }
}

impl Workflow {
    /// Whether `req` may start now; the refusal is a sentence for a person saying why and
    /// what to do.
    pub fn check(&self, req: Request, gate: Gate<'_>) -> Result<(), String> {
        let busy = |s: State| {
            let p = self
                .progress
                .map(|p| format!(" ({:.0}% done)", p.percent))
                .unwrap_or_default();
            format!(
                "the volume is {}{p}; wait until it finishes, then try again",
                s.as_str()
            )
        };
        if self.state.is_converting() {
            // A conversion that stopped on an error may be resumed by asking for it again.
            if self.last_error.is_some() && req.conversion() == self.state {
                return Ok(());
            }
            return Err(busy(self.state));
        }
        if self.state == State::Locked {
            return Err(format!(
                "the volume is locked: its key could not be fetched ({}); fix the KMIP server or \
                 the settings, the appliance retries by itself",
                self.lock_summary()
            ));
        }
        match req {
            Request::Encrypt => {
                if self.state != State::Plain {
                    return Err(
                        "the volume is already encrypted; use Rekey to change its key".into(),
                    );
                }
                let Some(fp) = gate.settings_fingerprint else {
                    return Err(
                        "no KMIP settings are saved yet; fill in Storage > Encryption \
                                and press Save and Test Changes"
                            .into(),
                    );
                };
                let Some(t) = gate.last_test else {
                    return Err(
                        "the KMIP settings have not been tested; press Save and Test \
                                Changes and fix what fails"
                            .into(),
                    );
                };
                if t.fingerprint != fp {
                    return Err(
                        "the KMIP settings changed since the last test; press Save and \
                                Test Changes again"
                            .into(),
                    );
                }
                if !t.ok {
                    return Err(format!(
                        "the last test of the KMIP settings failed ({}); fix it and press Save \
                         and Test Changes",
                        t.summary
                    ));
                }
                Ok(())
            }
            Request::Rekey | Request::Decrypt => {
                if self.state != State::Encrypted {
                    return Err(format!(
                        "the volume is {}, not encrypted; there is no key to {}",
                        self.state.as_str(),
                        if req == Request::Rekey {
                            "change"
                        } else {
                            "remove"
                        }
                    ));
                }
                Ok(())
            }
        }
    }

    fn lock_summary(&self) -> String {
        if self.lock_reasons.is_empty() {
            return "no server was tried yet".into();
        }
        self.lock_reasons
            .iter()
            .map(|r| format!("{}: {}", r.server, r.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Applies an event from the volume side. An event that does not fit the state is refused
    /// with an internal error sentence and changes nothing.
    pub fn apply(&mut self, ev: Event) -> Result<(), String> {
        let wrong = |s: &Workflow, what: &str| {
            Err(format!(
                "internal: {what} does not fit the state {}",
                s.state.as_str()
            ))
        };
        match ev {
            Event::OpenedPlain => {
                *self = Workflow::default();
            }
            Event::OpenedEncrypted {
                key_id,
                servers,
                cipher,
                pending,
            } => {
                *self = Workflow {
                    state: State::Locked,
                    pending: pending.filter(|p| p.is_converting()),
                    key_id: Some(key_id),
                    servers,
                    cipher: Some(cipher),
                    ..Workflow::default()
                };
            }
            Event::Unlocked => {
                if self.state != State::Locked {
                    return wrong(self, "an unlock");
                }
                self.state = self.pending.take().unwrap_or(State::Encrypted);
                self.lock_reasons.clear();
            }
            Event::UnlockFailed(reasons) => {
                if self.state != State::Locked {
                    return wrong(self, "a failed unlock");
                }
                self.lock_reasons = reasons;
            }
            Event::Started {
                conversion,
                key_id,
                servers,
                cipher,
            } => {
                let ok = matches!(
                    (self.state, conversion),
                    (State::Plain, State::Encrypting)
                        | (State::Encrypted, State::Rekeying)
                        | (State::Encrypted, State::Decrypting)
                ) || self.state == conversion; // resumed
                if !ok {
                    return wrong(self, "starting a conversion");
                }
                self.state = conversion;
                self.progress = None;
                self.last_error = None;
                if key_id.is_some() {
                    self.key_id = key_id;
                }
                if !servers.is_empty() {
                    self.servers = servers;
                }
                if cipher.is_some() {
                    self.cipher = cipher;
                }
            }
            Event::Progress(p) => {
                if !self.state.is_converting() {
                    return wrong(self, "progress");
                }
                self.progress = Some(p);
            }
            Event::Finished => {
                self.state = match self.state {
                    State::Encrypting | State::Rekeying => State::Encrypted,
                    State::Decrypting => {
                        self.key_id = None;
                        self.servers.clear();
                        self.cipher = None;
                        State::Plain
                    }
                    _ => return wrong(self, "a finished conversion"),
                };
                self.progress = None;
                self.last_error = None;
            }
            Event::Failed(why) => {
                if !self.state.is_converting() {
                    return wrong(self, "a failed conversion");
                }
                self.last_error = Some(why);
            }
        }
        Ok(())
    }
}

/// How often a locked appliance tries its KMIP servers again: capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed attempts in a row (1 = the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_stays_capped() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let d: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
    }

    fn report(ok: bool, fp: &str) -> TestReport {
        TestReport {
            ok,
            tested_at: "2025-01-01T00:00:00Z".into(),
            fingerprint: fp.into(),
            summary: if ok {
                "passed".into()
            } else {
                "h:5696: TLS handshake failed: x".into()
            },
            servers: vec![],
        }
    }

    #[test]
    fn encrypt_needs_a_passing_test_of_the_current_settings() {
        let w = Workflow::default();
        let e = w.check(Request::Encrypt, Gate::default()).unwrap_err();
        assert!(e.contains("no KMIP settings"), "{e}");
        let e = w
            .check(
                Request::Encrypt,
                Gate {
                    settings_fingerprint: Some("a"),
                    last_test: None,
                },
            )
            .unwrap_err();
        assert!(e.contains("not been tested"), "{e}");
        let old = report(true, "b");
        let e = w
            .check(
                Request::Encrypt,
                Gate {
                    settings_fingerprint: Some("a"),
                    last_test: Some(&old),
                },
            )
            .unwrap_err();
        assert!(e.contains("changed since the last test"), "{e}");
        let failed = report(false, "a");
        let e = w
            .check(
                Request::Encrypt,
                Gate {
                    settings_fingerprint: Some("a"),
                    last_test: Some(&failed),
                },
            )
            .unwrap_err();
        assert!(e.contains("TLS handshake failed"), "{e}");
        let good = report(true, "a");
        w.check(
            Request::Encrypt,
            Gate {
                settings_fingerprint: Some("a"),
                last_test: Some(&good),
            },
        )
        .unwrap();
    }

    #[test]
    fn full_cycle() {
        let mut w = Workflow::default();
        w.apply(Event::Started {
            conversion: State::Encrypting,
            key_id: Some("k1".into()),
            servers: vec!["h:5696".into()],
            cipher: Some("aes-xts-plain64".into()),
        })
        .unwrap();
        assert_eq!(w.state, State::Encrypting);
        let e = w.check(Request::Encrypt, Gate::default()).unwrap_err();
        assert!(e.contains("encrypting"), "{e}");
        w.apply(Event::Progress(Progress::new(50, 100, Some(10.0))))
            .unwrap();
        assert_eq!(w.progress.unwrap().eta_seconds, Some(5));
        w.apply(Event::Finished).unwrap();
        assert_eq!(w.state, State::Encrypted);
        assert!(w.progress.is_none());
        w.check(Request::Rekey, Gate::default()).unwrap();
        w.apply(Event::Started {
            conversion: State::Decrypting,
            key_id: None,
            servers: vec![],
            cipher: None,
        })
        .unwrap();
        w.apply(Event::Finished).unwrap();
        assert_eq!(w.state, State::Plain);
        assert!(w.key_id.is_none());
    }

    #[test]
    fn locked_then_unlocked_resumes_the_conversion() {
        let mut w = Workflow::default();
        w.apply(Event::OpenedEncrypted {
            key_id: "k".into(),
            servers: vec!["a:5696".into()],
            cipher: "aes-xts-plain64".into(),
            pending: Some(State::Encrypting),
        })
        .unwrap();
        assert_eq!(w.state, State::Locked);
        w.apply(Event::UnlockFailed(vec![LockReason {
            server: "a:5696".into(),
            class: "tcp-refused".into(),
            reason: "connection refused".into(),
        }]))
        .unwrap();
        let e = w.check(Request::Decrypt, Gate::default()).unwrap_err();
        assert!(
            e.contains("locked") && e.contains("connection refused"),
            "{e}"
        );
        w.apply(Event::Unlocked).unwrap();
        assert_eq!(w.state, State::Encrypting);
        assert!(w.lock_reasons.is_empty());
    }

    #[test]
    fn a_failed_conversion_can_be_resumed_by_asking_again() {
        let mut w = Workflow::default();
        w.apply(Event::Started {
            conversion: State::Encrypting,
            key_id: Some("k".into()),
            servers: vec![],
            cipher: None,
        })
        .unwrap();
        assert!(w.check(Request::Encrypt, Gate::default()).is_err());
        w.apply(Event::Failed("disk error".into())).unwrap();
        w.check(Request::Encrypt, Gate::default()).unwrap();
        assert!(w.check(Request::Decrypt, Gate::default()).is_err());
        w.apply(Event::Started {
            conversion: State::Encrypting,
            key_id: None,
            servers: vec![],
            cipher: None,
        })
        .unwrap();
        assert_eq!(w.state, State::Encrypting);
        assert_eq!(w.last_error, None);
        assert_eq!(w.key_id.as_deref(), Some("k"));
    }

    #[test]
    fn events_that_do_not_fit_change_nothing() {
        let mut w = Workflow::default();
        let before = w.clone();
        assert!(w.apply(Event::Unlocked).is_err());
        assert!(w.apply(Event::Finished).is_err());
        assert!(w.apply(Event::Progress(Progress::new(1, 2, None))).is_err());
        assert!(
            w.apply(Event::Started {
                conversion: State::Rekeying,
                key_id: None,
                servers: vec![],
                cipher: None
            })
            .is_err()
        );
        assert_eq!(w, before);
        let e = w.check(Request::Rekey, Gate::default()).unwrap_err();
        assert!(e.contains("plain"), "{e}");
    }
}
