//! LUKS2 header parser: arbitrary bytes never panic. The first input byte picks how the rest
//! is used: as a raw header copy, or as the JSON area behind a valid binary header whose
//! checksum is fixed first (so inputs reach the JSON parser and the metadata checks). Whatever
//! parses must survive encode → parse unchanged, and the device-level reader (both copies,
//! repair) must not panic either.
#![no_main]

use std::sync::Arc;

use atrest_volume::luks2::{encode_copy, fix_checksum, parse_copy, read_header};
use atrest_volume::{BlockDevice, MemDevice, Volume};
use libfuzzer_sys::fuzz_target;

const HDR: usize = 16384;

fn framed(json: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; HDR];
    b[..6].copy_from_slice(b"LUKS\xba\xbe");
    b[6..8].copy_from_slice(&2u16.to_be_bytes());
    b[8..16].copy_from_slice(&(HDR as u64).to_be_bytes());
    b[72..78].copy_from_slice(b"sha256");
    let n = json.len().min(HDR - 4096);
    b[4096..4096 + n].copy_from_slice(&json[..n]);
    fix_checksum(&mut b);
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let copy = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut b = rest.to_vec();
            if b.len() >= 4096 {
                let n = b.len().min(1 << 22);
                fix_checksum(&mut b[..n]);
            }
            b
        }
        _ => framed(rest),
    };
    if let Ok(m) = parse_copy(&copy, 0) {
        let again = encode_copy(&m, true).expect("re-encode a parsed header");
        let back = parse_copy(&again, 0).expect("re-parse an encoded header");
        assert_eq!(back, m);
    }
    // The same bytes as both copies of a small device.
    if mode % 3 == 2 {
        let mut img = vec![0u8; 3 * HDR + 8192];
        img[..HDR].copy_from_slice(&copy);
        let mut second = copy.clone();
        second[..6].copy_from_slice(b"SKUL\xba\xbe");
        second[256..264].copy_from_slice(&(HDR as u64).to_be_bytes());
        fix_checksum(&mut second);
        img[HDR..2 * HDR].copy_from_slice(&second);
        let dev = Arc::new(MemDevice::from_vec(img));
        let _ = read_header(&*dev, true);
        if let Ok(v) = Volume::open(dev.clone()) {
            let _ = v.info();
            let _ = v.required_keys();
            let _ = dev.len();
        }
    }
});
