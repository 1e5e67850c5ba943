//! The attributes a client may set in Create (KMIP 1.4 §4.1) and Register (§4.3), checked
//! against what only the server sets (KMIP 1.4 §3, the "Initially set by" rows), and the
//! stored record made from them.

use super::locate::name_value;
use super::*;

/// The attributes a client asked for in Create or Register.
pub(super) struct Requested {
    pub(super) algorithm: Option<u32>,
    pub(super) length: Option<i32>,
    pub(super) usage_mask: Option<i32>,
    pub(super) names: Vec<(String, u32)>,
    pub(super) activation_date: Option<i64>,
    pub(super) extra: Vec<String>,
}

/// Attributes only the server sets.
const SERVER_ATTRIBUTES: &[&str] = &[
    "Unique Identifier",
    "State",
    "Initial Date",
    "Last Change Date",
    "Deactivation Date",
    "Destroy Date",
    "Compromise Date",
    "Compromise Occurrence Date",
    "Revocation Reason",
    "Digest",
    "Original Creation Date",
];

pub(super) fn requested(attrs: &Attributes, object_type: ObjectType) -> Result<Requested, Fail> {
    let mut r = Requested {
        algorithm: None,
        length: None,
        usage_mask: None,
        names: Vec::new(),
        activation_date: None,
        extra: Vec::new(),
    };
    let wrong = |name: &str, ty: &str| {
        fail(
            ResultReason::INVALID_FIELD,
            format!("attribute {name} must be a {ty}"),
        )
    };
    for a in &attrs.0 {
        match (a.name.as_str(), &a.value) {
            ("Cryptographic Algorithm", Value::Enumeration(x)) => r.algorithm = Some(*x),
            ("Cryptographic Algorithm", _) => return Err(wrong(&a.name, "Enumeration")),
            ("Cryptographic Length", Value::Integer(x)) => r.length = Some(*x),
            ("Cryptographic Length", _) => return Err(wrong(&a.name, "Integer")),
            ("Cryptographic Usage Mask", Value::Integer(x)) => r.usage_mask = Some(*x),
            ("Cryptographic Usage Mask", _) => return Err(wrong(&a.name, "Integer")),
            ("Activation Date", Value::DateTime(x)) => r.activation_date = Some(*x),
            ("Activation Date", _) => return Err(wrong(&a.name, "Date-Time")),
            ("Object Type", Value::Enumeration(x)) if *x == object_type.0 => {}
            ("Object Type", _) => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    "the Object Type attribute differs from the request's Object Type",
                ));
            }
            ("Name", v) => {
                let Some(n) = name_value(v) else {
                    return Err(wrong(&a.name, "Name structure with a Name Value"));
                };
                let ty = match v {
                    Value::Structure(c) => c
                        .iter()
                        .find_map(|i| match (&i.tag, &i.value) {
                            (t, Value::Enumeration(e)) if *t == tags::NAME_TYPE => Some(*e),
                            _ => None,
                        })
                        .unwrap_or(1),
                    _ => 1,
                };
                r.names.push((n.to_owned(), ty));
            }
            (n, _) if SERVER_ATTRIBUTES.contains(&n) => {
                return Err(fail(
                    ResultReason::INVALID_FIELD,
                    format!("attribute {n} is set by the server, not by the client"),
                ));
            }
            _ => {
                if r.extra.len() >= MAX_EXTRA_ATTRIBUTES {
                    return Err(fail(
                        ResultReason::INVALID_FIELD,
                        format!("more than {MAX_EXTRA_ATTRIBUTES} other attributes"),
                    ));
                }
                let item = Attributes(vec![Attribute {
                    name: a.name.clone(),
                    index: None,
                    value: a.value.clone(),
                }])
                .to_1x_items();
                r.extra.push(hex::encode(item[0].to_bytes()));
            }
        }
    }
    Ok(r)
}

pub(super) fn new_record(
    owner: &str,
    object_type: ObjectType,
    req: Requested,
    material: Zeroizing<Vec<u8>>,
    key_format: u32,
    secret_data_type: Option<u32>,
) -> Result<Record, Fail> {
    let t = now();
    let uid = crypto::random_uuid().map_err(storage_failure)?;
    let (state, activation_date) = match req.activation_date {
        Some(d) if d <= t => (State::ACTIVE.0, Some(d)),
        other => (State::PRE_ACTIVE.0, other),
    };
    Ok(Record {
        uid,
        owner: owner.to_owned(),
        seq: 0,
        object_type: object_type.0,
        state,
        algorithm: req.algorithm,
        length: req.length,
        usage_mask: req.usage_mask,
        key_format,
        secret_data_type,
        digest: Some(hex::encode(crypto::sha256(&material))),
        material: Some(material),
        names: req.names,
        initial_date: t,
        last_change_date: t,
        activation_date,
        deactivation_date: None,
        destroy_date: None,
        compromise_date: None,
        compromise_occurrence_date: None,
        revocation: None,
        extra: req.extra,
        sealed_material: None,
    })
}
