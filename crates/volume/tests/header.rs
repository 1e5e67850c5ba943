//! Header validation: one malformed-header fixture per check (generated here from a valid
//! header), damaged-copy repair, and key checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use atrest_volume::luks2::{self, fix_checksum, parse_copy};
use atrest_volume::*;
use common::*;
use serde_json::{Value, json};

/// A valid encrypted volume on a memory device, and its key.
fn encrypted() -> (Arc<MemDevice>, Vec<u8>) {
    let dev = Arc::new(MemDevice::new((1 << 20) + (64 << 10)));
    let v = Volume::format(dev.clone(), &small_format()).unwrap();
    let u = v.unlock(vec![]).unwrap();
    let k = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let kb = k.expose().to_vec();
    u.begin_encrypt(k, reference("k1"), &fast()).unwrap();
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    (dev, kb)
}

fn primary(dev: &MemDevice) -> Vec<u8> {
    dev.to_vec()[..16384].to_vec()
}

fn with_json(copy: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let area = &copy[4096..];
    let end = area.iter().position(|&b| b == 0).unwrap();
    let mut v: Value = serde_json::from_slice(&area[..end]).unwrap();
    f(&mut v);
    let text = serde_json::to_vec(&v).unwrap();
    let mut out = copy.to_vec();
    out[4096..].fill(0);
    out[4096..4096 + text.len()].copy_from_slice(&text);
    fix_checksum(&mut out);
    out
}

fn with_bin(copy: &[u8], f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut out = copy.to_vec();
    f(&mut out);
    fix_checksum(&mut out);
    out
}

fn expect(bytes: &[u8], check: Check) {
    match parse_copy(bytes, 0) {
        Ok(_) => panic!("accepted a header that should fail `{}`", check.name()),
        Err(e) => {
            assert_eq!(e.header_check(), Some(check), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(check.name()),
                "message must name the check: {msg}"
            );
        }
    }
}

