//! The TTLV decoder on arbitrary bytes: it must never panic, and whatever it accepts must
//! re-encode to the same bytes.
#![no_main]

use atrest_kmip::ttlv::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limits in [
        Limits::default(),
        Limits { any_tag_prefix: true, max_depth: 4, max_message_len: 4096 },
    ] {
        if let Ok(item) = ttlv::decode(data, &limits) {
            assert_eq!(item.to_bytes(), data);
        }
        if data.len() >= 8 {
            let mut header = [0u8; 8];
            header.copy_from_slice(&data[..8]);
            let _ = ttlv::message_len(&header, &limits);
        }
    }
});
