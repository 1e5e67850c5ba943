//! The recovery key's parsers on arbitrary input: the typed key text (spaces, dashes, groups
//! with their check) and a keyslot object read from a header, checked before any KDF runs.
//! Nothing may panic; a key that parses prints back to a text that parses to itself; a keyslot
//! that passes names an area inside the keyslots area.
#![no_main]

use atrest_volume::RecoveryKey;
use atrest_volume::recovery::check_keyslot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(k) = RecoveryKey::parse(text) {
            let again = RecoveryKey::parse(k.expose()).expect("a canonical key parses");
            assert_eq!(again.expose(), k.expose());
            assert_eq!(k.expose().len(), 55);
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let (start, end) = (32_768u64, 16u64 << 20);
        if check_keyslot(&v, start, end).is_ok() {
            let off: u64 = v["area"]["offset"].as_str().unwrap().parse().unwrap();
            let size: u64 = v["area"]["size"].as_str().unwrap().parse().unwrap();
            assert!(off >= start && off + size <= end);
        }
    }
});
