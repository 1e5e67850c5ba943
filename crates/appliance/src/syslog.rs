//! Key and admin events to syslog receivers (`--syslog tcp://HOST:PORT`, repeatable): every
//! event the appliance records in its audit history (key operations, Save and Test, conversions,
//! alerts, login lock-outs) and every admin login accepted or refused, as RFC 5424 messages over
//! TCP with octet-counting framing (RFC 6587 3.4.1).
//!
//! Each receiver has its own sender thread and an in-memory queue of at most [`MAX_QUEUE`]
//! messages, sent in order; while a receiver is away the queue keeps the newest messages (the
//! oldest are dropped and counted) and the thread reconnects with a capped backoff. A message
//! leaves the queue only once it was written whole to the connection.
//!
//! Messages carry what the audit history carries: never key material or a password.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Messages kept per receiver while it is away.
pub const MAX_QUEUE: usize = 10_000;

/// Facility of every message: security/authorization (authpriv, 10).
const FACILITY: u8 = 10;

/// The private enterprise number of the structured data element: RFC 5612's number for
/// documentation, until the project has its own.
const SD_ID: &str = "atrest@32473";

/// How bad an event is (RFC 5424 severities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// A receiver, `tcp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a syslog receiver; give tcp://HOST:PORT (e.g. tcp://siem.example.com:601)"
            )
        };
        let rest = s.strip_prefix("tcp://").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Target {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp://{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    messages: Mutex<VecDeque<Vec<u8>>>,
    ready: Condvar,
    dropped: AtomicU64,
    stop: AtomicBool,
}

/// The senders of every configured receiver.
#[derive(Debug, Default)]
pub struct Syslog {
    queues: Vec<(Target, Arc<Queue>)>,
    hostname: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Syslog {
    /// Starts one sender thread per receiver (none: nothing is sent).
    pub fn start(targets: &[Target]) -> Syslog {
        let mut queues = Vec::new();
        for t in targets {
            let q = Arc::new(Queue::default());
            let (target, queue) = (t.clone(), q.clone());
            let spawned = std::thread::Builder::new()
                .name("atrest-syslog".into())
                .spawn(move || send_loop(&target, &queue));
            match spawned {
                Ok(_) => queues.push((t.clone(), q)),
                Err(e) => tracing::error!("cannot start the syslog sender for {t}: {e}"),
            }
        }
        Syslog {
            queues,
            hostname: hostname(),
        }
    }

    /// Queues one event for every receiver.
    pub fn send(&self, severity: Severity, kind: &str, actor: &str, text: &str) {
        if self.queues.is_empty() {
            return;
        }
        let msg = format_message(&self.hostname, severity, kind, actor, text);
        for (target, q) in &self.queues {
            let mut m = lock(&q.messages);
            if m.len() >= MAX_QUEUE {
                m.pop_front();
                if q.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "the syslog receiver {target} is away and {MAX_QUEUE} messages are \
                         waiting: the oldest are dropped until it is back"
                    );
                }
            }
            m.push_back(msg.clone());
            q.ready.notify_one();
        }
    }

    /// Messages dropped because a receiver's queue was full, per receiver.
    pub fn dropped(&self) -> Vec<(String, u64)> {
        self.queues
            .iter()
            .map(|(t, q)| (t.to_string(), q.dropped.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        for (_, q) in &self.queues {
            q.stop.store(true, Ordering::SeqCst);
            q.ready.notify_all();
        }
    }
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| (33..=126).contains(&b)) {
        "-".into()
    } else {
        h.to_owned()
    }
}

/// A header field: printable ASCII without spaces, at most `max` characters; `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() { "-".into() } else { f }
}

