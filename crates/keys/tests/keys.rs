//! Volume keys on a real KMIP server (the PyKMIP peer): create for a volume, fetch and verify
//! by the header's identifier, refuse a revoked key and another volume's key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use atrest_keys::{
    Accept, KeyError, create_volume_key, fetch_volume_keys, fetch_volume_keys_accepting,
};
use atrest_kmip::client::Client;
use atrest_kmip::message::{RevocationReasonCode, State};
use atrest_volume::{
    BlockDevice, ConvertOptions, EncryptOptions, FormatOptions, MemDevice, Volume,
};

fn client() -> Option<Client> {
    Some(Client::new(atrest_testkit::ec_peer()?.client_config()).unwrap())
}

/// A plain volume on a memory device, encrypted with a new KMIP key; returns the device.
fn encrypted_volume(client: &mut Client) -> (Arc<MemDevice>, String) {
    let dev = Arc::new(MemDevice::new(20 << 20));
    let vol = Volume::format(
        dev.clone() as Arc<dyn BlockDevice>,
        &FormatOptions::default(),
    )
    .unwrap();
    let key = create_volume_key(client, 256, Some("atrest-test-volume")).unwrap();
    let uid = key.reference.unique_identifier.clone();
    let unlocked = vol.unlock(vec![]).unwrap();
    unlocked
        .begin_encrypt(key.material, key.reference, &EncryptOptions::default())
        .unwrap();
    unlocked
        .convert(&ConvertOptions::default(), &mut |_| {})
        .unwrap();
    (dev, uid)
}

#[test]
fn create_then_fetch_by_the_header_identifier() {
    let Some(mut c) = client() else { return };
    let (dev, uid) = encrypted_volume(&mut c);
    let vol = Volume::open(dev as Arc<dyn BlockDevice>).unwrap();
    assert_eq!(vol.required_keys()[0].reference.unique_identifier, uid);
    let keys = fetch_volume_keys(&mut c, &vol).unwrap();
    assert_eq!(keys.len(), 1);
    vol.unlock(keys).unwrap();
}

/// What PyKMIP answers for a revoked key: Get Attributes State Deactivated (Compromised after a
/// compromise), and Get still hands the material out; so reading with it is a decision of ours:
/// accepted only when asked, and reported.
#[test]
fn a_deactivated_key_is_fetched_for_reading_only_when_asked() {
    let Some(mut c) = client() else { return };
    let (dev, uid) = encrypted_volume(&mut c);
    c.revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
        .unwrap();
    let vol = Volume::open(dev.clone() as Arc<dyn BlockDevice>).unwrap();
    let err = fetch_volume_keys(&mut c, &vol).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::NotActive {
                state: State::DEACTIVATED,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(c.get_key(&uid).unwrap().material.len(), 32);
    let (keys, inactive) = fetch_volume_keys_accepting(&mut c, &vol, Accept::Deactivated).unwrap();
    assert_eq!(inactive.len(), 1);
    assert_eq!(inactive[0].uid, uid);
    assert_eq!(inactive[0].state, State::DEACTIVATED);
    vol.unlock(keys).unwrap();
    let vol = Volume::open(dev as Arc<dyn BlockDevice>).unwrap();
    // Compromised: only under Accept::Compromised.
    c.revoke(&uid, RevocationReasonCode::KEY_COMPROMISE, None)
        .unwrap();
    let err = fetch_volume_keys_accepting(&mut c, &vol, Accept::Deactivated).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::NotActive {
                state: State::COMPROMISED,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("confirm"), "{err}");
    let (_, inactive) = fetch_volume_keys_accepting(&mut c, &vol, Accept::Compromised).unwrap();
    assert_eq!(inactive[0].state, State::COMPROMISED);
    c.destroy(&uid).unwrap();
    assert!(fetch_volume_keys_accepting(&mut c, &vol, Accept::Compromised).is_err());
}

#[test]
fn a_revoked_key_is_refused() {
    let Some(mut c) = client() else { return };
    let (dev, uid) = encrypted_volume(&mut c);
    c.revoke(&uid, RevocationReasonCode::KEY_COMPROMISE, None)
        .unwrap();
    let vol = Volume::open(dev as Arc<dyn BlockDevice>).unwrap();
    let err = fetch_volume_keys(&mut c, &vol).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::NotActive {
                state: State::COMPROMISED,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not Active"), "{err}");
    c.destroy(&uid).unwrap();
    let err = fetch_volume_keys(&mut c, &vol).unwrap_err();
    assert!(matches!(err, KeyError::Kmip { .. }), "{err}");
}

#[test]
fn another_volumes_key_is_refused() {
    let Some(mut c) = client() else { return };
    let (dev_a, _) = encrypted_volume(&mut c);
    let (dev_b, uid_b) = encrypted_volume(&mut c);
    let vol_a = Volume::open(dev_a as Arc<dyn BlockDevice>).unwrap();
    let err = atrest_keys::fetch_key(&mut c, &vol_a, &uid_b, 256).unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("not this volume's key"), "{err}");
    drop(dev_b);
}

/// Keys carry atrest/<appliance>/<volume uuid>/<generation> and the Object Group
/// atrest/<appliance>: Locate by Name and by Object Group find them, and the next generation is
/// read back from the current key's Name.
#[test]
fn named_keys_are_found_by_name_and_object_group() {
    use atrest_keys::{
        create_volume_key_in_group, next_generation, volume_key_group, volume_key_name,
    };
    use atrest_kmip::message::Attributes;
    use atrest_kmip::ttlv::Value;
    let Some(mut c) = client() else { return };
    let appliance = format!("keys-test-{}", std::process::id());
    let uuid = format!("{:032x}", rand_u128());
    let group = volume_key_group(&appliance);
    assert_eq!(next_generation(&mut c, &uuid, None), 1);
    let first = volume_key_name(&appliance, &uuid, 1);
    assert_eq!(first, format!("atrest/{appliance}/{uuid}/1"));
    let k1 = create_volume_key_in_group(&mut c, 256, Some(&first), Some(&group)).unwrap();
    let uid1 = k1.reference.unique_identifier.clone();
    assert_eq!(next_generation(&mut c, &uuid, Some(&uid1)), 2);
    let second = volume_key_name(&appliance, &uuid, 2);
    let k2 = create_volume_key_in_group(&mut c, 256, Some(&second), Some(&group)).unwrap();
    let uid2 = k2.reference.unique_identifier.clone();

    let by_name = |c: &mut Client, n: &str| {
        c.locate(
            Attributes::new().with("Name", Attributes::name_value(n)),
            None,
        )
        .unwrap()
    };
    assert_eq!(by_name(&mut c, &first), vec![uid1.clone()]);
    assert_eq!(by_name(&mut c, &second), vec![uid2.clone()]);
    let mut in_group = c
        .locate(
            Attributes::new().with("Object Group", Value::TextString(group.clone())),
            None,
        )
        .unwrap();
    in_group.sort();
    let mut want = vec![uid1.clone(), uid2.clone()];
    want.sort();
    assert_eq!(in_group, want);
    for uid in [uid1, uid2] {
        c.revoke(&uid, RevocationReasonCode::CESSATION_OF_OPERATION, None)
            .unwrap();
        c.destroy(&uid).unwrap();
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    ((h.finish() as u128) << 64) | std::process::id() as u128
}
