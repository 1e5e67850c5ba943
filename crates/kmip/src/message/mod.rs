//! KMIP request and response messages (KMIP 1.0–1.4 and 2.0–2.1), as typed Rust values that
//! convert to and from TTLV [`Item`]s. No I/O.
//!
//! One model serves both sides: the client encodes requests and decodes responses, the server
//! decodes requests and encodes responses. Encoding follows the message's protocol version
//! (1.x Template-Attribute / Attribute structures, 2.x Attributes structures); decoding accepts
//! both shapes whatever the header says, and ignores fields it does not know, as real servers
//! send fields the negotiated version does not define.

mod attributes;
mod payload;
pub mod tags;

use std::fmt;

pub use attributes::{Attribute, Attributes};
pub use payload::{
    KeyBlock, ManagedObject, QueryResponse, RequestPayload, ResponsePayload, RevocationReason,
};

use crate::ttlv::{Item, Tag, Value};

/// A KMIP protocol version.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: i32,
    pub minor: i32,
}

impl ProtocolVersion {
    pub const V1_0: Self = Self::new(1, 0);
    pub const V1_1: Self = Self::new(1, 1);
    pub const V1_2: Self = Self::new(1, 2);
    pub const V1_3: Self = Self::new(1, 3);
    pub const V1_4: Self = Self::new(1, 4);
    pub const V2_0: Self = Self::new(2, 0);
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

    pub const fn new(major: i32, minor: i32) -> Self {
        ProtocolVersion { major, minor }
    }

    /// Whether this version uses the 2.x encodings (Attributes instead of Template-Attribute).
    pub fn is_2x(self) -> bool {
        self.major >= 2
    }

