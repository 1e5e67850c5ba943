//! The operation dispatcher: request bytes in, response bytes out, no sockets. Authenticates
//! each request (the TLS client certificate and the header's username/password must belong to
//! the same registered client), runs its batch items against the store, and answers in the
//! request's protocol version.
//!
//! One file per operation (or family), each citing its section of the KMIP 1.4 specification
//! (KMIP 2.x describes the same operations, by name); this file holds what they share —
//! the session, authentication's entry point, the dispatch `match`, and the record helpers.
//! Every offered operation is exercised by the OASIS profile test cases in
//! `tests/xml_vectors.rs`, which checks that each has at least one passing case.

mod attributes;
mod auth;
mod create;
mod get;
mod lifecycle;
mod locate;
mod register;
mod server_info;
mod template;

pub use attributes::attributes_of;
use get::unsupported_feature;
use parking_lot::RwLock;
use server_info::{discover_versions, query};

use atrest_kmip::message::{
    Attribute, Attributes, Credential, KeyBlock, KeyFormatType, ManagedObject, ObjectType,
    Operation, ProtocolVersion, QueryFunction, QueryResponse, RequestBatchItem, RequestMessage,
    RequestPayload, ResponseBatchItem, ResponseHeader, ResponseMessage, ResponsePayload,
    ResultReason, ResultStatus, RevocationReasonCode, State, tags,
};
use atrest_kmip::ttlv::{self, Item, Limits, Tag, Value};
use zeroize::Zeroizing;

use crate::clients::Clients;
use crate::crypto;
use crate::store::{Record, Store};

/// Operation codes of the 2.x test-harness markers (no effect on objects).
const OP_LOG: Operation = Operation(0x2C);
const OP_INTEROP: Operation = Operation(0x34);

/// AES key lengths Create accepts. 512 is not an AES key length: it is accepted so that the
/// 64 bytes of an XTS-AES-256 key can live in one object, as PyKMIP allows; see docs/kms.md.
pub const AES_LENGTHS: [i32; 4] = [128, 192, 256, 512];

/// Most client-supplied attributes (beyond the ones the server interprets) one object keeps.
const MAX_EXTRA_ATTRIBUTES: usize = 32;

/// Default for the per-client object quota (`atrest kms serve --max-objects-per-client`): the
/// most objects one client may hold, destroyed ones included (their records are kept). Stops:
/// one client — or a stolen identity — filling the server's disk and memory with objects.
/// Past it Create and Register fail with Server Limit Exceeded (2.x) or Permission Denied (1.x,
/// which has no reason for a quota).
pub const MAX_OBJECTS_PER_CLIENT: usize = 10_000;

/// The Operation Policy Name every object reports in KMIP 1.x: the server's only policy — the
/// owner may run every operation the server offers on it, and no other client sees it.
pub const OPERATION_POLICY: &str = "default";

/// The vendor identification answered to Query.
pub const VENDOR: &str = concat!("atrest KMS ", env!("CARGO_PKG_VERSION"));

/// What a connection has proved so far, for authentication of its requests.
pub struct Session {
    /// The peer, for log lines.
    pub peer: String,
    /// SHA-256 fingerprint (hex) of the TLS client certificate, if one was presented.
    pub certificate: Option<String>,
    /// The client and password last verified on this connection, to skip the slow hash on
    /// later requests with the same credential.
    verified: Option<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A connection from `peer` that presented the certificate with fingerprint `certificate`,
    /// with no credential verified yet.
    pub fn new(peer: impl Into<String>, certificate: Option<String>) -> Self {
        Session {
            peer: peer.into(),
            certificate,
            verified: None,
        }
    }
}

/// A failed batch item: Result Reason and Result Message.
#[derive(Debug)]
struct Fail {
    reason: ResultReason,
    message: String,
}

fn fail(reason: ResultReason, message: impl Into<String>) -> Fail {
    Fail {
        reason,
        message: message.into(),
    }
}

