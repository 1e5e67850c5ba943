//! Key and admin events to syslog receivers (`--syslog tcp://HOST:PORT` or `tls://HOST:PORT`,
//! repeatable): every event the appliance records in its audit history (key operations, Save
//! and Test, conversions, alerts, login lock-outs) and every admin login accepted or refused, as
//! RFC 5424 messages with octet-counting framing (RFC 6587 3.4.1), over TCP or over TLS
//! (RFC 5425; TLS 1.2 or later, the receiver's certificate checked against `--syslog-ca` or the
//! system's trusted CAs, and its name against the host given).
//!
//! Each receiver has its own sender thread and an in-memory queue of at most [`MAX_QUEUE`]
//! messages, sent in order. While a receiver is away the thread reconnects with a capped
//! backoff and, with a spool directory (the appliance's `DATA_DIR/syslog/`), moves what waits
//! to a spool file on disk (0600, at most [`MAX_SPOOL_BYTES`]; past it the newest are dropped
//! and counted), so that a restart loses nothing; when the receiver is back the spool is sent
//! first, in order, then the queue. A message leaves the queue or the spool only once it was
//! written whole to the connection; a spool cut off in the middle of its sending is sent again
//! whole (a receiver may see a few events twice, never out of order). Without a spool directory
//! the queue keeps the newest messages (the oldest are dropped and counted).
//!
//! Messages carry what the audit history carries: never key material or a password.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use parking_lot::{Condvar, Mutex};

/// Messages kept in memory per receiver while it is away.
pub const MAX_QUEUE: usize = 10_000;

/// The spool directory in the appliance's data directory.
pub const SPOOL_DIR: &str = "syslog";

/// Bytes of the spool file of one receiver.
pub const MAX_SPOOL_BYTES: u64 = 16 << 20;

/// Longest message a spool file may hold (a longer frame means the file is damaged).
const MAX_FRAME: usize = 1 << 20;

/// Facility of every message: security/authorization (authpriv, 10).
const FACILITY: u8 = 10;

/// The private enterprise number of the structured data element: RFC 5612's number for
/// documentation, until the project has its own.
const SD_ID: &str = "atrest@32473";

/// How bad an event is (RFC 5424 severities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A failure, refusal or alert (4).
    Warning = 4,
    /// Any other audited event (5).
    Notice = 5,
    /// An accepted login (6).
    Info = 6,
}

