//! One KMIP exchange without I/O: the bytes of a request, and what an answer means. The
//! transport (`transport.rs`) sends the one and reads the other; everything decided about
//! them is here, as pure functions tested without a socket.

use zeroize::Zeroizing;

use super::{ClientConfig, ClientError, ServerAddr};
use crate::message::{
    Credential, Operation, ProtocolVersion, RequestBatchItem, RequestHeader, RequestMessage,
    RequestPayload, ResponseMessage, ResponsePayload, ResultReason, ResultStatus,
};
use crate::ttlv::{self, Limits};

/// The Credential a request header carries: the configured username and password, if any.
fn credential(config: &ClientConfig) -> Option<Credential> {
    config
        .username
        .as_ref()
        .map(|u| Credential::UsernamePassword {
            username: u.clone(),
            password: config.password.clone(),
        })
}

/// The version a request is sent in: the connection's, except Discover Versions while the
/// version is being negotiated, which goes under 1.1 — the first version that has the
/// operation, which every server that has it parses.
pub fn request_version(
    operation: Operation,
    connection: ProtocolVersion,
    config: &ClientConfig,
) -> ProtocolVersion {
    if operation == Operation::DISCOVER_VERSIONS && config.version.is_none() {
        ProtocolVersion::V1_1
    } else {
        connection
    }
}

/// The bytes of a one-item Request Message carrying `payload` in `version`, with the
/// configured Credential and Maximum Response Size. Zeroed when dropped: a Register carries
/// key material, every request the password.
pub fn request_bytes(
    payload: &RequestPayload,
    version: ProtocolVersion,
    config: &ClientConfig,
) -> Zeroizing<Vec<u8>> {
    let operation = payload.operation().unwrap_or(Operation::QUERY);
    let request = RequestMessage {
        header: RequestHeader {
            protocol_version: version,
            maximum_response_size: Some(config.max_response_len.min(i32::MAX as usize) as i32),
            authentication: credential(config),
            time_stamp: None,
            batch_count: 1,
        },
        items: vec![RequestBatchItem {
            operation,
            id: None,
            payload: payload.clone(),
        }],
    };
    Zeroizing::new(request.to_item().to_bytes())
}

/// Why an answer yields no payload.
#[derive(Debug)]
pub enum Classified {
    /// The bytes are not a usable KMIP response. The request was sent: the server may have
    /// carried it out.
    Garbled(ClientError),
    /// The server answered with a failure (or an empty success): the answer is final.
    Refused(ClientError),
}

impl Classified {
    /// The error, whichever kind.
    pub fn into_error(self) -> ClientError {
        match self {
            Classified::Garbled(e) | Classified::Refused(e) => e,
        }
    }
}

