//! Password checks of the admin account, throttled per source address and bounded in number.
//!
//! Every check of the admin password (a login on the page or on `POST /api/session`, and the
//! re-entry of the password before a destructive action, [`verify_admin_password`]) goes
//! through [`LoginThrottle`]:
//!
//! - **Per source, one check at a time.** A second attempt from the same source while its
//!   first is being hashed is answered 429 at once: a flood from one address never occupies
//!   more than one PBKDF2 computation.
//! - **Per source, exponential delay.** After [`LoginLimits::free_failures`] wrong passwords in
//!   a row, each further failure locks the source out for `base_delay · 2^k` (up to
//!   [`LoginLimits::max_delay`]); attempts during the lock-out get 429 with `Retry-After`
//!   without any hashing. A correct password clears the source's record. Each lock-out is
//!   logged with the address and recorded in the audit history.
//! - **Bounded work overall.** At most [`LoginLimits::max_concurrent_checks`] PBKDF2
//!   computations run at once (a semaphore); an attempt that cannot get a slot within
//!   [`LoginLimits::queue_wait`] is answered 503 with `Retry-After`, so nothing queues without
//!   bound. Hashing runs on the blocking pool, on a copy of the stored hash: no lock is held
//!   while hashing, and authenticated requests never wait for a login.
//! - **Bounded memory.** The table of sources holds at most [`LoginLimits::max_tracked`]
//!   entries; entries whose lock-out is over and that saw no failure for
//!   [`FORGET_AFTER`] are dropped first, then the least recently seen.
//!
//! IPv6 sources are grouped by /64 (one host usually owns a whole /64).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use parking_lot::{Mutex, MutexGuard};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::state::AppState;

/// A source's failure record is forgotten this long after its last failure (once any
/// lock-out is over).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The limits of password checks.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Wrong passwords in a row from one source before lock-outs start.
    pub free_failures: u32,
    /// The first lock-out; each further failure doubles it.
    pub base_delay: Duration,
    /// The longest lock-out.
    pub max_delay: Duration,
    /// PBKDF2 computations run at once (all sources together).
    pub max_concurrent_checks: usize,
    /// Longest wait for one of those slots before answering 503.
    pub queue_wait: Duration,
    /// Sources remembered at most.
    pub max_tracked: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(900),
            max_concurrent_checks: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8),
            queue_wait: Duration::from_secs(2),
            max_tracked: 10_000,
        }
    }
}

/// The address a request came from (the TCP peer; no forwarding header is trusted).
///
/// Requests served without a socket (tests through `oneshot`) get the unspecified address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Ok(ClientAddr(ip))
    }
}

/// The key a source is counted under: the IPv4 address, or the IPv6 /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    checking: bool,
    last_seen: Instant,
}

impl Entry {
    fn forgettable(&self, now: Instant) -> bool {
        !self.checking
            && self.locked_until.is_none_or(|t| t <= now)
            && now.duration_since(self.last_seen) >= FORGET_AFTER
    }
}

/// The per-source records and the slots for PBKDF2 computations.
#[derive(Debug)]
pub struct LoginThrottle {
    limits: LoginLimits,
    table: Mutex<HashMap<IpAddr, Entry>>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// What a failed attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Wrong passwords in a row from this source.
    pub failures: u32,
    /// The lock-out this failure started, if any.
    pub locked_for: Option<Duration>,
}

/// Why an attempt was not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The source is locked out (or already has a check running) for this long.
    Throttled(Duration),
}

/// A source's right to one password check; dropping it without [`Ticket::finish`] (the
/// client went away) frees the source for its next attempt.
#[derive(Debug)]
pub struct Ticket<'a> {
    throttle: &'a LoginThrottle,
    key: IpAddr,
    done: bool,
}

