//! What the bundled KMIP server counts, and its Prometheus text exposition (`atrest kms serve
//! --metrics-listen`, docs/operations.md):
//!
//! - `atrest_kms_operations_total{operation, result}`: every batch item answered, by operation
//!   and result (`success`, or the KMIP Result Reason of the failure);
//! - `atrest_kms_invalid_messages_total`: requests answered Invalid Message (undecodable,
//!   malformed, wrong version or batch);
//! - `atrest_kms_connections_total{result}`: connections by what became of them (`accepted`,
//!   `refused` by the pre-authentication caps, `tls_failed`, `over_limit`);
//! - `atrest_kms_connections_open`: authenticated connections being served now;
//! - `atrest_kms_objects{type, state}`: objects held, read from the store at each scrape.
//!
//! Nothing here names a client, a peer address or a key id: labels take a bounded set of
//! values (an Operation without a name in the specification counts as `other`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use atrest_kmip::message::{ObjectType, Operation, ResultReason, State};
use parking_lot::Mutex;

/// What became of an accepted TCP connection (`atrest_kms_connections_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnResult {
    /// The TLS handshake passed and the connection was served.
    Accepted,
    /// Turned away before the handshake by the pre-authentication caps.
    Refused,
    /// The TLS handshake failed (no or an untrusted client certificate, timeout, garbage).
    TlsFailed,
    /// Authenticated past `--max-connections`: closed at once.
    OverLimit,
}

impl ConnResult {
    const ALL: [ConnResult; 4] = [
        ConnResult::Accepted,
        ConnResult::Refused,
        ConnResult::TlsFailed,
        ConnResult::OverLimit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ConnResult::Accepted => "accepted",
            ConnResult::Refused => "refused",
            ConnResult::TlsFailed => "tls_failed",
            ConnResult::OverLimit => "over_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The server's counters (shared by the engine and the connection threads).
#[derive(Debug, Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<(&'static str, String), u64>>,
    invalid: AtomicU64,
    conns: [AtomicU64; 4],
    open: AtomicI64,
}

impl Metrics {
    /// Counts one batch item: its operation and `None` for success, else the failure's reason.
    pub fn operation(&self, op: Operation, failure: Option<ResultReason>) {
        let name = op.name().unwrap_or("other");
        let result = match failure {
            None => "success".to_owned(),
            Some(r) => r.name().unwrap_or("other").to_owned(),
        };
        *self.ops.lock().entry((name, result)).or_insert(0) += 1;
    }

    /// Counts a request answered Invalid Message.
    pub fn invalid_message(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what became of a connection.
    pub fn connection(&self, r: ConnResult) {
        self.conns[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// An authenticated connection starts (`true`) or ends (`false`) being served.
    pub fn open(&self, starts: bool) {
        self.open
            .fetch_add(if starts { 1 } else { -1 }, Ordering::Relaxed);
    }

    /// Operations counted so far by (operation, result).
    pub fn operations(&self) -> BTreeMap<(&'static str, String), u64> {
        self.ops.lock().clone()
    }
}

/// Objects held by (object type, state).
pub type ObjectCounts = BTreeMap<(String, String), u64>;

/// Counts objects by type and state from (type, state) codes.
pub fn count_objects(objects: impl Iterator<Item = (u32, u32)>) -> ObjectCounts {
    let mut m = ObjectCounts::new();
    for (t, s) in objects {
        let t = ObjectType(t).name().unwrap_or("other").to_owned();
        let s = State(s).name().unwrap_or("other").to_owned();
        *m.entry((t, s)).or_insert(0) += 1;
    }
    m
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (format 0.0.4) of `m` and the objects held.
pub fn render(m: &Metrics, objects: &ObjectCounts) -> String {
    let mut o = String::new();
    family(
        &mut o,
        "atrest_kms_operations_total",
        "counter",
        "KMIP batch items answered, by operation and result (success, or the Result Reason).",
    );
    for ((op, result), n) in m.operations() {
        let _ = writeln!(
            o,
            "atrest_kms_operations_total{{operation=\"{}\",result=\"{}\"}} {n}",
            label(op),
            label(&result)
        );
    }
    family(
        &mut o,
        "atrest_kms_invalid_messages_total",
        "counter",
        "Requests answered Invalid Message (undecodable, malformed, unsupported version).",
    );
    let _ = writeln!(
        o,
        "atrest_kms_invalid_messages_total {}",
        m.invalid.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "atrest_kms_connections_total",
        "counter",
        "TCP connections by what became of them: accepted (TLS passed), refused (pre-authentication caps), tls_failed, over_limit (--max-connections).",
    );
    for r in ConnResult::ALL {
        let _ = writeln!(
            o,
            "atrest_kms_connections_total{{result=\"{}\"}} {}",
            r.as_str(),
            m.conns[r.index()].load(Ordering::Relaxed)
        );
    }
    family(
        &mut o,
        "atrest_kms_connections_open",
        "gauge",
        "Authenticated connections being served now.",
    );
    let _ = writeln!(
        o,
        "atrest_kms_connections_open {}",
        m.open.load(Ordering::Relaxed).max(0)
    );
    family(
        &mut o,
        "atrest_kms_objects",
        "gauge",
        "Managed objects held, by object type and state (destroyed ones included).",
    );
    for ((t, s), n) in objects {
        let _ = writeln!(
            o,
            "atrest_kms_objects{{type=\"{}\",state=\"{}\"}} {n}",
            label(t),
            label(s)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_with_bounded_labels() {
        let m = Metrics::default();
        m.operation(Operation::GET, None);
        m.operation(Operation::GET, None);
        m.operation(Operation::GET, Some(ResultReason::ITEM_NOT_FOUND));
        m.operation(Operation(0xdead), None);
        m.connection(ConnResult::Accepted);
        m.connection(ConnResult::TlsFailed);
        m.open(true);
        m.open(true);
        m.open(false);
        m.invalid_message();
        let objects = count_objects([(2, 2), (2, 2), (2, 3), (77, 99)].into_iter());
        let text = render(&m, &objects);
        for want in [
            "atrest_kms_operations_total{operation=\"Get\",result=\"success\"} 2\n",
            "atrest_kms_operations_total{operation=\"Get\",result=\"Item Not Found\"} 1\n",
            "atrest_kms_operations_total{operation=\"other\",result=\"success\"} 1\n",
            "atrest_kms_connections_total{result=\"accepted\"} 1\n",
            "atrest_kms_connections_total{result=\"tls_failed\"} 1\n",
            "atrest_kms_connections_total{result=\"over_limit\"} 0\n",
            "atrest_kms_connections_open 1\n",
            "atrest_kms_invalid_messages_total 1\n",
            "atrest_kms_objects{type=\"Symmetric Key\",state=\"Active\"} 2\n",
            "atrest_kms_objects{type=\"Symmetric Key\",state=\"Deactivated\"} 1\n",
            "atrest_kms_objects{type=\"other\",state=\"other\"} 1\n",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
