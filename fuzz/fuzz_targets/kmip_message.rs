//! KMIP message parsing on arbitrary bytes: TTLV decode, then the typed Request and Response
//! models. Nothing may panic; whatever parses re-encodes and parses again to the same value.
#![no_main]

use atrest_kmip::message::{RequestMessage, ResponseMessage};
use atrest_kmip::ttlv::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(item) = ttlv::decode(data, &Limits::default()) else { return };
    if let Ok(req) = RequestMessage::from_item(&item) {
        let again = RequestMessage::from_item(&req.to_item()).expect("re-encoded request parses");
        assert_eq!(again, req);
    }
    if let Ok(resp) = ResponseMessage::from_item(&item) {
        let again = ResponseMessage::from_item(&resp.to_item()).expect("re-encoded response parses");
        assert_eq!(again, resp);
    }
});
