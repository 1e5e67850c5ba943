//! Volume images in the states a command-line test starts from, made with the library, and
//! what Debian's cryptsetup says of one.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_volume::{
    ConvertOptions, EncryptOptions, FileDevice, FormatOptions, KeyMaterial, KeyReference, KeySize,
    Volume,
};

/// Makes `img` a volume of 2 MiB of data behind a 1 MiB header area whose encryption stopped
/// after its first 256 KiB chunk: a fresh key, its reference the id `uid-7` on `server`.
pub fn stopped_encryption(img: &Path, server: &str) {
    let dev = Arc::new(FileDevice::create(img, 3 << 20).unwrap());
    let opts = FormatOptions {
        data_offset: 1 << 20,
        label: String::new(),
    };
    let u = Volume::format(dev, &opts)
        .unwrap()
        .unlock(Vec::new())
        .unwrap();
    let reference = KeyReference {
        unique_identifier: "uid-7".into(),
        servers: vec![server.into()],
        created: "2026-11-27T11:00:00Z".into(),
    };
    let fast = EncryptOptions {
        pbkdf2_iterations: 1000,
        ..Default::default()
    };
    u.begin_encrypt(
        KeyMaterial::generate(KeySize::Bits256).unwrap(),
        reference,
        &fast,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let conv = ConvertOptions {
        chunk_size: 256 << 10,
        threads: 1,
        stop: Some(stop.clone()),
    };
    u.convert(&conv, &mut |_| stop.store(true, Ordering::Relaxed))
        .unwrap();
}

/// Whether `passphrase` opens a keyslot of the LUKS2 image `img` for Debian's cryptsetup
/// (`cryptsetup open --test-passphrase --key-file`, the key file written in `dir`); panics
/// when cryptsetup fails for another reason than a passphrase that opens nothing.
pub fn cryptsetup_opens(img: &Path, passphrase: &str, dir: &Path) -> bool {
    let f = dir.join("cs-key.txt");
    std::fs::write(&f, passphrase).unwrap();
    let o = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&f)
        .arg(img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let rc = o.status.code().unwrap_or(-1);
    assert!(
        rc == 0 || rc == 2 || (rc == 1 && err.contains("No usable keyslot")),
        "cryptsetup failed otherwise ({rc}): {err}"
    );
    rc == 0
}
