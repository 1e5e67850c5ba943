//! Create (KMIP 1.4 §4.1): a new symmetric key, made from the server's random
//! source, in the Pre-Active state unless an Activation Date in the past was asked for.

use super::template::{new_record, requested};
use super::*;

impl Engine {
    pub(super) fn create(
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
}
