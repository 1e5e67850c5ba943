//! The operations a [`Client`] offers, each one request and its expected answer (KMIP 1.4 §4:
//! Create §4.1, Register §4.3, Locate §4.9, Get §4.11, Get Attributes §4.12, Get Attribute
//! List §4.13, Activate §4.19, Revoke §4.20, Destroy §4.21, Query §4.25, Discover Versions
//! §4.26).

use zeroize::Zeroizing;

use super::{Client, ClientError, ServerAddr};
use crate::message::{
    Attributes, CryptographicAlgorithm, KeyBlock, ObjectType, Operation, ProtocolVersion,
    QueryFunction, QueryResponse, RequestPayload, ResponsePayload, RevocationReason,
    RevocationReasonCode, usage,
};
use crate::ttlv::Value;

impl Client {
    /// The protocol version in use with the current server, if connected.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.as_ref().map(|c| c.version)
    }

    /// Discover Versions: the versions the server supports among those atrest speaks.
    pub fn discover_versions(&mut self) -> Result<Vec<ProtocolVersion>, ClientError> {
        match self.call(RequestPayload::DiscoverVersions {
            versions: ProtocolVersion::SUPPORTED.to_vec(),
        })? {
            ResponsePayload::DiscoverVersions { versions } => Ok(versions),
            _ => Err(self.unexpected(Operation::DISCOVER_VERSIONS)),
        }
    }

    /// Query: supported operations and object types, vendor identification, server information.
    pub fn query(&mut self) -> Result<QueryResponse, ClientError> {
        match self.call(RequestPayload::Query {
            functions: vec![
                QueryFunction::QUERY_OPERATIONS,
                QueryFunction::QUERY_OBJECTS,
                QueryFunction::QUERY_SERVER_INFORMATION,
            ],
        })? {
            ResponsePayload::Query(q) => Ok(q),
            _ => Err(self.unexpected(Operation::QUERY)),
        }
    }

    /// Create: a new AES key of `bits` (128, 192, 256, or 512 where the server allows it) for
    /// encryption and decryption, optionally named. Returns its Unique Identifier. The key is
    /// Pre-Active until [`Client::activate`].
    pub fn create_aes_key(&mut self, bits: i32, name: Option<&str>) -> Result<String, ClientError> {
        self.create_aes_key_in_group(bits, name, None)
    }

    /// Create, as [`Client::create_aes_key`], with an Object Group as well when `group` is
    /// given. A server that fails the Create with the group (it does not support the attribute)
    /// is asked again without it, so the key is made either way.
    pub fn create_aes_key_in_group(
        &mut self,
        bits: i32,
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<String, ClientError> {
        match self.create_aes_key_with(bits, name, group) {
            Err(ClientError::Operation { .. }) if group.is_some() => {
                self.create_aes_key_with(bits, name, None)
            }
            r => r,
        }
    }

    fn create_aes_key_with(
        &mut self,
        bits: i32,
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut attributes = Attributes::new()
            .with(
                "Cryptographic Algorithm",
                Value::Enumeration(CryptographicAlgorithm::AES.0),
            )
            .with("Cryptographic Length", Value::Integer(bits))
            .with(
                "Cryptographic Usage Mask",
                Value::Integer(usage::ENCRYPT | usage::DECRYPT),
            );
        if let Some(n) = name {
            attributes.push("Name", Attributes::name_value(n));
        }
        if let Some(g) = group {
            attributes.push("Object Group", Value::TextString(g.to_owned()));
        }
        match self.call(RequestPayload::Create {
            object_type: ObjectType::SYMMETRIC_KEY,
            attributes,
        })? {
            ResponsePayload::Create {
                unique_identifier, ..
            } => Ok(unique_identifier),
            _ => Err(self.unexpected(Operation::CREATE)),
        }
    }

    /// Register: stores an AES key the client supplies. Returns its Unique Identifier.
    pub fn register_aes_key(
        &mut self,
        material: Zeroizing<Vec<u8>>,
        name: Option<&str>,
    ) -> Result<String, ClientError> {
        let bits = (material.len() * 8) as i32;
        let mut attributes = Attributes::new().with(
            "Cryptographic Usage Mask",
            Value::Integer(usage::ENCRYPT | usage::DECRYPT),
        );
        if let Some(n) = name {
            attributes.push("Name", Attributes::name_value(n));
        }
        let mut kb = KeyBlock::raw_aes(material);
        kb.length = Some(bits);
        match self.call(RequestPayload::Register {
            object_type: ObjectType::SYMMETRIC_KEY,
            attributes,
            object: crate::message::ManagedObject::SymmetricKey(kb),
        })? {
            ResponsePayload::Register { unique_identifier } => Ok(unique_identifier),
            _ => Err(self.unexpected(Operation::REGISTER)),
        }
    }

    /// Activate: Pre-Active → Active.
    pub fn activate(&mut self, uid: &str) -> Result<(), ClientError> {
        match self.call(RequestPayload::Activate {
            unique_identifier: Some(uid.to_owned()),
        })? {
            ResponsePayload::Activate { .. } => Ok(()),
            _ => Err(self.unexpected(Operation::ACTIVATE)),
        }
    }

    /// Get: the key block of a symmetric key (or secret data). Refuses a wrapped key.
    pub fn get_key(&mut self, uid: &str) -> Result<KeyBlock, ClientError> {
        let resp = self.call(RequestPayload::Get {
            unique_identifier: Some(uid.to_owned()),
            key_format_type: None,
        })?;
        let server = self.current_server();
        match resp {
            ResponsePayload::Get { object, .. } => match object.key_block() {
                Some(kb) if kb.wrapped => Err(ClientError::Protocol {
                    server,
                    detail: format!(
                        "object {uid} came back wrapped; configure the server to return it \
                         unwrapped to this client"
                    ),
                }),
                Some(kb) => Ok(kb.clone()),
                None => Err(ClientError::Protocol {
                    server,
                    detail: format!("object {uid} is not a symmetric key"),
                }),
            },
            _ => Err(self.unexpected(Operation::GET)),
        }
    }

    /// Get Attributes: the named attributes (all when `names` is empty).
    pub fn get_attributes(&mut self, uid: &str, names: &[&str]) -> Result<Attributes, ClientError> {
        match self.call(RequestPayload::GetAttributes {
            unique_identifier: Some(uid.to_owned()),
            names: names.iter().map(|s| s.to_string()).collect(),
        })? {
            ResponsePayload::GetAttributes { attributes, .. } => Ok(attributes),
            _ => Err(self.unexpected(Operation::GET_ATTRIBUTES)),
        }
    }

    /// Get Attribute List: the names of the object's attributes.
    pub fn get_attribute_list(&mut self, uid: &str) -> Result<Vec<String>, ClientError> {
        match self.call(RequestPayload::GetAttributeList {
            unique_identifier: Some(uid.to_owned()),
        })? {
            ResponsePayload::GetAttributeList { names, .. } => Ok(names),
            _ => Err(self.unexpected(Operation::GET_ATTRIBUTE_LIST)),
        }
    }

    /// Locate: the identifiers of objects matching every given attribute.
    pub fn locate(
        &mut self,
        attributes: Attributes,
        maximum_items: Option<i32>,
    ) -> Result<Vec<String>, ClientError> {
        match self.call(RequestPayload::Locate {
            maximum_items,
            offset_items: None,
            attributes,
        })? {
            ResponsePayload::Locate {
                unique_identifiers, ..
            } => Ok(unique_identifiers),
            _ => Err(self.unexpected(Operation::LOCATE)),
        }
    }

    /// Revoke with a reason (Cessation of Operation, Key Compromise, …).
    pub fn revoke(
        &mut self,
        uid: &str,
        code: RevocationReasonCode,
        message: Option<&str>,
    ) -> Result<(), ClientError> {
        let compromise_date = (code == RevocationReasonCode::KEY_COMPROMISE)
            .then(|| time::OffsetDateTime::now_utc().unix_timestamp());
        match self.call(RequestPayload::Revoke {
            unique_identifier: Some(uid.to_owned()),
            reason: RevocationReason {
                code,
                message: message.map(str::to_owned),
            },
            compromise_date,
        })? {
            ResponsePayload::Revoke { .. } => Ok(()),
            _ => Err(self.unexpected(Operation::REVOKE)),
        }
    }

    /// Destroy.
    pub fn destroy(&mut self, uid: &str) -> Result<(), ClientError> {
        match self.call(RequestPayload::Destroy {
            unique_identifier: Some(uid.to_owned()),
        })? {
            ResponsePayload::Destroy { .. } => Ok(()),
            _ => Err(self.unexpected(Operation::DESTROY)),
        }
    }

    pub(super) fn current_server(&self) -> ServerAddr {
        self.conn
            .as_ref()
            .map(|c| c.info.server.clone())
            .unwrap_or_else(|| self.config.servers[self.preferred].clone())
    }

    fn unexpected(&self, op: Operation) -> ClientError {
        ClientError::Protocol {
            server: self.current_server(),
            detail: format!("the answer to {op} carries another operation's payload"),
        }
    }
}
