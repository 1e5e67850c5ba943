//! Property tests of the TTLV codec: any item encodes to bytes that decode to the same item and
//! re-encode to the same bytes; any byte string decodes without panicking.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use atrest_kmip::ttlv::{self, Item, Limits, Tag, Value, big_integer_from_bytes};
use proptest::prelude::*;

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        (0x420001u32..0x4201FF).prop_map(Tag),
        (0x540000u32..0x54FFFF).prop_map(Tag),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::Integer),
        any::<i64>().prop_map(Value::LongInteger),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| Value::BigInteger(big_integer_from_bytes(&b))),
        any::<u32>().prop_map(Value::Enumeration),
        any::<bool>().prop_map(Value::Boolean),
        ".{0,40}".prop_map(Value::TextString),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::ByteString),
        any::<i64>().prop_map(Value::DateTime),
        any::<u32>().prop_map(Value::Interval),
        any::<i64>().prop_map(Value::DateTimeExtended),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    let leaf = (tag(), leaf()).prop_map(|(t, v)| Item::new(t, v));
    leaf.prop_recursive(6, 64, 8, |inner| {
        (tag(), proptest::collection::vec(inner, 0..8)).prop_map(|(t, c)| Item::structure(t, c))
    })
}

proptest! {
    #[test]
    fn encode_decode_encode(item in item()) {
        let bytes = item.to_bytes();
        prop_assert_eq!(bytes.len(), item.encoded_len());
        let decoded = ttlv::decode(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(&decoded, &item);
        prop_assert_eq!(decoded.to_bytes(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ttlv::decode(&bytes, &Limits::default());
    }

    #[test]
    fn mutated_messages_never_panic(item in item(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = item.to_bytes();
        let i = pos % bytes.len();
        bytes[i] = byte;
        if let Ok(d) = ttlv::decode(&bytes, &Limits::default()) {
            prop_assert_eq!(d.to_bytes(), bytes);
        }
    }
}