#[test]
fn one_fixture_per_check() {
    let (dev, _) = encrypted();
    let p = primary(&dev);
    parse_copy(&p, 0).expect("the unmodified header is valid");

    expect(&p[..1000], Check::DeviceSize);
    expect(&with_bin(&p, |b| b[0] = b'X'), Check::Magic);
    expect(&with_bin(&p, |b| b[7] = 3), Check::Version);
    expect(
        &with_bin(&p, |b| b[8..16].copy_from_slice(&12345u64.to_be_bytes())),
        Check::HeaderSize,
    );
    expect(
        &with_bin(&p, |b| b[256..264].copy_from_slice(&4096u64.to_be_bytes())),
        Check::HeaderOffset,
    );
    expect(&with_bin(&p, |b| b[24..72].fill(b'A')), Check::TextField);
    expect(
        &with_bin(&p, |b| {
            b[72..104].fill(0);
            b[72..76].copy_from_slice(b"sha1");
        }),
        Check::ChecksumAlgorithm,
    );
    let mut bad_sum = p.clone();
    bad_sum[4100] ^= 1;
    expect(&bad_sum, Check::Checksum);
    expect(
        &with_bin(&p, |b| {
            b[4096..].fill(0);
            b[4096..4101].copy_from_slice(b"{\"a\":");
        }),
        Check::JsonArea,
    );
    expect(&with_bin(&p, |b| b[4096..].fill(b' ')), Check::JsonArea);
    expect(
        &with_json(&p, |v| {
            v.as_object_mut().unwrap().remove("digests");
        }),
        Check::Sections,
    );
    expect(
        &with_json(&p, |v| v["config"]["json_size"] = json!("4096")),
        Check::Config,
    );
    expect(
        &with_json(&p, |v| v["config"]["keyslots_size"] = json!("1000")),
        Check::Config,
    );
    expect(
        &with_json(&p, |v| {
            v["config"]["requirements"] = json!({"mandatory": ["online-reencrypt-v2"]})
        }),
        Check::Requirements,
    );
    expect(
        &with_json(&p, |v| v["segments"]["0"]["sector_size"] = json!(1000)),
        Check::Segment,
    );
    expect(
        &with_json(&p, |v| v["segments"]["0"]["offset"] = json!("4096")),
        Check::Segment,
    );
    expect(
        &with_json(&p, |v| v["segments"]["0"]["type"] = json!("weird")),
        Check::Segment,
    );
    expect(
        &with_json(&p, |v| v["segments"]["1"] = v["segments"]["0"].clone()),
        Check::Segment,
    );
    expect(
        &with_json(&p, |v| {
            v["digests"]["0"]["iterations"] = json!(999_999_999u64)
        }),
        Check::Digest,
    );
    expect(
        &with_json(&p, |v| v["digests"]["0"]["iterations"] = json!(10)),
        Check::Digest,
    );
    expect(
        &with_json(&p, |v| v["digests"]["0"]["salt"] = json!("***")),
        Check::Digest,
    );
    expect(
        &with_json(&p, |v| v["digests"]["0"]["type"] = json!("argon2")),
        Check::Digest,
    );
    expect(
        &with_json(&p, |v| v["keyslots"]["0"] = json!(5)),
        Check::Keyslots,
    );
    expect(
        &with_json(&p, |v| v["tokens"]["0"]["key_bits"] = json!(128)),
        Check::Token,
    );
    expect(
        &with_json(&p, |v| v["tokens"]["0"]["servers"] = json!([])),
        Check::Token,
    );
    expect(
        &with_json(&p, |v| v["tokens"]["0"]["unique_identifier"] = json!("")),
        Check::Token,
    );
    expect(
        &with_json(&p, |v| v["tokens"]["0"]["digest"] = json!("7")),
        Check::Token,
    );
    expect(
        &with_json(&p, |v| {
            v["tokens"]["1"] = json!({"type": "atrest-conversion", "keyslots": [], "kind": "decrypt",
            "old_digest": "0", "new_digest": null, "boundary": "0", "hotzone": null});
        }),
        Check::Conversion,
    );
    expect(
        &with_json(&p, |v| {
            v["tokens"]["1"] = json!({"type": "atrest-conversion", "keyslots": [], "kind": "decrypt",
            "old_digest": "0", "new_digest": null, "boundary": "12", "hotzone": null});
            v["config"]["requirements"] = json!({"mandatory": ["atrest-conversion-v1"]});
        }),
        Check::Conversion,
    );
    expect(
        &with_json(&p, |v| {
            let mac = v["tokens"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(_, t)| t["type"] == "atrest-header-mac")
                .map(|(k, _)| k.clone())
                .unwrap();
            v["tokens"][mac.as_str()]["alg"] = json!("hmac-md5");
        }),
        Check::Mac,
    );
    expect(
        &with_json(&p, |v| v["segments"]["0"]["type"] = json!("linear")),
        Check::Mac,
    );
    // Every check has a fixture above.
    let all = [
        Check::DeviceSize,
        Check::Magic,
        Check::Version,
        Check::HeaderSize,
        Check::HeaderOffset,
        Check::TextField,
        Check::ChecksumAlgorithm,
        Check::Checksum,
        Check::JsonArea,
        Check::Sections,
        Check::Config,
        Check::Requirements,
        Check::Segment,
        Check::Digest,
        Check::Keyslots,
        Check::Token,
        Check::Conversion,
        Check::Mac,
    ];
    assert_eq!(all.len(), 18);
}

