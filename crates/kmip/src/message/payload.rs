//! Request and Response Payloads of the operations atrest uses.

use super::{
    Attributes, Fields, KeyFormatType, ManagedObject, MessageError, ObjectType, Operation,
    ProtocolVersion, QueryFunction, RevocationReasonCode, tags,
};
use crate::ttlv::{Item, Tag, Value};

/// The Revocation Reason of a Revoke request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationReason {
    /// Revocation Reason Code.
    pub code: RevocationReasonCode,
    /// Revocation Message: free text.
    pub message: Option<String>,
}

/// What a Query answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResponse {
    /// The operations the server offers (Query Operations).
    pub operations: Vec<Operation>,
    /// The object types the server handles (Query Objects).
    pub object_types: Vec<ObjectType>,
    /// Vendor Identification (Query Server Information).
    pub vendor_identification: Option<String>,
    /// Server Information, as received (its contents are vendor-specific).
    pub server_information: Option<Item>,
}

/// The Request Payload of one batch item.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestPayload {
    /// Discover Versions (KMIP 1.4 §4.26).
    DiscoverVersions {
        /// The versions the client speaks, its preferred first; empty asks for all the server's.
        versions: Vec<ProtocolVersion>,
    },
    /// Query (KMIP 1.4 §4.25).
    Query {
        /// What to report.
        functions: Vec<QueryFunction>,
    },
    /// Create (KMIP 1.4 §4.1).
    Create {
        /// The type of the object to make (Symmetric Key).
        object_type: ObjectType,
        /// The attributes to give it.
        attributes: Attributes,
    },
    /// Register (KMIP 1.4 §4.3).
    Register {
        /// The type of the object supplied.
        object_type: ObjectType,
        /// The attributes to give it.
        attributes: Attributes,
        /// The object itself.
        object: ManagedObject,
    },
    /// Activate (KMIP 1.4 §4.19).
    Activate {
        /// The object; absent: the ID Placeholder (the object of an earlier item of the batch).
        unique_identifier: Option<String>,
    },
    /// Get (KMIP 1.4 §4.11).
    Get {
        /// The object; absent: the ID Placeholder.
        unique_identifier: Option<String>,
        /// The Key Format Type to return the key in; absent: the server's choice.
        key_format_type: Option<KeyFormatType>,
    },
    /// Get Attributes (KMIP 1.4 §4.12).
    GetAttributes {
        /// The object; absent: the ID Placeholder.
        unique_identifier: Option<String>,
        /// Attribute names; empty asks for all.
        names: Vec<String>,
    },
    /// Get Attribute List (KMIP 1.4 §4.13).
    GetAttributeList {
        /// The object; absent: the ID Placeholder.
        unique_identifier: Option<String>,
    },
    /// Locate (KMIP 1.4 §4.9).
    Locate {
        /// Maximum Items: the most identifiers to return.
        maximum_items: Option<i32>,
        /// Offset Items (KMIP 1.3 and later): matching objects to skip.
        offset_items: Option<i32>,
        /// The attributes every object returned must have.
        attributes: Attributes,
    },
    /// Revoke (KMIP 1.4 §4.20).
    Revoke {
        /// The object; absent: the ID Placeholder.
        unique_identifier: Option<String>,
        /// Why the object is revoked.
        reason: RevocationReason,
        /// Compromise Occurrence Date, POSIX seconds (with the reason Key Compromise).
        compromise_date: Option<i64>,
    },
    /// Destroy (KMIP 1.4 §4.21).
    Destroy {
        /// The object; absent: the ID Placeholder.
        unique_identifier: Option<String>,
    },
    /// An operation this model does not know: the payload as received.
    Other(Item),
}