impl LoginThrottle {
    /// A throttle with `limits` (each count at least 1) that remembers no source yet.
    pub fn new(limits: LoginLimits) -> Self {
        LoginThrottle {
            slots: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_checks.max(1),
            )),
            limits: LoginLimits {
                free_failures: limits.free_failures.max(1),
                max_concurrent_checks: limits.max_concurrent_checks.max(1),
                max_tracked: limits.max_tracked.max(1),
                ..limits
            },
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // Short critical sections only (no I/O, no hashing): fine on an async worker.
        self.table.lock()
    }

    /// Number of sources remembered.
    pub fn tracked(&self) -> usize {
        self.table().len()
    }

    /// Source addresses locked out now.
    pub fn locked_out(&self) -> usize {
        let now = Instant::now();
        self.table()
            .values()
            .filter(|e| e.locked_until.is_some_and(|t| t > now))
            .count()
    }

    /// Lets `ip` try one password, or says how long it must wait.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket<'_>, Refused> {
        let key = source_key(ip);
        let now = Instant::now();
        let mut t = self.table();
        if let Some(e) = t.get_mut(&key) {
            e.last_seen = now;
            if let Some(until) = e.locked_until
                && until > now
            {
                return Err(Refused::Throttled(until - now));
            }
            if e.checking {
                return Err(Refused::Throttled(Duration::from_secs(1)));
            }
            e.checking = true;
        } else {
            if t.len() >= self.limits.max_tracked {
                evict(&mut t, now, self.limits.max_tracked);
            }
            t.insert(
                key,
                Entry {
                    failures: 0,
                    locked_until: None,
                    checking: true,
                    last_seen: now,
                },
            );
        }
        Ok(Ticket {
            throttle: self,
            key,
            done: false,
        })
    }

    /// The delay after `failures` wrong passwords in a row.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.limits.free_failures)?;
        let d = self
            .limits
            .base_delay
            .saturating_mul(2u32.saturating_pow(over.min(31)));
        Some(d.min(self.limits.max_delay))
    }
}

/// Makes room for one entry: drops forgettable entries, then the least recently seen ones
/// that are not being checked.
fn evict(t: &mut HashMap<IpAddr, Entry>, now: Instant, cap: usize) {
    t.retain(|_, e| !e.forgettable(now));
    if t.len() < cap {
        return;
    }
    let mut by_age: Vec<(Instant, IpAddr)> = t
        .iter()
        .filter(|(_, e)| !e.checking)
        .map(|(k, e)| (e.last_seen, *k))
        .collect();
    by_age.sort_unstable();
    // Free a tenth at once so that a stream of new sources does not sort on every attempt.
    let n = (t.len() + 1).saturating_sub(cap).max(cap / 10).max(1);
    for (_, k) in by_age.into_iter().take(n) {
        t.remove(&k);
    }
}

impl Ticket<'_> {
    /// Records the outcome of the check.
    pub fn finish(self, ok: bool) -> Option<Failure> {
        let th = self.throttle;
        th.record(self.hand_over(), ok)
    }

    /// Gives the duty to record the outcome to whoever holds the key it returns (the hashing
    /// task, which runs to its end even when the client goes away).
    fn hand_over(mut self) -> IpAddr {
        self.done = true;
        self.key
    }
}

impl LoginThrottle {
    /// Records the outcome of a check admitted for the source `key`.
    fn record(&self, key: IpAddr, ok: bool) -> Option<Failure> {
        let th = self;
        let now = Instant::now();
        let mut t = th.table();
        if ok {
            t.remove(&key);
            return None;
        }
        let e = t.entry(key).or_insert(Entry {
            failures: 0,
            locked_until: None,
            checking: false,
            last_seen: now,
        });
        e.checking = false;
        e.last_seen = now;
        e.failures = e.failures.saturating_add(1);
        let locked_for = th.delay_after(e.failures);
        e.locked_until = locked_for.map(|d| now + d);
        Some(Failure {
            failures: e.failures,
            locked_for,
        })
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Some(e) = self.throttle.table().get_mut(&self.key)
        {
            e.checking = false;
        }
    }
}

/// Seconds to announce in `Retry-After` (at least 1).
fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0 || d.is_zero())
}

