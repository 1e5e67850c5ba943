//! The content store's record decoders (configuration values, audit events, recording
//! metadata) on arbitrary bytes: they must never panic, and what they accept must encode back
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atrest_store::fuzzing::records(data);
});