/// The Response Payload of one successful batch item.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponsePayload {
    /// Discover Versions (KMIP 1.4 §4.26).
    DiscoverVersions {
        /// The versions the server speaks of those asked, its preferred first.
        versions: Vec<ProtocolVersion>,
    },
    /// Query (KMIP 1.4 §4.25).
    Query(QueryResponse),
    /// Create (KMIP 1.4 §4.1).
    Create {
        /// The type of the object made.
        object_type: ObjectType,
        /// The new object's Unique Identifier.
        unique_identifier: String,
    },
    /// Register (KMIP 1.4 §4.3).
    Register {
        /// The new object's Unique Identifier.
        unique_identifier: String,
    },
    /// Activate (KMIP 1.4 §4.19).
    Activate {
        /// The object activated.
        unique_identifier: String,
    },
    /// Get (KMIP 1.4 §4.11).
    Get {
        /// The object's type.
        object_type: ObjectType,
        /// The object's Unique Identifier.
        unique_identifier: String,
        /// The object.
        object: ManagedObject,
    },
    /// Get Attributes (KMIP 1.4 §4.12).
    GetAttributes {
        /// The object's Unique Identifier.
        unique_identifier: String,
        /// The attributes returned.
        attributes: Attributes,
    },
    /// Get Attribute List (KMIP 1.4 §4.13).
    GetAttributeList {
        /// The object's Unique Identifier.
        unique_identifier: String,
        /// The names of the object's attributes.
        names: Vec<String>,
    },
    /// Locate (KMIP 1.4 §4.9).
    Locate {
        /// Located Items (KMIP 1.3 and later): how many objects match in all.
        located_items: Option<i32>,
        /// The identifiers of this page of matching objects.
        unique_identifiers: Vec<String>,
    },
    /// Revoke (KMIP 1.4 §4.20).
    Revoke {
        /// The object revoked.
        unique_identifier: String,
    },
    /// Destroy (KMIP 1.4 §4.21).
    Destroy {
        /// The object destroyed.
        unique_identifier: String,
    },
    /// An operation this model does not know: the payload as received.
    Other(Item),
}

fn uid_item(uid: &str) -> Item {
    Item::new(tags::UNIQUE_IDENTIFIER, Value::TextString(uid.to_owned()))
}

fn opt_uid(v: &mut Vec<Item>, uid: &Option<String>) {
    if let Some(u) = uid {
        v.push(uid_item(u));
    }
}

/// An attribute name as a 2.x Attribute Reference: the attribute's tag as an Enumeration, or a
/// structure naming a custom attribute.
fn attribute_reference(name: &str) -> Item {
    match Tag::from_name(name) {
        Some(t) => Item::new(tags::ATTRIBUTE_REFERENCE, Value::Enumeration(t.0)),
        None => Item::structure(
            tags::ATTRIBUTE_REFERENCE,
            vec![Item::new(
                tags::ATTRIBUTE_NAME,
                Value::TextString(name.to_owned()),
            )],
        ),
    }
}

/// Attribute names given either as 1.x Attribute Name strings or 2.x Attribute References.
fn attribute_names(payload: &Item) -> Result<Vec<String>, MessageError> {
    let mut names = Vec::new();
    for c in payload.children() {
        if c.tag == tags::ATTRIBUTE_NAME {
            match &c.value {
                Value::TextString(s) => names.push(s.clone()),
                other => {
                    return Err(MessageError::WrongType {
                        tag: c.tag,
                        expected: "Text String",
                        found: other.item_type().name(),
                    });
                }
            }
        } else if c.tag == tags::ATTRIBUTE_REFERENCE {
            match &c.value {
                Value::Enumeration(t) => names.push(Tag(*t).to_string()),
                Value::Structure(_) => names.push(Fields::new(c).text(tags::ATTRIBUTE_NAME)?),
                other => {
                    return Err(MessageError::WrongType {
                        tag: c.tag,
                        expected: "Enumeration or Structure",
                        found: other.item_type().name(),
                    });
                }
            }
        }
    }
    Ok(names)
}

fn names_items(names: &[String], version: ProtocolVersion) -> Vec<Item> {
    names
        .iter()
        .map(|n| {
            if version.is_2x() {
                attribute_reference(n)
            } else {
                Item::new(tags::ATTRIBUTE_NAME, Value::TextString(n.clone()))
            }
        })
        .collect()
}

