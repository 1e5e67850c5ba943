//! LUKS2 header parser: arbitrary bytes never panic. The first input byte picks how the rest
//! is used: as a raw header copy, as the JSON area behind a valid binary header whose checksum
//! is fixed first (so inputs reach the JSON parser and the metadata checks), or as the values of
//! atrest's own fields (conversion record, hotzone, header MAC, KMIP token, digests) in an
//! otherwise valid encrypted header. Whatever parses must survive encode → parse unchanged and
//! have a MAC that verifies once signed; the device-level reader (both copies, repair), the key
//! check and unlock (MAC check, bounded hotzone recovery) must not panic either.
#![no_main]

use std::sync::Arc;

use atrest_volume::luks2::{encode_copy, fix_checksum, parse_copy, read_header};
use atrest_volume::{BlockDevice, KeyMaterial, MemDevice, SecretBytes, Volume};
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

/// A valid-looking encrypted header mid-rekey, with the fuzz input's pieces (split at 0xFF) as
/// the values of atrest's fields.
fn templated(rest: &[u8]) -> Vec<u8> {
    let mut parts = rest
        .split(|&b| b == 0xff)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut next = |default: &str| parts.next().unwrap_or_else(|| default.to_string());
    let json = format!(
        r#"{{"keyslots":{{}},"tokens":{{"0":{{"type":"atrest-kmip","keyslots":[],"unique_identifier":{id},"servers":[{srv}],"key_bits":{bits},"created":"t","digest":{dg}}},"1":{{"type":"atrest-kmip","keyslots":[],"unique_identifier":"b","servers":["s:1"],"key_bits":256,"created":"t","digest":"1"}},"2":{{"type":"atrest-conversion","keyslots":[],"kind":{kind},"old_digest":"0","new_digest":{nd},"boundary":{b},"hotzone":{{"offset":{ho},"size":{hs},"table_offset":{ht},"unit":512,"hash":"sha256"}}}},"3":{{"type":"atrest-header-mac","keyslots":[],"alg":{alg},"mac":{mac}}}}},"segments":{{"0":{{"type":"crypt","offset":"65536","size":{ss},"iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":{sec}}}}},"digests":{{"0":{{"type":"pbkdf2","keyslots":[],"segments":["0"],"hash":"sha256","iterations":{it},"salt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}},"1":{{"type":"pbkdf2","keyslots":[],"segments":[],"hash":"sha256","iterations":1000,"salt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}}},"config":{{"json_size":"12288","keyslots_size":{ks},"requirements":{{"mandatory":["atrest-conversion-v1"]}}}}}}"#,
        id = next("\"a\""),
        srv = next("\"s:1\""),
        bits = next("256"),
        dg = next("\"0\""),
        kind = next("\"rekey\""),
        nd = next("\"1\""),
        b = next("\"4096\""),
        ho = next("\"4096\""),
        hs = next("\"4096\""),
        ht = next("\"32768\""),
        alg = next("\"hmac-sha256\""),
        mac = next("\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\""),
        ss = next("\"16384\""),
        sec = next("4096"),
        it = next("1000"),
        ks = next("\"32768\""),
    );
    framed(json.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let copy = match mode % 4 {
        3 => templated(rest),
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
        let _ = atrest_volume::luks2::mac::mac_input(&m);
        let _ = m.authenticating_digest();
        let again = encode_copy(&m, true).expect("re-encode a parsed header");
        let back = parse_copy(&again, 0).expect("re-parse an encoded header");
        assert_eq!(back, m);
    }
    // The same bytes as both copies of a small device.
    if mode % 4 >= 2 {
        let mut img = vec![0u8; 2 * HDR + 65536 + 16384];
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
            // A key that matches no digest here: the check refuses it, and unlock without keys
            // refuses an encrypted header; neither may panic.
            let mut k = [7u8; 32];
            k[0] = 1;
            if let Ok(key) = KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut k)) {
                let _ = v.verify_key(key);
            }
            let _ = v.authenticate(&[]);
            let _ = v.unlock(Vec::new());
        }
    }
});
