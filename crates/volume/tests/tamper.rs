//! Header tampering: one case per forgery of the metadata that steers what atrest writes, made
//! by someone who can write the disk but holds no key (both header copies rewritten, checksums
//! fixed, as an attacker would): the forgeries of single fields in one table
//! (`forged_header_fields_are_refused`), those that need more set-up in tests of their own. Each is refused with its own sentence before any sector is
//! read or written, and the image is byte-for-byte unchanged afterwards. This is the class of
//! cryptsetup's CVE-2021-4122 (a forged reencryption record makes the tool decrypt the volume
//! in place); docs/threat-model.md names these tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_testkit::table::check_each;
use atrest_volume::luks2::{fix_checksum, parse_copy};
use atrest_volume::*;
use common::*;
use serde_json::{Value, json};

const HDR: usize = 16384;
const DATA: usize = 512 << 10;

fn fresh() -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::from_vec({
        let mut img = vec![0u8; (1 << 20) + DATA];
        img[1 << 20..].copy_from_slice(&payload(DATA, 7));
        img
    }));
    let v = Volume::format(dev.clone(), &small_format()).unwrap();
    drop(v);
    dev
}

fn key() -> Vec<u8> {
    KeyMaterial::generate(KeySize::Bits256)
        .unwrap()
        .expose()
        .to_vec()
}

/// An encrypted volume and its key A (KMIP id `id`).
fn encrypted(id: &str) -> (Arc<MemDevice>, Vec<u8>) {
    let dev = fresh();
    let a = key();
    let u = Volume::open(dev.clone()).unwrap().unlock(vec![]).unwrap();
    u.begin_encrypt(key_of(&a), reference(id), &fast()).unwrap();
    u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
    (dev, a)
}

/// A volume in the middle of a rekey A → B, as a crash leaves it (hotzone present), or as a
/// clean stop leaves it (`hotzone` false).
fn mid_rekey(hotzone: bool) -> (Arc<MemDevice>, Vec<u8>, Vec<u8>) {
    let (dev, a) = encrypted("key-a");
    let b = key();
    let u = unlock_with(Volume::open(dev.clone()).unwrap(), &[&a]);
    u.begin_rekey(key_of(&b), reference("key-b"), &fast())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut snapshot = None;
    let opts = ConvertOptions {
        stop: Some(stop.clone()),
        ..chunked(64 << 10)
    };
    u.convert(&opts, &mut |p| {
        // Called after a chunk was written and before the next commit: the header on the
        // device still names this chunk as its hotzone.
        if p.done >= 2 * (64 << 10) && snapshot.is_none() {
            snapshot = Some(dev.to_vec());
            stop.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    let dev = if hotzone {
        Arc::new(MemDevice::from_vec(snapshot.unwrap()))
    } else {
        dev
    };
    (dev, a, b)
}

fn json_of(copy: &[u8]) -> Value {
    let area = &copy[4096..];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

/// Rewrites the JSON of both header copies and fixes their checksums.
fn forge(dev: &MemDevice, f: impl Fn(&mut Value)) {
    for off in [0, HDR] {
        let mut copy = dev.to_vec()[off..off + HDR].to_vec();
        let mut v = json_of(&copy);
        f(&mut v);
        let text = serde_json::to_vec(&v).unwrap();
        copy[4096..].fill(0);
        copy[4096..4096 + text.len()].copy_from_slice(&text);
        fix_checksum(&mut copy);
        dev.write_at(&copy, off as u64).unwrap();
    }
}

fn token_id(v: &Value, ty: &str) -> String {
    v["tokens"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, t)| t["type"] == ty)
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| panic!("no {ty} token"))
}

fn free_token(v: &Value) -> String {
    (0..)
        .map(|i: u32| i.to_string())
        .find(|k| v["tokens"].get(k).is_none())
        .unwrap()
}

/// Opens, verifies whichever keys match, unlocks: must fail. Returns the error text, and checks
/// the image was not changed by any of it.
fn refused(dev: &Arc<MemDevice>, keys: &[&[u8]]) -> String {
    let before = dev.to_vec();
    let err = match Volume::open(dev.clone()) {
        Err(e) => e,
        Ok(v) => {
            let mut verified = Vec::new();
            for k in keys {
                if let Ok(vk) = v.verify_key(key_of(k)) {
                    verified.push(vk);
                }
            }
            match v.unlock(verified) {
                Ok(_) => panic!("a forged header was unlocked"),
                Err(e) => e,
            }
        }
    };
    assert_eq!(dev.to_vec(), before, "the image changed: {err}");
    let msg = err.to_string();
    for k in keys {
        assert!(!msg.contains(&hex::encode(k)), "key in the message");
    }
    msg
}

fn assert_auth(msg: &str, fragment: &str) {
    assert!(
        msg.contains("changed outside atrest") && msg.contains("Nothing was read or written"),
        "{msg}"
    );
    assert!(msg.contains(fragment), "expected {fragment:?} in: {msg}");
}

/// What a forgery starts from.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// An encrypted volume (key A, KMIP id `key-a`).
    Encrypted,
    /// An encryption begun and not converted yet (key B, KMIP id `key-b`).
    EncryptBegun,
    /// A rekey A → B stopped part-way, with its hotzone (as a crash leaves it) or without.
    MidRekey { hotzone: bool },
}

/// What the refusal must say.
#[derive(Debug, Clone, Copy)]
enum Says {
    /// The header fails its authentication code, and the sentence names all of these.
    Auth(&'static [&'static str]),
    /// The sentence names all of these.
    All(&'static [&'static str]),
}

