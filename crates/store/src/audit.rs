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

use std::collections::BTreeSet;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result, storage};
use crate::store::{META, Store, Timestamp};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit.events");
const BY_TIME: TableDefinition<(i64, u64), ()> = TableDefinition::new("audit.by_time");
const BY_SESSION: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("audit.by_session");
const BY_WORD: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("audit.by_word");
const COUNTS: TableDefinition<(u8, &str), u64> = TableDefinition::new("audit.counts");
const HEAD_KEY: &str = "audit.head";
const SEAL_KEY: &str = "audit.seal";
/// Domain tag of the seal's input.
const SEAL_TAG: &[u8] = b"atrest audit seal v1";

/// The seal of a head (seq, hash) under `key`.
fn seal_of(key: &[u8; 32], seq: u64, hash: &[u8; 32]) -> Result<[u8; 32]> {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let crypto = |e: openssl::error::ErrorStack| {
        Error::Invalid(format!(
            "cannot compute the audit seal ({e}); check the OpenSSL installation"
        ))
    };
    let pkey = PKey::hmac(key).map_err(crypto)?;
    let mut s = Signer::new(MessageDigest::sha256(), &pkey).map_err(crypto)?;
    s.update(SEAL_TAG).map_err(crypto)?;
    s.update(&seq.to_be_bytes()).map_err(crypto)?;
    s.update(hash).map_err(crypto)?;
    let v = s.sign_to_vec().map_err(crypto)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&v[..32]);
    Ok(out)
}

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
const RECORD_VERSION: u8 = 1;
const HASH_DOMAIN: &[u8] = b"atrest-audit-v1\0";

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

fn hash_of(seq: u64, prev: &[u8; 32], e: &NewEvent) -> [u8; 32] {
    let mut w = Writer::new();
    w.raw(HASH_DOMAIN)
        .u64(seq)
        .raw(prev)
        .i64(e.time.0)
        .str(&e.session)
        .str(&e.actor)
        .str(&e.kind)
        .str(&e.text);
    openssl::sha::sha256(&w.finish())
}

fn encode(e: &NewEvent, prev: &[u8; 32], hash: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(RECORD_VERSION)
        .raw(prev)
        .raw(hash)
        .i64(e.time.0)
        .str(&e.session)
        .str(&e.actor)
        .str(&e.kind)
        .str(&e.text);
    w.finish()
}

/// The stored record of `e`.
pub(crate) fn encode_event(e: &Event) -> Vec<u8> {
    let fields = NewEvent {
        time: e.time,
        session: e.session.clone(),
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        text: e.text.clone(),
    };
    encode(&fields, &e.prev_hash, &e.hash)
}

/// Decodes a stored event record. Never panics.
pub fn decode(seq: u64, b: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader::new("audit event", b);
    if r.u8("version")? != RECORD_VERSION {
        return Err(r.err("version", "unknown audit record version"));
    }
    let prev_hash = r.array::<32>("previous hash")?;
    let hash = r.array::<32>("hash")?;
    let time = Timestamp(r.i64("time")?);
    let session = r.str("session", MAX_SESSION_LEN)?.to_string();
    let actor = r.str("actor", MAX_ACTOR_LEN)?.to_string();
    let kind = r.str("kind", MAX_KIND_LEN)?.to_string();
    let text = r.str("text", MAX_TEXT_LEN)?.to_string();
    r.end()?;
    Ok(Event {
        seq,
        time,
        session,
        actor,
        kind,
        text,
        prev_hash,
        hash,
    })
}

fn check(e: &NewEvent) -> Result<()> {
    let field = |name: &str, v: &str, max: usize, required: bool| {
        if (required && v.is_empty()) || v.len() > max {
            return Err(Error::Invalid(format!(
                "the audit event's {name} must be {} to {max} bytes long (it is {})",
                if required { 1 } else { 0 },
                v.len()
            )));
        }
        Ok(())
    };
    field("session id", &e.session, MAX_SESSION_LEN, true)?;
    field("actor", &e.actor, MAX_ACTOR_LEN, false)?;
    field("kind", &e.kind, MAX_KIND_LEN, true)?;
    field("text", &e.text, MAX_TEXT_LEN, false)
}