impl RequestPayload {
    /// The operation this payload belongs to.
    pub fn operation(&self) -> Option<Operation> {
        Some(match self {
            RequestPayload::DiscoverVersions { .. } => Operation::DISCOVER_VERSIONS,
            RequestPayload::Query { .. } => Operation::QUERY,
            RequestPayload::Create { .. } => Operation::CREATE,
            RequestPayload::Register { .. } => Operation::REGISTER,
            RequestPayload::Activate { .. } => Operation::ACTIVATE,
            RequestPayload::Get { .. } => Operation::GET,
            RequestPayload::GetAttributes { .. } => Operation::GET_ATTRIBUTES,
            RequestPayload::GetAttributeList { .. } => Operation::GET_ATTRIBUTE_LIST,
            RequestPayload::Locate { .. } => Operation::LOCATE,
            RequestPayload::Revoke { .. } => Operation::REVOKE,
            RequestPayload::Destroy { .. } => Operation::DESTROY,
            RequestPayload::Other(_) => return None,
        })
    }

    /// Encodes the payload in the encoding of `version`.
    pub fn to_item(&self, version: ProtocolVersion) -> Item {
        let mut v = Vec::new();
        match self {
            RequestPayload::DiscoverVersions { versions } => {
                v.extend(versions.iter().map(|p| p.to_item()))
            }
            RequestPayload::Query { functions } => v.extend(
                functions
                    .iter()
                    .map(|f| Item::new(tags::QUERY_FUNCTION, Value::Enumeration(f.0))),
            ),
            RequestPayload::Create {
                object_type,
                attributes,
            } => {
                v.push(Item::new(
                    tags::OBJECT_TYPE,
                    Value::Enumeration(object_type.0),
                ));
                v.push(attributes.to_template(version));
            }
            RequestPayload::Register {
                object_type,
                attributes,
                object,
            } => {
                v.push(Item::new(
                    tags::OBJECT_TYPE,
                    Value::Enumeration(object_type.0),
                ));
                v.push(attributes.to_template(version));
                v.push(object.to_item());
            }
            RequestPayload::Activate { unique_identifier }
            | RequestPayload::GetAttributeList { unique_identifier }
            | RequestPayload::Destroy { unique_identifier } => opt_uid(&mut v, unique_identifier),
            RequestPayload::Get {
                unique_identifier,
                key_format_type,
            } => {
                opt_uid(&mut v, unique_identifier);
                if let Some(k) = key_format_type {
                    v.push(Item::new(tags::KEY_FORMAT_TYPE, Value::Enumeration(k.0)));
                }
            }
            RequestPayload::GetAttributes {
                unique_identifier,
                names,
            } => {
                opt_uid(&mut v, unique_identifier);
                v.extend(names_items(names, version));
            }
            RequestPayload::Locate {
                maximum_items,
                offset_items,
                attributes,
            } => {
                if let Some(n) = maximum_items {
                    v.push(Item::new(tags::MAXIMUM_ITEMS, Value::Integer(*n)));
                }
                if let Some(n) = offset_items {
                    v.push(Item::new(tags::OFFSET_ITEMS, Value::Integer(*n)));
                }
                if version.is_2x() {
                    v.push(attributes.to_2x_item());
                } else {
                    v.extend(attributes.to_1x_items());
                }
            }
            RequestPayload::Revoke {
                unique_identifier,
                reason,
                compromise_date,
            } => {
                opt_uid(&mut v, unique_identifier);
                let mut r = vec![Item::new(
                    tags::REVOCATION_REASON_CODE,
                    Value::Enumeration(reason.code.0),
                )];
                if let Some(m) = &reason.message {
                    r.push(Item::new(
                        tags::REVOCATION_MESSAGE,
                        Value::TextString(m.clone()),
                    ));
                }
                v.push(Item::structure(tags::REVOCATION_REASON, r));
                if let Some(d) = compromise_date {
                    v.push(Item::new(
                        tags::COMPROMISE_OCCURRENCE_DATE,
                        Value::DateTime(*d),
                    ));
                }
            }
            RequestPayload::Other(item) => return item.clone(),
        }
        Item::structure(tags::REQUEST_PAYLOAD, v)
    }

