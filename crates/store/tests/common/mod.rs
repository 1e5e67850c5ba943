//! Volumes of the three kinds the store must run on, for the integration tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_volume::{
    BlockDevice, ConvertOptions, EncryptOptions, FormatOptions, KeyMaterial, KeyReference,
    SecretBytes, UnlockedVolume, Volume,
};

/// Which volume the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Encrypted,
    /// An encryption stopped part-way: the data segment is half ciphertext, half plaintext.
    Converting,
}

pub const KINDS: [Kind; 3] = [Kind::Plain, Kind::Encrypted, Kind::Converting];

/// A deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn key(bytes: &[u8]) -> KeyMaterial {
    let mut v = bytes.to_vec();
    KeyMaterial::new(SecretBytes::from_slice_zeroizing(&mut v)).unwrap()
}

fn reference() -> KeyReference {
    KeyReference {
        unique_identifier: "test-key".into(),
        servers: vec!["kms.example:5696".into()],
        created: "2026-11-27T00:00:00Z".into(),
    }
}

/// A volume and the key that unlocks it.
pub struct TestVolume {
    pub medium: Arc<dyn BlockDevice>,
    pub key: Option<Vec<u8>>,
    pub kind: Kind,
}

impl TestVolume {
    /// Formats `medium` (header area 1 MiB) as a volume of `kind`.
    pub fn format(
        medium: Arc<dyn BlockDevice>,
        kind: Kind,
        seed: u64,
    ) -> (TestVolume, UnlockedVolume) {
        let v = Volume::format(
            medium.clone(),
            &FormatOptions {
                data_offset: 1 << 20,
                label: "store-test".into(),
            },
        )
        .unwrap();
        let u = v.unlock(vec![]).unwrap();
        let mut k = None;
        if kind != Kind::Plain {
            let bytes = Rng(seed ^ 0x5eed).bytes(32);
            u.begin_encrypt(
                key(&bytes),
                reference(),
                &EncryptOptions {
                    sector_size: 4096,
                    pbkdf2_iterations: 1000,
                },
            )
            .unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let half = u.len() / 2;
            let s2 = stop.clone();
            u.convert(
                &ConvertOptions {
                    chunk_size: 1 << 20,
                    threads: 1,
                    stop: (kind == Kind::Converting).then_some(stop),
                },
                &mut |p| {
                    if p.done >= half {
                        s2.store(true, Ordering::Relaxed);
                    }
                },
            )
            .unwrap();
            k = Some(bytes);
        }
        let tv = TestVolume {
            medium,
            key: k,
            kind,
        };
        let u = tv.unlock();
        (tv, u)
    }

    /// Opens and unlocks the volume again (as after a restart).
    pub fn unlock(&self) -> UnlockedVolume {
        let v = Volume::open(self.medium.clone()).unwrap();
        let keys = match &self.key {
            Some(b) => vec![v.verify_key(key(b)).unwrap()],
            None => vec![],
        };
        let u = v.unlock(keys).unwrap();
        let expected = match self.kind {
            Kind::Plain => "plain",
            Kind::Encrypted => "encrypted",
            Kind::Converting => "encrypting",
        };
        assert_eq!(u.state().as_str(), expected);
        u
    }
}
