//! The appliance's shared state: admin account, sessions, KMIP settings, last test, workflow.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atrest_kmip::client::{ClientConfig, Timeouts};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::auth::{Admin, PBKDF2_ITERATIONS, Sessions};
use crate::files;
use crate::kmip_config::KmipSettings;
use crate::kmip_test::TestReport;
use crate::login::{LoginLimits, LoginThrottle};
use crate::workflow::{Event, Gate, Request, Workflow};

/// Settings of the appliance.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The data directory: admin account, HTTPS certificate, KMIP settings.
    pub data_dir: PathBuf,
    /// PBKDF2 iterations for new admin password hashes.
    pub pbkdf2_iterations: u32,
    /// Timeouts of KMIP requests (the test and the key operations).
    pub kmip_timeouts: Timeouts,
    /// Throttling of admin password checks.
    pub login: LoginLimits,
    /// Connection, upload and shutdown limits (docs/workflow.md, "Limits and timeouts").
    pub limits: crate::limits::Limits,
    /// Syslog receivers of key and admin events (none: not sent).
    pub syslog: Vec<crate::syslog::Target>,
}

impl AppConfig {
    /// The defaults for `data_dir`: no syslog, the default limits and timeouts.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        AppConfig {
            data_dir: data_dir.into(),
            pbkdf2_iterations: PBKDF2_ITERATIONS,
            kmip_timeouts: Timeouts::default(),
            login: LoginLimits::default(),
            limits: crate::limits::Limits::default(),
            syslog: Vec::new(),
        }
    }
}

/// Where workflow events go.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// The data volume seen from the workflow: starts conversions that run in the background and
/// report through the sink.
pub trait VolumeBackend: Send + Sync + 'static {
    /// Starts `req` with the KMIP settings `kmip` (Encrypt creates, activates and gets a new
    /// key; Rekey the same for the new key; Decrypt needs the current key). Returns once the
    /// conversion is under way, or why it could not start.
    fn start(&self, req: Request, kmip: ClientConfig, events: EventSink) -> Result<(), String>;

    /// What the volume side adds to GET /api/encryption (volume, last conversion, key checks).
    fn status(&self) -> crate::status::VolumeStatus {
        crate::status::VolumeStatus::default()
    }

    /// The administrator's Resume of a volume held locked because its header failed its
    /// authentication: fetches the key(s), accepts the header as it is (signed anew), unlocks
    /// and resumes the conversion it records. Returns why not, for a person.
    fn resume(&self, events: EventSink) -> Result<(), String> {
        let _ = events;
        Err("this appliance has no data volume to resume".into())
    }

    /// Whether the next conversion (and its resumption after a restart) also overwrites the
    /// free space (`full`), or converts only the space the content store has in use.
    fn set_full_conversion(&self, full: bool) -> Result<(), String> {
        let _ = full;
        Ok(())
    }

    /// The KMIP servers every key in the volume header names.
    fn key_servers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Extends the data segment to the size of the device (POST /api/volume/grow), after the
    /// disk or image grew: the data sizes before and after (equal when it did not grow), or
    /// why not, for a person.
    fn grow(&self) -> Result<(u64, u64), String> {
        Err("this appliance has no data volume to grow".into())
    }

    /// The recovery key (crate::recovery): status, add, remove, unlock with it.
    fn recovery(
        &self,
        op: crate::recovery::Op,
    ) -> Result<crate::recovery::Outcome, crate::recovery::Refusal> {
        let _ = op;
        Err(crate::recovery::Refusal::Conflict(
            "this appliance has no data volume".into(),
        ))
    }

    /// Asks the next unlock attempt to run now (the KMIP settings changed).
    fn retry_now(&self) {}

    /// Records the result of a check of the audit history (GET /api/audit/verify).
    fn note_audit_check(&self, check: crate::status::AuditCheck) {
        let _ = check;
    }

    /// Stops background work (a conversion stops after its current chunk and resumes at the
    /// next start).
    fn shutdown(&self) {}
}