/// What a whole response message (`bytes`, header included) to a request for `operation`
/// sent in `version` means: the payload of its first batch item, or why there is none.
pub fn classify_response(
    bytes: &[u8],
    server: &ServerAddr,
    operation: Operation,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<ResponsePayload, Classified> {
    let garbled = |detail: String| {
        Classified::Garbled(ClientError::Protocol {
            server: server.clone(),
            detail,
        })
    };
    let item = ttlv::decode(bytes, limits).map_err(|e| garbled(e.to_string()))?;
    let response = ResponseMessage::from_item(&item)
        .map_err(|e| garbled(format!("malformed Response Message: {e}")))?;
    let Some(bi) = response.items.into_iter().next() else {
        return Err(garbled("the response has no batch item".into()));
    };
    let server = server.clone();
    if bi.status != ResultStatus::SUCCESS {
        return Err(Classified::Refused(match bi.reason {
            Some(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL) => ClientError::Authentication {
                server,
                message: bi.message,
            },
            Some(ResultReason::UNSUPPORTED_PROTOCOL_VERSION) => ClientError::Version {
                server,
                detail: format!(
                    "the server refused protocol version {version}{}",
                    bi.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            },
            reason => ClientError::Operation {
                server,
                operation,
                reason,
                message: bi.message,
            },
        }));
    }
    bi.payload.ok_or_else(|| {
        Classified::Refused(ClientError::Protocol {
            server,
            detail: format!("the successful answer to {operation} has no payload"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Identity, Timeouts};
    use crate::message::{Password, ResponseBatchItem, ResponseHeader};

    fn config() -> ClientConfig {
        ClientConfig {
            servers: vec!["kmip.example".parse().unwrap()],
            server_name: None,
            ca_pem: Vec::new(),
            identity: Identity::Pem {
                cert_chain: Vec::new(),
                key: Zeroizing::new(Vec::new()),
                passphrase: None,
            },
            username: Some("appliance".into()),
            password: Some(Password::new("secret".into())),
            version: None,
            timeouts: Timeouts::default(),
            max_response_len: 4096,
        }
    }

    fn server() -> ServerAddr {
        "kmip.example".parse().unwrap()
    }

    fn response(item: ResponseBatchItem) -> Vec<u8> {
        ResponseMessage {
            header: ResponseHeader {
                protocol_version: ProtocolVersion::V1_4,
                time_stamp: 0,
                batch_count: 1,
            },
            items: vec![item],
        }
        .to_item()
        .to_bytes()
    }

    fn classify(bytes: &[u8]) -> Result<ResponsePayload, Classified> {
        classify_response(
            bytes,
            &server(),
            Operation::GET,
            ProtocolVersion::V1_4,
            &Limits::default(),
        )
    }

    #[test]
    fn the_request_carries_credential_limit_and_version() {
        let c = config();
        let payload = RequestPayload::Activate {
            unique_identifier: Some("7".into()),
        };
        let bytes = request_bytes(&payload, ProtocolVersion::V1_2, &c);
        let item = ttlv::decode(&bytes, &Limits::default()).unwrap();
        let req = RequestMessage::from_item(&item).unwrap();
        assert_eq!(req.header.protocol_version, ProtocolVersion::V1_2);
        assert_eq!(req.header.maximum_response_size, Some(4096));
        assert_eq!(req.header.batch_count, 1);
        match req.header.authentication {
            Some(Credential::UsernamePassword { username, password }) => {
                assert_eq!(username, "appliance");
                assert_eq!(password.unwrap().expose(), "secret");
            }
            other => panic!("credential: {other:?}"),
        }
        assert_eq!(req.items.len(), 1);
        assert_eq!(req.items[0].operation, Operation::ACTIVATE);
        let mut anonymous = c.clone();
        anonymous.username = None;
        let bytes = request_bytes(&payload, ProtocolVersion::V1_2, &anonymous);
        let item = ttlv::decode(&bytes, &Limits::default()).unwrap();
        assert!(
            RequestMessage::from_item(&item)
                .unwrap()
                .header
                .authentication
                .is_none()
        );
    }

    #[test]
    fn discover_versions_goes_under_1_1_until_a_version_is_pinned() {
        let mut c = config();
        let v = request_version(Operation::DISCOVER_VERSIONS, ProtocolVersion::V2_0, &c);
        assert_eq!(v, ProtocolVersion::V1_1);
        assert_eq!(
            request_version(Operation::GET, ProtocolVersion::V2_0, &c),
            ProtocolVersion::V2_0
        );
        c.version = Some(ProtocolVersion::V1_4);
        assert_eq!(
            request_version(Operation::DISCOVER_VERSIONS, ProtocolVersion::V1_4, &c),
            ProtocolVersion::V1_4
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let fail = |reason| {
            response(ResponseBatchItem::failure(
                Some(Operation::GET),
                None,
                reason,
                "no",
            ))
        };
        assert!(matches!(
            classify(&fail(ResultReason::AUTHENTICATION_NOT_SUCCESSFUL)),
            Err(Classified::Refused(ClientError::Authentication { .. }))
        ));
        match classify(&fail(ResultReason::UNSUPPORTED_PROTOCOL_VERSION)) {
            Err(Classified::Refused(ClientError::Version { detail, .. })) => {
                assert!(detail.contains("1.4"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        match classify(&fail(ResultReason::ITEM_NOT_FOUND)) {
            Err(Classified::Refused(ClientError::Operation {
                operation, reason, ..
            })) => {
                assert_eq!(operation, Operation::GET);
                assert_eq!(reason, Some(ResultReason::ITEM_NOT_FOUND));
            }
            other => panic!("{other:?}"),
        }
        let empty_success = response(ResponseBatchItem {
            operation: Some(Operation::GET),
            id: None,
            status: ResultStatus::SUCCESS,
            reason: None,
            message: None,
            payload: None,
        });
        assert!(matches!(
            classify(&empty_success),
            Err(Classified::Refused(ClientError::Protocol { .. }))
        ));
    }

    #[test]
    fn garbage_is_garbled_never_a_panic() {
        assert!(matches!(classify(b""), Err(Classified::Garbled(_))));
        assert!(matches!(
            classify(&[0x42, 0, 0x7B, 1, 0, 0, 0, 0]),
            Err(Classified::Garbled(_))
        ));
        let mut ok = response(ResponseBatchItem::failure(
            None,
            None,
            ResultReason::INVALID_MESSAGE,
            "x",
        ));
        ok.truncate(ok.len() - 8);
        assert!(matches!(classify(&ok), Err(Classified::Garbled(_))));
    }

    /// Every published response message classifies (a payload or a final refusal), none is
    /// taken for garbage.
    #[test]
    fn published_responses_classify() {
        let doc: serde_json::Value = atrest_testkit::testdata_json("kmip/messages-hex.json");
        let mut n = 0;
        for ex in doc["exchanges"].as_array().unwrap() {
            let Some(hex) = ex["response"]["hex"].as_str() else {
                continue;
            };
            let bytes = hex::decode(hex).unwrap();
            match classify(&bytes) {
                Ok(_) | Err(Classified::Refused(_)) => n += 1,
                Err(Classified::Garbled(e)) => panic!("{}: {e}", ex["name"]),
            }
        }
        assert!(n >= 40, "only {n} published responses");
    }
}