/// A receiver, `tcp://HOST:PORT` or `tls://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The receiver's host name or IP address.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// TLS (RFC 5425) instead of plain TCP.
    pub tls: bool,
    /// With TLS: the CA certificate(s) (PEM) to trust; None: the system's trusted CAs.
    pub ca: Option<PathBuf>,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a syslog receiver; give tcp://HOST:PORT or tls://HOST:PORT (e.g. \
                 tcp://siem.example.com:601, tls://siem.example.com:6514)"
            )
        };
        let (tls, rest) = match (s.strip_prefix("tcp://"), s.strip_prefix("tls://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(bad()),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Target {
            host: host.to_owned(),
            port,
            tls,
            ca: None,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "tls" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
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

impl Syslog {
    /// Starts one sender thread per receiver (none: nothing is sent), without a spool.
    pub fn start(targets: &[Target]) -> Syslog {
        Syslog::start_in(targets, None)
    }

    /// Starts one sender thread per receiver, each spooling to a file in `spool_dir` (created
    /// 0700 if missing) while its receiver is away.
    pub fn start_in(targets: &[Target], spool_dir: Option<&Path>) -> Syslog {
        let mut queues = Vec::new();
        for t in targets {
            let q = Arc::new(Queue::default());
            let spool = spool_dir.and_then(|d| match crate::files::private_dir(d) {
                Ok(()) => Some(Spool::new(d, t)),
                Err(e) => {
                    tracing::error!(
                        "cannot create the syslog spool directory {} ({e}); events for {t} \
                         are kept in memory only",
                        d.display()
                    );
                    None
                }
            });
            let (target, queue) = (t.clone(), q.clone());
            let spawned = std::thread::Builder::new()
                .name("atrest-syslog".into())
                .spawn(move || send_loop(&target, &queue, spool));
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
            let mut m = q.messages.lock();
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

    /// Messages dropped because a receiver's queue (or spool) was full, per receiver.
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

/// The HOSTNAME header field: the host name the appliance names its keys with
/// ([`atrest_keys::host_name`]), or the nil value `-` when it is not printable ASCII without
/// spaces of at most 255 characters.
fn hostname() -> String {
    let h = atrest_keys::host_name();
    if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| (33..=126).contains(&b)) {
        "-".into()
    } else {
        h
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

fn connect_tcp(target: &Target) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in (target.host.as_str(), target.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the name resolves to no address")))
}

/// A connection to a receiver.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => s.get_ref(),
        }
    }

    fn write_msg(&mut self, m: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(m).and_then(|_| s.flush()),
            Conn::Tls(s) => s.write_all(m).and_then(|_| s.flush()),
        }
    }

    /// Whether the receiver closed the connection: a receiver sends nothing, so anything to
    /// read (end of stream, a reset, TLS close_notify) means it is gone. Checked before each
    /// write, so that a message is not written into a connection the receiver already left.
    fn peer_gone(&mut self) -> bool {
        if self.tcp().set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let gone = match self {
            Conn::Tcp(t) => match t.peek(&mut b) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            },
            // TLS 1.3 receivers send session tickets after the handshake: only the end of the
            // stream (close_notify, EOF) or an error says it is gone.
            Conn::Tls(s) => match s.ssl_read(&mut b) {
                Ok(n) => n == 0,
                Err(e) => match e.code() {
                    openssl::ssl::ErrorCode::WANT_READ | openssl::ssl::ErrorCode::WANT_WRITE => {
                        false
                    }
                    openssl::ssl::ErrorCode::SYSCALL => e
                        .io_error()
                        .is_none_or(|io| io.kind() != std::io::ErrorKind::WouldBlock),
                    _ => true,
                },
            },
        };
        let _ = self.tcp().set_nonblocking(false);
        gone
    }
}

fn connect(target: &Target) -> std::io::Result<Conn> {
    let tcp = connect_tcp(target)?;
    if !target.tls {
        return Ok(Conn::Tcp(tcp));
    }
    let tls_err =
        |what: &str, e: openssl::error::ErrorStack| std::io::Error::other(format!("{what}: {e}"));
    let mut b =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_err("setting up TLS", e))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| tls_err("setting up TLS", e))?;
    match &target.ca {
        Some(ca) => b.set_ca_file(ca).map_err(|e| {
            tls_err(
                &format!(
                    "cannot load the syslog CA {} (check --syslog-ca)",
                    ca.display()
                ),
                e,
            )
        })?,
        None => b
            .set_default_verify_paths()
            .map_err(|e| tls_err("cannot load the system's trusted CAs", e))?,
    }
    b.set_verify(SslVerifyMode::PEER);
    let cfg = b
        .build()
        .configure()
        .map_err(|e| tls_err("setting up TLS", e))?;
    // Checks the certificate against the host given (a name, or an IP address).
    let s = cfg.connect(&target.host, tcp).map_err(|e| {
        std::io::Error::other(format!(
            "TLS handshake failed ({e}); check that the receiver's certificate is issued for \
             {} by the CA given with --syslog-ca",
            target.host
        ))
    })?;
    Ok(Conn::Tls(Box::new(s)))
}

/// The spool file of one receiver: octet-counted frames, as sent.
struct Spool {
    path: PathBuf,
    max: u64,
}

impl Spool {
    fn new(dir: &Path, t: &Target) -> Spool {
        let name: String = t
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Spool {
            path: dir.join(format!("{name}.spool")),
            max: MAX_SPOOL_BYTES,
        }
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Appends `msgs` in order; returns how many did not fit.
    fn append(&self, msgs: &[Vec<u8>]) -> std::io::Result<usize> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        let mut len = f.metadata()?.len();
        let mut dropped = 0;
        let mut buf = Vec::new();
        for m in msgs {
            if len + buf.len() as u64 + m.len() as u64 > self.max {
                dropped += 1;
                continue;
            }
            buf.extend_from_slice(m);
        }
        len += buf.len() as u64;
        f.write_all(&buf)?;
        f.sync_data()?;
        let _ = len;
        Ok(dropped)
    }

