//! Every XTS-AES known-answer vector in `testdata/xts` (IEEE 1619-2007 Annex B, NIST CAVP
//! XTSGenAES128/256), both directions. Vectors with equal key halves must be refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atrest_volume::xts::XtsBackend;
use atrest_volume::xts::check_key;
use atrest_volume::{KeyError, SecretBytes, XtsCipher};

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

#[test]
fn all_xts_vectors_pass() {
    let mut checked = 0;
    let mut refused = 0;
    for file in [
        "ieee1619-2007.json",
        "nist-cavp-xtsgenaes128.json",
        "nist-cavp-xtsgenaes256.json",
    ] {
        let doc: serde_json::Value = atrest_testkit::testdata_json(&format!("xts/{file}"));
        for v in doc["vectors"].as_array().unwrap() {
            let id = v["id"].as_str().unwrap();
            let mut key = hex(v["key"].as_str().unwrap());
            let tweak: [u8; 16] = hex(v["tweak"].as_str().unwrap()).try_into().unwrap();
            let pt = hex(v["plaintext"].as_str().unwrap());
            let ct = hex(v["ciphertext"].as_str().unwrap());
            assert_eq!(
                key.len() * 8,
                v["xts_key_bits"].as_u64().unwrap() as usize,
                "{id}"
            );
            if v["equal_key_halves"].as_bool() == Some(true) {
                assert_eq!(check_key(&key), Err(KeyError::EqualHalves), "{id}");
                refused += 1;
                continue;
            }
            let secret = SecretBytes::from_slice_zeroizing(&mut key);
            // Both implementations: VAES where the CPU has it (whole 256-byte groups), OpenSSL.
            for backend in [XtsBackend::Auto, XtsBackend::OpenSsl] {
                let x = XtsCipher::with_backend(&secret, backend).unwrap();
                let mut buf = pt.clone();
                x.encrypt_unit(&tweak, &mut buf).unwrap();
                assert_eq!(buf, ct, "{id} encrypt ({})", x.backend_name());
                x.decrypt_unit(&tweak, &mut buf).unwrap();
                assert_eq!(buf, pt, "{id} decrypt ({})", x.backend_name());
            }
            checked += 1;
        }
    }
    // 19 + 1600 + 1200 vectors in the kit.
    assert_eq!(checked + refused, 2819);
    assert!(refused >= 1);
    eprintln!("{checked} vectors checked, {refused} with equal key halves refused");
}
