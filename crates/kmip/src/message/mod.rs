//! KMIP request and response messages (KMIP 1.0–1.4 and 2.0–2.1), as typed Rust values that
//! convert to and from TTLV [`Item`]s. No I/O.
//!
//! One model serves both sides: the client encodes requests and decodes responses, the server
//! decodes requests and encodes responses. Encoding follows the message's protocol version
//! (1.x Template-Attribute / Attribute structures, 2.x Attributes structures); decoding accepts
//! both shapes whatever the header says, and ignores fields it does not know, as real servers
//! send fields the negotiated version does not define.

mod attributes;
mod enums;
mod object;
mod payload;
pub mod tags;

use std::fmt;

pub use attributes::{Attribute, Attributes};
pub use enums::{
    CryptographicAlgorithm, KeyFormatType, NameType, ObjectType, Operation, QueryFunction,
    ResultReason, ResultStatus, RevocationReasonCode, State, usage,
};
pub use object::{KeyBlock, ManagedObject};
pub use payload::{QueryResponse, RequestPayload, ResponsePayload, RevocationReason};

use crate::ttlv::{Item, Tag, Value};

/// A KMIP protocol version.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Major version number (1 or 2 for the versions atrest speaks).
    pub major: i32,
    /// Minor version number.
    pub minor: i32,
}

impl ProtocolVersion {
    /// KMIP 1.0.
    pub const V1_0: Self = Self::new(1, 0);
    /// KMIP 1.1.
    pub const V1_1: Self = Self::new(1, 1);
    /// KMIP 1.2.
    pub const V1_2: Self = Self::new(1, 2);
    /// KMIP 1.3.
    pub const V1_3: Self = Self::new(1, 3);
    /// KMIP 1.4.
    pub const V1_4: Self = Self::new(1, 4);
    /// KMIP 2.0.
    pub const V2_0: Self = Self::new(2, 0);
    /// KMIP 2.1.
    pub const V2_1: Self = Self::new(2, 1);

    /// Every version atrest speaks, newest first (the order of a Discover Versions request).
    pub const SUPPORTED: [Self; 7] = [
        Self::V2_1,
        Self::V2_0,
        Self::V1_4,
        Self::V1_3,
        Self::V1_2,
        Self::V1_1,
        Self::V1_0,
    ];

    /// The version `major`.`minor` (not checked against [`ProtocolVersion::SUPPORTED`]).
    pub const fn new(major: i32, minor: i32) -> Self {
        ProtocolVersion { major, minor }
    }

    /// Whether this version uses the 2.x encodings (Attributes instead of Template-Attribute).
    pub fn is_2x(self) -> bool {
        self.major >= 2
    }

    /// The Protocol Version structure (Protocol Version Major and Minor).
    pub fn to_item(self) -> Item {
        Item::structure(
            tags::PROTOCOL_VERSION,
            vec![
                Item::new(tags::PROTOCOL_VERSION_MAJOR, Value::Integer(self.major)),
                Item::new(tags::PROTOCOL_VERSION_MINOR, Value::Integer(self.minor)),
            ],
        )
    }

    /// Decodes a Protocol Version structure.
    pub fn from_item(item: &Item) -> Result<Self, MessageError> {
        let f = Fields::new(item);
        Ok(ProtocolVersion {
            major: f.integer(tags::PROTOCOL_VERSION_MAJOR)?,
            minor: f.integer(tags::PROTOCOL_VERSION_MINOR)?,
        })
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl fmt::Debug for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a KMIP version: use one of 1.0 … 1.4, 2.0, 2.1");
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let v = ProtocolVersion::new(a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if ProtocolVersion::SUPPORTED.contains(&v) {
            Ok(v)
        } else {
            Err(bad())
        }
    }
}

/// A password, as sent in a Credential. Zeroed on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: String) -> Self {
        Password(s)
    }
    /// The password's text, to send it or check it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The Credential of a request's Authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// Credential Type 1: Username and Password.
    UsernamePassword {
        /// The Username.
        username: String,
        /// The Password, when one is sent.
        password: Option<Password>,
    },
    /// Another Credential Type, kept as received.
    Other {
        /// The Credential Type's value.
        credential_type: u32,
        /// The Credential Value item.
        value: Item,
    },
}

