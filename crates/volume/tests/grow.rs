//! Growth: after the image grows, `UnlockedVolume::grow` extends the data segment to the end of
//! the device, plain and encrypted (the header stays authentic and cryptsetup accepts it), keeps
//! the data, and is refused during a conversion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use atrest_volume::*;
use common::*;

const MIB: u64 = 1 << 20;

fn extend(img: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn open(img: &Path) -> Volume {
    Volume::open(Arc::new(FileDevice::open(img).unwrap())).unwrap()
}

fn luks_dump_accepts(img: &Path) {
    if have_cryptsetup() {
        let o = Command::new("cryptsetup")
            .arg("luksDump")
            .arg(img)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn grows_plain_and_encrypted_and_keeps_the_data() {
    let dir = temp_dir("grow");
    let img = dir.join("vol.img");
    let dev = Arc::new(FileDevice::create(&img, MIB + 2 * MIB).unwrap());
    let u = Volume::format(dev, &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let first = payload(2 * MIB as usize, 1);
    u.write_at(&first, 0).unwrap();
    // Nothing to do while the device has not grown.
    assert_eq!(u.grow().unwrap(), (2 * MIB, 2 * MIB));
    // Plain: the image grows, the open volume learns it and writes there at once.
    extend(&img, MIB + 3 * MIB + 100);
    assert_eq!(
        u.grow().unwrap(),
        (2 * MIB, 3 * MIB),
        "rounded to the sector"
    );
    assert_eq!(u.len(), 3 * MIB);
    let second = payload(MIB as usize, 2);
    u.write_at(&second, 2 * MIB).unwrap();
    u.flush().unwrap();
    drop(u);
    let v = open(&img);
    assert_eq!(v.info().data_size, 3 * MIB);
    luks_dump_accepts(&img);

    // Encrypted: grown under the key, the header's MAC still verifies at the next unlock.
    let key = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let raw = key.expose().to_vec();
    let u = v.unlock(vec![]).unwrap();
    u.begin_encrypt(key, reference("k1"), &fast()).unwrap();
    // Refused while the conversion is under way, with the reason.
    let e = u.grow().unwrap_err().to_string();
    assert!(e.contains("conversion"), "{e}");
    u.convert(&chunked(MIB), &mut |_| {}).unwrap();
    assert_eq!(u.state(), State::Encrypted);
    drop(u);
    extend(&img, MIB + 5 * MIB);
    let u = unlock_with(open(&img), &[&raw]);
    assert_eq!(
        u.len(),
        3 * MIB,
        "the header, not the device, sets the size"
    );
    assert_eq!(u.grow().unwrap(), (3 * MIB, 5 * MIB));
    let third = payload(2 * MIB as usize, 3);
    u.write_at(&third, 3 * MIB).unwrap();
    u.flush().unwrap();
    drop(u);
    let v = open(&img);
    assert!(v.info().header_repair.is_none());
    let u = unlock_with(v, &[&raw]);
    assert_eq!(u.len(), 5 * MIB);
    let all = read_all(&u);
    assert_eq!(&all[..2 * MIB as usize], &first[..]);
    assert_eq!(&all[2 * MIB as usize..3 * MIB as usize], &second[..]);
    assert_eq!(&all[3 * MIB as usize..], &third[..]);
    drop(u);
    luks_dump_accepts(&img);
    // A device that shrank below the data segment is refused, and the header kept.
    let u = unlock_with(open(&img), &[&raw]);
    extend(&img, MIB + 4 * MIB);
    let e = u.grow().unwrap_err().to_string();
    assert!(e.contains("never shrinks"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