/// One forgery of both header copies.
struct Forgery {
    /// The case (docs/threat-model.md names them).
    name: &'static str,
    start: Start,
    forge: fn(&mut Value),
    says: Says,
}

fn conversion_record(v: &mut Value) -> &mut Value {
    let t = token_id(v, "atrest-conversion");
    &mut v["tokens"][t.as_str()]
}

fn forgeries() -> Vec<Forgery> {
    use Says::{All, Auth};
    use Start::{EncryptBegun, Encrypted, MidRekey};
    vec![
        Forgery {
            name: "decrypt_record_added",
            start: Encrypted,
            forge: |v| {
                let t = free_token(v);
                v["tokens"][t.as_str()] = json!({"type": "atrest-conversion", "keyslots": [],
                    "kind": "decrypt", "old_digest": "0", "new_digest": null, "boundary": "0",
                    "hotzone": null});
                v["config"]["requirements"] = json!({"mandatory": ["atrest-conversion-v1"]});
            },
            says: Auth(&["decrypt from the key with KMIP id \"key-a\""]),
        },
        // Mid-encryption, the boundary moved forward would make atrest serve plaintext as if it
        // were ciphertext and never encrypt the skipped part.
        Forgery {
            name: "encrypt_record_boundary_moved_forward",
            start: EncryptBegun,
            forge: |v| conversion_record(v)["boundary"] = json!("262144"),
            says: Auth(&[
                "encrypt to the key with KMIP id \"key-b\"",
                "at byte 262144",
            ]),
        },
        Forgery {
            name: "rekey_boundary_moved_back",
            start: MidRekey { hotzone: false },
            forge: |v| conversion_record(v)["boundary"] = json!("0"),
            says: Auth(&["at byte 0"]),
        },
        Forgery {
            name: "rekey_boundary_moved_forward",
            start: MidRekey { hotzone: false },
            forge: |v| conversion_record(v)["boundary"] = json!("393216"),
            says: Auth(&["at byte 393216"]),
        },
        Forgery {
            name: "hotzone_moved",
            start: MidRekey { hotzone: true },
            forge: |v| {
                let rec = conversion_record(v);
                assert!(rec["hotzone"].is_object(), "{rec}");
                rec["boundary"] = json!("0");
                rec["hotzone"]["offset"] = json!("0");
            },
            says: Auth(&["at byte 0, hotzone of 65536 bytes"]),
        },
        Forgery {
            name: "hotzone_table_moved",
            start: MidRekey { hotzone: true },
            forge: |v| {
                let hz = &mut conversion_record(v)["hotzone"];
                let off: u64 = hz["table_offset"].as_str().unwrap().parse().unwrap();
                hz["table_offset"] = json!((off + 8192).to_string());
            },
            says: Auth(&["table at device byte"]),
        },
        Forgery {
            name: "hotzone_skip_mask_changed",
            start: MidRekey { hotzone: true },
            forge: |v| conversion_record(v)["hotzone"]["skip"] = json!("1"),
            says: Auth(&["hotzone of 65536 bytes"]),
        },
        Forgery {
            name: "conversion_record_removed_mid_rekey",
            start: MidRekey { hotzone: false },
            forge: |v| {
                let t = token_id(v, "atrest-conversion");
                v["tokens"].as_object_mut().unwrap().remove(&t);
                v["config"].as_object_mut().unwrap().remove("requirements");
            },
            says: All(&["`conversion`", "one key digest"]),
        },
        // The cleanest-looking forgery: the header says "encrypted with A", while half the data
        // is already under B. Only the MAC tells.
        Forgery {
            name: "conversion_record_and_new_key_removed_mid_rekey",
            start: MidRekey { hotzone: false },
            forge: |v| {
                let t = token_id(v, "atrest-conversion");
                v["tokens"].as_object_mut().unwrap().remove(&t);
                v["config"].as_object_mut().unwrap().remove("requirements");
                v["digests"].as_object_mut().unwrap().remove("1");
                let kb = v["tokens"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .find(|(_, t)| t["type"] == "atrest-kmip" && t["digest"] == "1")
                    .map(|(k, _)| k.clone())
                    .unwrap();
                v["tokens"].as_object_mut().unwrap().remove(&kb);
            },
            says: Auth(&["encrypted with aes-xts-plain64 under the key with KMIP id \"key-a\""]),
        },
        Forgery {
            name: "segment_switched_to_linear",
            start: Encrypted,
            forge: |v| v["segments"]["0"]["type"] = json!("linear"),
            says: All(&["`mac`", "marked plain"]),
        },
        Forgery {
            name: "cipher_changed",
            start: Encrypted,
            forge: |v| v["segments"]["0"]["encryption"] = json!("aes-cbc-essiv:sha256"),
            says: Auth(&["encrypted with aes-cbc-essiv:sha256"]),
        },
        Forgery {
            name: "sector_size_changed",
            start: Encrypted,
            forge: |v| v["segments"]["0"]["sector_size"] = json!(512),
            says: Auth(&["fails its authentication code"]),
        },
        Forgery {
            name: "servers_changed",
            start: Encrypted,
            forge: |v| {
                let t = token_id(v, "atrest-kmip");
                v["tokens"][t.as_str()]["servers"] = json!(["kms.attacker.example:5696"]);
            },
            says: Auth(&["kms.attacker.example:5696"]),
        },
        Forgery {
            name: "requirement_flag_removed_mid_conversion",
            start: MidRekey { hotzone: false },
            forge: |v| {
                v["config"].as_object_mut().unwrap().remove("requirements");
            },
            says: All(&["requirement flag is not set"]),
        },
        Forgery {
            name: "mac_removed",
            start: Encrypted,
            forge: |v| {
                let t = token_id(v, "atrest-header-mac");
                v["tokens"].as_object_mut().unwrap().remove(&t);
            },
            says: All(&["carries no authentication code", "--accept-header"]),
        },
    ]
}

/// Each forgery of the table is refused with its sentence, before any sector is read or
/// written (the image unchanged).
#[test]
fn forged_header_fields_are_refused() {
    check_each(
        &forgeries(),
        |f| f.name,
        |f| {
            let (dev, keys) = match f.start {
                Start::Encrypted => {
                    let (dev, a) = encrypted("key-a");
                    (dev, vec![a])
                }
                Start::EncryptBegun => {
                    let dev = fresh();
                    let b = key();
                    let u = Volume::open(dev.clone()).unwrap().unlock(vec![]).unwrap();
                    u.begin_encrypt(key_of(&b), reference("key-b"), &fast())
                        .unwrap();
                    drop(u);
                    (dev, vec![b])
                }
                Start::MidRekey { hotzone } => {
                    let (dev, a, b) = mid_rekey(hotzone);
                    (dev, vec![a, b])
                }
            };
            forge(&dev, f.forge);
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let msg = refused(&dev, &keys);
            let fragments = match f.says {
                Says::Auth(fragments) => {
                    assert_auth(&msg, fragments[0]);
                    fragments
                }
                Says::All(fragments) => fragments,
            };
            for fragment in fragments {
                assert!(msg.contains(fragment), "expected {fragment:?} in: {msg}");
            }
        },
    );
}

#[test]
fn decrypt_record_added_to_the_newer_primary_only() {
    // Only the primary copy forged, with a higher sequence id: the reader takes it (newest
    // valid copy) but must not "repair" the genuine secondary from it before authentication.
    let (dev, a) = encrypted("key-a");
    let mut copy = dev.to_vec()[..HDR].to_vec();
    let mut v = json_of(&copy);
    v["tokens"]["5"] = json!({"type": "atrest-conversion", "keyslots": [], "kind": "decrypt",
        "old_digest": "0", "new_digest": null, "boundary": "0", "hotzone": null});
    v["config"]["requirements"] = json!({"mandatory": ["atrest-conversion-v1"]});
    let text = serde_json::to_vec(&v).unwrap();
    copy[4096..].fill(0);
    copy[4096..4096 + text.len()].copy_from_slice(&text);
    let seq = u64::from_be_bytes(copy[16..24].try_into().unwrap());
    copy[16..24].copy_from_slice(&(seq + 1).to_be_bytes());
    fix_checksum(&mut copy);
    dev.write_at(&copy, 0).unwrap();
    let msg = refused(&dev, &[&a]);
    assert_auth(&msg, "decrypt");
}

#[test]
fn rekey_record_added_with_a_key_of_the_attacker() {
    let (dev, a) = encrypted("key-a");
    // The attacker's own key C: a valid digest and token, so its key check would pass.
    let (other, c) = encrypted("attacker-key");
    let ov = json_of(&other.to_vec()[..HDR]);
    forge(&dev, |v| {
        v["digests"]["1"] = ov["digests"]["0"].clone();
        v["digests"]["1"]["segments"] = json!([]);
        let t = free_token(v);
        let mut tok = ov["tokens"][token_id(&ov, "atrest-kmip").as_str()].clone();
        tok["digest"] = json!("1");
        v["tokens"][t.as_str()] = tok;
        let t = free_token(v);
        v["tokens"][t.as_str()] = json!({"type": "atrest-conversion", "keyslots": [],
            "kind": "rekey", "old_digest": "0", "new_digest": "1", "boundary": "0",
            "hotzone": null});
        v["config"]["requirements"] = json!({"mandatory": ["atrest-conversion-v1"]});
    });
    let msg = refused(&dev, &[&a, &c]);
    assert_auth(&msg, "rekey from the key with KMIP id \"key-a\"");
    assert!(msg.contains("attacker-key"), "{msg}");
}

#[test]
fn encrypt_record_added_to_an_encrypted_volume() {
    let (dev, a) = encrypted("key-a");
    let (other, c) = encrypted("attacker-key");
    let ov = json_of(&other.to_vec()[..HDR]);
    forge(&dev, |v| {
        v["digests"]["1"] = ov["digests"]["0"].clone();
        let t = free_token(v);
        let mut tok = ov["tokens"][token_id(&ov, "atrest-kmip").as_str()].clone();
        tok["digest"] = json!("1");
        v["tokens"][t.as_str()] = tok;
        let t = free_token(v);
        v["tokens"][t.as_str()] = json!({"type": "atrest-conversion", "keyslots": [],
            "kind": "encrypt", "old_digest": null, "new_digest": "1", "boundary": "0",
            "hotzone": null});
        v["config"]["requirements"] = json!({"mandatory": ["atrest-conversion-v1"]});
    });
    let msg = refused(&dev, &[&a, &c]);
    assert!(
        msg.contains("`conversion`") && msg.contains("do not fit"),
        "{msg}"
    );
}

/// The table itself (in the keyslots area, outside the header) changed: its SHA-256 no longer
/// matches the record the MAC covers, so recovery refuses before it writes anything.
#[test]
fn hotzone_table_contents_changed() {
    let (dev, a, b) = mid_rekey(true);
    let v = json_of(&dev.to_vec()[..HDR]);
    let t = token_id(&v, "atrest-conversion");
    let hz = &v["tokens"][t.as_str()]["hotzone"];
    assert_eq!(hz["hash"], "xxh3-128", "{v}");
    let off: u64 = hz["table_offset"].as_str().unwrap().parse().unwrap();
    let mut entry = [0u8; 16];
    dev.read_at(&mut entry, off + 16).unwrap();
    entry[0] ^= 1;
    dev.write_at(&entry, off + 16).unwrap();
    let msg = refused(&dev, &[&a, &b]);
    assert!(
        msg.contains("checksum table") && msg.contains("nothing was written"),
        "{msg}"
    );
}

#[test]
fn segment_switched_to_linear_and_keys_removed() {
    // A fully "plain" header is a valid plain volume to the library: the appliance's memory of
    // what it encrypted refuses it (crates/appliance, known-state tests). Here: opening it
    // writes nothing, and the data stays ciphertext.
    let (dev, _a) = encrypted("key-a");
    forge(&dev, |v| {
        v["segments"]["0"] = json!({"type": "linear", "offset": "1048576",
            "size": DATA.to_string()});
        v["digests"] = json!({});
        v["tokens"] = json!({});
    });
    let before = dev.to_vec();
    let vol = Volume::open(dev.clone()).unwrap();
    assert_eq!(vol.state(), State::Plain);
    assert_eq!(dev.to_vec(), before);
    assert_ne!(
        &before[1 << 20..],
        &payload(DATA, 7)[..],
        "still ciphertext"
    );
}

#[test]
fn key_id_swapped_for_another_volumes_key() {
    // The attacker puts another volume's key reference, digest and MAC into this header: the
    // key fetched by that id passes the digest check, but the MAC binds the volume UUID.
    let (dev, _a) = encrypted("key-a");
    let (other, c) = encrypted("key-of-another-volume");
    let ov = json_of(&other.to_vec()[..HDR]);
    forge(&dev, |v| {
        v["digests"] = ov["digests"].clone();
        v["tokens"] = ov["tokens"].clone();
    });
    let msg = refused(&dev, &[&c]);
    assert_auth(&msg, "fails its authentication code");
    assert!(msg.contains("key-of-another-volume"), "{msg}");
}

#[test]
fn key_bits_changed() {
    let (dev, a) = encrypted("key-a");
    forge(&dev, |v| {
        let t = token_id(v, "atrest-kmip");
        v["tokens"][t.as_str()]["key_bits"] = json!(512);
    });
    // The 256-bit key no longer fits the token's length: refused at the key check.
    let v = Volume::open(dev.clone()).unwrap();
    assert!(matches!(
        v.verify_key(key_of(&a)),
        Err(Error::WrongKey { .. })
    ));
    let msg = refused(&dev, &[&a]);
    assert!(msg.contains("needs the key with KMIP id"), "{msg}");
}

#[test]
fn mac_copied_from_another_volume() {
    let (dev, a) = encrypted("key-a");
    let (other, _) = encrypted("key-a");
    let ov = json_of(&other.to_vec()[..HDR]);
    let mac = ov["tokens"][token_id(&ov, "atrest-header-mac").as_str()].clone();
    forge(&dev, |v| {
        let t = token_id(v, "atrest-header-mac");
        v["tokens"][t.as_str()] = mac.clone();
    });
    let msg = refused(&dev, &[&a]);
    assert_auth(&msg, "fails its authentication code");
}

#[test]
fn mac_of_a_forged_header_accepted_only_on_request() {
    // A header without a MAC (as written by an atrest without header MACs) is accepted only
    // through `unlock_accepting_header`, which signs it; afterwards it unlocks normally.
    let (dev, a) = encrypted("key-a");
    forge(&dev, |v| {
        let t = token_id(v, "atrest-header-mac");
        v["tokens"].as_object_mut().unwrap().remove(&t);
    });
    refused(&dev, &[&a]);
    let v = Volume::open(dev.clone()).unwrap();
    let k = v.verify_key(key_of(&a)).unwrap();
    let u = v.unlock_accepting_header(vec![k]).unwrap();
    assert_eq!(read_all(&u), payload(DATA, 7));
    drop(u);
    let u = unlock_with(Volume::open(dev.clone()).unwrap(), &[&a]);
    assert_eq!(read_all(&u), payload(DATA, 7));
}

#[test]
fn every_refusal_has_its_own_sentence() {
    // The forgeries above, once more, to check that no two share a message.
    let mut seen = std::collections::BTreeSet::new();
    let mut add = |m: String| assert!(seen.insert(m.clone()), "repeated sentence: {m}");
    for boundary in ["0", "393216"] {
        let (dev, a, b) = mid_rekey(false);
        forge(&dev, |v| {
            let t = token_id(v, "atrest-conversion");
            v["tokens"][t.as_str()]["boundary"] = json!(boundary);
        });
        add(refused(&dev, &[&a, &b]));
    }
    let (dev, a) = encrypted("key-a");
    forge(&dev, |v| v["segments"]["0"]["type"] = json!("linear"));
    add(refused(&dev, &[&a]));
    let (dev, a) = encrypted("key-a");
    forge(&dev, |v| {
        let t = token_id(v, "atrest-header-mac");
        v["tokens"].as_object_mut().unwrap().remove(&t);
    });
    add(refused(&dev, &[&a]));
    let (dev, a) = encrypted("key-a");
    forge(&dev, |v| {
        let t = token_id(v, "atrest-kmip");
        v["tokens"][t.as_str()]["servers"] = json!(["elsewhere:5696"]);
    });
    add(refused(&dev, &[&a]));
}

#[test]
fn genuine_states_all_verify() {
    // Every steady and interrupted state atrest writes carries a MAC that verifies, and parses.
    let (dev, a) = encrypted("key-a");
    parse_copy(&dev.to_vec()[..HDR], 0).unwrap();
    drop(unlock_with(Volume::open(dev).unwrap(), &[&a]));
    for hz in [false, true] {
        let (dev, a, b) = mid_rekey(hz);
        let u = unlock_with(Volume::open(dev.clone()).unwrap(), &[&a, &b]);
        u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
        drop(u);
        let u = unlock_with(Volume::open(dev.clone()).unwrap(), &[&b]);
        assert_eq!(read_all(&u), payload(DATA, 7));
        u.begin_decrypt().unwrap();
        u.convert(&chunked(64 << 10), &mut |_| {}).unwrap();
        assert_eq!(u.state(), State::Plain);
        let v = json_of(&dev.to_vec()[..HDR]);
        assert!(
            !v.to_string().contains("atrest-header-mac"),
            "plain: no MAC: {v}"
        );
    }
}
