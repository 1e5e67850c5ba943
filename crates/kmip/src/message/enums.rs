//! The KMIP enumerations and masks atrest's messages use, as typed values that print their
//! specification names (from the registry of KMIP 1.0-2.1 names).

use std::fmt;

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
        /// Create (KMIP 1.4 §4.1).
        CREATE = 0x01,
        /// Register (KMIP 1.4 §4.3).
        REGISTER = 0x03,
        /// Locate (KMIP 1.4 §4.9).
        LOCATE = 0x08,
        /// Get (KMIP 1.4 §4.11).
        GET = 0x0A,
        /// Get Attributes (KMIP 1.4 §4.12).
        GET_ATTRIBUTES = 0x0B,
        /// Get Attribute List (KMIP 1.4 §4.13).
        GET_ATTRIBUTE_LIST = 0x0C,
        /// Activate (KMIP 1.4 §4.19).
        ACTIVATE = 0x12,
        /// Revoke (KMIP 1.4 §4.20).
        REVOKE = 0x13,
        /// Destroy (KMIP 1.4 §4.21).
        DESTROY = 0x14,
        /// Query (KMIP 1.4 §4.25).
        QUERY = 0x18,
        /// Discover Versions (KMIP 1.4 §4.26, KMIP 1.1 and later).
        DISCOVER_VERSIONS = 0x1E,
    }
);

kmip_enum!(
    /// Result Status of a batch item.
    ResultStatus, "Result Status" {
        /// Success.
        SUCCESS = 0,
        /// Operation Failed.
        OPERATION_FAILED = 1,
        /// Operation Pending.
        OPERATION_PENDING = 2,
        /// Operation Undone.
        OPERATION_UNDONE = 3,
    }
);

kmip_enum!(
    /// Result Reason of a failed batch item.
    ResultReason, "Result Reason" {
        /// Item Not Found.
        ITEM_NOT_FOUND = 0x01,
        /// Response Too Large.
        RESPONSE_TOO_LARGE = 0x02,
        /// Authentication Not Successful.
        AUTHENTICATION_NOT_SUCCESSFUL = 0x03,
        /// Invalid Message.
        INVALID_MESSAGE = 0x04,
        /// Operation Not Supported.
        OPERATION_NOT_SUPPORTED = 0x05,
        /// Missing Data.
        MISSING_DATA = 0x06,
        /// Invalid Field.
        INVALID_FIELD = 0x07,
        /// Feature Not Supported.
        FEATURE_NOT_SUPPORTED = 0x08,
        /// Cryptographic Failure.
        CRYPTOGRAPHIC_FAILURE = 0x0A,
        /// Illegal Operation (KMIP 1.x only: reserved in 2.x).
        ILLEGAL_OPERATION = 0x0B,
        /// Permission Denied.
        PERMISSION_DENIED = 0x0C,
        /// Object Archived.
        OBJECT_ARCHIVED = 0x0D,
        /// Key Format Type Not Supported.
        KEY_FORMAT_TYPE_NOT_SUPPORTED = 0x10,
        /// Key Compression Type Not Supported.
        KEY_COMPRESSION_TYPE_NOT_SUPPORTED = 0x11,
        /// Object Destroyed (KMIP 2.0 and later).
        OBJECT_DESTROYED = 0x36,
        /// Object Not Found (KMIP 2.0 and later).
        OBJECT_NOT_FOUND = 0x37,
        /// Server Limit Exceeded (KMIP 2.0 and later).
        SERVER_LIMIT_EXCEEDED = 0x3A,
        /// Unsupported Protocol Version (KMIP 2.0 and later).
        UNSUPPORTED_PROTOCOL_VERSION = 0x3F,
        /// Wrong Key Lifecycle State (KMIP 2.0 and later).
        WRONG_KEY_LIFECYCLE_STATE = 0x43,
        /// General Failure.
        GENERAL_FAILURE = 0x100,
    }
);

kmip_enum!(
    /// Object Type of a managed object.
    ObjectType, "Object Type" {
        /// Certificate.
        CERTIFICATE = 1,
        /// Symmetric Key.
        SYMMETRIC_KEY = 2,
        /// Public Key.
        PUBLIC_KEY = 3,
        /// Private Key.
        PRIVATE_KEY = 4,
        /// Split Key.
        SPLIT_KEY = 5,
        /// Template (KMIP 1.x only: reserved in 2.x).
        TEMPLATE = 6,
        /// Secret Data.
        SECRET_DATA = 7,
        /// Opaque Object.
        OPAQUE_OBJECT = 8,
    }
);

kmip_enum!(
    /// Cryptographic Algorithm.
    CryptographicAlgorithm, "Cryptographic Algorithm" {
        /// DES.
        DES = 1,
        /// 3DES.
        TRIPLE_DES = 2,
        /// AES.
        AES = 3,
    }
);

kmip_enum!(
    /// State of a managed object.
    State, "State" {
        /// Pre-Active.
        PRE_ACTIVE = 1,
        /// Active.
        ACTIVE = 2,
        /// Deactivated.
        DEACTIVATED = 3,
        /// Compromised.
        COMPROMISED = 4,
        /// Destroyed.
        DESTROYED = 5,
        /// Destroyed Compromised.
        DESTROYED_COMPROMISED = 6,
    }
);

kmip_enum!(
    /// Query Function.
    QueryFunction, "Query Function" {
        /// Query Operations.
        QUERY_OPERATIONS = 1,
        /// Query Objects.
        QUERY_OBJECTS = 2,
        /// Query Server Information.
        QUERY_SERVER_INFORMATION = 3,
    }
);

kmip_enum!(
    /// Key Format Type.
    KeyFormatType, "Key Format Type" {
        /// Raw.
        RAW = 1,
        /// Opaque.
        OPAQUE = 2,
        /// Transparent Symmetric Key.
        TRANSPARENT_SYMMETRIC_KEY = 7,
    }
);

kmip_enum!(
    /// Revocation Reason Code.
    RevocationReasonCode, "Revocation Reason Code" {
        /// Unspecified.
        UNSPECIFIED = 1,
        /// Key Compromise.
        KEY_COMPROMISE = 2,
        /// CA Compromise.
        CA_COMPROMISE = 3,
        /// Affiliation Changed.
        AFFILIATION_CHANGED = 4,
        /// Superseded.
        SUPERSEDED = 5,
        /// Cessation of Operation.
        CESSATION_OF_OPERATION = 6,
        /// Privilege Withdrawn.
        PRIVILEGE_WITHDRAWN = 7,
    }
);

kmip_enum!(
    /// Name Type of a Name attribute.
    NameType, "Name Type" {
        /// Uninterpreted Text String.
        UNINTERPRETED_TEXT_STRING = 1,
        /// URI.
        URI = 2,
    }
);

/// Cryptographic Usage Mask bits.
pub mod usage {
    /// Encrypt.
    pub const ENCRYPT: i32 = 0x04;
    /// Decrypt.
    pub const DECRYPT: i32 = 0x08;
    /// Wrap Key.
    pub const WRAP_KEY: i32 = 0x10;
    /// Unwrap Key.
    pub const UNWRAP_KEY: i32 = 0x20;
}
