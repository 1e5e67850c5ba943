//! The published TTLV and KMIP encodings in `testdata/kmip`: the examples of the
//! KMIP specification (§9.1.2), the KMIP 1.0 Use Cases and 1.1 Test Cases, and PyKMIP's unit
//! test vectors (see testdata/README.md for every source).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use atrest_kmip::ttlv::{self, DecodeErrorKind, Item, Limits, Value};
use serde_json::Value as Json;

fn load(name: &str) -> Json {
    atrest_testkit::testdata_json(&format!("kmip/{name}"))
}

fn bytes(hex: &str) -> Vec<u8> {
    hex::decode(hex).unwrap()
}

fn check_value(name: &str, item: &Item, case: &Json) {
    let expected = &case["value"];
    match &item.value {
        Value::Integer(v) => assert_eq!(Json::from(*v), *expected, "{name}"),
        Value::Enumeration(v) => assert_eq!(Json::from(*v), *expected, "{name}"),
        Value::Interval(v) => assert_eq!(Json::from(*v), *expected, "{name}"),
        Value::Boolean(v) => assert_eq!(Json::from(*v), *expected, "{name}"),
        Value::LongInteger(v) | Value::DateTime(v) | Value::DateTimeExtended(v) => {
            let text = match expected {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(v.to_string(), text, "{name}")
        }
        Value::TextString(s) => assert_eq!(Json::from(s.as_str()), *expected, "{name}"),
        Value::ByteString(b) => {
            assert_eq!(
                hex::encode_upper(b),
                expected.as_str().unwrap().to_uppercase(),
                "{name}"
            )
        }
        Value::BigInteger(b) => {
            // Decimal in the vectors: compare through i128 where it fits, else by hex.
            let text = match expected {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            if b.len() <= 16 {
                let mut v: i128 = if b[0] & 0x80 != 0 { -1 } else { 0 };
                for &x in b {
                    v = (v << 8) | x as i128;
                }
                assert_eq!(v.to_string(), text, "{name}");
            }
        }
        Value::Structure(children) => {
            let tree = &case["decoded"];
            if let Some(list) = tree.get("children").and_then(Json::as_array) {
                assert_eq!(children.len(), list.len(), "{name}");
            }
        }
    }
}

#[test]
fn primitives_decode_and_encode_byte_exact() {
    let doc = load("ttlv-primitives.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 37);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let raw = bytes(case["hex"].as_str().unwrap());
        let item = ttlv::decode(&raw, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tag = u32::from_str_radix(case["tag"].as_str().unwrap().trim_start_matches("0x"), 16)
            .unwrap();
        assert_eq!(item.tag.0, tag, "{name}");
        // The 2.x specs write "Date Time Extended" where 1.x wrote "Date-Time".
        assert_eq!(
            item.value.item_type().name().replace('-', " "),
            case["type"].as_str().unwrap().replace('-', " "),
            "{name}"
        );
        check_value(name, &item, case);
        assert_eq!(item.to_bytes(), raw, "{name}: re-encoding differs");
    }
}

#[test]
fn malformed_inputs_are_rejected_with_a_location() {
    let doc = load("ttlv-malformed.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 21);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let raw = bytes(case["hex"].as_str().unwrap());
        match ttlv::decode(&raw, &Limits::default()) {
            Ok(item) => panic!("{name}: accepted {item:?}"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("invalid TTLV at byte "), "{name}: {text}");
                match name {
                    n if n.contains("padding") => {
                        assert_eq!(e.kind, DecodeErrorKind::NonZeroPadding, "{name}")
                    }
                    n if n.contains("boolean-value-2") => {
                        assert_eq!(e.kind, DecodeErrorKind::BadBoolean { value: 2 }, "{name}")
                    }
                    n if n.contains("utf8") => {
                        assert_eq!(e.kind, DecodeErrorKind::InvalidUtf8, "{name}")
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn vendor_tags_outside_the_kmip_ranges_are_accepted_only_on_request() {
    let doc = load("ttlv-malformed.json");
    let case = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "nlnet-vendor-server-information")
        .unwrap();
    let raw = bytes(case["hex"].as_str().unwrap());
    let err = ttlv::decode(&raw, &Limits::default()).unwrap_err();
    assert!(
        matches!(err.kind, DecodeErrorKind::BadTagPrefix { tag: 0x123456 }),
        "{err}"
    );
    assert_eq!(err.offset, 16);
    let tolerant = Limits {
        any_tag_prefix: true,
        ..Limits::default()
    };
    let item = ttlv::decode(&raw, &tolerant).unwrap();
    assert_eq!(item.to_bytes(), raw);
}

#[test]
fn whole_messages_decode_and_encode_byte_exact() {
    let doc = load("messages-hex.json");
    let mut n = 0;
    for ex in doc["exchanges"].as_array().unwrap() {
        let name = ex["name"].as_str().unwrap();
        for side in ["request", "response"] {
            let Some(hex) = ex[side]["hex"].as_str() else {
                continue;
            };
            let raw = bytes(hex);
            let item = ttlv::decode(&raw, &Limits::default())
                .unwrap_or_else(|e| panic!("{name} {side}: {e}"));
            assert_eq!(item.to_bytes(), raw, "{name} {side}");
            n += 1;
        }
    }
    assert_eq!(n, 89);
}

#[test]
fn structures_decode_and_encode_byte_exact() {
    let doc = load("structures-hex.json");
    let frags = doc["fragments"].as_array().unwrap();
    assert!(frags.len() >= 164);
    for f in frags {
        let name = f["name"].as_str().unwrap();
        let raw = bytes(f["hex"].as_str().unwrap());
        let item = ttlv::decode(&raw, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(item.to_bytes(), raw, "{name}");
    }
}