/// 429 with `Retry-After`.
pub fn throttled(wait: Duration) -> ApiError {
    let secs = retry_secs(wait);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many wrong passwords from this address; wait {secs} s and try again (the wait \
             doubles with each further wrong password)"
        ),
    )
    .with_retry_after(secs)
}

/// 503 with `Retry-After`: every password-check slot is busy.
fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many passwords are being checked at once; try again in a second",
    )
    .with_retry_after(1)
}

/// Where a password check comes from, for the log and the audit history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /api/session`.
    ApiLogin,
    /// The login page.
    WebLogin,
    /// Re-entry of the password before a destructive action.
    Confirm,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::ApiLogin => "API login",
            Purpose::WebLogin => "web login",
            Purpose::Confirm => "password confirmation",
        }
    }
}

/// Checks the admin password (and the user name, when given) from `peer`, through the
/// throttle and the bounded pool of checks. `Ok(false)`: wrong user name or password (already
/// logged and counted); `Err`: 429 or 503, nothing was checked.
pub async fn check_password(
    state: &AppState,
    peer: IpAddr,
    username: Option<String>,
    password: Zeroizing<String>,
    purpose: Purpose,
) -> Result<bool, ApiError> {
    let throttle = state.login_throttle();
    let ticket = match throttle.admit(peer) {
        Ok(t) => t,
        Err(Refused::Throttled(wait)) => {
            tracing::debug!(source = %peer, "{} refused: throttled", purpose.as_str());
            state.metrics().login_throttled();
            return Err(throttled(wait));
        }
    };
    let slots = throttle.slots.clone();
    let permit =
        match tokio::time::timeout(throttle.limits().queue_wait, slots.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                tracing::warn!(
                    source = %peer,
                    "{} refused: every password-check slot is busy",
                    purpose.as_str()
                );
                return Err(busy());
            }
        };
    // A copy of the stored hash: the account's lock is held only for the copy.
    let account = state.admin().credentials();
    let key = ticket.hand_over();
    let s = state.clone();
    // The slot, the outcome and its record go with the hashing task: a client that goes away
    // mid-check neither frees its slot early nor escapes the count of failures.
    let check = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        let user_ok = username.is_none_or(|u| u == account.username);
        // Always hash, so a wrong user name takes as long as a wrong password.
        let ok = account.password.verify(&password) && user_ok;
        record(&s, peer, key, ok, purpose);
        ok
    });
    Ok(check.await.unwrap_or(false))
}

/// Records and logs the outcome of a check (on the blocking pool: a lock-out is also written
/// to the audit history, which lives on the volume).
fn record(state: &AppState, peer: IpAddr, key: IpAddr, ok: bool, purpose: Purpose) {
    match state.login_throttle().record(key, ok) {
        None => {
            tracing::info!(source = %peer, "{} accepted", purpose.as_str());
            state.syslog().send(
                crate::syslog::Severity::Info,
                AUDIT_LOGIN_KIND,
                "appliance",
                &format!("{} from {peer}: accepted", purpose.as_str()),
            );
        }
        Some(f) => {
            state.metrics().login_failed();
            state.syslog().send(
                crate::syslog::Severity::Warning,
                AUDIT_LOGIN_KIND,
                "appliance",
                &format!(
                    "{} from {peer}: refused, wrong username or password ({} in a row)",
                    purpose.as_str(),
                    f.failures
                ),
            );
            tracing::warn!(
                source = %peer,
                failures = f.failures,
                "{} refused: wrong username or password",
                purpose.as_str()
            );
            if let Some(d) = f.locked_for {
                let text = format!(
                    "{} from {peer}: {} wrong passwords in a row; further attempts from this \
                     address are refused for {} s",
                    purpose.as_str(),
                    f.failures,
                    retry_secs(d)
                );
                tracing::warn!(source = %peer, failures = f.failures, seconds = retry_secs(d), "login throttled");
                state.audit(AUDIT_LOGIN_KIND, "appliance", text);
            }
        }
    }
}

/// The audit kind of login lock-outs.
pub const AUDIT_LOGIN_KIND: &str = "admin-login";