type OpResult = Result<ResponsePayload, Fail>;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The key server's operations over a store and a client registry.
#[derive(Debug)]
pub struct Engine {
    store: RwLock<Store>,
    clients: RwLock<Clients>,
    limits: Limits,
    max_objects_per_client: usize,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The version a response is written in: the request's when supported, else the nearest one
/// below it (or 1.0).
fn response_version(v: ProtocolVersion) -> ProtocolVersion {
    ProtocolVersion::SUPPORTED
        .iter()
        .copied()
        .find(|s| *s <= v)
        .unwrap_or(ProtocolVersion::V1_0)
}

fn not_found(v: ProtocolVersion, uid: &str) -> Fail {
    let reason = if v.is_2x() {
        ResultReason::OBJECT_NOT_FOUND
    } else {
        ResultReason::ITEM_NOT_FOUND
    };
    fail(
        reason,
        format!("no object {:?} is visible to this client", clip(uid)),
    )
}

fn wrong_state(v: ProtocolVersion, what: &str, state: State) -> Fail {
    let reason = if v.is_2x() {
        ResultReason::WRONG_KEY_LIFECYCLE_STATE
    } else {
        ResultReason::PERMISSION_DENIED
    };
    fail(reason, format!("{what} is not allowed in state {state}"))
}

fn is_destroyed(state: State) -> bool {
    state == State::DESTROYED || state == State::DESTROYED_COMPROMISED
}

impl Engine {
    /// An engine over `store` and `clients`, with the default limits and quota.
    pub fn new(store: Store, clients: Clients) -> Engine {
        Engine {
            store: RwLock::new(store),
            clients: RwLock::new(clients),
            limits: Limits::default(),
            max_objects_per_client: MAX_OBJECTS_PER_CLIENT,
            metrics: Default::default(),
        }
    }

    /// With another per-client object quota (see [`MAX_OBJECTS_PER_CLIENT`]).
    pub fn with_max_objects_per_client(mut self, n: usize) -> Self {
        self.max_objects_per_client = n;
        self
    }

    /// With other decoding limits (message size, depth).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The decoding limits of requests.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the client registry (after `add-client` wrote a new one).
    pub fn set_clients(&self, clients: Clients) {
        *self.clients.write() = clients;
    }

    /// The counters of operations and connections (`--metrics-listen`).
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Objects held by object type and state, for the metrics.
    pub fn object_counts(&self) -> crate::metrics::ObjectCounts {
        let store = self.store.read();
        crate::metrics::count_objects(
            store
                .iter_ordered()
                .into_iter()
                .map(|r| (r.object_type, r.state)),
        )
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.store.read().len()
    }