    /// Decodes the Request Payload of `operation` (either encoding).
    pub fn from_item(operation: Operation, item: &Item) -> Result<Self, MessageError> {
        let f = Fields::new(item);
        let uid = || f.opt_text(tags::UNIQUE_IDENTIFIER);
        Ok(match operation {
            Operation::DISCOVER_VERSIONS => RequestPayload::DiscoverVersions {
                versions: item
                    .children_with(tags::PROTOCOL_VERSION)
                    .map(ProtocolVersion::from_item)
                    .collect::<Result<_, _>>()?,
            },
            Operation::QUERY => RequestPayload::Query {
                functions: item
                    .children_with(tags::QUERY_FUNCTION)
                    .map(|c| match c.value {
                        Value::Enumeration(v) => Ok(QueryFunction(v)),
                        ref other => Err(MessageError::WrongType {
                            tag: c.tag,
                            expected: "Enumeration",
                            found: other.item_type().name(),
                        }),
                    })
                    .collect::<Result<_, _>>()?,
            },
            Operation::CREATE => RequestPayload::Create {
                object_type: ObjectType(f.enumeration(tags::OBJECT_TYPE)?),
                attributes: Attributes::from_parent(item)?,
            },
            Operation::REGISTER => RequestPayload::Register {
                object_type: ObjectType(f.enumeration(tags::OBJECT_TYPE)?),
                attributes: Attributes::from_parent(item)?,
                object: ManagedObject::from_payload(item)?,
            },
            Operation::ACTIVATE => RequestPayload::Activate {
                unique_identifier: uid()?,
            },
            Operation::GET => RequestPayload::Get {
                unique_identifier: uid()?,
                key_format_type: f.opt_enumeration(tags::KEY_FORMAT_TYPE)?.map(KeyFormatType),
            },
            Operation::GET_ATTRIBUTES => RequestPayload::GetAttributes {
                unique_identifier: uid()?,
                names: attribute_names(item)?,
            },
            Operation::GET_ATTRIBUTE_LIST => RequestPayload::GetAttributeList {
                unique_identifier: uid()?,
            },
            Operation::LOCATE => RequestPayload::Locate {
                maximum_items: f.opt_integer(tags::MAXIMUM_ITEMS)?,
                offset_items: f.opt_integer(tags::OFFSET_ITEMS)?,
                attributes: Attributes::from_parent(item)?,
            },
            Operation::REVOKE => {
                let r = f.required(tags::REVOCATION_REASON)?;
                let rf = Fields::new(r);
                RequestPayload::Revoke {
                    unique_identifier: uid()?,
                    reason: RevocationReason {
                        code: RevocationReasonCode(rf.enumeration(tags::REVOCATION_REASON_CODE)?),
                        message: rf.opt_text(tags::REVOCATION_MESSAGE)?,
                    },
                    compromise_date: f.opt_date_time(tags::COMPROMISE_OCCURRENCE_DATE)?,
                }
            }
            Operation::DESTROY => RequestPayload::Destroy {
                unique_identifier: uid()?,
            },
            _ => RequestPayload::Other(item.clone()),
        })
    }
}

impl ResponsePayload {
    /// Encodes the payload in the encoding of `version`.
    pub fn to_item(&self, version: ProtocolVersion) -> Item {
        let mut v = Vec::new();
        match self {
            ResponsePayload::DiscoverVersions { versions } => {
                v.extend(versions.iter().map(|p| p.to_item()))
            }
            ResponsePayload::Query(q) => {
                v.extend(
                    q.operations
                        .iter()
                        .map(|o| Item::new(tags::OPERATION, Value::Enumeration(o.0))),
                );
                v.extend(
                    q.object_types
                        .iter()
                        .map(|o| Item::new(tags::OBJECT_TYPE, Value::Enumeration(o.0))),
                );
                if let Some(s) = &q.vendor_identification {
                    v.push(Item::new(
                        tags::VENDOR_IDENTIFICATION,
                        Value::TextString(s.clone()),
                    ));
                }
                if let Some(s) = &q.server_information {
                    v.push(s.clone());
                }
            }
            ResponsePayload::Create {
                object_type,
                unique_identifier,
            } => {
                v.push(Item::new(
                    tags::OBJECT_TYPE,
                    Value::Enumeration(object_type.0),
                ));
                v.push(uid_item(unique_identifier));
            }
            ResponsePayload::Register { unique_identifier }
            | ResponsePayload::Activate { unique_identifier }
            | ResponsePayload::Revoke { unique_identifier }
            | ResponsePayload::Destroy { unique_identifier } => v.push(uid_item(unique_identifier)),
            ResponsePayload::Get {
                object_type,
                unique_identifier,
                object,
            } => {
                v.push(Item::new(
                    tags::OBJECT_TYPE,
                    Value::Enumeration(object_type.0),
                ));
                v.push(uid_item(unique_identifier));
                v.push(object.to_item());
            }
            ResponsePayload::GetAttributes {
                unique_identifier,
                attributes,
            } => {
                v.push(uid_item(unique_identifier));
                if version.is_2x() {
                    v.push(attributes.to_2x_item());
                } else {
                    v.extend(attributes.to_1x_items());
                }
            }
            ResponsePayload::GetAttributeList {
                unique_identifier,
                names,
            } => {
                v.push(uid_item(unique_identifier));
                v.extend(names_items(names, version));
            }
            ResponsePayload::Locate {
                located_items,
                unique_identifiers,
            } => {
                if let Some(n) = located_items {
                    v.push(Item::new(tags::LOCATED_ITEMS, Value::Integer(*n)));
                }
                v.extend(unique_identifiers.iter().map(|u| uid_item(u)));
            }
            ResponsePayload::Other(item) => return item.clone(),
        }
        Item::structure(tags::RESPONSE_PAYLOAD, v)
    }

