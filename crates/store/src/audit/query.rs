//! Queries: [`Audit::query`] scans the shortest index that applies (time, session or a word)
//! and checks the other conditions by lookups; results come back in sequence order.

use redb::{ReadableTable, ReadableTableMetadata};

use super::{
    Audit, BY_SESSION, BY_TIME, BY_WORD, COUNTS, DEFAULT_PAGE, EVENTS, Event, MAX_PAGE, Order,
    Page, Query, decode, words,
};
use crate::error::{Error, Result, storage};

type Keys<'a> = Box<dyn Iterator<Item = Result<(i64, u64)>> + 'a>;
impl Audit<'_> {
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
