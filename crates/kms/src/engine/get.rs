//! Get (KMIP 1.4 §4.11): the key material of an object not destroyed, in its
//! stored format or as a Transparent Symmetric Key; key wrapping and compression are refused,
//! never ignored.

use super::attributes::tag;
use super::*;

impl Engine {
    pub(super) fn get(
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
}

/// An optional feature a request asks for that the server does not offer, found in the raw
/// request payload (the decoded payload does not keep it): Feature Not Supported, never a
/// silent fallback — a client asking for a wrapped key must not get it in the clear.
pub(super) fn unsupported_feature(op: Operation, raw: Option<&Item>) -> Option<Fail> {
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
            ResultReason::KEY_COMPRESSION_TYPE_NOT_SUPPORTED,
            "Key Compression Type is not supported; send Get without it",
        ));
    }
    None
}