impl Credential {
    fn to_item(&self) -> Item {
        let (ty, value) = match self {
            Credential::UsernamePassword { username, password } => {
                let mut v = vec![Item::new(
                    tags::USERNAME,
                    Value::TextString(username.clone()),
                )];
                if let Some(p) = password {
                    v.push(Item::new(
                        tags::PASSWORD,
                        Value::TextString(p.expose().to_owned()),
                    ));
                }
                (1, Item::structure(tags::CREDENTIAL_VALUE, v))
            }
            Credential::Other {
                credential_type,
                value,
            } => (*credential_type, value.clone()),
        };
        Item::structure(
            tags::CREDENTIAL,
            vec![
                Item::new(tags::CREDENTIAL_TYPE, Value::Enumeration(ty)),
                value,
            ],
        )
    }

    fn from_item(item: &Item) -> Result<Self, MessageError> {
        let f = Fields::new(item);
        let ty = f.enumeration(tags::CREDENTIAL_TYPE)?;
        let value = f.required(tags::CREDENTIAL_VALUE)?;
        if ty == 1 {
            let v = Fields::new(value);
            Ok(Credential::UsernamePassword {
                username: v.text(tags::USERNAME)?,
                password: v.opt_text(tags::PASSWORD)?.map(Password),
            })
        } else {
            Ok(Credential::Other {
                credential_type: ty,
                value: value.clone(),
            })
        }
    }
}

/// The header of a request message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// The protocol version the message is encoded in.
    pub protocol_version: ProtocolVersion,
    /// Maximum Response Size, in bytes.
    pub maximum_response_size: Option<i32>,
    /// The Credential of the Authentication structure.
    pub authentication: Option<Credential>,
    /// POSIX seconds. Some servers reject a time stamp in the future or older than a minute.
    pub time_stamp: Option<i64>,
    /// Batch Count: the number of batch items.
    pub batch_count: i32,
}

/// One operation of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBatchItem {
    /// The Operation.
    pub operation: Operation,
    /// Unique Batch Item ID; needed when a message has several items.
    pub id: Option<Vec<u8>>,
    /// The Request Payload.
    pub payload: RequestPayload,
}

/// A Request Message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMessage {
    /// The Request Header.
    pub header: RequestHeader,
    /// The batch items.
    pub items: Vec<RequestBatchItem>,
}

/// The header of a response message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The protocol version the message is encoded in.
    pub protocol_version: ProtocolVersion,
    /// Time Stamp: POSIX seconds (0 when the server sent none).
    pub time_stamp: i64,
    /// Batch Count: the number of batch items.
    pub batch_count: i32,
}

/// One operation's result in a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseBatchItem {
    /// Absent in some failure responses (e.g. a request the server could not parse).
    pub operation: Option<Operation>,
    /// Unique Batch Item ID, echoed from the request item.
    pub id: Option<Vec<u8>>,
    /// Result Status.
    pub status: ResultStatus,
    /// Result Reason (of a failed item).
    pub reason: Option<ResultReason>,
    /// Result Message: the server's text about a failure.
    pub message: Option<String>,
    /// The Response Payload (of a successful item).
    pub payload: Option<ResponsePayload>,
}

impl ResponseBatchItem {
    /// A failed item with reason and message.
    pub fn failure(
        operation: Option<Operation>,
        id: Option<Vec<u8>>,
        reason: ResultReason,
        message: impl Into<String>,
    ) -> Self {
        ResponseBatchItem {
            operation,
            id,
            status: ResultStatus::OPERATION_FAILED,
            reason: Some(reason),
            message: Some(message.into()),
            payload: None,
        }
    }
}

/// A Response Message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseMessage {
    /// The Response Header.
    pub header: ResponseHeader,
    /// The batch items, one for each item of the request.
    pub items: Vec<ResponseBatchItem>,
}

/// Why a TTLV item is not the KMIP message expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A required field is absent.
    #[error("{parent} has no {missing}")]
    Missing {
        /// The structure that lacks it.
        parent: Tag,
        /// The absent field.
        missing: Tag,
    },
    /// A field has another item type than the specification gives it.
    #[error("{tag} is a {found}, expected a {expected}")]
    WrongType {
        /// The field.
        tag: Tag,
        /// The item type expected (e.g. "Integer").
        expected: &'static str,
        /// The item type received.
        found: &'static str,
    },
    /// A field's value is not acceptable.
    #[error("{tag}: {reason}")]
    Invalid {
        /// The field.
        tag: Tag,
        /// What is wrong with it.
        reason: String,
    },
}