    /// Decodes the Response Payload of `operation` (either encoding).
    pub fn from_item(operation: Operation, item: &Item) -> Result<Self, MessageError> {
        let f = Fields::new(item);
        let uid = || f.text(tags::UNIQUE_IDENTIFIER);
        Ok(match operation {
            Operation::DISCOVER_VERSIONS => ResponsePayload::DiscoverVersions {
                versions: item
                    .children_with(tags::PROTOCOL_VERSION)
                    .map(ProtocolVersion::from_item)
                    .collect::<Result<_, _>>()?,
            },
            Operation::QUERY => {
                let mut q = QueryResponse::default();
                for c in item.children() {
                    match (&c.tag, &c.value) {
                        (t, Value::Enumeration(o)) if *t == tags::OPERATION => {
                            q.operations.push(Operation(*o))
                        }
                        (t, Value::Enumeration(o)) if *t == tags::OBJECT_TYPE => {
                            q.object_types.push(ObjectType(*o))
                        }
                        (t, Value::TextString(s)) if *t == tags::VENDOR_IDENTIFICATION => {
                            q.vendor_identification = Some(s.clone())
                        }
                        (t, _) if *t == tags::SERVER_INFORMATION => {
                            q.server_information = Some(c.clone())
                        }
                        _ => {}
                    }
                }
                ResponsePayload::Query(q)
            }
            Operation::CREATE => ResponsePayload::Create {
                object_type: ObjectType(f.enumeration(tags::OBJECT_TYPE)?),
                unique_identifier: uid()?,
            },
            Operation::REGISTER => ResponsePayload::Register {
                unique_identifier: uid()?,
            },
            Operation::ACTIVATE => ResponsePayload::Activate {
                unique_identifier: uid()?,
            },
            Operation::REVOKE => ResponsePayload::Revoke {
                unique_identifier: uid()?,
            },
            Operation::DESTROY => ResponsePayload::Destroy {
                unique_identifier: uid()?,
            },
            Operation::GET => ResponsePayload::Get {
                object_type: ObjectType(f.enumeration(tags::OBJECT_TYPE)?),
                unique_identifier: uid()?,
                object: ManagedObject::from_payload(item)?,
            },
            Operation::GET_ATTRIBUTES => ResponsePayload::GetAttributes {
                unique_identifier: uid()?,
                attributes: Attributes::from_parent(item)?,
            },
            Operation::GET_ATTRIBUTE_LIST => ResponsePayload::GetAttributeList {
                unique_identifier: uid()?,
                names: attribute_names(item)?,
            },
            Operation::LOCATE => ResponsePayload::Locate {
                located_items: f.opt_integer(tags::LOCATED_ITEMS)?,
                unique_identifiers: item
                    .children_with(tags::UNIQUE_IDENTIFIER)
                    .filter_map(|c| match &c.value {
                        Value::TextString(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            },
            _ => ResponsePayload::Other(item.clone()),
        })
    }
}
