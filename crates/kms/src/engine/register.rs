//! Register (KMIP 1.4 §4.3): a symmetric key or secret data the client supplies,
//! unwrapped, in Raw, Opaque or Transparent Symmetric Key format.

use super::template::{new_record, requested};
use super::*;

impl Engine {
    pub(super) fn register(
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
}