#[test]
fn damaged_copy_is_repaired_from_the_other() {
    for which in [0usize, 16384] {
        let (dev, key) = encrypted();
        let good = dev.to_vec();
        // Damage one copy's JSON.
        dev.write_at(&[0x55; 64], which as u64 + 5000).unwrap();
        let damaged = dev.to_vec();
        let v = Volume::open(dev.clone()).unwrap();
        let note = v.info().header_repair.expect("damage reported");
        assert!(note.contains("not repaired yet"), "{note}");
        assert_eq!(dev.to_vec(), damaged, "open writes nothing");
        let k = v.verify_key(key_of(&key)).unwrap();
        assert_eq!(dev.to_vec(), damaged, "a key check writes nothing");
        // Unlocking authenticates the header, then repairs the damaged copy.
        drop(v.unlock(vec![k]).unwrap());
        let now = dev.to_vec();
        parse_copy(&now[..16384], 0).unwrap();
        parse_copy(&now[16384..32768], 16384).unwrap();
        assert_eq!(&now[32768..], &good[32768..], "nothing else touched");
    }
    // Both copies damaged: refused, nothing written.
    let (dev, _) = encrypted();
    dev.write_at(&[0x55; 64], 5000).unwrap();
    dev.write_at(&[0x55; 64], 16384 + 5000).unwrap();
    let before = dev.to_vec();
    let err = Volume::open(dev.clone()).unwrap_err();
    assert_eq!(err.header_check(), Some(Check::Checksum), "{err}");
    assert_eq!(dev.to_vec(), before);
}

#[test]
fn stale_copy_is_rewritten() {
    let (dev, key) = encrypted();
    let old_secondary = dev.to_vec()[16384..32768].to_vec();
    let v = Volume::open(dev.clone()).unwrap();
    let u = v.unlock(vec![]).err();
    assert!(u.is_some(), "an encrypted volume needs its key");
    // Commit once more, then put the old secondary back: it is older and must be rewritten.
    let mut m = luks2::read_header(&*dev, false).unwrap().0;
    luks2::write_header(&*dev, &mut m).unwrap();
    dev.write_at(&old_secondary, 16384).unwrap();
    let v = Volume::open(dev.clone()).unwrap();
    assert!(v.info().header_repair.unwrap().contains("older"));
    let k = v.verify_key(key_of(&key)).unwrap();
    drop(v.unlock(vec![k]).unwrap());
    let (m2, report) = luks2::read_header(&*dev, false).unwrap();
    assert_eq!(report.damaged, None);
    // Rewritten by a commit after the header was authenticated.
    assert_eq!(m2.seqid, m.seqid + 1);
}

#[test]
fn not_a_volume_and_wrong_keys() {
    let dev = Arc::new(MemDevice::from_vec(payload(3 << 20, 1)));
    let err = Volume::open(dev.clone()).unwrap_err();
    assert_eq!(err.header_check(), Some(Check::Magic), "{err}");
    assert_eq!(dev.to_vec(), payload(3 << 20, 1), "nothing written");
    let tiny = Arc::new(MemDevice::new(100));
    assert!(Volume::open(tiny.clone()).is_err());
    assert!(matches!(
        Volume::format(tiny, &small_format()),
        Err(Error::Usage(_))
    ));

    let (dev, key) = encrypted();
    let v = Volume::open(dev).unwrap();
    let mut wrong = key.clone();
    wrong[3] ^= 1;
    let err = v.verify_key(key_of(&wrong)).unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }));
    assert!(err.to_string().contains("k1"), "names the KMIP id: {err}");
    assert!(!err.to_string().contains(&hex::encode(&key)));
    // key ‖ zeros passes PBKDF2-HMAC but not the exact-length rule.
    let mut padded = key.clone();
    padded.extend_from_slice(&[0; 32]);
    assert!(matches!(
        v.verify_key(key_of(&padded)),
        Err(Error::WrongKey { .. })
    ));
    assert!(matches!(
        KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut [9u8; 32])),
        Err(KeyError::EqualHalves)
    ));
    assert!(matches!(
        KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut [9u8; 48])),
        Err(KeyError::WrongLength { bytes: 48 })
    ));
    let vk = v.verify_key(key_of(&key)).unwrap();
    assert!(
        !format!("{vk:?}").contains(&format!("{}", key[0]))
            || format!("{vk:?}").contains("REDACTED")
    );
    let u = v.unlock(vec![vk]).unwrap();
    assert_eq!(u.state(), State::Encrypted);
}
