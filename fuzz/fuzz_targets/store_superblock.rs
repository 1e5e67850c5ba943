//! The content store's superblock slot decoder on arbitrary bytes: it must never panic, and a
//! slot it accepts must encode back to the same superblock.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atrest_store::fuzzing::superblock(data);
});
