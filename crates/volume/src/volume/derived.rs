//! What is derived from a verified volume key (header MAC key, seal key), the header MAC check,
//! and what a header says about its volume ([`VolumeInfo`]).

use super::*;

/// HKDF `info` of the key [`UnlockedVolume::seal_key`] gives.
pub const SEAL_KEY_INFO: &[u8] = b"atrest content seal key v1";

/// What is derived from one verified volume key (one-way, with HKDF): the key that signs the
/// header, and the key the volume's content seals itself with.
pub(super) struct DerivedKeys {
    pub(super) mac: MacKey,
    pub(super) seal: SecretBytes,
    /// The verified volume key itself, for a recovery keyslot made while unlocked.
    pub(super) raw: SecretBytes,
}

impl DerivedKeys {
    pub(super) fn of(key: &[u8]) -> Result<DerivedKeys> {
        let mut seal = SecretBytes::zeroed(32);
        luks2::mac::hkdf_sha256(key, SEAL_KEY_INFO, seal.expose_mut())?;
        Ok(DerivedKeys {
            mac: MacKey::derive(key)?,
            seal,
            raw: SecretBytes::from_slice_zeroizing(&mut key.to_vec()),
        })
    }
}

/// By digest id.
pub(super) type DerivedMap = std::collections::BTreeMap<u32, DerivedKeys>;

pub(super) fn derived_keys_of(keys: &[VolumeKey]) -> Result<DerivedMap> {
    keys.iter()
        .map(|k| Ok((k.digest_id, DerivedKeys::of(k.expose())?)))
        .collect()
}

/// Checks the MAC of `m` under its authenticating key (which must be among `derived`).
pub(super) fn check_mac(m: &Metadata, derived: &DerivedMap) -> Result<()> {
    let Some(d) = m.authenticating_digest() else {
        return Ok(());
    };
    let key = derived.get(&d).map(|k| &k.mac).ok_or_else(|| {
        let what = m
            .kmip_token_for(d)
            .map(|t| format!("the key with KMIP id {:?}", t.unique_identifier))
            .unwrap_or_else(|| format!("the key of digest {d}"));
        Error::State(format!(
            "checking the header needs {what}: fetch it from the KMIP server and verify it first"
        ))
    })?;
    let failure = match m.mac() {
        None => HeaderAuthFailure::Missing,
        Some(_) if key.verify(m)? => return Ok(()),
        Some(_) => HeaderAuthFailure::Mismatch,
    };
    Err(Error::HeaderAuth(HeaderAuthError {
        failure,
        claim: claim_of(m),
    }))
}

/// What a header claims, in words, for error messages.
pub(super) fn claim_of(m: &Metadata) -> String {
    let id = |d: Option<u32>| {
        d.and_then(|d| m.kmip_token_for(d))
            .map(|t| {
                format!(
                    "KMIP id {:?} on {}",
                    t.unique_identifier,
                    t.servers.join(", ")
                )
            })
            .unwrap_or_else(|| "no KMIP id".into())
    };
    match m.conversion() {
        Some((_, c)) => {
            let keys = match c.kind {
                ConversionKind::Encrypt => format!("to the key with {}", id(c.new_digest)),
                ConversionKind::Rekey => format!(
                    "from the key with {} to the key with {}",
                    id(c.old_digest),
                    id(c.new_digest)
                ),
                ConversionKind::Decrypt => {
                    format!("from the key with {} to plaintext", id(c.old_digest))
                }
            };
            let hz = c
                .hotzone
                .map(|h| {
                    format!(
                        ", hotzone of {} bytes with its table at device byte {}",
                        h.size, h.table_offset
                    )
                })
                .unwrap_or_default();
            format!(
                "it records a{} {} {keys} at byte {}{hz}",
                if c.kind == ConversionKind::Encrypt {
                    "n"
                } else {
                    ""
                },
                c.kind.as_str(),
                c.boundary
            )
        }
        None => match &m.segment.kind {
            SegmentKind::Linear => "plain".into(),
            SegmentKind::Crypt { encryption, .. } => format!(
                "encrypted with {encryption} under the key with {}",
                id(m.segment_digest())
            ),
        },
    }
}

pub(super) fn info_of(m: &Metadata, dev_len: u64, report: &ReadReport) -> VolumeInfo {
    let state = state_of(m);
    let mut keys = Vec::new();
    let token_id = |digest: u32| {
        m.tokens
            .iter()
            .find(|(_, t)| matches!(t, Token::Kmip(k) if k.digest == digest))
            .map(|(id, _)| *id)
    };
    let mut push = |role: &'static str, digest: u32| {
        if let (Some(t), Some(tid)) = (m.kmip_token_for(digest), token_id(digest)) {
            keys.push(KeyInfo {
                role,
                token: tid,
                digest,
                reference: t.clone(),
            });
        }
    };
    match m.conversion() {
        Some((_, c)) => {
            if let Some(d) = c.old_digest {
                push("old", d);
            }
            if let Some(d) = c.new_digest {
                push("new", d);
            }
        }
        None => {
            for (id, d) in &m.digests {
                if d.segments.contains(&0) {
                    push("current", *id);
                }
            }
        }
    }
    let data_size = data_size_of(m, dev_len);
    let key_bits = keys.last().map(|k| k.reference.key_bits).or_else(|| {
        m.digests
            .keys()
            .find_map(|&id| crate::key::expected_bits(m, id))
    });
    VolumeInfo {
        state,
        uuid: m.uuid.clone(),
        label: m.label.clone(),
        cipher: match &m.segment.kind {
            SegmentKind::Crypt { encryption, .. } => Some(encryption.clone()),
            SegmentKind::Linear => None,
        },
        key_bits: if state == State::Plain {
            None
        } else {
            key_bits
        },
        sector_size: sector_of(m),
        data_offset: m.segment.offset,
        data_size,
        key_id: keys.last().map(|k| k.reference.unique_identifier.clone()),
        servers: keys
            .last()
            .map(|k| k.reference.servers.clone())
            .unwrap_or_default(),
        keys,
        progress: m.conversion().map(|(_, c)| ProgressInfo {
            kind: c.kind,
            done: c.boundary,
            total: data_size,
            percent: if data_size == 0 {
                100.0
            } else {
                c.boundary as f64 * 100.0 / data_size as f64
            },
        }),
        seqid: m.seqid,
        header_mac: m.mac().is_some(),
        recovery_key: !recovery_slots::recovery_keyslots(m).is_empty(),
        header_repair: report.damaged.as_ref().map(|d| {
            format!(
                "{d} ({})",
                if report.repaired {
                    "repaired"
                } else {
                    "not repaired yet: unlocking rewrites it once the header is authenticated \
                     under the volume key, as does `atrest volume dump --repair`"
                }
            )
        }),
    }
}