fn decode_head(b: &[u8]) -> Result<(u64, [u8; 32])> {
    let mut r = Reader::new("audit head", b);
    let seq = r.u64("seq")?;
    let hash = r.array::<32>("hash")?;
    r.end()?;
    Ok((seq, hash))
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

type Keys<'a> = Box<dyn Iterator<Item = Result<(i64, u64)>> + 'a>;

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

    /// Events matching `q`, one page of them, with the total number of matches.
    pub fn query(&self, q: &Query) -> Result<Page> {
        let op = "query the audit history";
        let limit = match q.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let txn = self.store.read()?;
        let events = txn.open_table(EVENTS).map_err(storage(op))?;
        let by_time = txn.open_table(BY_TIME).map_err(storage(op))?;
        let by_session = txn.open_table(BY_SESSION).map_err(storage(op))?;
        let by_word = txn.open_table(BY_WORD).map_err(storage(op))?;
        let counts = txn.open_table(COUNTS).map_err(storage(op))?;
        let empty = Page {
            total: 0,
            events: Vec::new(),
        };
        let lo = q.from.map_or(i64::MIN, |t| t.0);
        let hi = match q.to {
            None => i64::MAX,
            Some(t) => match t.0.checked_sub(1) {
                Some(h) => h,
                None => return Ok(empty),
            },
        };
        if hi < lo {
            return Ok(empty);
        }
        let words: Vec<String> = q
            .words
            .as_deref()
            .map(words)
            .unwrap_or_default()
            .into_iter()
            .collect();
        // The shortest index drives the scan; the others are checked by lookups.
        let mut candidates: Vec<(u8, &str)> = Vec::new();
        if let Some(s) = q.session.as_deref() {
            candidates.push((0, s));
        }
        for w in &words {
            candidates.push((1, w.as_str()));
        }
        let mut best: Option<(u8, &str, u64)> = None;
        for &(k, s) in &candidates {
            let n = counts
                .get((k, s))
                .map_err(storage(op))?
                .map_or(0, |v| v.value());
            if n == 0 {
                return Ok(empty);
            }
            if best.is_none_or(|b| n < b.2) {
                best = Some((k, s, n));
            }
        }
        let newest = q.order == Order::NewestFirst;
        let keys: Keys<'_> = match best {
            None => {
                if q.from.is_none() && q.to.is_none() && words.is_empty() && q.session.is_none() {
                    // Everything: the total is the table's length.
                    let total = events.len().map_err(storage(op))?;
                    let it = events.iter().map_err(storage(op))?;
                    let seq = |r: Result<_, redb::StorageError>| {
                        r.map(|(k, _): (redb::AccessGuard<'_, u64>, _)| k.value())
                            .map_err(storage(op))
                    };
                    let it: Box<dyn Iterator<Item = Result<u64>>> = if newest {
                        Box::new(it.rev().map(seq))
                    } else {
                        Box::new(it.map(seq))
                    };
                    let seqs: Vec<u64> = it
                        .skip(q.offset.min(usize::MAX as u64) as usize)
                        .take(limit)
                        .collect::<Result<_>>()?;
                    return Ok(Page {
                        total,
                        events: load(&events, &seqs)?,
                    });
                }
                let it = by_time
                    .range((lo, 0u64)..=(hi, u64::MAX))
                    .map_err(storage(op))?;
                if newest {
                    Box::new(it.rev().map(time_key))
                } else {
                    Box::new(it.map(time_key))
                }
            }
            Some((k, s, _)) => {
                let table = if k == 0 { &by_session } else { &by_word };
                let it = table
                    .range((s, lo, 0u64)..=(s, hi, u64::MAX))
                    .map_err(storage(op))?;
                if newest {
                    Box::new(it.rev().map(index_key))
                } else {
                    Box::new(it.map(index_key))
                }
            }
        };
        let mut total = 0u64;
        let mut seqs = Vec::new();
        for r in keys {
            let (t, seq) = r?;
            if let Some(s) = q.session.as_deref()
                && best.is_none_or(|b| b.0 != 0)
                && by_session.get((s, t, seq)).map_err(storage(op))?.is_none()
            {
                continue;
            }
            let mut all = true;
            for w in &words {
                if best.is_some_and(|b| b.0 == 1 && b.1 == w.as_str()) {
                    continue;
                }
                if by_word
                    .get((w.as_str(), t, seq))
                    .map_err(storage(op))?
                    .is_none()
                {
                    all = false;
                    break;
                }
            }
            if !all {
                continue;
            }
            seqs.push(seq);
            total += 1;
        }
        // The indexes are in time order; the answer is in sequence order.
        if newest {
            seqs.sort_unstable_by(|a, b| b.cmp(a));
        } else {
            seqs.sort_unstable();
        }
        let seqs: Vec<u64> = seqs
            .into_iter()
            .skip(q.offset.min(usize::MAX as u64) as usize)
            .take(limit)
            .collect();
        Ok(Page {
            total,
            events: load(&events, &seqs)?,
        })
    }

    /// Walks the whole chain and reports the first event whose link or contents do not check,
    /// or a head that does not match the last event.
    pub fn verify(&self) -> Result<Verification> {
        let op = "verify the audit history";
        let txn = self.store.read()?;
        let events = txn.open_table(EVENTS).map_err(storage(op))?;
        let meta = txn.open_table(META).map_err(storage(op))?;
        let head = match meta.get(HEAD_KEY).map_err(storage(op))? {
            Some(v) => Some(decode_head(v.value())?),
            None => None,
        };
        let mut expected = 1u64;
        let mut prev = [0u8; 32];
        let mut n = 0u64;
        let broken = |seq, reason: String| Some(BrokenLink { seq, reason });
        let mut first_broken = None;
        for r in events.iter().map_err(storage(op))? {
            let (k, v) = r.map_err(storage(op))?;
            let seq = k.value();
            n += 1;
            if seq != expected {
                first_broken = broken(
                    expected,
                    format!(
                        "event {expected} is missing: the history jumps from event {} to event {seq}",
                        expected - 1
                    ),
                );
                break;
            }
            let e = match decode(seq, v.value()) {
                Ok(e) => e,
                Err(err) => {
                    first_broken = broken(seq, format!("event {seq} cannot be read: {err}"));
                    break;
                }
            };
            if e.prev_hash != prev {
                first_broken = broken(
                    seq,
                    format!("event {seq} does not link to the hash of event {}", seq - 1),
                );
                break;
            }
            let fields = NewEvent {
                time: e.time,
                session: e.session,
                actor: e.actor,
                kind: e.kind,
                text: e.text,
            };
            if hash_of(seq, &prev, &fields) != e.hash {
                first_broken = broken(
                    seq,
                    format!("event {seq} was changed: its contents do not match its hash"),
                );
                break;
            }
            prev = e.hash;
            expected += 1;
        }
        if first_broken.is_none() {
            let last = expected - 1;
            match head {
                Some((hs, hh)) if hs == last && (last == 0 || hh == prev) => {}
                None if last == 0 => {}
                Some((hs, _)) if hs > last => {
                    first_broken = broken(
                        last + 1,
                        format!(
                            "events {} to {hs} were removed from the end of the history",
                            last + 1
                        ),
                    );
                }
                other => {
                    let hs = other.map_or(0, |h| h.0);
                    first_broken = broken(
                        hs + 1,
                        format!("the history holds events past the recorded head (event {hs})"),
                    );
                }
            }
        }
        let key = self.store.seal_key();
        if first_broken.is_none()
            && let (Some(k), Some((hs, hh))) = (&key, head)
        {
            let stored = meta.get(SEAL_KEY).map_err(storage(op))?;
            let ok = match stored {
                Some(v) => openssl::memcmp::eq(v.value(), &seal_of(k, hs, &hh)?),
                None => false,
            };
            if !ok {
                first_broken = broken(
                    hs,
                    format!(
                        "the history up to event {hs} does not match its seal under the volume \
                         key: it was rewritten by someone without the key"
                    ),
                );
            }
        }
        Ok(Verification {
            events: n,
            head,
            first_broken,
            sealed: key.is_some(),
        })
    }

    /// Sets (or, with `None`, removes) the key that seals the history, and seals the current
    /// head under it. Call it with the key derived from the volume key when the store opens on
    /// an encrypted volume, after [`Audit::verify`] under the previous key, and again whenever
    /// the volume key changes (rekey, decrypt). A history without a seal yet (a plain volume that
    /// was just encrypted, or an older store) is sealed as it is.
    pub fn set_seal_key(&self, key: Option<[u8; 32]>, reseal: bool) -> Result<()> {
        self.store.set_seal_key(key);
        let op = "seal the audit history";
        let k = self.store.seal_key();
        self.store.write(op, false, |txn| {
            let mut meta = txn.open_table(META).map_err(storage(op))?;
            let Some(k) = k else {
                meta.remove(SEAL_KEY).map_err(storage(op))?;
                return Ok(());
            };
            let has = meta.get(SEAL_KEY).map_err(storage(op))?.is_some();
            if has && !reseal {
                return Ok(());
            }
            let head = meta
                .get(HEAD_KEY)
                .map_err(storage(op))?
                .map(|v| v.value().to_vec());
            if let Some(b) = head {
                let (seq, hash) = decode_head(&b)?;
                meta.insert(SEAL_KEY, &seal_of(&k, seq, &hash)?[..])
                    .map_err(storage(op))?;
            }
            Ok(())
        })
    }
}

/// Rewrites the text of event `seq` and recomputes every hash from it to the head, as someone
/// with write access to the store's pages but without the seal key could (see
/// [`crate::testing::rewrite_audit_history`]). Leaves the seal as it is.
pub(crate) fn rewrite_history(store: &Store, seq: u64, text: &str) -> Result<()> {
    let op = "rewrite the audit history";
    store.write(op, false, |txn| {
        let mut ev = txn.open_table(EVENTS).map_err(storage(op))?;
        let mut meta = txn.open_table(META).map_err(storage(op))?;
        let last = ev
            .last()
            .map_err(storage(op))?
            .map_or(0, |(k, _)| k.value());
        let mut prev = None;
        for n in seq..=last {
            let Some(v) = ev.get(n).map_err(storage(op))?.map(|v| v.value().to_vec()) else {
                continue;
            };
            let e = decode(n, &v)?;
            let p = prev.unwrap_or(e.prev_hash);
            let ne = NewEvent {
                time: e.time,
                session: e.session,
                actor: e.actor,
                kind: e.kind,
                text: if n == seq { text.to_string() } else { e.text },
            };
            let h = hash_of(n, &p, &ne);
            ev.insert(n, &encode(&ne, &p, &h)[..])
                .map_err(storage(op))?;
            prev = Some(h);
        }
        if let Some(h) = prev {
            let mut w = Writer::new();
            w.u64(last).raw(&h);
            meta.insert(HEAD_KEY, &w.finish()[..])
                .map_err(storage(op))?;
        }
        Ok(())
    })
}

type Guards<'a, K> = (redb::AccessGuard<'a, K>, redb::AccessGuard<'a, ()>);

fn time_key(r: Result<Guards<'_, (i64, u64)>, redb::StorageError>) -> Result<(i64, u64)> {
    r.map(|(k, _)| k.value())
        .map_err(storage("read the audit time index"))
}

fn index_key(r: Result<Guards<'_, (&str, i64, u64)>, redb::StorageError>) -> Result<(i64, u64)> {
    r.map(|(k, _)| {
        let (_, t, s) = k.value();
        (t, s)
    })
    .map_err(storage("read an audit index"))
}

fn load(events: &redb::ReadOnlyTable<u64, &[u8]>, seqs: &[u64]) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(seqs.len());
    for &s in seqs {
        let v = events
            .get(s)
            .map_err(storage("read the audit history"))?
            .ok_or_else(|| Error::Corrupt {
                what: format!("audit event {s} is in an index but not in the history"),
            })?;
        out.push(decode(s, v.value())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use atrest_volume::MemDevice;
    use std::sync::Arc;

    fn store_with(n: u64) -> Store {
        let s = Store::create(Arc::new(MemDevice::new(8 << 20)), &StoreOptions::default()).unwrap();
        let events: Vec<NewEvent> = (0..n)
            .map(|i| NewEvent {
                time: Timestamp(i as i64),
                session: "s".into(),
                actor: "a".into(),
                kind: "k".into(),
                text: format!("event {i}"),
            })
            .collect();
        s.audit().append_batch(&events).unwrap();
        s
    }

    fn raw_edit(s: &Store, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
        s.write("tamper", false, |txn| {
            let mut t = txn.open_table(EVENTS).unwrap();
            f(&mut t);
            Ok(())
        })
        .unwrap();
    }

    fn broken(s: &Store) -> Option<u64> {
        s.audit().verify().unwrap().first_broken.map(|b| b.seq)
    }

    #[test]
    fn the_seal_catches_a_rehashed_rewrite() {
        let s = store_with(10);
        let key = [7u8; 32];
        s.audit().set_seal_key(Some(key), false).unwrap();
        assert_eq!(broken(&s), None);
        assert!(s.audit().verify().unwrap().sealed);
        // Appends keep the seal current.
        s.audit()
            .append(&NewEvent {
                time: Timestamp(99),
                session: "s".into(),
                actor: "a".into(),
                kind: "k".into(),
                text: "after sealing".into(),
            })
            .unwrap();
        assert_eq!(broken(&s), None);
        // Every hash recomputed from event 4 to the head: the chain checks, the seal does not.
        rewrite_history(&s, 4, "forged").unwrap();
        let v = s.audit().verify().unwrap();
        let b = v.first_broken.unwrap();
        assert_eq!(b.seq, 11);
        assert!(b.reason.contains("seal"), "{}", b.reason);
        // Without the key the same rewrite goes unseen: that is what the seal adds.
        s.audit().set_seal_key(None, false).unwrap();
        assert_eq!(broken(&s), None);
        // A new key (rekey) reseals the history as it is.
        let s = store_with(3);
        s.audit().set_seal_key(Some(key), false).unwrap();
        s.audit().set_seal_key(Some([8u8; 32]), true).unwrap();
        assert_eq!(broken(&s), None);
        s.audit().set_seal_key(Some(key), false).unwrap();
        assert_eq!(broken(&s), Some(3), "sealed under the new key, not the old");
    }

    #[test]
    fn verify_reports_the_first_broken_link() {
        let s = store_with(10);
        assert_eq!(broken(&s), None);
        // Changed text.
        raw_edit(&s, |t| {
            let v = t.get(4).unwrap().unwrap().value().to_vec();
            let mut e = decode(4, &v).unwrap();
            e.text = "forged".into();
            let ne = NewEvent {
                time: e.time,
                session: e.session,
                actor: e.actor,
                kind: e.kind,
                text: e.text,
            };
            t.insert(4, &encode(&ne, &e.prev_hash, &e.hash)[..])
                .unwrap();
        });
        let v = s.audit().verify().unwrap();
        assert_eq!(v.first_broken.as_ref().unwrap().seq, 4);
        assert!(v.first_broken.unwrap().reason.contains("changed"));

        // Rehashed forgery: its own hash checks, the next link does not.
        let s = store_with(10);
        raw_edit(&s, |t| {
            let v = t.get(4).unwrap().unwrap().value().to_vec();
            let e = decode(4, &v).unwrap();
            let ne = NewEvent {
                time: e.time,
                session: e.session,
                actor: e.actor,
                kind: e.kind,
                text: "forged".into(),
            };
            let h = hash_of(4, &e.prev_hash, &ne);
            t.insert(4, &encode(&ne, &e.prev_hash, &h)[..]).unwrap();
        });
        assert_eq!(broken(&s), Some(5));

        // A removed event in the middle, at the end; garbage bytes.
        let s = store_with(10);
        raw_edit(&s, |t| {
            t.remove(6).unwrap();
        });
        assert_eq!(broken(&s), Some(6));
        let s = store_with(10);
        raw_edit(&s, |t| {
            t.remove(10).unwrap();
        });
        let v = s.audit().verify().unwrap();
        assert_eq!(v.first_broken.as_ref().unwrap().seq, 10);
        assert!(v.first_broken.unwrap().reason.contains("removed"));
        let s = store_with(10);
        raw_edit(&s, |t| {
            t.insert(2, &[1u8, 2, 3][..]).unwrap();
        });
        assert_eq!(broken(&s), Some(2));
    }
}
