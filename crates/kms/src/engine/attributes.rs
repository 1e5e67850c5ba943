//! Get Attributes (KMIP 1.4 §4.12) and Get Attribute List (§4.13), and the attributes an object
//! reports in each protocol version (KMIP 1.4 §3).

use super::*;

/// Hashing Algorithm SHA-256 (KMIP 1.4, Table 304).
const HASHING_SHA_256: u32 = 0x06;

impl Engine {
    pub(super) fn get_attributes(
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

    pub(super) fn get_attribute_list(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
    ) -> OpResult {
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
}

pub(super) fn tag(name: &str) -> Tag {
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
            Item::new(
                tag("Hashing Algorithm"),
                Value::Enumeration(HASHING_SHA_256),
            ),
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
