//! The in-memory model of the header metadata, and its state changes.
//!
//! Parsing ([`super::json`]) and encoding ([`super::binary`]) are elsewhere: every value of
//! these types that came from a device passed the checks of docs/volume-format.md.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{REQUIREMENT_CONVERSION, REQUIREMENT_CONVERSION_V1};

/// Data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset of the data on the device.
    pub offset: u64,
    /// Length in bytes, or `None` for "dynamic" (to the end of the device).
    pub size: Option<u64>,
    /// Plain or encrypted.
    pub kind: SegmentKind,
}

/// Segment type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// `linear`: stored as is.
    Linear,
    /// `crypt`: encrypted sector by sector.
    Crypt {
        /// Cipher spec; atrest reads and writes `aes-xts-plain64`.
        encryption: String,
        /// Sector size in bytes (512 … 4096, power of two).
        sector_size: u32,
        /// Added to the 512-byte unit number to form the tweak.
        iv_tweak: u64,
    },
}

/// A LUKS2 `pbkdf2` digest of a volume key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Keyslots it belongs to (atrest writes none).
    pub keyslots: Vec<u32>,
    /// Segments whose key it checks.
    pub segments: Vec<u32>,
    /// `sha256`, `sha512` or `sha1`.
    pub hash: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// PBKDF2(hash, key, salt, iterations, len(digest)).
    pub digest: Vec<u8>,
}

/// The `atrest-kmip` token: where the key of a digest lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KmipToken {
    /// KMIP Unique Identifier of the key.
    pub unique_identifier: String,
    /// KMIP servers holding it (`host:port`), in failover order.
    pub servers: Vec<String>,
    /// Key length in bits (256 or 512).
    pub key_bits: u32,
    /// When the key was created (RFC 3339, UTC).
    pub created: String,
    /// Id of the digest this key matches (filled in by atrest).
    #[serde(skip)]
    pub digest: u32,
}

/// What a conversion does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversionKind {
    /// plain → encrypted.
    Encrypt,
    /// key A → key B.
    Rekey,
    /// encrypted → plain.
    Decrypt,
}

impl ConversionKind {
    /// The name in the header (`encrypt`, `rekey`, `decrypt`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConversionKind::Encrypt => "encrypt",
            ConversionKind::Rekey => "rekey",
            ConversionKind::Decrypt => "decrypt",
        }
    }
}

/// Version of the conversion record: what its hotzone table holds. docs/volume-format.md,
/// "Token atrest-conversion".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordVersion {
    /// Written by earlier atrest versions: one SHA-256 (32 bytes) per 512-byte unit; read,
    /// recovered and resumed, never started.
    V1,
    /// One xxh3-128 (16 bytes) per 512-byte unit, the SHA-256 of the whole table in the
    /// (MAC-covered) record, and the sub-ranges skipped because they hold no content.
    V2,
}

impl RecordVersion {
    /// The `config.requirements.mandatory` flag of a record of this version.
    pub fn requirement(self) -> &'static str {
        match self {
            RecordVersion::V1 => REQUIREMENT_CONVERSION_V1,
            RecordVersion::V2 => REQUIREMENT_CONVERSION,
        }
    }

    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            RecordVersion::V1 => 1,
            RecordVersion::V2 => 2,
        }
    }

    /// `hotzone.hash`.
    pub fn hash_name(self) -> &'static str {
        match self {
            RecordVersion::V1 => "sha256",
            RecordVersion::V2 => "xxh3-128",
        }
    }

    /// Bytes per table entry.
    pub fn entry_bytes(self) -> u64 {
        match self {
            RecordVersion::V1 => 32,
            RecordVersion::V2 => 16,
        }
    }

    /// Table length of a hotzone of `size` bytes.
    pub fn table_len(self, size: u64) -> u64 {
        size / super::HOTZONE_UNIT * self.entry_bytes()
    }
}

/// The region being converted and the checksums of its old contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hotzone {
    /// Byte offset in the data segment.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// Device byte offset of the table: one checksum per 512-byte unit of the old contents.
    pub table_offset: u64,
    /// Version 2: SHA-256 of the whole table as written (`None` in a version 1 record).
    pub table_sha256: Option<[u8; 32]>,
    /// Version 2: bit i set = the i-th [`super::SKIP_GRANULE`] of the hotzone holds no content
    /// and was not written (its table entries are zeros); recovery leaves it as it is.
    pub skip: u64,
}

