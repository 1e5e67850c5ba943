//! The operation dispatcher: request bytes in, response bytes out, no sockets. Authenticates
//! each request (the TLS client certificate and the header's username/password must belong to
//! the same registered client), runs its batch items against the store, and answers in the
//! request's protocol version.

use std::sync::RwLock;

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

/// Result Reason Server Limit Exceeded (KMIP 2.0 and later).
const SERVER_LIMIT_EXCEEDED: ResultReason = ResultReason(0x3A);

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

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the client registry (after `add-client` wrote a new one).
    pub fn set_clients(&self, clients: Clients) {
        *self.clients.write().unwrap_or_else(|e| e.into_inner()) = clients;
    }

    /// The counters of operations and connections (`--metrics-listen`).
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Objects held by object type and state, for the metrics.
    pub fn object_counts(&self) -> crate::metrics::ObjectCounts {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        crate::metrics::count_objects(
            store
                .iter_ordered()
                .into_iter()
                .map(|r| (r.object_type, r.state)),
        )
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.store.read().unwrap_or_else(|e| e.into_inner()).len()
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

    /// The owner (client name) the request acts for, or why it may not act.
    fn authenticate(
        &self,
        session: &mut Session,
        credential: Option<&Credential>,
    ) -> Result<String, String> {
        let Some(fp) = &session.certificate else {
            return Err("no TLS client certificate".into());
        };
        // A client removed (`atrest kms remove-client`) or added by another process since the
        // registry was read: read it again, so that a removed client's open connections are
        // refused from their next request.
        let stale = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_stale();
        if stale {
            let reloaded = self
                .clients
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .reload();
            match reloaded {
                Ok(c) => self.set_clients(c),
                Err(e) => {
                    tracing::error!(error = %e, "reloading the client registry failed");
                    return Err("the client registry cannot be read; see the server log".into());
                }
            }
        }
        let known = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_certificate(fp)
            .is_some();
        if !known {
            // Perhaps added by `atrest kms add-client` since the server started.
            let reloaded = self
                .clients
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .reload();
            match reloaded {
                Ok(c) => self.set_clients(c),
                Err(e) => tracing::error!(error = %e, "reloading the client registry failed"),
            }
        }
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        let Some(client) = clients.by_certificate(fp) else {
            return Err(format!(
                "the client certificate (SHA-256 {fp}) is not registered to any client"
            ));
        };
        let (username, password) = match credential {
            None => {
                return Err(format!(
                    "no Credential in the request header (client {})",
                    client.name
                ));
            }
            Some(Credential::UsernamePassword { username, password }) => (username, password),
            Some(Credential::Other {
                credential_type, ..
            }) => {
                return Err(format!(
                    "Credential Type {credential_type} is not supported; send Username and Password"
                ));
            }
            Some(_) => return Err("unsupported Credential".into()),
        };
        if *username != client.username {
            return Err(format!(
                "username {:?} does not belong to the certificate's client {:?}",
                clip(username),
                client.name
            ));
        }
        let Some(password) = password else {
            return Err(format!("no password for username {:?}", clip(username)));
        };
        if let Some((name, cached)) = &session.verified
            && *name == client.name
            && crypto::ct_eq(cached.as_bytes(), password.expose().as_bytes())
        {
            return Ok(client.name.clone());
        }
        if client.password.verify(password.expose()) {
            session.verified = Some((
                client.name.clone(),
                Zeroizing::new(password.expose().to_owned()),
            ));
            Ok(client.name.clone())
        } else {
            Err(format!("wrong password for username {:?}", clip(username)))
        }
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
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
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
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        match store.get(uid) {
            Some(r) if r.owner == owner => f(r),
            _ => Err(not_found(v, uid)),
        }
    }

    fn insert(&self, v: ProtocolVersion, mut rec: Record) -> Result<String, Fail> {
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        if store.count_owned(&rec.owner) >= self.max_objects_per_client {
            let reason = if v.is_2x() {
                SERVER_LIMIT_EXCEEDED
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

    fn create(
        &self,
        owner: &str,
        v: ProtocolVersion,
        object_type: ObjectType,
        attrs: &Attributes,
    ) -> OpResult {
        if object_type != ObjectType::SYMMETRIC_KEY {
            return Err(fail(
                ResultReason::INVALID_FIELD,
                format!("Create makes Symmetric Keys only, not {object_type}"),
            ));
        }
        let req = requested(attrs, object_type)?;
        match req.algorithm {
            Some(a) if a == atrest_kmip::message::CryptographicAlgorithm::AES.0 => {}
            Some(a) => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    format!(
                        "Cryptographic Algorithm {} is not supported; use AES",
                        atrest_kmip::message::CryptographicAlgorithm(a)
                    ),
                ));
            }
            None => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    "Create needs the Cryptographic Algorithm attribute (AES)",
                ));
            }
        }
        let length = match req.length {
            Some(l) if AES_LENGTHS.contains(&l) => l,
            Some(l) => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    format!("Cryptographic Length {l} is not supported; use 128, 192, 256 or 512"),
                ));
            }
            None => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    "Create needs the Cryptographic Length attribute (128, 192, 256 or 512)",
                ));
            }
        };
        let material = crypto::random_bytes(length as usize / 8).map_err(storage_failure)?;
        let rec = new_record(
            owner,
            object_type,
            req,
            material,
            KeyFormatType::RAW.0,
            None,
        )?;
        let uid = self.insert(v, rec)?;
        Ok(ResponsePayload::Create {
            object_type,
            unique_identifier: uid,
        })
    }

    fn register(
        &self,
        owner: &str,
        v: ProtocolVersion,
        object_type: ObjectType,
        attrs: &Attributes,
        object: &ManagedObject,
    ) -> OpResult {
        let (kb, secret_data_type) = match object {
            ManagedObject::SymmetricKey(kb) if object_type == ObjectType::SYMMETRIC_KEY => {
                (kb, None)
            }
            ManagedObject::SecretData {
                secret_data_type,
                key_block,
            } if object_type == ObjectType::SECRET_DATA => (key_block, Some(*secret_data_type)),
            _ => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    format!(
                        "Register takes a Symmetric Key or Secret Data object matching the \
                         Object Type ({object_type})"
                    ),
                ));
            }
        };
        if kb.wrapped {
            return Err(fail(
                ResultReason::FEATURE_NOT_SUPPORTED,
                "wrapped key blocks cannot be registered; register the key unwrapped",
            ));
        }
        let format = match kb.format {
            KeyFormatType::RAW | KeyFormatType::TRANSPARENT_SYMMETRIC_KEY => KeyFormatType::RAW,
            KeyFormatType::OPAQUE => KeyFormatType::OPAQUE,
            f => {
                return Err(fail(
                    ResultReason::KEY_FORMAT_TYPE_NOT_SUPPORTED,
                    format!("Key Format Type {f} is not supported; use Raw"),
                ));
            }
        };
        if kb.material.is_empty() {
            return Err(fail(
                ResultReason::INVALID_FIELD,
                "the key material is empty",
            ));
        }
        let mut req = requested(attrs, object_type)?;
        if req.algorithm.is_none() {
            req.algorithm = kb.algorithm.map(|a| a.0);
        }
        if req.length.is_none() {
            req.length = kb.length;
        }
        if object_type == ObjectType::SYMMETRIC_KEY {
            let bits = (kb.material.len() * 8) as i32;
            match req.length {
                None => req.length = Some(bits),
                Some(l) if l == bits || format == KeyFormatType::OPAQUE => {}
                Some(l) => {
                    return Err(fail(
                        ResultReason::INVALID_FIELD,
                        format!(
                            "Cryptographic Length {l} does not match the {bits}-bit key material"
                        ),
                    ));
                }
            }
        }
        let rec = new_record(
            owner,
            object_type,
            req,
            kb.material.clone(),
            format.0,
            secret_data_type,
        )?;
        let uid = self.insert(v, rec)?;
        Ok(ResponsePayload::Register {
            unique_identifier: uid,
        })
    }

    fn activate(&self, owner: &str, v: ProtocolVersion, uid: &str) -> OpResult {
        self.update(owner, v, uid, |r, t| {
            let s = State(r.state);
            if s != State::PRE_ACTIVE {
                return Err(wrong_state(v, "Activate", s));
            }
            r.state = State::ACTIVE.0;
            r.activation_date = Some(t);
            Ok(())
        })?;
        Ok(ResponsePayload::Activate {
            unique_identifier: uid.to_owned(),
        })
    }

    fn revoke(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
        code: RevocationReasonCode,
        message: Option<String>,
        occurrence: Option<i64>,
    ) -> OpResult {
        self.update(owner, v, uid, |r, t| {
            let s = State(r.state);
            let compromise = code == RevocationReasonCode::KEY_COMPROMISE
                || code == RevocationReasonCode::CA_COMPROMISE;
            if compromise {
                r.state = match s {
                    State::PRE_ACTIVE | State::ACTIVE | State::DEACTIVATED => State::COMPROMISED.0,
                    State::DESTROYED => State::DESTROYED_COMPROMISED.0,
                    _ => return Err(wrong_state(v, "Revoke (compromise)", s)),
                };
                r.compromise_date = Some(t);
                r.compromise_occurrence_date = Some(occurrence.unwrap_or(t));
            } else {
                match s {
                    State::PRE_ACTIVE | State::ACTIVE => {
                        r.state = State::DEACTIVATED.0;
                        r.deactivation_date = Some(t);
                    }
                    _ => return Err(wrong_state(v, "Revoke", s)),
                }
            }
            r.revocation = Some((code.0, message.map(|m| m.chars().take(1024).collect())));
            Ok(())
        })?;
        Ok(ResponsePayload::Revoke {
            unique_identifier: uid.to_owned(),
        })
    }

    fn destroy(&self, owner: &str, v: ProtocolVersion, uid: &str) -> OpResult {
        self.update(owner, v, uid, |r, t| {
            let s = State(r.state);
            r.state = match s {
                State::PRE_ACTIVE | State::DEACTIVATED => State::DESTROYED.0,
                State::COMPROMISED => State::DESTROYED_COMPROMISED.0,
                State::ACTIVE => {
                    return Err(wrong_state(
                        v,
                        "Destroy of an Active object (Revoke it first)",
                        s,
                    ));
                }
                _ if v.is_2x() => {
                    return Err(fail(
                        ResultReason::OBJECT_DESTROYED,
                        "the object is destroyed already",
                    ));
                }
                _ => return Err(wrong_state(v, "Destroy", s)),
            };
            r.material = None;
            r.destroy_date = Some(t);
            Ok(())
        })?;
        Ok(ResponsePayload::Destroy {
            unique_identifier: uid.to_owned(),
        })
    }

    fn get(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
        format: Option<KeyFormatType>,
    ) -> OpResult {
        self.with_record(owner, v, uid, |r| {
            let Some(material) = &r.material else {
                return Err(if v.is_2x() {
                    fail(ResultReason::OBJECT_DESTROYED, "the object is destroyed")
                } else {
                    fail(
                        ResultReason::ITEM_NOT_FOUND,
                        "the object is destroyed: its key material no longer exists",
                    )
                });
            };
            let stored = KeyFormatType(r.key_format);
            let out_format = match format {
                None => stored,
                Some(f) if f == stored => f,
                Some(KeyFormatType::TRANSPARENT_SYMMETRIC_KEY)
                    if stored == KeyFormatType::RAW
                        && r.object_type == ObjectType::SYMMETRIC_KEY.0 =>
                {
                    KeyFormatType::TRANSPARENT_SYMMETRIC_KEY
                }
                Some(f) => {
                    return Err(fail(
                        ResultReason::KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        format!(
                            "Key Format Type {f} is not available for this object; use {stored}"
                        ),
                    ));
                }
            };
            let kb = KeyBlock {
                format: out_format,
                material: material.clone(),
                algorithm: r
                    .algorithm
                    .map(atrest_kmip::message::CryptographicAlgorithm),
                length: r.length,
                wrapped: false,
            };
            let object = match r.secret_data_type {
                Some(t) => ManagedObject::SecretData {
                    secret_data_type: t,
                    key_block: kb,
                },
                None => ManagedObject::SymmetricKey(kb),
            };
            Ok(ResponsePayload::Get {
                object_type: ObjectType(r.object_type),
                unique_identifier: uid.to_owned(),
                object,
            })
        })
    }

    fn get_attributes(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
        names: &[String],
    ) -> OpResult {
        self.with_record(owner, v, uid, |r| {
            let all = attributes_of(r, v);
            let attributes = if names.is_empty() {
                // Revocation Reason (and the 1.0 Digest) only when asked for by name: some
                // clients (PyKMIP) fail to decode a response that carries them.
                Attributes(
                    all.0
                        .into_iter()
                        .filter(|a| a.name != "Revocation Reason")
                        // At 1.0 the Digest has no Key Format Type, which PyKMIP requires.
                        .filter(|a| v != ProtocolVersion::V1_0 || a.name != "Digest")
                        .collect(),
                )
            } else {
                let mut out = Attributes::new();
                for n in names {
                    if out.0.iter().any(|a| &a.name == n) {
                        continue;
                    }
                    out.0.extend(all.0.iter().filter(|a| &a.name == n).cloned());
                }
                out
            };
            Ok(ResponsePayload::GetAttributes {
                unique_identifier: uid.to_owned(),
                attributes,
            })
        })
    }

    fn get_attribute_list(&self, owner: &str, v: ProtocolVersion, uid: &str) -> OpResult {
        self.with_record(owner, v, uid, |r| {
            let mut names: Vec<String> = Vec::new();
            for a in attributes_of(r, v).0 {
                if !names.contains(&a.name) {
                    names.push(a.name);
                }
            }
            Ok(ResponsePayload::GetAttributeList {
                unique_identifier: uid.to_owned(),
                names,
            })
        })
    }

    fn locate(
        &self,
        owner: &str,
        v: ProtocolVersion,
        maximum: Option<i32>,
        offset: Option<i32>,
        filter: &Attributes,
    ) -> OpResult {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        let wants_state = filter.0.iter().any(|a| a.name == "State");
        let mut uids = Vec::new();
        for r in store.iter_ordered() {
            if r.owner != owner || (!wants_state && is_destroyed(State(r.state))) {
                continue;
            }
            // Match against the attributes as the request's version reports them.
            let attrs = attributes_of(r, v);
            if filter.0.iter().all(|f| matches(&attrs, f, filter)) {
                uids.push(r.uid.clone());
            }
        }
        // Newest first, as most servers answer.
        uids.reverse();
        let skip = offset.unwrap_or(0).max(0) as usize;
        let take = match maximum {
            Some(m) if m >= 0 => m as usize,
            _ => usize::MAX,
        };
        Ok(ResponsePayload::Locate {
            located_items: None,
            unique_identifiers: uids.into_iter().skip(skip).take(take).collect(),
        })
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

/// Whether an object with `attrs` matches one Locate criterion. A date attribute given twice
/// in the criteria is a range (both ends included), as the specification defines.
fn matches(attrs: &Attributes, f: &Attribute, all: &Attributes) -> bool {
    if let Value::DateTime(_) = f.value {
        let bounds: Vec<i64> = all
            .0
            .iter()
            .filter(|a| a.name == f.name)
            .filter_map(|a| match a.value {
                Value::DateTime(d) => Some(d),
                _ => None,
            })
            .collect();
        if bounds.len() == 2 {
            let (lo, hi) = (bounds[0].min(bounds[1]), bounds[0].max(bounds[1]));
            return attrs.0.iter().any(|a| {
                a.name == f.name && matches!(a.value, Value::DateTime(d) if lo <= d && d <= hi)
            });
        }
    }
    match f.name.as_str() {
        "Cryptographic Usage Mask" => match (&f.value, attrs.usage_mask()) {
            (Value::Integer(want), Some(have)) => have & want == *want,
            _ => false,
        },
        "Name" => {
            let want = name_value(&f.value);
            want.is_some()
                && attrs
                    .0
                    .iter()
                    .any(|a| a.name == "Name" && name_value(&a.value) == want)
        }
        _ => attrs
            .0
            .iter()
            .any(|a| a.name == f.name && a.value == f.value),
    }
}

fn name_value(v: &Value) -> Option<&str> {
    match v {
        Value::Structure(c) => c.iter().find_map(|i| match (&i.tag, &i.value) {
            (t, Value::TextString(s)) if *t == tags::NAME_VALUE => Some(s.as_str()),
            _ => None,
        }),
        Value::TextString(s) => Some(s),
        _ => None,
    }
}

/// The attributes a client asked for in Create or Register.
struct Requested {
    algorithm: Option<u32>,
    length: Option<i32>,
    usage_mask: Option<i32>,
    names: Vec<(String, u32)>,
    activation_date: Option<i64>,
    extra: Vec<String>,
}

/// Attributes only the server sets.
const SERVER_ATTRIBUTES: &[&str] = &[
    "Unique Identifier",
    "State",
    "Initial Date",
    "Last Change Date",
    "Deactivation Date",
    "Destroy Date",
    "Compromise Date",
    "Compromise Occurrence Date",
    "Revocation Reason",
    "Digest",
    "Original Creation Date",
];

fn requested(attrs: &Attributes, object_type: ObjectType) -> Result<Requested, Fail> {
    let mut r = Requested {
        algorithm: None,
        length: None,
        usage_mask: None,
        names: Vec::new(),
        activation_date: None,
        extra: Vec::new(),
    };
    let wrong = |name: &str, ty: &str| {
        fail(
            ResultReason::INVALID_FIELD,
            format!("attribute {name} must be a {ty}"),
        )
    };
    for a in &attrs.0 {
        match (a.name.as_str(), &a.value) {
            ("Cryptographic Algorithm", Value::Enumeration(x)) => r.algorithm = Some(*x),
            ("Cryptographic Algorithm", _) => return Err(wrong(&a.name, "Enumeration")),
            ("Cryptographic Length", Value::Integer(x)) => r.length = Some(*x),
            ("Cryptographic Length", _) => return Err(wrong(&a.name, "Integer")),
            ("Cryptographic Usage Mask", Value::Integer(x)) => r.usage_mask = Some(*x),
            ("Cryptographic Usage Mask", _) => return Err(wrong(&a.name, "Integer")),
            ("Activation Date", Value::DateTime(x)) => r.activation_date = Some(*x),
            ("Activation Date", _) => return Err(wrong(&a.name, "Date-Time")),
            ("Object Type", Value::Enumeration(x)) if *x == object_type.0 => {}
            ("Object Type", _) => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    "the Object Type attribute differs from the request's Object Type",
                ));
            }
            ("Name", v) => {
                let Some(n) = name_value(v) else {
                    return Err(wrong(&a.name, "Name structure with a Name Value"));
                };
                let ty = match v {
                    Value::Structure(c) => c
                        .iter()
                        .find_map(|i| match (&i.tag, &i.value) {
                            (t, Value::Enumeration(e)) if *t == tags::NAME_TYPE => Some(*e),
                            _ => None,
                        })
                        .unwrap_or(1),
                    _ => 1,
                };
                r.names.push((n.to_owned(), ty));
            }
            (n, _) if SERVER_ATTRIBUTES.contains(&n) => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    format!("attribute {n} is set by the server, not by the client"),
                ));
            }
            _ => {
                if r.extra.len() >= MAX_EXTRA_ATTRIBUTES {
                    return Err(fail(
                        ResultReason::INVALID_FIELD,
                        format!("more than {MAX_EXTRA_ATTRIBUTES} other attributes"),
                    ));
                }
                let item = Attributes(vec![Attribute {
                    name: a.name.clone(),
                    index: None,
                    value: a.value.clone(),
                }])
                .to_1x_items();
                r.extra.push(hex::encode(item[0].to_bytes()));
            }
        }
    }
    Ok(r)
}