    /// Handles one whole request message (TTLV bytes, header included) and returns the
    /// response message's bytes. Never panics on any input; a request that cannot be decoded
    /// gets an Invalid Message response.
    pub fn handle(&self, session: &mut Session, request: &[u8]) -> Zeroizing<Vec<u8>> {
        let item = match ttlv::decode(request, &self.limits) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(peer = %session.peer, error = %e, "undecodable request");
                self.metrics.invalid_message();
                return Zeroizing::new(invalid_message(
                    ProtocolVersion::V1_0,
                    format!("bad TTLV: {e}"),
                ));
            }
        };
        // The response may carry key material (Get): zeroed once sent.
        Zeroizing::new(self.handle_item(session, &item).to_item().to_bytes())
    }

    /// Handles a decoded request message.
    pub fn handle_item(&self, session: &mut Session, item: &Item) -> ResponseMessage {
        let resp = self.respond(session, item);
        for i in &resp.items {
            match i.operation {
                Some(op) => self.metrics.operation(
                    op,
                    (i.status != ResultStatus::SUCCESS)
                        .then(|| i.reason.unwrap_or(ResultReason::GENERAL_FAILURE)),
                ),
                None => self.metrics.invalid_message(),
            }
        }
        resp
    }

    fn respond(&self, session: &mut Session, item: &Item) -> ResponseMessage {
        let req = match RequestMessage::from_item(item) {
            Ok(r) => r,
            Err(e) => {
                let v = header_version(item)
                    .map(response_version)
                    .unwrap_or(ProtocolVersion::V1_0);
                tracing::warn!(peer = %session.peer, error = %e, "malformed request");
                return invalid_message_msg(v, format!("malformed request: {e}"));
            }
        };
        let requested = req.header.protocol_version;
        let v = response_version(requested);
        if v != requested {
            return invalid_message_msg(
                v,
                format!(
                    "protocol version {requested} is not supported; use one of 1.0-1.4, 2.0, 2.1"
                ),
            );
        }
        if req.items.is_empty() || req.header.batch_count != req.items.len() as i32 {
            return invalid_message_msg(
                v,
                format!(
                    "Batch Count is {} but the message has {} batch items",
                    req.header.batch_count,
                    req.items.len()
                ),
            );
        }
        if req.items.len() > 1 && req.items.iter().any(|i| i.id.is_none()) {
            return invalid_message_msg(
                v,
                "every batch item of a multi-item batch needs a Unique Batch Item ID",
            );
        }
        let items = match self.authenticate(session, req.header.authentication.as_ref()) {
            Err(reason) => {
                tracing::warn!(peer = %session.peer, reason = %for_log(&reason), "authentication failed");
                req.items
                    .iter()
                    .map(|bi| {
                        ResponseBatchItem::failure(
                            Some(bi.operation),
                            bi.id.clone(),
                            ResultReason::AUTHENTICATION_NOT_SUCCESSFUL,
                            "authentication failed: the TLS client certificate and the request \
                             header's username and password must belong to the same registered \
                             client",
                        )
                    })
                    .collect()
            }
            Ok(owner) => {
                let mut placeholder = None;
                let raw: Vec<Option<&Item>> = item
                    .children_with(tags::BATCH_ITEM)
                    .map(|b| b.child(tags::REQUEST_PAYLOAD))
                    .collect();
                req.items
                    .iter()
                    .enumerate()
                    .map(|(i, bi)| {
                        let raw = raw.get(i).copied().flatten();
                        self.run_item(session, &owner, v, bi, raw, &mut placeholder)
                    })
                    .collect()
            }
        };
        let mut resp = ResponseMessage {
            header: ResponseHeader {
                protocol_version: v,
                time_stamp: now(),
                batch_count: 0,
            },
            items,
        };
        resp.header.batch_count = resp.items.len() as i32;
        if let Some(max) = req.header.maximum_response_size
            && max >= 0
            && resp.to_item().encoded_len() > max as usize
        {
            resp.items = req
                .items
                .iter()
                .map(|bi| {
                    ResponseBatchItem::failure(
                        Some(bi.operation),
                        bi.id.clone(),
                        ResultReason::RESPONSE_TOO_LARGE,
                        format!("the response is larger than the Maximum Response Size {max}"),
                    )
                })
                .collect();
        }
        resp
    }

    fn run_item(
        &self,
        session: &Session,
        owner: &str,
        v: ProtocolVersion,
        bi: &RequestBatchItem,
        raw: Option<&Item>,
        placeholder: &mut Option<String>,
    ) -> ResponseBatchItem {
        let op = bi.operation;
        let result = match unsupported_feature(op, raw) {
            Some(f) => Err(f),
            None => self.dispatch(session, owner, v, op, &bi.payload, placeholder),
        };
        match result {
            Ok(payload) => {
                if let Some(uid) = payload_uid(&payload) {
                    *placeholder = Some(uid);
                }
                tracing::debug!(peer = %session.peer, client = owner, operation = %op, "ok");
                ResponseBatchItem {
                    operation: Some(op),
                    id: bi.id.clone(),
                    status: ResultStatus::SUCCESS,
                    reason: None,
                    message: None,
                    payload: Some(payload),
                }
            }
            Err(f) => {
                tracing::info!(
                    peer = %session.peer, client = owner, operation = %op,
                    reason = %f.reason, message = %for_log(&f.message), "operation failed"
                );
                ResponseBatchItem::failure(Some(op), bi.id.clone(), f.reason, f.message)
            }
        }
    }

    fn dispatch(
        &self,
        session: &Session,
        owner: &str,
        v: ProtocolVersion,
        op: Operation,
        payload: &RequestPayload,
        placeholder: &Option<String>,
    ) -> OpResult {
        let uid = |u: &Option<String>| -> Result<String, Fail> {
            u.clone().or_else(|| placeholder.clone()).ok_or_else(|| {
                fail(
                    ResultReason::INVALID_FIELD,
                    "no Unique Identifier, and no earlier batch item set the ID Placeholder",
                )
            })
        };
        match payload {
            RequestPayload::DiscoverVersions { versions } => Ok(discover_versions(versions)),
            RequestPayload::Query { functions } => Ok(query(v, functions)),
            RequestPayload::Create {
                object_type,
                attributes,
            } => self.create(owner, v, *object_type, attributes),
            RequestPayload::Register {
                object_type,
                attributes,
                object,
            } => self.register(owner, v, *object_type, attributes, object),
            RequestPayload::Activate { unique_identifier } => {
                self.activate(owner, v, &uid(unique_identifier)?)
            }
            RequestPayload::Get {
                unique_identifier,
                key_format_type,
            } => self.get(owner, v, &uid(unique_identifier)?, *key_format_type),
            RequestPayload::GetAttributes {
                unique_identifier,
                names,
            } => self.get_attributes(owner, v, &uid(unique_identifier)?, names),
            RequestPayload::GetAttributeList { unique_identifier } => {
                self.get_attribute_list(owner, v, &uid(unique_identifier)?)
            }
            RequestPayload::Locate {
                maximum_items,
                offset_items,
                attributes,
            } => self.locate(owner, v, *maximum_items, *offset_items, attributes),
            RequestPayload::Revoke {
                unique_identifier,
                reason,
                compromise_date,
            } => self.revoke(
                owner,
                v,
                &uid(unique_identifier)?,
                reason.code,
                reason.message.clone(),
                *compromise_date,
            ),
            RequestPayload::Destroy { unique_identifier } => {
                self.destroy(owner, v, &uid(unique_identifier)?)
            }
            RequestPayload::Other(item) if op == OP_INTEROP || op == OP_LOG => {
                if op == OP_LOG
                    && let Some(Item {
                        value: Value::TextString(m),
                        ..
                    }) = item.children().first()
                {
                    tracing::info!(peer = %session.peer, client = owner, message = %for_log(m), "client log");
                }
                Ok(ResponsePayload::Other(Item::structure(
                    tags::RESPONSE_PAYLOAD,
                    vec![],
                )))
            }
            _ => Err(fail(
                ResultReason::OPERATION_NOT_SUPPORTED,
                format!("operation {op} is not supported by this server"),
            )),
        }
    }

    /// Runs `f` on a copy of the owner's object `uid` and stores the result durably before
    /// returning; nothing changes if `f` fails or the write fails.
    fn update(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
        f: impl FnOnce(&mut Record, i64) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let mut store = self.store.write();
        let mut rec = match store.get(uid) {
            Some(r) if r.owner == owner => r.clone(),
            _ => return Err(not_found(v, uid)),
        };
        let t = now();
        f(&mut rec, t)?;
        rec.last_change_date = t;
        store.put(rec).map_err(storage_failure)
    }

    fn with_record<T>(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
        f: impl FnOnce(&Record) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let store = self.store.read();
        match store.get(uid) {
            Some(r) if r.owner == owner => f(r),
            _ => Err(not_found(v, uid)),
        }
    }

    fn insert(&self, v: ProtocolVersion, mut rec: Record) -> Result<String, Fail> {
        let mut store = self.store.write();
        if store.count_owned(&rec.owner) >= self.max_objects_per_client {
            let reason = if v.is_2x() {
                ResultReason::SERVER_LIMIT_EXCEEDED
            } else {
                ResultReason::PERMISSION_DENIED
            };
            tracing::warn!(client = %rec.owner, max = self.max_objects_per_client, "object quota reached");
            return Err(fail(
                reason,
                format!(
                    "this client holds {} objects, its quota (destroyed objects count too); \
                     ask the server's operator to raise --max-objects-per-client",
                    self.max_objects_per_client
                ),
            ));
        }
        rec.seq = store.take_seq();
        let uid = rec.uid.clone();
        store.put(rec).map_err(storage_failure)?;
        Ok(uid)
    }
}