/// The `atrest-conversion` token: state of an in-place conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// What is converted.
    pub kind: ConversionKind,
    /// Digest of the old key (rekey, decrypt).
    pub old_digest: Option<u32>,
    /// Digest of the new key (encrypt, rekey).
    pub new_digest: Option<u32>,
    /// Bytes of the data segment before this offset are in the new form.
    pub boundary: u64,
    /// Region that may be part old, part new after a crash.
    pub hotzone: Option<Hotzone>,
    /// Record version (which checksum the hotzone table holds).
    pub version: RecordVersion,
}

/// A token.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// `atrest-kmip`.
    Kmip(KmipToken),
    /// `atrest-conversion`.
    Conversion(Conversion),
    /// `atrest-header-mac`.
    Mac(crate::luks2::HeaderMac),
    /// Any other type, kept as is.
    Other(Value),
}

/// The header metadata (binary fields that matter + JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// Size of one header copy.
    pub hdr_size: u64,
    /// Sequence id of the copy read (incremented on each commit).
    pub seqid: u64,
    /// Label (binary header).
    pub label: String,
    /// Subsystem (binary header).
    pub subsystem: String,
    /// Volume UUID.
    pub uuid: String,
    /// Size of the keyslots area that follows the two copies.
    pub keyslots_size: u64,
    /// Keyslots: atrest's recovery keyslots, and others kept as read.
    pub keyslots: Map<String, Value>,
    /// The data segment.
    pub segment: Segment,
    /// Digests by id.
    pub digests: BTreeMap<u32, Digest>,
    /// Tokens by id.
    pub tokens: BTreeMap<u32, Token>,
    /// `config.flags`.
    pub flags: Vec<String>,
    /// `config.requirements.mandatory`.
    pub requirements: Vec<String>,
}

impl Metadata {
    /// Start of the keyslots area (end of the two header copies).
    pub fn keyslots_offset(&self) -> u64 {
        2 * self.hdr_size
    }

    /// The conversion record, if a conversion is under way.
    pub fn conversion(&self) -> Option<(u32, &Conversion)> {
        self.tokens.iter().find_map(|(id, t)| match t {
            Token::Conversion(c) => Some((*id, c)),
            _ => None,
        })
    }

    /// The KMIP token that points at digest `digest`.
    pub fn kmip_token_for(&self, digest: u32) -> Option<&KmipToken> {
        self.tokens.values().find_map(|t| match t {
            Token::Kmip(k) if k.digest == digest => Some(k),
            _ => None,
        })
    }

    /// Lowest unused token id.
    pub fn free_token_id(&self) -> u32 {
        (0..).find(|i| !self.tokens.contains_key(i)).unwrap_or(0)
    }

    /// Lowest unused digest id.
    pub fn free_digest_id(&self) -> u32 {
        (0..).find(|i| !self.digests.contains_key(i)).unwrap_or(0)
    }

    /// The data segment's digest (the current key's, or key A's while rekeying).
    pub fn segment_digest(&self) -> Option<u32> {
        self.digests
            .iter()
            .find(|(_, d)| d.segments.contains(&0))
            .map(|(id, _)| *id)
    }

    /// The digest of the key whose MAC authenticates this header: the data segment's key in the
    /// steady encrypted state, the old key of a rekey or decrypt, the new key of an encrypt;
    /// `None` for a plain volume (no key, no MAC).
    pub fn authenticating_digest(&self) -> Option<u32> {
        match (self.conversion(), &self.segment.kind) {
            (Some((_, c)), _) => match c.kind {
                ConversionKind::Encrypt => c.new_digest,
                ConversionKind::Rekey | ConversionKind::Decrypt => c.old_digest,
            },
            (None, SegmentKind::Linear) => None,
            (None, SegmentKind::Crypt { .. }) => self.segment_digest(),
        }
    }

    /// The header MAC token, if any.
    pub fn mac(&self) -> Option<(u32, &crate::luks2::HeaderMac)> {
        self.tokens.iter().find_map(|(id, t)| match t {
            Token::Mac(m) => Some((*id, m)),
            _ => None,
        })
    }