/// Typed, checked access to the children of a structure.
pub(crate) struct Fields<'a> {
    parent: &'a Item,
}

macro_rules! getter {
    ($req:ident, $opt:ident, $variant:ident, $ty:ty, $expected:literal, $conv:expr) => {
        pub(crate) fn $opt(&self, tag: Tag) -> Result<Option<$ty>, MessageError> {
            match self.parent.child(tag) {
                None => Ok(None),
                Some(Item {
                    value: Value::$variant(v),
                    ..
                }) => Ok(Some($conv(v))),
                Some(other) => Err(MessageError::WrongType {
                    tag,
                    expected: $expected,
                    found: other.value.item_type().name(),
                }),
            }
        }
        #[allow(dead_code)]
        pub(crate) fn $req(&self, tag: Tag) -> Result<$ty, MessageError> {
            self.$opt(tag)?.ok_or(MessageError::Missing {
                parent: self.parent.tag,
                missing: tag,
            })
        }
    };
}

impl<'a> Fields<'a> {
    pub(crate) fn new(parent: &'a Item) -> Self {
        Fields { parent }
    }

    pub(crate) fn required(&self, tag: Tag) -> Result<&'a Item, MessageError> {
        self.parent.child(tag).ok_or(MessageError::Missing {
            parent: self.parent.tag,
            missing: tag,
        })
    }

    getter!(integer, opt_integer, Integer, i32, "Integer", |v: &i32| *v);
    getter!(
        enumeration,
        opt_enumeration,
        Enumeration,
        u32,
        "Enumeration",
        |v: &u32| *v
    );
    getter!(
        text,
        opt_text,
        TextString,
        String,
        "Text String",
        |v: &String| v.clone()
    );
    getter!(
        bytes,
        opt_bytes,
        ByteString,
        Vec<u8>,
        "Byte String",
        |v: &Vec<u8>| v.clone()
    );
    getter!(
        date_time,
        opt_date_time,
        DateTime,
        i64,
        "Date-Time",
        |v: &i64| *v
    );
}

fn text_item(tag: Tag, s: &str) -> Item {
    Item::new(tag, Value::TextString(s.to_owned()))
}

impl RequestMessage {
    /// Encodes the message as a TTLV item (in the header's protocol version).
    pub fn to_item(&self) -> Item {
        let h = &self.header;
        let mut header = vec![h.protocol_version.to_item()];
        if let Some(n) = h.maximum_response_size {
            header.push(Item::new(tags::MAXIMUM_RESPONSE_SIZE, Value::Integer(n)));
        }
        if let Some(c) = &h.authentication {
            header.push(Item::structure(tags::AUTHENTICATION, vec![c.to_item()]));
        }
        if let Some(t) = h.time_stamp {
            header.push(Item::new(tags::TIME_STAMP, Value::DateTime(t)));
        }
        header.push(Item::new(tags::BATCH_COUNT, Value::Integer(h.batch_count)));
        let mut children = vec![Item::structure(tags::REQUEST_HEADER, header)];
        for bi in &self.items {
            let mut v = vec![Item::new(
                tags::OPERATION,
                Value::Enumeration(bi.operation.0),
            )];
            if let Some(id) = &bi.id {
                v.push(Item::new(
                    tags::UNIQUE_BATCH_ITEM_ID,
                    Value::ByteString(id.clone()),
                ));
            }
            v.push(bi.payload.to_item(h.protocol_version));
            children.push(Item::structure(tags::BATCH_ITEM, v));
        }
        Item::structure(tags::REQUEST_MESSAGE, children)
    }