    /// The frames in the file, in order (at most `max` bytes are read; a damaged tail is left
    /// out with a warning).
    fn read(&self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut data = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(f) => {
                f.take(self.max + MAX_FRAME as u64).read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let (frames, bad) = split_frames(&data);
        if bad {
            tracing::warn!(
                "the syslog spool {} has a damaged end; {} whole events are sent, the rest is \
                 dropped",
                self.path.display(),
                frames.len()
            );
        }
        Ok(frames)
    }

    /// Keeps only `rest` (the frames not sent yet), or removes the file when none is left.
    fn keep(&self, rest: &[Vec<u8>]) -> std::io::Result<()> {
        if rest.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("spool.tmp");
        crate::files::write_private(&tmp, &rest.concat())?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Splits octet-counted frames (`LEN SP MSG`); true when the data ends in something that is
/// not a whole frame. Bounded: a length is at most 7 digits and [`MAX_FRAME`]; never panics.
fn split_frames(data: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let digits = data[i..]
            .iter()
            .take(8)
            .take_while(|b| b.is_ascii_digit())
            .count();
        let sp = i + digits;
        if digits == 0 || digits > 7 || data.get(sp) != Some(&b' ') {
            return (out, true);
        }
        let n: usize = std::str::from_utf8(&data[i..sp])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(usize::MAX);
        if n == 0 || n > MAX_FRAME || data.len() - (sp + 1) < n {
            return (out, true);
        }
        let end = sp + 1 + n;
        out.push(data[i..end].to_vec());
        i = end;
    }
    (out, false)
}

fn send_loop(target: &Target, q: &Queue, spool: Option<Spool>) {
    let mut conn: Option<Conn> = None;
    let mut wait = Duration::from_secs(1);
    let mut retry_at: Option<Instant> = None;
    let mut reported = false;
    let mut spooled = spool.as_ref().is_some_and(|s| s.len() > 0);
    loop {
        // Wait for something to send: a message, or a spool while the receiver is away.
        {
            let mut m = q.messages.lock();
            while m.is_empty() && !spooled && !q.stop.load(Ordering::SeqCst) {
                q.ready.wait(&mut m);
            }
            if q.stop.load(Ordering::SeqCst) && (conn.is_none() || m.is_empty()) {
                // Stopping: what waits goes to the spool, for the next start.
                if let Some(sp) = &spool {
                    let rest: Vec<Vec<u8>> = m.drain(..).collect();
                    spool_messages(target, q, sp, &rest);
                }
                return;
            }
        }
        if conn.as_mut().is_some_and(Conn::peer_gone) {
            tracing::warn!("the syslog receiver {target} closed the connection; reconnecting");
            conn = None;
            reported = true;
        }
        if conn.is_none() {
            if retry_at.is_some_and(|r| Instant::now() < r) {
                // Away: what arrives meanwhile goes to the spool; wait for the next attempt.
                let left = retry_at.map_or(Duration::ZERO, |r| {
                    r.saturating_duration_since(Instant::now())
                });
                if let Some(sp) = &spool {
                    let rest: Vec<Vec<u8>> = q.messages.lock().drain(..).collect();
                    if !rest.is_empty() {
                        spool_messages(target, q, sp, &rest);
                        spooled = true;
                    }
                    wait_for_message(q, left);
                } else {
                    sleep_unless_stopped(q, left);
                }
                continue;
            }
            match connect(target) {
                Ok(s) => {
                    if reported {
                        tracing::info!("the syslog receiver {target} is back");
                    }
                    conn = Some(s);
                    wait = Duration::from_secs(1);
                    retry_at = None;
                    reported = false;
                }
                Err(e) => {
                    if !reported {
                        tracing::warn!(
                            "cannot reach the syslog receiver {target} ({e}); events are kept \
                             ({}) and sent when it is back",
                            if spool.is_some() {
                                "in its spool file in the data directory"
                            } else {
                                "in memory, up to 10000"
                            }
                        );
                        reported = true;
                    }
                    retry_at = Some(Instant::now() + wait);
                    wait = (wait * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        // The spool first: it holds the oldest events.
        if spooled && let Some(sp) = &spool {
            match send_spool(c, sp) {
                Ok(()) => spooled = false,
                Err(e) => {
                    tracing::warn!("the syslog receiver {target} went away ({e}); reconnecting");
                    conn = None;
                    reported = true;
                }
            }
            continue;
        }
        let msg = match q.messages.lock().front() {
            Some(m) => m.clone(),
            None => continue,
        };
        match c.write_msg(&msg) {
            Ok(()) => {
                let mut m = q.messages.lock();
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

/// Sends the whole spool, then empties it; on a failure keeps what was not sent.
fn send_spool(c: &mut Conn, sp: &Spool) -> std::io::Result<()> {
    let frames = sp.read()?;
    for (i, f) in frames.iter().enumerate() {
        if let Err(e) = c.write_msg(f) {
            if let Err(e2) = sp.keep(&frames[i..]) {
                tracing::error!(
                    "cannot rewrite the syslog spool {}: {e2}",
                    sp.path.display()
                );
            }
            return Err(e);
        }
    }
    sp.keep(&[])
}

fn spool_messages(target: &Target, q: &Queue, sp: &Spool, msgs: &[Vec<u8>]) {
    if msgs.is_empty() {
        return;
    }
    match sp.append(msgs) {
        Ok(0) => {}
        Ok(n) => {
            if q.dropped.fetch_add(n as u64, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "the syslog spool of {target} is full ({} bytes): newer events are dropped \
                     until the receiver is back",
                    sp.max
                );
            }
        }
        Err(e) => {
            tracing::error!(
                "cannot write the syslog spool {} ({e}); {} events for {target} are lost",
                sp.path.display(),
                msgs.len()
            );
            q.dropped.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Sleeps `d`, or less when asked to stop.
fn sleep_unless_stopped(q: &Queue, d: Duration) {
    let mut m = q.messages.lock();
    q.ready
        .wait_while_for(&mut m, |_| !q.stop.load(Ordering::SeqCst), d);
}

/// Waits up to `d` for a new message or a stop.
fn wait_for_message(q: &Queue, d: Duration) {
    let mut m = q.messages.lock();
    q.ready.wait_while_for(
        &mut m,
        |m| m.is_empty() && !q.stop.load(Ordering::SeqCst),
        d,
    );
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
        let t: Target = "tls://siem.example.com:6514".parse().unwrap();
        assert!(t.tls);
        assert_eq!(t.to_string(), "tls://siem.example.com:6514");
    }

    #[test]
    fn spool_frames_split_and_a_damaged_end_is_left_out() {
        let a = format_message("h", Severity::Notice, "k", "a", "one");
        let b = format_message("h", Severity::Notice, "k", "a", "two");
        let mut data = [a.clone(), b.clone()].concat();
        assert_eq!(split_frames(&data), (vec![a.clone(), b.clone()], false));
        data.extend_from_slice(b"12 cut");
        assert_eq!(split_frames(&data), (vec![a.clone(), b.clone()], true));
        for junk in [&b"x"[..], b"99999999 x", b"0 ", b" 1 x", b"5", b""] {
            let (f, bad) = split_frames(junk);
            assert!(f.is_empty());
            assert_eq!(bad, !junk.is_empty(), "{junk:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let t: Target = "tcp://h:1".parse().unwrap();
        let mut sp = Spool::new(dir.path(), &t);
        sp.max = (a.len() + b.len()) as u64;
        assert_eq!(sp.append(&[a.clone(), b.clone(), a.clone()]).unwrap(), 1);
        assert_eq!(sp.read().unwrap(), vec![a.clone(), b.clone()]);
        sp.keep(std::slice::from_ref(&b)).unwrap();
        assert_eq!(sp.read().unwrap(), vec![b]);
        sp.keep(&[]).unwrap();
        assert_eq!(sp.read().unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(sp.len(), 0);
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