/// A structured-data parameter value: `"`, `\` and `]` escaped.
fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One RFC 5424 message, framed by its length (RFC 6587 octet counting).
pub fn format_message(
    hostname: &str,
    severity: Severity,
    kind: &str,
    actor: &str,
    text: &str,
) -> Vec<u8> {
    let pri = FACILITY * 8 + severity as u8;
    let now = time::OffsetDateTime::now_utc();
    let ts = now
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap_or_else(|_| "-".into());
    // One line: a receiver that splits on newlines still gets one event.
    let text = text.replace(['\r', '\n'], " ");
    let msg = format!(
        "<{pri}>1 {ts} {} atrest {} {} [{SD_ID} kind=\"{}\" actor=\"{}\"] \u{feff}{text}",
        header_field(hostname, 255),
        std::process::id(),
        header_field(kind, 32),
        sd_value(kind),
        sd_value(actor),
    );
    let mut framed = format!("{} ", msg.len()).into_bytes();
    framed.extend_from_slice(msg.as_bytes());
    framed
}

/// Backoff between connection attempts: 1 s, doubling, at most 30 s.
const RETRY_MAX: Duration = Duration::from_secs(30);

fn connect(target: &Target) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in (target.host.as_str(), target.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the name resolves to no address")))
}

fn send_loop(target: &Target, q: &Queue) {
    let mut conn: Option<TcpStream> = None;
    let mut wait = Duration::from_secs(1);
    let mut reported = false;
    loop {
        // The next message, left in the queue until it is written.
        let msg = {
            let mut m = lock(&q.messages);
            while m.is_empty() && !q.stop.load(Ordering::SeqCst) {
                m = q.ready.wait(m).unwrap_or_else(|e| e.into_inner());
            }
            match m.front() {
                Some(msg) => msg.clone(),
                None => return,
            }
        };
        if conn.is_none() {
            match connect(target) {
                Ok(s) => {
                    if reported {
                        tracing::info!("the syslog receiver {target} is back");
                    }
                    conn = Some(s);
                    wait = Duration::from_secs(1);
                    reported = false;
                }
                Err(e) => {
                    if !reported {
                        tracing::warn!(
                            "cannot reach the syslog receiver {target} ({e}); events are kept \
                             (up to {MAX_QUEUE}) and sent when it is back"
                        );
                        reported = true;
                    }
                    if sleep_unless_stopped(q, wait) {
                        return;
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        match s.write_all(&msg).and_then(|_| s.flush()) {
            Ok(()) => {
                let mut m = lock(&q.messages);
                // Still the front: only this thread pops, but a full queue may have dropped it.
                if m.front() == Some(&msg) {
                    m.pop_front();
                }
            }
            Err(e) => {
                tracing::warn!("the syslog receiver {target} went away ({e}); reconnecting");
                conn = None;
                reported = true;
            }
        }
    }
}

/// Sleeps `d`, or less when asked to stop; true when stopping.
fn sleep_unless_stopped(q: &Queue, d: Duration) -> bool {
    let m = lock(&q.messages);
    let _ = q
        .ready
        .wait_timeout_while(m, d, |_| !q.stop.load(Ordering::SeqCst));
    q.stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        let t: Target = "tcp://siem.example.com:601".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("siem.example.com", 601));
        assert_eq!(t.to_string(), "tcp://siem.example.com:601");
        let t: Target = "tcp://[::1]:514".parse().unwrap();
        assert_eq!(t.to_string(), "tcp://[::1]:514");
        for bad in ["udp://h:514", "tcp://h", "tcp://:514", "tcp://h:0", "h:514"] {
            assert!(
                bad.parse::<Target>()
                    .unwrap_err()
                    .contains("tcp://HOST:PORT")
            );
        }
    }

    #[test]
    fn a_message_is_framed_rfc5424_with_escaped_structured_data() {
        let m = format_message(
            "host",
            Severity::Warning,
            "admin login",
            "a\"b]c\\",
            "two\nlines",
        );
        let text = String::from_utf8(m).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<84>1 "), "{msg}");
        let f: Vec<&str> = msg.splitn(7, ' ').collect();
        assert_eq!(f[2], "host");
        assert_eq!(f[3], "atrest");
        assert_eq!(f[5], "adminlogin");
        assert!(f[1].ends_with('Z') && f[1].len() == 27, "{}", f[1]);
        assert!(
            f[6].starts_with(
                "[atrest@32473 kind=\"admin login\" actor=\"a\\\"b\\]c\\\\\"] \u{feff}two lines"
            ),
            "{}",
            f[6]
        );
    }
}