    /// Decodes a Request Message.
    pub fn from_item(item: &Item) -> Result<Self, MessageError> {
        expect_tag(item, tags::REQUEST_MESSAGE)?;
        let f = Fields::new(item);
        let h = f.required(tags::REQUEST_HEADER)?;
        let hf = Fields::new(h);
        let version = ProtocolVersion::from_item(hf.required(tags::PROTOCOL_VERSION)?)?;
        let authentication = match h.child(tags::AUTHENTICATION) {
            Some(a) => Some(Credential::from_item(
                Fields::new(a).required(tags::CREDENTIAL)?,
            )?),
            None => None,
        };
        let header = RequestHeader {
            protocol_version: version,
            maximum_response_size: hf.opt_integer(tags::MAXIMUM_RESPONSE_SIZE)?,
            authentication,
            time_stamp: hf.opt_date_time(tags::TIME_STAMP)?,
            batch_count: hf.integer(tags::BATCH_COUNT)?,
        };
        let mut items = Vec::new();
        for bi in item.children_with(tags::BATCH_ITEM) {
            let bf = Fields::new(bi);
            let operation = Operation(bf.enumeration(tags::OPERATION)?);
            let payload = bf.required(tags::REQUEST_PAYLOAD)?;
            items.push(RequestBatchItem {
                operation,
                id: bf.opt_bytes(tags::UNIQUE_BATCH_ITEM_ID)?,
                payload: RequestPayload::from_item(operation, payload)?,
            });
        }
        Ok(RequestMessage { header, items })
    }
}

impl ResponseMessage {
    /// Encodes the message as a TTLV item (in the header's protocol version).
    pub fn to_item(&self) -> Item {
        let h = &self.header;
        let header = vec![
            h.protocol_version.to_item(),
            Item::new(tags::TIME_STAMP, Value::DateTime(h.time_stamp)),
            Item::new(tags::BATCH_COUNT, Value::Integer(h.batch_count)),
        ];
        let mut children = vec![Item::structure(tags::RESPONSE_HEADER, header)];
        for bi in &self.items {
            let mut v = Vec::new();
            if let Some(op) = bi.operation {
                v.push(Item::new(tags::OPERATION, Value::Enumeration(op.0)));
            }
            if let Some(id) = &bi.id {
                v.push(Item::new(
                    tags::UNIQUE_BATCH_ITEM_ID,
                    Value::ByteString(id.clone()),
                ));
            }
            v.push(Item::new(
                tags::RESULT_STATUS,
                Value::Enumeration(bi.status.0),
            ));
            if let Some(r) = bi.reason {
                v.push(Item::new(tags::RESULT_REASON, Value::Enumeration(r.0)));
            }
            if let Some(m) = &bi.message {
                v.push(text_item(tags::RESULT_MESSAGE, m));
            }
            if let Some(p) = &bi.payload {
                v.push(p.to_item(h.protocol_version));
            }
            children.push(Item::structure(tags::BATCH_ITEM, v));
        }
        Item::structure(tags::RESPONSE_MESSAGE, children)
    }

    /// Decodes a Response Message. A payload is decoded for the batch item's Operation; an item
    /// that failed, or whose Operation is absent, keeps no payload.
    pub fn from_item(item: &Item) -> Result<Self, MessageError> {
        expect_tag(item, tags::RESPONSE_MESSAGE)?;
        let f = Fields::new(item);
        let h = f.required(tags::RESPONSE_HEADER)?;
        let hf = Fields::new(h);
        let header = ResponseHeader {
            protocol_version: ProtocolVersion::from_item(hf.required(tags::PROTOCOL_VERSION)?)?,
            time_stamp: hf.opt_date_time(tags::TIME_STAMP)?.unwrap_or(0),
            batch_count: hf.integer(tags::BATCH_COUNT)?,
        };
        let mut items = Vec::new();
        for bi in item.children_with(tags::BATCH_ITEM) {
            let bf = Fields::new(bi);
            let operation = bf.opt_enumeration(tags::OPERATION)?.map(Operation);
            let status = ResultStatus(bf.enumeration(tags::RESULT_STATUS)?);
            let payload = match (operation, bi.child(tags::RESPONSE_PAYLOAD)) {
                (Some(op), Some(p)) if status == ResultStatus::SUCCESS => {
                    Some(ResponsePayload::from_item(op, p)?)
                }
                _ => None,
            };
            items.push(ResponseBatchItem {
                operation,
                id: bf.opt_bytes(tags::UNIQUE_BATCH_ITEM_ID)?,
                status,
                reason: bf.opt_enumeration(tags::RESULT_REASON)?.map(ResultReason),
                message: bf.opt_text(tags::RESULT_MESSAGE)?,
                payload,
            });
        }
        Ok(ResponseMessage { header, items })
    }
}

fn expect_tag(item: &Item, tag: Tag) -> Result<(), MessageError> {
    if item.tag == tag {
        Ok(())
    } else {
        Err(MessageError::Invalid {
            tag: item.tag,
            reason: format!("expected a {tag}"),
        })
    }
}

#[cfg(test)]
mod tests;