    pub fn to_item(self) -> Item {
        Item::structure(
            tags::PROTOCOL_VERSION,
            vec![
                Item::new(tags::PROTOCOL_VERSION_MAJOR, Value::Integer(self.major)),
                Item::new(tags::PROTOCOL_VERSION_MINOR, Value::Integer(self.minor)),
            ],
        )
    }

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

macro_rules! kmip_enum {
    ($(#[$m:meta])* $name:ident, $registry:literal { $($(#[$vm:meta])* $c:ident = $v:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            $($(#[$vm])* pub const $c: Self = Self($v);)*
            /// The name in the KMIP specification, if the value has one.
            pub fn name(self) -> Option<&'static str> {
                crate::enum_name($registry, self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "0x{:08X}", self.0),
                }
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

kmip_enum!(
    /// A KMIP Operation.
    Operation, "Operation" {
        CREATE = 0x01,
        REGISTER = 0x03,
        LOCATE = 0x08,
        GET = 0x0A,
        GET_ATTRIBUTES = 0x0B,
        GET_ATTRIBUTE_LIST = 0x0C,
        ACTIVATE = 0x12,
        REVOKE = 0x13,
        DESTROY = 0x14,
        QUERY = 0x18,
        DISCOVER_VERSIONS = 0x1E,
    }
);

kmip_enum!(
    /// Result Status of a batch item.
    ResultStatus, "Result Status" {
        SUCCESS = 0,
        OPERATION_FAILED = 1,
        OPERATION_PENDING = 2,
        OPERATION_UNDONE = 3,
    }
);

kmip_enum!(
    /// Result Reason of a failed batch item.
    ResultReason, "Result Reason" {
        ITEM_NOT_FOUND = 0x01,
        RESPONSE_TOO_LARGE = 0x02,
        AUTHENTICATION_NOT_SUCCESSFUL = 0x03,
        INVALID_MESSAGE = 0x04,
        OPERATION_NOT_SUPPORTED = 0x05,
        MISSING_DATA = 0x06,
        INVALID_FIELD = 0x07,
        FEATURE_NOT_SUPPORTED = 0x08,
        CRYPTOGRAPHIC_FAILURE = 0x0A,
        ILLEGAL_OPERATION = 0x0B,
        PERMISSION_DENIED = 0x0C,
        OBJECT_ARCHIVED = 0x0D,
        KEY_FORMAT_TYPE_NOT_SUPPORTED = 0x10,
        KEY_COMPRESSION_TYPE_NOT_SUPPORTED = 0x11,
        OBJECT_DESTROYED = 0x36,
        OBJECT_NOT_FOUND = 0x37,
        SERVER_LIMIT_EXCEEDED = 0x3A,
        UNSUPPORTED_PROTOCOL_VERSION = 0x3F,
        WRONG_KEY_LIFECYCLE_STATE = 0x43,
        GENERAL_FAILURE = 0x100,
    }
);

kmip_enum!(
    /// Object Type of a managed object.
    ObjectType, "Object Type" {
        CERTIFICATE = 1,
        SYMMETRIC_KEY = 2,
        PUBLIC_KEY = 3,
        PRIVATE_KEY = 4,
        SPLIT_KEY = 5,
        TEMPLATE = 6,
        SECRET_DATA = 7,
        OPAQUE_OBJECT = 8,
    }
);

kmip_enum!(
    /// Cryptographic Algorithm.
    CryptographicAlgorithm, "Cryptographic Algorithm" {
        DES = 1,
        TRIPLE_DES = 2,
        AES = 3,
    }
);

kmip_enum!(
    /// State of a managed object.
    State, "State" {
        PRE_ACTIVE = 1,
        ACTIVE = 2,
        DEACTIVATED = 3,
        COMPROMISED = 4,
        DESTROYED = 5,
        DESTROYED_COMPROMISED = 6,
    }
);

kmip_enum!(
    /// Query Function.
    QueryFunction, "Query Function" {
        QUERY_OPERATIONS = 1,
        QUERY_OBJECTS = 2,
        QUERY_SERVER_INFORMATION = 3,
    }
);

kmip_enum!(
    /// Key Format Type.
    KeyFormatType, "Key Format Type" {
        RAW = 1,
        OPAQUE = 2,
        TRANSPARENT_SYMMETRIC_KEY = 7,
    }
);

kmip_enum!(
    /// Revocation Reason Code.
    RevocationReasonCode, "Revocation Reason Code" {
        UNSPECIFIED = 1,
        KEY_COMPROMISE = 2,
        CA_COMPROMISE = 3,
        AFFILIATION_CHANGED = 4,
        SUPERSEDED = 5,
        CESSATION_OF_OPERATION = 6,
        PRIVILEGE_WITHDRAWN = 7,
    }
);

kmip_enum!(
    /// Name Type of a Name attribute.
    NameType, "Name Type" {
        UNINTERPRETED_TEXT_STRING = 1,
        URI = 2,
    }
);

/// Cryptographic Usage Mask bits.
pub mod usage {
    pub const ENCRYPT: i32 = 0x04;
    pub const DECRYPT: i32 = 0x08;
    pub const WRAP_KEY: i32 = 0x10;
    pub const UNWRAP_KEY: i32 = 0x20;
}

/// A password, as sent in a Credential. Zeroed on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Self {
        Password(s)
    }
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
        username: String,
        password: Option<Password>,
    },
    /// Another Credential Type, kept as received.
    Other { credential_type: u32, value: Item },
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
    pub protocol_version: ProtocolVersion,
    pub maximum_response_size: Option<i32>,
    pub authentication: Option<Credential>,
    /// POSIX seconds. Some servers reject a time stamp in the future or older than a minute.
    pub time_stamp: Option<i64>,
    pub batch_count: i32,
}

/// One operation of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBatchItem {
    pub operation: Operation,
    /// Unique Batch Item ID; needed when a message has several items.
    pub id: Option<Vec<u8>>,
    pub payload: RequestPayload,
}

/// A Request Message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMessage {
    pub header: RequestHeader,
    pub items: Vec<RequestBatchItem>,
}

/// The header of a response message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    pub protocol_version: ProtocolVersion,
    pub time_stamp: i64,
    pub batch_count: i32,
}

/// One operation's result in a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseBatchItem {
    /// Absent in some failure responses (e.g. a request the server could not parse).
    pub operation: Option<Operation>,
    pub id: Option<Vec<u8>>,
    pub status: ResultStatus,
    pub reason: Option<ResultReason>,
    pub message: Option<String>,
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
    pub header: ResponseHeader,
    pub items: Vec<ResponseBatchItem>,
}

/// Why a TTLV item is not the KMIP message expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("{parent} has no {missing}")]
    Missing { parent: Tag, missing: Tag },
    #[error("{tag} is a {found}, expected a {expected}")]
    WrongType {
        tag: Tag,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{tag}: {reason}")]
    Invalid { tag: Tag, reason: String },
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