    /// Replaces the header MAC (or removes it with `None`).
    pub fn set_mac(&mut self, mac: Option<crate::luks2::HeaderMac>) {
        let id = self.mac().map(|(id, _)| id);
        match (id, mac) {
            (Some(id), Some(m)) => {
                self.tokens.insert(id, Token::Mac(m));
            }
            (Some(id), None) => {
                self.tokens.remove(&id);
            }
            (None, Some(m)) => {
                let id = self.free_token_id();
                self.tokens.insert(id, Token::Mac(m));
            }
            (None, None) => {}
        }
    }

    /// Records a conversion to a new key: the key's digest, its `atrest-kmip` token (whose
    /// `digest` is filled in here), the conversion record (boundary 0) and the requirement
    /// flag that makes older tools refuse the half-converted volume.
    pub fn add_new_key(
        &mut self,
        digest: Digest,
        mut token: KmipToken,
        kind: ConversionKind,
        old_digest: Option<u32>,
    ) {
        let did = self.free_digest_id();
        self.digests.insert(did, digest);
        token.digest = did;
        let tid = self.free_token_id();
        self.tokens.insert(tid, Token::Kmip(token));
        self.start_conversion(kind, old_digest, Some(did));
    }

    /// Records a decryption of the data segment's key (the old key).
    pub fn begin_decrypt(&mut self) {
        let old = self.segment_digest();
        self.start_conversion(ConversionKind::Decrypt, old, None);
    }

    fn start_conversion(
        &mut self,
        kind: ConversionKind,
        old_digest: Option<u32>,
        new_digest: Option<u32>,
    ) {
        let cid = self.free_token_id();
        self.tokens.insert(
            cid,
            Token::Conversion(Conversion {
                kind,
                old_digest,
                new_digest,
                boundary: 0,
                hotzone: None,
                version: RecordVersion::V2,
            }),
        );
        self.requirements.push(REQUIREMENT_CONVERSION.into());
    }

    /// Moves the conversion boundary and sets (or clears) the hotzone, whose table is of
    /// `version` (the record and its requirement flag take that version: a resumed record of
    /// version 1 becomes version 2 with its first commit).
    pub fn set_boundary(
        &mut self,
        boundary: u64,
        hotzone: Option<Hotzone>,
        version: RecordVersion,
    ) {
        if let Some((id, _)) = self.conversion()
            && let Some(Token::Conversion(c)) = self.tokens.get_mut(&id)
        {
            let was = c.version;
            c.boundary = boundary;
            c.hotzone = hotzone;
            c.version = version;
            for r in self.requirements.iter_mut() {
                if r == was.requirement() {
                    *r = version.requirement().into();
                }
            }
        }
    }

    /// The version of the conversion record under way, if any.
    pub fn record_version(&self) -> Option<RecordVersion> {
        self.conversion().map(|(_, c)| c.version)
    }

    /// Ends the conversion under way: removes its record and the requirement flag; after a
    /// rekey or decrypt the old key's digest and token go, the new key takes the segment, and a
    /// decrypted segment becomes `linear`.
    pub fn finish(&mut self) {
        let Some((cid, c)) = self.conversion().map(|(i, c)| (i, c.clone())) else {
            return;
        };
        self.tokens.remove(&cid);
        self.requirements
            .retain(|r| r != REQUIREMENT_CONVERSION && r != REQUIREMENT_CONVERSION_V1);
        let drop_key = |m: &mut Metadata, digest: u32| {
            // The key's keyslots (a recovery key) go with it: no keyslot opens a retired key.
            if let Some(d) = m.digests.remove(&digest) {
                for ks in d.keyslots {
                    m.keyslots.remove(&ks.to_string());
                }
            }
            m.tokens
                .retain(|_, t| !matches!(t, Token::Kmip(k) if k.digest == digest));
        };
        match c.kind {
            ConversionKind::Encrypt => {}
            ConversionKind::Rekey => {
                if let Some(old) = c.old_digest {
                    drop_key(self, old);
                }
                if let Some(new) = c.new_digest
                    && let Some(d) = self.digests.get_mut(&new)
                {
                    d.segments = vec![0];
                }
            }
            ConversionKind::Decrypt => {
                if let Some(old) = c.old_digest {
                    drop_key(self, old);
                }
                self.segment.kind = SegmentKind::Linear;
            }
        }
    }
}
