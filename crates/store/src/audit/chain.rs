//! The chain's integrity: [`Audit::verify`] walks the chain, the head and the seal;
//! [`Audit::set_seal_key`] seals the head; `rewrite_history` forges a rehashed history for the
//! tests that show the seal catches it.

use redb::ReadableTable;

use super::{
    Audit, BrokenLink, EVENTS, HEAD_KEY, NewEvent, SEAL_KEY, Verification, decode, decode_head,
    encode, hash_of, seal_of,
};
use crate::codec::Writer;
use crate::error::{Result, storage};
use crate::store::{META, Store};

impl Audit<'_> {
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