fn storage_failure(e: crate::error::KmsError) -> Fail {
    tracing::error!(error = %e, "storing an object failed");
    fail(
        ResultReason::GENERAL_FAILURE,
        "the server could not store the object durably; nothing was changed (see the server log)",
    )
}

/// The uid a successful payload names, for the ID Placeholder.
fn payload_uid(p: &ResponsePayload) -> Option<String> {
    match p {
        ResponsePayload::Create {
            unique_identifier, ..
        }
        | ResponsePayload::Register { unique_identifier }
        | ResponsePayload::Activate { unique_identifier }
        | ResponsePayload::Revoke { unique_identifier }
        | ResponsePayload::Get {
            unique_identifier, ..
        }
        | ResponsePayload::GetAttributes {
            unique_identifier, ..
        }
        | ResponsePayload::GetAttributeList {
            unique_identifier, ..
        } => Some(unique_identifier.clone()),
        ResponsePayload::Locate {
            unique_identifiers, ..
        } => unique_identifiers.first().cloned(),
        _ => None,
    }
}

/// Most characters of client-supplied text quoted in a result message or a log line.
const CLIP_CHARS: usize = 64;

/// Client-supplied text as it may be quoted back: at most [`CLIP_CHARS`] characters.
fn clip(s: &str) -> String {
    let n = s.chars().count();
    if n <= CLIP_CHARS {
        s.to_owned()
    } else {
        let head: String = s.chars().take(CLIP_CHARS).collect();
        format!("{head}… ({n} characters)")
    }
}