/// The content store as the content endpoints see it.
#[derive(Debug, Clone, Default)]
pub enum Content {
    /// No data volume is attached.
    #[default]
    Detached,
    /// The volume is locked; the reason for a person.
    Locked(String),
    /// The store is open.
    Ready(atrest_store::Store),
}

/// Audit events kept in memory while the store is not available (oldest dropped past this).
pub const MAX_QUEUED_AUDIT: usize = 1000;

pub(crate) struct Inner {
    pub config: AppConfig,
    pub admin: Admin,
    pub login: LoginThrottle,
    pub sessions: Sessions,
    pub kmip: Mutex<Option<KmipSettings>>,
    pub last_test: Mutex<Option<TestReport>>,
    pub workflow: Mutex<Workflow>,
    pub test_lock: tokio::sync::Mutex<()>,
    pub backend: Mutex<Option<Arc<dyn VolumeBackend>>>,
    pub content: Mutex<Content>,
    pub audit_queue: Mutex<Vec<atrest_store::NewEvent>>,
    pub uploads: crate::limits::Uploads,
    pub keylife: crate::keylife::KeyLifeStore,
    pub metrics: crate::metrics::Metrics,
    pub syslog: crate::syslog::Syslog,
    pub read_only: crate::readonly::ReadOnlyState,
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// What opening the state did.
#[derive(Debug)]
pub struct Opened {
    /// The appliance's state, with no volume attached yet.
    pub state: AppState,
    /// The admin password generated on this (first) start.
    pub generated_password: Option<Zeroizing<String>>,
}

impl AppState {
    /// Opens (or initialises) the data directory.
    pub fn open(config: AppConfig) -> Result<Opened, String> {
        let dir = &config.data_dir;
        files::private_dir(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
        let admin = Admin::open_or_create(dir, config.pbkdf2_iterations)
            .map_err(|e| format!("cannot open the admin account in {}: {e}", dir.display()))?;
        let kmip = KmipSettings::load(dir)?;
        let last_test = load_last_test(dir);
        let login = LoginThrottle::new(config.login);
        let uploads = crate::limits::Uploads::new(config.limits.max_uploads);
        let keylife = crate::keylife::KeyLifeStore::open(dir)?;
        let state = AppState {
            inner: Arc::new(Inner {
                uploads,
                keylife,
                metrics: crate::metrics::Metrics::default(),
                syslog: crate::syslog::Syslog::start_in(
                    &config.syslog,
                    Some(&config.data_dir.join(crate::syslog::SPOOL_DIR)),
                ),
                config,
                login,
                admin: admin.admin,
                sessions: Sessions::default(),
                kmip: Mutex::new(kmip),
                last_test: Mutex::new(last_test),
                workflow: Mutex::new(Workflow::default()),
                test_lock: tokio::sync::Mutex::new(()),
                backend: Mutex::new(None),
                content: Mutex::new(Content::Detached),
                audit_queue: Mutex::new(Vec::new()),
                read_only: Default::default(),
            }),
        };
        Ok(Opened {
            state,
            generated_password: admin.generated,
        })
    }

    /// The settings the appliance was started with.
    pub fn config(&self) -> &AppConfig {
        &self.inner.config
    }

    /// The recording upload slots.
    pub fn uploads(&self) -> &crate::limits::Uploads {
        &self.inner.uploads
    }

    /// The record of the keys' life: policy and old keys.
    pub fn keylife(&self) -> &crate::keylife::KeyLifeStore {
        &self.inner.keylife
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// Attaches the data volume.
    pub fn set_backend(&self, b: Arc<dyn VolumeBackend>) {
        *self.inner.backend.lock() = Some(b);
    }

    pub(crate) fn backend(&self) -> Option<Arc<dyn VolumeBackend>> {
        self.inner.backend.lock().clone()
    }

    /// A handle that does not keep the state alive (for background threads).
    pub fn downgrade(&self) -> WeakAppState {
        WeakAppState(Arc::downgrade(&self.inner))
    }

    /// The content store as the content endpoints see it.
    pub fn content(&self) -> Content {
        self.inner.content.lock().clone()
    }

    /// Sets what the content endpoints see; a store that becomes ready receives the audit
    /// events queued meanwhile.
    pub fn set_content(&self, c: Content) {
        let ready = matches!(c, Content::Ready(_));
        *self.inner.content.lock() = c;
        if ready {
            self.flush_audit();
        }
    }

    /// Appends an event to the audit history, or queues it until the store is available.
    pub fn audit(&self, kind: &str, actor: &str, text: String) {
        let severity =
            if text.contains("failed") || text.contains("alert") || text.contains("refused") {
                crate::syslog::Severity::Warning
            } else {
                crate::syslog::Severity::Notice
            };
        self.inner.syslog.send(severity, kind, actor, &text);
        if kind != AUDIT_KEY_KIND && self.read_only().get().is_some() {
            // Not appended until the content is writable again: the process log has it now.
            tracing::info!(target: "atrest::audit", kind, actor, "{text}");
        }
        let ev = atrest_store::NewEvent {
            time: atrest_store::Timestamp::now(),
            session: AUDIT_SESSION.into(),
            actor: actor.into(),
            kind: kind.into(),
            text,
        };
        {
            let mut q = self.inner.audit_queue.lock();
            if q.len() >= MAX_QUEUED_AUDIT {
                q.remove(0);
            }
            q.push(ev);
        }
        self.flush_audit();
    }

    /// Records one key operation: server, operation, key id and result (never key material).
    pub fn audit_key(&self, server: &str, operation: &str, key_id: Option<&str>, result: &str) {
        let text = format!(
            "server={server} operation={operation} key_id={} result={result}",
            key_id.unwrap_or("-")
        );
        tracing::info!(target: "atrest::audit", "{text}");
        self.audit(AUDIT_KEY_KIND, "appliance", text);
    }

    fn flush_audit(&self) {
        let Content::Ready(store) = self.content() else {
            return;
        };
        // Read-only content: kept until the Rekey that ends it (crate::readonly).
        if self.read_only().get().is_some() {
            return;
        }
        let events = std::mem::take(&mut *self.inner.audit_queue.lock());
        if events.is_empty() {
            return;
        }
        if let Err(e) = store.audit().append_batch(&events) {
            tracing::warn!("cannot write {} audit event(s): {e}", events.len());
            let mut q = self.inner.audit_queue.lock();
            let mut back = events;
            back.append(&mut q);
            back.truncate(MAX_QUEUED_AUDIT);
            *q = back;
        }
    }

    /// Appends the audit events queued meanwhile (after the content became writable again).
    pub(crate) fn flush_queued_audit(&self) {
        self.flush_audit();
    }

    pub(crate) fn admin(&self) -> &Admin {
        &self.inner.admin
    }

    /// The throttle every admin password check goes through.
    /// The syslog senders of key and admin events.
    pub fn syslog(&self) -> &crate::syslog::Syslog {
        &self.inner.syslog
    }

    /// The counters `GET /metrics` shows.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The throttle every admin password check goes through.
    pub fn login_throttle(&self) -> &LoginThrottle {
        &self.inner.login
    }

    /// Checks a re-entered admin password before a destructive action (see
    /// [`crate::login::verify_admin_password`]): 403 when wrong, 429 when `peer` is throttled.
    pub async fn verify_admin_password(
        &self,
        peer: std::net::IpAddr,
        password: Zeroizing<String>,
    ) -> Result<(), crate::ApiError> {
        crate::login::verify_admin_password(self, peer, password).await
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The saved KMIP settings.
    pub fn kmip(&self) -> Option<KmipSettings> {
        self.inner.kmip.lock().clone()
    }

    /// Saves new KMIP settings (files first, then memory). When the settings replaced point at
    /// a server that holds a key of the volume's header and the new ones do not, they are kept
    /// as the previous settings (DATA_DIR/kmip-previous/) until no key of the volume needs
    /// them: a move to another KMIP server, or a restart in its middle, still fetches the old
    /// key from the old server.
    pub fn set_kmip(&self, s: KmipSettings) -> std::io::Result<()> {
        if let Some(old) = self.kmip() {
            let held = self.volume_key_servers();
            let names = |k: &KmipSettings| -> Vec<String> {
                k.servers.iter().map(|a| a.to_string()).collect()
            };
            let (old_names, new_names) = (names(&old), names(&s));
            if old_names
                .iter()
                .any(|n| held.contains(n) && !new_names.contains(n))
            {
                old.save(&previous_dir(self.data_dir()))?;
                tracing::info!(servers = ?old_names, "kept the previous KMIP settings for the key they hold");
            }
        }
        s.save(self.data_dir())?;
        *self.inner.kmip.lock() = Some(s);
        Ok(())
    }

    /// The previous KMIP settings kept for a key still held by the server they name (see
    /// [`AppState::set_kmip`]).
    pub fn previous_kmip(&self) -> Option<KmipSettings> {
        KmipSettings::load(&previous_dir(self.data_dir())).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        })
    }

    /// Forgets the previous KMIP settings once no key of the volume names their servers.
    pub fn forget_previous_kmip(&self, key_servers: &[String]) {
        let Some(prev) = self.previous_kmip() else {
            return;
        };
        if prev
            .servers
            .iter()
            .any(|a| key_servers.contains(&a.to_string()))
        {
            return;
        }
        match std::fs::remove_dir_all(previous_dir(self.data_dir())) {
            Ok(()) => tracing::info!("removed the previous KMIP settings: no key needs them"),
            Err(e) => tracing::warn!("cannot remove the previous KMIP settings: {e}"),
        }
    }

    /// The servers the volume header names for its key(s), as the workflow knows them.
    fn volume_key_servers(&self) -> Vec<String> {
        let mut v = self.workflow().servers;
        if let Some(b) = self.backend() {
            v.extend(b.key_servers());
        }
        v
    }

    /// The result of the last Save and Test, if any (kept across restarts).
    pub fn last_test(&self) -> Option<TestReport> {
        self.inner.last_test.lock().clone()
    }

    pub(crate) fn set_last_test(&self, r: TestReport) {
        if let Ok(bytes) = serde_json::to_vec_pretty(&r)
            && let Err(e) = files::write_private(&last_test_path(self.data_dir()), &bytes)
        {
            tracing::warn!("cannot keep the last KMIP test result: {e}");
        }
        *self.inner.last_test.lock() = Some(r);
    }

    /// A copy of the workflow's state now.
    pub fn workflow(&self) -> Workflow {
        self.inner.workflow.lock().clone()
    }

    /// Applies a workflow event (logged when it does not fit).
    pub fn apply(&self, ev: Event) {
        if let Err(e) = self.inner.workflow.lock().apply(ev) {
            tracing::warn!("{e}");
        }
    }

    /// A sink that applies events to this state.
    pub fn event_sink(&self) -> EventSink {
        let s = self.clone();
        Arc::new(move |ev| s.apply(ev))
    }

    /// Whether `req` may start now, and why not.
    pub fn check(&self, req: Request) -> Result<(), String> {
        let kmip = self.kmip();
        let fp = kmip.as_ref().map(|k| k.fingerprint());
        let test = self.last_test();
        self.inner.workflow.lock().check(
            req,
            Gate {
                settings_fingerprint: fp.as_deref(),
                last_test: test.as_ref(),
            },
        )
    }
}

/// The audit session of the appliance's own events.
pub const AUDIT_SESSION: &str = "appliance";
/// The audit kind of key operations.
pub const AUDIT_KEY_KIND: &str = "key-operation";

/// See [`AppState::downgrade`].
#[derive(Clone)]
pub struct WeakAppState(std::sync::Weak<Inner>);

impl std::fmt::Debug for WeakAppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakAppState")
    }
}

impl WeakAppState {
    /// The state, while the appliance still runs.
    pub fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(|inner| AppState { inner })
    }
}

/// Where the previous KMIP settings are kept: DATA_DIR/kmip-previous/kmip/.
pub fn previous_dir(dir: &Path) -> PathBuf {
    dir.join("kmip-previous")
}

fn last_test_path(dir: &Path) -> PathBuf {
    dir.join("kmip").join("last-test.json")
}

fn load_last_test(dir: &Path) -> Option<TestReport> {
    let b = files::read_bounded(&last_test_path(dir), 1 << 20).ok()?;
    serde_json::from_slice(&b).ok()
}
