//! Session audit history: append-only events linked by a SHA-256 hash chain, indexed by time,
//! by session and by the words of their text.
//!
//! Tables:
//! - `audit.events`: sequence number (1, 2, …) → event record (with its hash and the previous one's);
//! - `audit.by_time`: (time, seq); `audit.by_session`: (session, time, seq);
//!   `audit.by_word`: (word, time, seq) — the indexes, all in time order;
//! - `audit.counts`: (0, session) or (1, word) → number of events, to pick the shortest index;
//! - `meta["audit.head"]`: the last sequence number and its hash, so removing events from the
//!   end breaks the chain too;
//! - `meta["audit.seal"]`: when the store is given a seal key (derived from the volume key on an
//!   encrypted volume, [`Audit::set_seal_key`]), HMAC-SHA256 under it of the head, updated in
//!   every append's transaction: rewriting history and recomputing the hashes is not enough,
//!   the seal needs the key.
//!
//! The code is in four parts: this module (the tables, the event types, appending and
//! reading), `record` (an event's record and hash, the head and its seal), `query` and
//! `chain` (verifying and sealing the chain).

mod chain;
mod query;
mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::codec::Writer;
use crate::error::{Error, Result, storage};
use crate::store::{META, Store, Timestamp};

pub(crate) use chain::rewrite_history;
pub use record::decode;
pub(crate) use record::encode_event;
use record::{check, decode_head, encode, hash_of, seal_of};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit.events");
const BY_TIME: TableDefinition<(i64, u64), ()> = TableDefinition::new("audit.by_time");
const BY_SESSION: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("audit.by_session");
const BY_WORD: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("audit.by_word");
const COUNTS: TableDefinition<(u8, &str), u64> = TableDefinition::new("audit.counts");
const HEAD_KEY: &str = "audit.head";
const SEAL_KEY: &str = "audit.seal";

/// Longest session id, in bytes.
pub const MAX_SESSION_LEN: usize = 256;
/// Longest actor, in bytes.
pub const MAX_ACTOR_LEN: usize = 256;
/// Longest kind, in bytes.
pub const MAX_KIND_LEN: usize = 64;
/// Longest text, in bytes.
pub const MAX_TEXT_LEN: usize = 64 << 10;
/// Longest indexed word, in bytes (longer words are indexed by their first bytes).
pub const MAX_WORD_LEN: usize = 64;
/// Most events one query page returns.
pub const MAX_PAGE: usize = 1000;
/// Page size when a query asks for 0.
pub const DEFAULT_PAGE: usize = 50;
/// Most events one [`Audit::append_batch`] takes.
pub const MAX_BATCH: usize = 10_000;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened.
    pub time: Timestamp,
    /// The session it belongs to.
    pub session: String,
    /// Who did it.
    pub actor: String,
    /// What kind of event (e.g. `login`, `command`).
    pub kind: String,
    /// Free text, searchable by its words.
    pub text: String,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the history (1, 2, …).
    pub seq: u64,
    /// When it happened.
    pub time: Timestamp,
    /// The session it belongs to.
    pub session: String,
    /// Who did it.
    pub actor: String,
    /// What kind of event.
    pub kind: String,
    /// Free text.
    pub text: String,
    /// Hash of the previous event (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This event's hash: SHA-256 over the domain tag, seq, `prev_hash` and the fields.
    pub hash: [u8; 32],
}

/// Order of query results: the order of the hash chain (sequence numbers), which is the order
/// the events were appended in, whatever times they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Last appended first.
    #[default]
    NewestFirst,
    /// First appended first.
    OldestFirst,
}

/// A query: every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this session.
    pub session: Option<String>,
    /// Only events at or after this time.
    pub from: Option<Timestamp>,
    /// Only events before this time.
    pub to: Option<Timestamp>,
    /// Only events whose text holds every word of this (case-insensitive, whole words).
    pub words: Option<String>,
    /// Result order.
    pub order: Order,
    /// Matching events to skip.
    pub offset: u64,
    /// Events to return (0: [`DEFAULT_PAGE`]; at most [`MAX_PAGE`]).
    pub limit: usize,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// All matching events, not just this page.
    pub total: u64,
    /// This page.
    pub events: Vec<Event>,
}

/// Result of [`Audit::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Events checked.
    pub events: u64,
    /// The head the store records: last sequence number and its hash.
    pub head: Option<(u64, [u8; 32])>,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
    /// Whether the head was checked against its seal (a seal key is set).
    pub sealed: bool,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence number of the first event that does not check.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// Lower-case words of `text`: runs of letters and digits, longer ones cut at