/// Most characters of a log field that may hold client-supplied text.
const LOG_CHARS: usize = 256;

/// Text for a log line: control characters (newlines, escape sequences, bidirectional
/// overrides…) escaped, so that a client cannot forge or hide log lines, and at most
/// `LOG_CHARS` characters.
pub fn for_log(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= LOG_CHARS {
            out.push_str(&format!("… ({} characters)", s.chars().count()));
            break;
        }
        let bidi = matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The Protocol Version of a request that did not parse as a whole, if its header has one.
fn header_version(item: &Item) -> Option<ProtocolVersion> {
    let h = item.child(tags::REQUEST_HEADER)?;
    ProtocolVersion::from_item(h.child(tags::PROTOCOL_VERSION)?).ok()
}

fn invalid_message_msg(v: ProtocolVersion, message: impl Into<String>) -> ResponseMessage {
    ResponseMessage {
        header: ResponseHeader {
            protocol_version: v,
            time_stamp: now(),
            batch_count: 1,
        },
        items: vec![ResponseBatchItem::failure(
            None,
            None,
            ResultReason::INVALID_MESSAGE,
            message,
        )],
    }
}

/// The bytes of an Invalid Message response.
pub fn invalid_message(v: ProtocolVersion, message: impl Into<String>) -> Vec<u8> {
    invalid_message_msg(v, message).to_item().to_bytes()
}

#[cfg(test)]
mod tests;
