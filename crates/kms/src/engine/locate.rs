//! Locate (KMIP 1.4 §4.9): the caller's objects matching every given
//! attribute, newest first; destroyed objects only when the State is asked for; a date given
//! twice is a range.

use super::*;

impl Engine {
    pub(super) fn locate(
        &self,
        owner: &str,
        v: ProtocolVersion,
        maximum: Option<i32>,
        offset: Option<i32>,
        filter: &Attributes,
    ) -> OpResult {
        let store = self.store.read();
        let wants_state = filter.0.iter().any(|a| a.name == "State");
        let mut uids = Vec::new();
        for r in store.iter_ordered() {
            if r.owner != owner || (!wants_state && is_destroyed(State(r.state))) {
                continue;
            }
            // Match against the attributes as the request's version reports them.
            let attrs = attributes_of(r, v);
            if filter.0.iter().all(|f| matches(&attrs, f, filter)) {
                uids.push(r.uid.clone());
            }
        }
        // Newest first, as most servers answer.
        uids.reverse();
        let skip = offset.unwrap_or(0).max(0) as usize;
        let take = match maximum {
            Some(m) if m >= 0 => m as usize,
            _ => usize::MAX,
        };
        Ok(ResponsePayload::Locate {
            located_items: None,
            unique_identifiers: uids.into_iter().skip(skip).take(take).collect(),
        })
    }
}

/// Whether an object with `attrs` matches one Locate criterion. A date attribute given twice
/// in the criteria is a range (both ends included), as the specification defines.
pub(super) fn matches(attrs: &Attributes, f: &Attribute, all: &Attributes) -> bool {
    if let Value::DateTime(_) = f.value {
        let bounds: Vec<i64> = all
            .0
            .iter()
            .filter(|a| a.name == f.name)
            .filter_map(|a| match a.value {
                Value::DateTime(d) => Some(d),
                _ => None,
            })
            .collect();
        if bounds.len() == 2 {
            let (lo, hi) = (bounds[0].min(bounds[1]), bounds[0].max(bounds[1]));
            return attrs.0.iter().any(|a| {
                a.name == f.name && matches!(a.value, Value::DateTime(d) if lo <= d && d <= hi)
            });
        }
    }
    match f.name.as_str() {
        "Cryptographic Usage Mask" => match (&f.value, attrs.usage_mask()) {
            (Value::Integer(want), Some(have)) => have & want == *want,
            _ => false,
        },
        "Name" => {
            let want = name_value(&f.value);
            want.is_some()
                && attrs
                    .0
                    .iter()
                    .any(|a| a.name == "Name" && name_value(&a.value) == want)
        }
        _ => attrs
            .0
            .iter()
            .any(|a| a.name == f.name && a.value == f.value),
    }
}

pub(super) fn name_value(v: &Value) -> Option<&str> {
    match v {
        Value::Structure(c) => c.iter().find_map(|i| match (&i.tag, &i.value) {
            (t, Value::TextString(s)) if *t == tags::NAME_VALUE => Some(s.as_str()),
            _ => None,
        }),
        Value::TextString(s) => Some(s),
        _ => None,
    }
}