/// [`MAX_WORD_LEN`] bytes, each once.
pub fn words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if w.is_empty() {
            continue;
        }
        let mut w = w.to_lowercase();
        if w.len() > MAX_WORD_LEN {
            let mut cut = MAX_WORD_LEN;
            while !w.is_char_boundary(cut) {
                cut -= 1;
            }
            w.truncate(cut);
        }
        out.insert(w);
    }
    out
}
pub(crate) fn init_tables(txn: &WriteTransaction) -> Result<()> {
    let op = storage::<redb::TableError>("open the audit tables");
    txn.open_table(EVENTS)
        .and_then(|_| txn.open_table(BY_TIME).map(|_| ()))
        .and_then(|_| txn.open_table(BY_SESSION).map(|_| ()))
        .and_then(|_| txn.open_table(BY_WORD).map(|_| ()))
        .and_then(|_| txn.open_table(COUNTS).map(|_| ()))
        .map_err(op)
}
/// The audit history of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    pub(crate) store: &'a Store,
}

impl Audit<'_> {
    /// Appends one event; returns its sequence number.
    pub fn append(&self, event: &NewEvent) -> Result<u64> {
        Ok(self.append_batch(std::slice::from_ref(event))?.end - 1)
    }

    /// Appends events in one transaction (all or none); returns their sequence numbers.
    pub fn append_batch(&self, events: &[NewEvent]) -> Result<std::ops::Range<u64>> {
        if events.len() > MAX_BATCH {
            return Err(Error::Invalid(format!(
                "{} audit events in one batch is more than the limit of {MAX_BATCH}: split the batch",
                events.len()
            )));
        }
        for e in events {
            check(e)?;
        }
        let op = "append to the audit history";
        self.store.write(op, false, |txn| {
            let mut meta = txn.open_table(META).map_err(storage(op))?;
            let mut ev = txn.open_table(EVENTS).map_err(storage(op))?;
            let mut by_time = txn.open_table(BY_TIME).map_err(storage(op))?;
            let mut by_session = txn.open_table(BY_SESSION).map_err(storage(op))?;
            let mut by_word = txn.open_table(BY_WORD).map_err(storage(op))?;
            let mut counts = txn.open_table(COUNTS).map_err(storage(op))?;
            let head = meta
                .get(HEAD_KEY)
                .map_err(storage(op))?
                .map(|v| v.value().to_vec());
            let (mut seq, mut prev) = match head {
                Some(b) => decode_head(&b)?,
                None => (0, [0u8; 32]),
            };
            let first = seq + 1;
            let bump = |counts: &mut redb::Table<(u8, &str), u64>, k: u8, s: &str| {
                let n = counts
                    .get((k, s))
                    .map_err(storage(op))?
                    .map_or(0, |v| v.value());
                counts.insert((k, s), n + 1).map_err(storage(op))?;
                Ok::<_, Error>(())
            };
            for e in events {
                seq += 1;
                let hash = hash_of(seq, &prev, e);
                ev.insert(seq, &encode(e, &prev, &hash)[..])
                    .map_err(storage(op))?;
                let t = e.time.0;
                by_time.insert((t, seq), ()).map_err(storage(op))?;
                by_session
                    .insert((e.session.as_str(), t, seq), ())
                    .map_err(storage(op))?;
                bump(&mut counts, 0, &e.session)?;
                for w in words(&e.text) {
                    by_word
                        .insert((w.as_str(), t, seq), ())
                        .map_err(storage(op))?;
                    bump(&mut counts, 1, &w)?;
                }
                prev = hash;
            }
            let mut h = Writer::new();
            h.u64(seq).raw(&prev);
            meta.insert(HEAD_KEY, &h.finish()[..])
                .map_err(storage(op))?;
            if let Some(k) = self.store.seal_key() {
                meta.insert(SEAL_KEY, &seal_of(&k, seq, &prev)?[..])
                    .map_err(storage(op))?;
            }
            Ok(first..seq + 1)
        })
    }

    /// Number of events.
    pub fn len(&self) -> Result<u64> {
        let txn = self.store.read()?;
        let t = txn
            .open_table(EVENTS)
            .map_err(storage("open the audit history"))?;
        t.len().map_err(storage("read the audit history"))
    }

    /// True when no event was appended yet.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The event with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Event>> {
        let txn = self.store.read()?;
        let t = txn
            .open_table(EVENTS)
            .map_err(storage("open the audit history"))?;
        let v = t.get(seq).map_err(storage("read the audit history"))?;
        Ok(match v {
            Some(v) => Some(decode(seq, v.value())?),
            None => None,
        })
    }
}