/// Checks a re-entered admin password before a destructive action, through the same throttle
/// and bounds as logins: `Ok(())` when it is right; 403 with a sentence when it is wrong; 429
/// (with `Retry-After`) when the address is throttled; 503 when every check slot is busy.
pub async fn verify_admin_password(
    state: &AppState,
    peer: IpAddr,
    password: Zeroizing<String>,
) -> Result<(), ApiError> {
    if check_password(state, peer, None, password, Purpose::Confirm).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin password is wrong; enter the password you log in with to confirm this \
             action",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            free_failures: 2,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(35),
            max_concurrent_checks: 1,
            queue_wait: Duration::from_millis(10),
            max_tracked: 4,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_check_at_a_time_per_source() {
        let th = LoginThrottle::new(limits());
        let a = th.admit(ip("10.0.0.1")).unwrap();
        assert!(matches!(
            th.admit(ip("10.0.0.1")),
            Err(Refused::Throttled(_))
        ));
        // Another source is not affected.
        let b = th.admit(ip("10.0.0.2")).unwrap();
        drop(a);
        // A dropped ticket (client gone) frees the source.
        assert!(th.admit(ip("10.0.0.1")).is_ok());
        drop(b);
    }

    #[test]
    fn failures_lock_out_exponentially_and_success_clears() {
        let th = LoginThrottle::new(limits());
        let s = ip("10.0.0.1");
        assert_eq!(th.admit(s).unwrap().finish(false).unwrap().locked_for, None);
        let f = th.admit(s).unwrap().finish(false).unwrap();
        assert_eq!(f.locked_for, Some(Duration::from_secs(10)));
        match th.admit(s) {
            Err(Refused::Throttled(d)) => assert!(d <= Duration::from_secs(10)),
            Ok(_) => panic!("admitted while locked out"),
        }
        assert_eq!(th.delay_after(3), Some(Duration::from_secs(20)));
        assert_eq!(th.delay_after(4), Some(Duration::from_secs(35)));
        assert_eq!(th.delay_after(400), Some(Duration::from_secs(35)));
        assert_eq!(th.delay_after(1), None);
        // Success clears the record (simulate the lock-out being over).
        th.table().get_mut(&s).unwrap().locked_until = None;
        assert!(th.admit(s).unwrap().finish(true).is_none());
        assert_eq!(th.tracked(), 0);
    }

    #[test]
    fn the_table_stays_bounded() {
        let th = LoginThrottle::new(limits());
        for i in 0..100u8 {
            let _ = th
                .admit(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i)))
                .unwrap()
                .finish(false);
            assert!(th.tracked() <= 4);
        }
    }

    #[tokio::test]
    async fn re_entered_password_is_checked_through_the_throttle() {
        let d = tempfile::tempdir().unwrap();
        let mut c = crate::AppConfig::new(d.path());
        c.pbkdf2_iterations = 1000;
        c.login = limits();
        let opened = AppState::open(c).unwrap();
        let pw = opened.generated_password.unwrap();
        let st = opened.state;
        let peer = ip("10.0.0.9");
        st.verify_admin_password(peer, pw.clone()).await.unwrap();
        for _ in 0..2 {
            let e = st
                .verify_admin_password(peer, Zeroizing::new("wrong".into()))
                .await
                .unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN);
            assert!(e.message.contains("password is wrong"), "{e}");
        }
        // Locked out now: even the right password gets 429 with Retry-After.
        let e = st
            .verify_admin_password(peer, pw.clone())
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(10));
        // Another address is not affected.
        st.verify_admin_password(ip("10.0.0.10"), pw.clone())
            .await
            .unwrap();
    }

    #[test]
    fn ipv6_sources_group_by_64() {
        assert_eq!(source_key(ip("2001:db8::1")), source_key(ip("2001:db8::2")));
        assert_ne!(
            source_key(ip("2001:db8:0:1::1")),
            source_key(ip("2001:db8::1"))
        );
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_secs(Duration::ZERO), 1);
    }
}
