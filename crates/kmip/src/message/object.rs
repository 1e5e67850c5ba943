//! The managed objects payloads carry: a Symmetric Key or Secret Data with its Key Block, or
//! any other object as received.

use std::fmt;

use zeroize::Zeroizing;

use super::{CryptographicAlgorithm, Fields, KeyFormatType, MessageError, ObjectType, tags};
use crate::ttlv::{Item, Value};

/// The Key Block of a key object. The key material is zeroed on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlock {
    /// Key Format Type of `material`.
    pub format: KeyFormatType,
    /// The key bytes (Raw and Transparent Symmetric Key formats), or the wrapped bytes.
    pub material: Zeroizing<Vec<u8>>,
    /// Cryptographic Algorithm.
    pub algorithm: Option<CryptographicAlgorithm>,
    /// Cryptographic Length, in bits.
    pub length: Option<i32>,
    /// The server returned the key wrapped (Key Wrapping Data present): `material` is then the
    /// wrapped bytes, not the key.
    pub wrapped: bool,
}

impl fmt::Debug for KeyBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBlock")
            .field("format", &self.format)
            .field(
                "material",
                &format_args!("<{} bytes redacted>", self.material.len()),
            )
            .field("algorithm", &self.algorithm)
            .field("length", &self.length)
            .field("wrapped", &self.wrapped)
            .finish()
    }
}

impl KeyBlock {
    /// A Raw AES key block.
    pub fn raw_aes(material: Zeroizing<Vec<u8>>) -> Self {
        let length = (material.len() * 8) as i32;
        KeyBlock {
            format: KeyFormatType::RAW,
            material,
            algorithm: Some(CryptographicAlgorithm::AES),
            length: Some(length),
            wrapped: false,
        }
    }

    fn to_item(&self) -> Item {
        let material = if self.format == KeyFormatType::TRANSPARENT_SYMMETRIC_KEY {
            Item::structure(
                tags::KEY_MATERIAL,
                vec![Item::new(
                    tags::KEY,
                    Value::ByteString(self.material.to_vec()),
                )],
            )
        } else {
            Item::new(
                tags::KEY_MATERIAL,
                Value::ByteString(self.material.to_vec()),
            )
        };
        let mut v = vec![
            Item::new(tags::KEY_FORMAT_TYPE, Value::Enumeration(self.format.0)),
            Item::structure(tags::KEY_VALUE, vec![material]),
        ];
        if let Some(a) = self.algorithm {
            v.push(Item::new(
                tags::CRYPTOGRAPHIC_ALGORITHM,
                Value::Enumeration(a.0),
            ));
        }
        if let Some(l) = self.length {
            v.push(Item::new(tags::CRYPTOGRAPHIC_LENGTH, Value::Integer(l)));
        }
        Item::structure(tags::KEY_BLOCK, v)
    }

    fn from_item(item: &Item) -> Result<Self, MessageError> {
        let f = Fields::new(item);
        let format = KeyFormatType(f.enumeration(tags::KEY_FORMAT_TYPE)?);
        let wrapped = item.child(tags::KEY_WRAPPING_DATA).is_some();
        let key_value = f.required(tags::KEY_VALUE)?;
        let material = match &key_value.value {
            // Wrapped keys: the Key Value is a Byte String.
            Value::ByteString(b) => b.clone(),
            Value::Structure(_) => {
                let km = Fields::new(key_value).required(tags::KEY_MATERIAL)?;
                match &km.value {
                    Value::ByteString(b) => b.clone(),
                    Value::Structure(_) => Fields::new(km).bytes(tags::KEY)?,
                    other => {
                        return Err(MessageError::WrongType {
                            tag: tags::KEY_MATERIAL,
                            expected: "Byte String",
                            found: other.item_type().name(),
                        });
                    }
                }
            }
            other => {
                return Err(MessageError::WrongType {
                    tag: tags::KEY_VALUE,
                    expected: "Structure",
                    found: other.item_type().name(),
                });
            }
        };
        Ok(KeyBlock {
            format,
            material: Zeroizing::new(material),
            algorithm: f
                .opt_enumeration(tags::CRYPTOGRAPHIC_ALGORITHM)?
                .map(CryptographicAlgorithm),
            length: f.opt_integer(tags::CRYPTOGRAPHIC_LENGTH)?,
            wrapped,
        })
    }
}

/// A managed object as carried by Register and Get.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedObject {
    /// A Symmetric Key.
    SymmetricKey(KeyBlock),
    /// Secret Data (e.g. a password or a seed), in a key block.
    SecretData {
        /// Secret Data Type (1 Password, 2 Seed).
        secret_data_type: u32,
        /// The secret's bytes.
        key_block: KeyBlock,
    },
    /// Any other object, kept as received (tag and contents).
    Other(Item),
}

impl ManagedObject {
    /// The Object Type of the object, when this model knows it.
    pub fn object_type(&self) -> Option<ObjectType> {
        match self {
            ManagedObject::SymmetricKey(_) => Some(ObjectType::SYMMETRIC_KEY),
            ManagedObject::SecretData { .. } => Some(ObjectType::SECRET_DATA),
            ManagedObject::Other(_) => None,
        }
    }

    /// The key block, for key objects.
    pub fn key_block(&self) -> Option<&KeyBlock> {
        match self {
            ManagedObject::SymmetricKey(kb) | ManagedObject::SecretData { key_block: kb, .. } => {
                Some(kb)
            }
            ManagedObject::Other(_) => None,
        }
    }

    pub(super) fn to_item(&self) -> Item {
        match self {
            ManagedObject::SymmetricKey(kb) => {
                Item::structure(tags::SYMMETRIC_KEY, vec![kb.to_item()])
            }
            ManagedObject::SecretData {
                secret_data_type,
                key_block,
            } => Item::structure(
                tags::SECRET_DATA,
                vec![
                    Item::new(
                        tags::SECRET_DATA_TYPE,
                        Value::Enumeration(*secret_data_type),
                    ),
                    key_block.to_item(),
                ],
            ),
            ManagedObject::Other(item) => item.clone(),
        }
    }

    /// Finds the object among the children of a payload.
    pub(super) fn from_payload(payload: &Item) -> Result<Self, MessageError> {
        if let Some(sk) = payload.child(tags::SYMMETRIC_KEY) {
            let kb = Fields::new(sk).required(tags::KEY_BLOCK)?;
            return Ok(ManagedObject::SymmetricKey(KeyBlock::from_item(kb)?));
        }
        if let Some(sd) = payload.child(tags::SECRET_DATA) {
            let f = Fields::new(sd);
            return Ok(ManagedObject::SecretData {
                secret_data_type: f.enumeration(tags::SECRET_DATA_TYPE)?,
                key_block: KeyBlock::from_item(f.required(tags::KEY_BLOCK)?)?,
            });
        }
        // The object is the first structure that is not a known payload field.
        let known = [
            tags::OBJECT_TYPE,
            tags::UNIQUE_IDENTIFIER,
            tags::TEMPLATE_ATTRIBUTE,
            tags::ATTRIBUTES,
            tags::PROTECTION_STORAGE_MASKS,
        ];
        payload
            .children()
            .iter()
            .find(|c| matches!(c.value, Value::Structure(_)) && !known.contains(&c.tag))
            .map(|c| ManagedObject::Other(c.clone()))
            .ok_or(MessageError::Missing {
                parent: payload.tag,
                missing: tags::SYMMETRIC_KEY,
            })
    }
}
