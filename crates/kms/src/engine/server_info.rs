//! Discover Versions (KMIP 1.4 §4.26) and Query (§4.25): what the server speaks and offers.

use super::*;

pub(super) fn discover_versions(client: &[ProtocolVersion]) -> ResponsePayload {
    let versions = if client.is_empty() {
        ProtocolVersion::SUPPORTED.to_vec()
    } else {
        client
            .iter()
            .copied()
            .filter(|c| ProtocolVersion::SUPPORTED.contains(c))
            .collect()
    };
    ResponsePayload::DiscoverVersions { versions }
}

pub(super) fn query(v: ProtocolVersion, functions: &[QueryFunction]) -> ResponsePayload {
    let mut q = QueryResponse::default();
    if functions.contains(&QueryFunction::QUERY_OPERATIONS) {
        q.operations = vec![
            Operation::CREATE,
            Operation::REGISTER,
            Operation::LOCATE,
            Operation::GET,
            Operation::GET_ATTRIBUTES,
            Operation::GET_ATTRIBUTE_LIST,
            Operation::ACTIVATE,
            Operation::REVOKE,
            Operation::DESTROY,
            Operation::QUERY,
        ];
        if v >= ProtocolVersion::V1_1 {
            q.operations.push(Operation::DISCOVER_VERSIONS);
        }
    }
    if functions.contains(&QueryFunction::QUERY_OBJECTS) {
        q.object_types = vec![ObjectType::SYMMETRIC_KEY, ObjectType::SECRET_DATA];
    }
    if functions.contains(&QueryFunction::QUERY_SERVER_INFORMATION) {
        q.vendor_identification = Some(VENDOR.to_owned());
    }
    ResponsePayload::Query(q)
}
