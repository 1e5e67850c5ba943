//! An event's stored record and its link in the hash chain: the event's hash, the record's
//! encoding and decoding, the limits of its fields, the head record, and the seal of the head
//! (HMAC-SHA256 under the seal key).

use super::{Event, MAX_ACTOR_LEN, MAX_KIND_LEN, MAX_SESSION_LEN, MAX_TEXT_LEN, NewEvent};
use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result};
use crate::store::Timestamp;

/// Domain tag of the seal's input.
const SEAL_TAG: &[u8] = b"atrest audit seal v1";

/// The seal of a head (seq, hash) under `key`.
pub(super) fn seal_of(key: &[u8; 32], seq: u64, hash: &[u8; 32]) -> Result<[u8; 32]> {
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
const RECORD_VERSION: u8 = 1;
const HASH_DOMAIN: &[u8] = b"atrest-audit-v1\0";
pub(super) fn hash_of(seq: u64, prev: &[u8; 32], e: &NewEvent) -> [u8; 32] {
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

pub(super) fn encode(e: &NewEvent, prev: &[u8; 32], hash: &[u8; 32]) -> Vec<u8> {
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

pub(super) fn check(e: &NewEvent) -> Result<()> {
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

pub(super) fn decode_head(b: &[u8]) -> Result<(u64, [u8; 32])> {
    let mut r = Reader::new("audit head", b);
    let seq = r.u64("seq")?;
    let hash = r.array::<32>("hash")?;
    r.end()?;
    Ok((seq, hash))
}