fn new_record(
    owner: &str,
    object_type: ObjectType,
    req: Requested,
    material: Zeroizing<Vec<u8>>,
    key_format: u32,
    secret_data_type: Option<u32>,
) -> Result<Record, Fail> {
    let t = now();
    let uid = crypto::random_uuid().map_err(storage_failure)?;
    let (state, activation_date) = match req.activation_date {
        Some(d) if d <= t => (State::ACTIVE.0, Some(d)),
        other => (State::PRE_ACTIVE.0, other),
    };
    Ok(Record {
        uid,
        owner: owner.to_owned(),
        seq: 0,
        object_type: object_type.0,
        state,
        algorithm: req.algorithm,
        length: req.length,
        usage_mask: req.usage_mask,
        key_format,
        secret_data_type,
        digest: Some(hex::encode(crypto::sha256(&material))),
        material: Some(material),
        names: req.names,
        initial_date: t,
        last_change_date: t,
        activation_date,
        deactivation_date: None,
        destroy_date: None,
        compromise_date: None,
        compromise_occurrence_date: None,
        revocation: None,
        extra: req.extra,
        sealed_material: None,
    })
}

fn tag(name: &str) -> Tag {
    Tag::from_name(name).unwrap_or(Tag(0x540000))
}

/// Every attribute of an object, as the server reports it in version `v`.
pub fn attributes_of(r: &Record, v: ProtocolVersion) -> Attributes {
    let mut a = Attributes::new();
    a.push("Unique Identifier", Value::TextString(r.uid.clone()));
    a.push("Object Type", Value::Enumeration(r.object_type));
    if let Some(x) = r.algorithm {
        a.push("Cryptographic Algorithm", Value::Enumeration(x));
    }
    if let Some(x) = r.length {
        a.push("Cryptographic Length", Value::Integer(x));
    }
    if let Some(x) = r.usage_mask {
        a.push("Cryptographic Usage Mask", Value::Integer(x));
    }
    for (i, (n, t)) in r.names.iter().enumerate() {
        a.0.push(Attribute {
            name: "Name".into(),
            index: (!v.is_2x()).then_some(i as i32),
            value: Value::Structure(vec![
                Item::new(tags::NAME_VALUE, Value::TextString(n.clone())),
                Item::new(tags::NAME_TYPE, Value::Enumeration(*t)),
            ]),
        });
    }
    a.push("State", Value::Enumeration(r.state));
    a.push("Initial Date", Value::DateTime(r.initial_date));
    // Operation Policy Name exists in KMIP 1.x only (removed in 2.0).
    if !v.is_2x() && !r.extra_names().any(|n| n == "Operation Policy Name") {
        a.push(
            "Operation Policy Name",
            Value::TextString(OPERATION_POLICY.to_owned()),
        );
    }
    let dates = [
        ("Activation Date", r.activation_date),
        ("Deactivation Date", r.deactivation_date),
        ("Destroy Date", r.destroy_date),
        ("Compromise Occurrence Date", r.compromise_occurrence_date),
        ("Compromise Date", r.compromise_date),
    ];
    for (n, d) in dates {
        if let Some(d) = d {
            a.push(n, Value::DateTime(d));
        }
    }
    if let Some((code, msg)) = &r.revocation {
        let mut c = vec![Item::new(
            tags::REVOCATION_REASON_CODE,
            Value::Enumeration(*code),
        )];
        if let Some(m) = msg {
            c.push(Item::new(
                tags::REVOCATION_MESSAGE,
                Value::TextString(m.clone()),
            ));
        }
        a.push("Revocation Reason", Value::Structure(c));
    }
    a.push("Last Change Date", Value::DateTime(r.last_change_date));
    if let Some(d) = r.digest.as_ref().and_then(|d| hex::decode(d).ok()) {
        let mut c = vec![
            // Hashing Algorithm SHA-256.
            Item::new(tag("Hashing Algorithm"), Value::Enumeration(6)),
            Item::new(tag("Digest Value"), Value::ByteString(d)),
        ];
        if v >= ProtocolVersion::V1_1 {
            c.push(Item::new(
                tags::KEY_FORMAT_TYPE,
                Value::Enumeration(r.key_format),
            ));
        }
        a.push("Digest", Value::Structure(c));
    }
    for x in &r.extra {
        let Some(item) = hex::decode(x)
            .ok()
            .and_then(|b| ttlv::decode(&b, &Limits::default()).ok())
        else {
            continue;
        };
        if let Ok(parsed) =
            Attributes::from_parent(&Item::structure(tags::TEMPLATE_ATTRIBUTE, vec![item]))
        {
            a.0.extend(parsed.0);
        }
    }
    a
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
/// [`LOG_CHARS`] characters.
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

/// An optional feature a request asks for that the server does not offer, found in the raw
/// request payload (the decoded payload does not keep it): Feature Not Supported, never a
/// silent fallback — a client asking for a wrapped key must not get it in the clear.
fn unsupported_feature(op: Operation, raw: Option<&Item>) -> Option<Fail> {
    let raw = raw?;
    if op == Operation::GET && raw.child(tag("Key Wrapping Specification")).is_some() {
        return Some(fail(
            ResultReason::FEATURE_NOT_SUPPORTED,
            "key wrapping is not supported: Get returns keys unwrapped only; send Get without a \
             Key Wrapping Specification",
        ));
    }
    if op == Operation::GET && raw.child(tags::KEY_COMPRESSION_TYPE).is_some() {
        return Some(fail(
            ResultReason(0x11),
            "Key Compression Type is not supported; send Get without it",
        ));
    }
    None
}

fn discover_versions(client: &[ProtocolVersion]) -> ResponsePayload {
    let versions = if client.is_empty() {
        ProtocolVersion::SUPPORTED.to_vec()
    } else {
        client
            .iter()
            .copied()
            .filter(|c| ProtocolVersion::SUPPORTED.contains(c))
            .collect()
    };
    ResponsePayload::DiscoverVersions { versions }
}

fn query(v: ProtocolVersion, functions: &[QueryFunction]) -> ResponsePayload {
    let mut q = QueryResponse::default();
    if functions.contains(&QueryFunction::QUERY_OPERATIONS) {
        q.operations = vec![
            Operation::CREATE,
            Operation::REGISTER,
            Operation::LOCATE,
            Operation::GET,
            Operation::GET_ATTRIBUTES,
            Operation::GET_ATTRIBUTE_LIST,
            Operation::ACTIVATE,
            Operation::REVOKE,
            Operation::DESTROY,
            Operation::QUERY,
        ];
        if v >= ProtocolVersion::V1_1 {
            q.operations.push(Operation::DISCOVER_VERSIONS);
        }
    }
    if functions.contains(&QueryFunction::QUERY_OBJECTS) {
        q.object_types = vec![ObjectType::SYMMETRIC_KEY, ObjectType::SECRET_DATA];
    }
    if functions.contains(&QueryFunction::QUERY_SERVER_INFORMATION) {
        q.vendor_identification = Some(VENDOR.to_owned());
    }
    ResponsePayload::Query(q)
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
#[path = "engine_tests.rs"]
mod tests;
