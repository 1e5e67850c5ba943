//! The LUKS2 header: binary header copies, JSON metadata, validation, repair and commit.
//!
//! Layout and every field atrest writes are described in docs/volume-format.md. The on-disk
//! form (`encode_copy` / `parse_copy`) and the in-memory model (`Metadata`) are separate.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::device::BlockDevice;
use crate::error::{Check, Error, Result};

/// Size of the binary part of a header copy.
pub const BINARY_HEADER_SIZE: usize = 4096;
/// Header copy size (binary header + JSON area) atrest writes.
pub const DEFAULT_HDR_SIZE: u64 = 16 * 1024;
/// Largest LUKS2 header copy; bounds what a reader allocates for the JSON area.
pub const MAX_HDR_SIZE: u64 = 4 * 1024 * 1024;
/// Largest JSON text accepted (the JSON area of the largest header copy).
pub const MAX_JSON_SIZE: u64 = MAX_HDR_SIZE - BINARY_HEADER_SIZE as u64;
/// Fewest PBKDF2 iterations accepted in a digest (cryptsetup's own minimum).
pub const MIN_PBKDF2_ITERATIONS: u64 = 1000;
/// Most PBKDF2 iterations accepted in a digest: bounds the time a hostile header can make a key
/// check take (about 10 s of SHA-256 on one core).
pub const MAX_PBKDF2_ITERATIONS: u64 = 10_000_000;
/// PBKDF2 iterations atrest writes: a key check costs tens of milliseconds. The key is 256 or
/// 512 random bits from the KMIP server, so the digest needs no password stretching.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 100_000;
/// Digest salt length bounds, bytes.
pub const SALT_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Digest value length bounds, bytes.
pub const DIGEST_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Most entries in each of keyslots and tokens (LUKS2 allows 32).
pub const MAX_OBJECTS: usize = 32;
/// Most digests (LUKS2 allows 8).
pub const MAX_DIGESTS: usize = 8;
/// Most KMIP servers listed in a token.
pub const MAX_SERVERS: usize = 16;
/// Longest text field in an atrest token (identifier, server, time), bytes.
pub const MAX_TOKEN_TEXT: usize = 256;
/// Token type of the KMIP key reference.
pub const TOKEN_KMIP: &str = "atrest-kmip";
/// Token type of the conversion record.
pub const TOKEN_CONVERSION: &str = "atrest-conversion";
/// Requirement flag present while a conversion is under way.
pub const REQUIREMENT_CONVERSION: &str = "atrest-conversion-v1";
/// Bytes per checksum unit in the conversion hotzone table.
pub const HOTZONE_UNIT: u64 = 512;
/// Bytes per hotzone table entry (SHA-256).
pub const HOTZONE_ENTRY: u64 = 32;

const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
const HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

// Byte offsets in the binary header.
const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_LABEL: usize = 24; // 48 bytes
const OFF_CSUM_ALG: usize = 72; // 32 bytes
const OFF_SALT: usize = 104; // 64 bytes
const OFF_UUID: usize = 168; // 40 bytes
const OFF_SUBSYSTEM: usize = 208; // 48 bytes
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448; // 64 bytes

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
    fn as_str(self) -> &'static str {
        match self {
            ConversionKind::Encrypt => "encrypt",
            ConversionKind::Rekey => "rekey",
            ConversionKind::Decrypt => "decrypt",
        }
    }
}

/// The region being converted and the checksums of its old contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hotzone {
    /// Byte offset in the data segment.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// Device byte offset of the table: one SHA-256 per 512-byte unit of the old contents.
    pub table_offset: u64,
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
}

/// A token.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// `atrest-kmip`.
    Kmip(KmipToken),
    /// `atrest-conversion`.
    Conversion(Conversion),
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
    /// Keyslots, kept as read (atrest writes none).
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
}

// ---------------------------------------------------------------------------------------------
// Binary header

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

fn text(b: &[u8], off: usize, len: usize, name: &str, copy: &'static str) -> Result<String> {
    let field = &b[off..off + len];
    let end = field.iter().position(|&c| c == 0).ok_or_else(|| {
        Error::header(
            Check::TextField,
            copy,
            format!("field `{name}` is not NUL-terminated"),
        )
    })?;
    String::from_utf8(field[..end].to_vec()).map_err(|_| {
        Error::header(
            Check::TextField,
            copy,
            format!("field `{name}` is not UTF-8"),
        )
    })
}

fn put_text(b: &mut [u8], off: usize, len: usize, s: &str) {
    let n = s.len().min(len - 1);
    b[off..off + n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Checks the fields of a binary header read at `offset`. Returns `hdr_size`.
fn check_binary(b: &[u8], offset: u64, copy: &'static str) -> Result<u64> {
    let magic = if offset == 0 {
        MAGIC_PRIMARY
    } else {
        MAGIC_SECONDARY
    };
    if &b[..6] != magic {
        return Err(Error::header(
            Check::Magic,
            copy,
            format!("no LUKS2 {copy} header magic at offset {offset}"),
        ));
    }
    let version = u16::from_be_bytes([b[OFF_VERSION], b[OFF_VERSION + 1]]);
    if version != 2 {
        return Err(Error::header(
            Check::Version,
            copy,
            format!("header version {version}, expected 2"),
        ));
    }
    let hdr_size = be64(b, OFF_HDR_SIZE);
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(Error::header(
            Check::HeaderSize,
            copy,
            format!(
                "hdr_size {hdr_size} is not a LUKS2 header size (16 KiB … 4 MiB, powers of two)"
            ),
        ));
    }
    let hdr_offset = be64(b, OFF_HDR_OFFSET);
    if hdr_offset != offset {
        return Err(Error::header(
            Check::HeaderOffset,
            copy,
            format!("hdr_offset {hdr_offset} but the copy was read at {offset}"),
        ));
    }
    Ok(hdr_size)
}

/// Computes and stores the checksum of a header copy (`bytes` = the whole copy).
pub fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() < BINARY_HEADER_SIZE {
        return;
    }
    bytes[OFF_CSUM..OFF_CSUM + 64].fill(0);
    let sum = openssl::sha::sha256(bytes);
    bytes[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
}

/// Parses and validates one whole header copy (binary header + JSON area) read at device offset
/// `offset` (0 for the primary copy). Never panics.
pub fn parse_copy(bytes: &[u8], offset: u64) -> Result<Metadata> {
    let copy = if offset == 0 { "primary" } else { "secondary" };
    if bytes.len() < BINARY_HEADER_SIZE {
        return Err(Error::header(
            Check::DeviceSize,
            copy,
            format!("{} bytes, less than a binary header", bytes.len()),
        ));
    }
    let hdr_size = check_binary(bytes, offset, copy)?;
    if (bytes.len() as u64) < hdr_size {
        return Err(Error::header(
            Check::DeviceSize,
            copy,
            format!("copy truncated: {} of {hdr_size} bytes", bytes.len()),
        ));
    }
    let bytes = &bytes[..hdr_size as usize];
    let label = text(bytes, OFF_LABEL, 48, "label", copy)?;
    let csum_alg = text(bytes, OFF_CSUM_ALG, 32, "checksum_alg", copy)?;
    let uuid = text(bytes, OFF_UUID, 40, "uuid", copy)?;
    let subsystem = text(bytes, OFF_SUBSYSTEM, 48, "subsystem", copy)?;
    if csum_alg != "sha256" {
        return Err(Error::header(
            Check::ChecksumAlgorithm,
            copy,
            format!("checksum algorithm `{csum_alg}`; atrest supports sha256"),
        ));
    }
    let mut scratch = bytes.to_vec();
    scratch[OFF_CSUM..OFF_CSUM + 64].fill(0);
    let sum = openssl::sha::sha256(&scratch);
    if sum[..] != bytes[OFF_CSUM..OFF_CSUM + 32]
        || bytes[OFF_CSUM + 32..OFF_CSUM + 64].iter().any(|&b| b != 0)
    {
        return Err(Error::header(
            Check::Checksum,
            copy,
            "the SHA-256 checksum does not match the contents",
        ));
    }
    let area = &bytes[BINARY_HEADER_SIZE..];
    let end = area.iter().position(|&c| c == 0).ok_or_else(|| {
        Error::header(
            Check::JsonArea,
            copy,
            "JSON text is not NUL-terminated in its area",
        )
    })?;
    if end as u64 > MAX_JSON_SIZE {
        return Err(Error::header(
            Check::JsonArea,
            copy,
            "JSON text larger than MAX_JSON_SIZE",
        ));
    }
    let value: Value = serde_json::from_slice(&area[..end]).map_err(|e| {
        Error::header(
            Check::JsonArea,
            copy,
            format!("JSON text does not parse: {e}"),
        )
    })?;
    let seqid = be64(bytes, OFF_SEQID);
    from_json(&value, hdr_size, seqid, label, subsystem, uuid, "metadata")
}

// ---------------------------------------------------------------------------------------------
// JSON

fn obj<'a>(v: &'a Value, what: &str, check: Check) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::header(check, "metadata", format!("`{what}` is not a JSON object")))
}

fn field<'a>(o: &'a Map<String, Value>, key: &str, what: &str, check: Check) -> Result<&'a Value> {
    o.get(key)
        .ok_or_else(|| Error::header(check, "metadata", format!("`{what}` has no `{key}`")))
}

fn str_field<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    what: &str,
    check: Check,
) -> Result<&'a str> {
    field(o, key, what, check)?
        .as_str()
        .ok_or_else(|| Error::header(check, "metadata", format!("`{what}.{key}` is not a string")))
}

/// A u64 written as a decimal string, as LUKS2 does for offsets and sizes.
fn u64_str(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<u64> {
    let s = str_field(o, key, what, check)?;
    parse_u64(s).ok_or_else(|| {
        Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` = {s:?} is not a decimal number within 64 bits"),
        )
    })
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn u64_num(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<u64> {
    field(o, key, what, check)?.as_u64().ok_or_else(|| {
        Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` is not a non-negative integer"),
        )
    })
}

fn id_key(k: &str, what: &str, check: Check) -> Result<u32> {
    parse_u64(k)
        .filter(|&n| n < 1000)
        .map(|n| n as u32)
        .ok_or_else(|| {
            Error::header(
                check,
                "metadata",
                format!("{what} id {k:?} is not a small decimal number"),
            )
        })
}

fn id_list(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<Vec<u32>> {
    let arr = field(o, key, what, check)?.as_array().ok_or_else(|| {
        Error::header(check, "metadata", format!("`{what}.{key}` is not an array"))
    })?;
    if arr.len() > MAX_OBJECTS {
        return Err(Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` lists too many ids"),
        ));
    }
    arr.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| {
                    Error::header(
                        check,
                        "metadata",
                        format!("`{what}.{key}` holds a non-string"),
                    )
                })
                .and_then(|s| id_key(s, what, check))
        })
        .collect()
}

fn b64(o: &Map<String, Value>, key: &str, what: &str, check: Check) -> Result<Vec<u8>> {
    let s = str_field(o, key, what, check)?;
    if s.len() > 200 {
        return Err(Error::header(
            check,
            "metadata",
            format!("`{what}.{key}` is too long"),
        ));
    }
    openssl::base64::decode_block(s)
        .map_err(|_| Error::header(check, "metadata", format!("`{what}.{key}` is not base64")))
}

fn token_text(o: &Map<String, Value>, key: &str, what: &str) -> Result<String> {
    let s = str_field(o, key, what, Check::Token)?;
    if s.is_empty() || s.len() > MAX_TOKEN_TEXT || s.chars().any(|c| c.is_control()) {
        return Err(Error::header(
            Check::Token,
            "metadata",
            format!("`{what}.{key}` must be 1…{MAX_TOKEN_TEXT} bytes without control characters"),
        ));
    }
    Ok(s.to_string())
}

fn from_json(
    v: &Value,
    hdr_size: u64,
    seqid: u64,
    label: String,
    subsystem: String,
    uuid: String,
    copy: &'static str,
) -> Result<Metadata> {
    let top = v
        .as_object()
        .ok_or_else(|| Error::header(Check::Sections, copy, "the JSON text is not an object"))?;
    for s in ["keyslots", "tokens", "segments", "digests", "config"] {
        match top.get(s) {
            Some(Value::Object(_)) => {}
            _ => {
                return Err(Error::header(
                    Check::Sections,
                    copy,
                    format!("section `{s}` is missing or not an object"),
                ));
            }
        }
    }
    // config
    let config = obj(&top["config"], "config", Check::Config)?;
    let json_size = u64_str(config, "json_size", "config", Check::Config)?;
    if json_size != hdr_size - BINARY_HEADER_SIZE as u64 {
        return Err(Error::header(
            Check::Config,
            copy,
            format!("config.json_size {json_size} does not match hdr_size {hdr_size} − 4096"),
        ));
    }
    let keyslots_size = u64_str(config, "keyslots_size", "config", Check::Config)?;
    if keyslots_size % 4096 != 0 {
        return Err(Error::header(
            Check::Config,
            copy,
            format!("config.keyslots_size {keyslots_size} is not a multiple of 4096"),
        ));
    }
    let strings = |v: Option<&Value>, what: &str, check: Check| -> Result<Vec<String>> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) if a.len() <= MAX_OBJECTS => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        Error::header(check, copy, format!("`{what}` holds a non-string"))
                    })
                })
                .collect(),
            Some(_) => Err(Error::header(
                check,
                copy,
                format!("`{what}` is not a short array"),
            )),
        }
    };
    let flags = strings(config.get("flags"), "config.flags", Check::Config)?;
    let requirements = match config.get("requirements") {
        None => Vec::new(),
        Some(r) => {
            let r = obj(r, "config.requirements", Check::Requirements)?;
            strings(
                r.get("mandatory"),
                "config.requirements.mandatory",
                Check::Requirements,
            )?
        }
    };
    for r in &requirements {
        if r != REQUIREMENT_CONVERSION {
            return Err(Error::header(
                Check::Requirements,
                copy,
                format!(
                    "the volume requires `{r}`, which atrest does not implement (a cryptsetup reencryption in progress? finish it with `cryptsetup reencrypt --resume-only`)"
                ),
            ));
        }
    }
    // keyslots
    let keyslots = obj(&top["keyslots"], "keyslots", Check::Keyslots)?.clone();
    if keyslots.len() > MAX_OBJECTS {
        return Err(Error::header(
            Check::Keyslots,
            copy,
            "more than 32 keyslots",
        ));
    }
    for (k, ks) in &keyslots {
        id_key(k, "keyslot", Check::Keyslots)?;
        let ks = obj(ks, "keyslot", Check::Keyslots)?;
        str_field(ks, "type", "keyslot", Check::Keyslots)?;
    }
    // segments
    let segments = obj(&top["segments"], "segments", Check::Segment)?;
    if segments.len() != 1 {
        return Err(Error::header(
            Check::Segment,
            copy,
            format!(
                "{} data segments; atrest handles exactly one (a cryptsetup reencryption in progress? finish it with cryptsetup first)",
                segments.len()
            ),
        ));
    }
    let (sid, seg) = segments.iter().next().expect("one segment");
    if sid != "0" {
        return Err(Error::header(
            Check::Segment,
            copy,
            format!("the segment id is {sid:?}, expected \"0\""),
        ));
    }
    let seg = obj(seg, "segments.0", Check::Segment)?;
    let offset = u64_str(seg, "offset", "segments.0", Check::Segment)?;
    let size = match str_field(seg, "size", "segments.0", Check::Segment)? {
        "dynamic" => None,
        _ => Some(u64_str(seg, "size", "segments.0", Check::Segment)?),
    };
    let hdr_end = 2 * hdr_size + keyslots_size;
    if offset < hdr_end || offset % 4096 != 0 {
        return Err(Error::header(
            Check::Segment,
            copy,
            format!(
                "data offset {offset} must be 4096-aligned and at or after the header area end {hdr_end}"
            ),
        ));
    }
    let kind = match str_field(seg, "type", "segments.0", Check::Segment)? {
        "linear" => SegmentKind::Linear,
        "crypt" => {
            let encryption =
                str_field(seg, "encryption", "segments.0", Check::Segment)?.to_string();
            let sector_size = u64_num(seg, "sector_size", "segments.0", Check::Segment)?;
            if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
                return Err(Error::header(
                    Check::Segment,
                    copy,
                    format!("sector_size {sector_size} is not a power of two in 512…4096"),
                ));
            }
            let iv_tweak = u64_str(seg, "iv_tweak", "segments.0", Check::Segment)?;
            if let Some(sz) = size
                && sz % sector_size != 0
            {
                return Err(Error::header(
                    Check::Segment,
                    copy,
                    format!("segment size {sz} is not a multiple of the sector size {sector_size}"),
                ));
            }
            if offset % sector_size != 0 {
                return Err(Error::header(
                    Check::Segment,
                    copy,
                    "data offset not sector-aligned",
                ));
            }
            if seg.contains_key("integrity") {
                return Err(Error::header(
                    Check::Segment,
                    copy,
                    "segments with integrity are not supported",
                ));
            }
            SegmentKind::Crypt {
                encryption,
                sector_size: sector_size as u32,
                iv_tweak,
            }
        }
        other => {
            return Err(Error::header(
                Check::Segment,
                copy,
                format!("segment type `{other}` is not supported (linear or crypt)"),
            ));
        }
    };
    let segment = Segment { offset, size, kind };
    // digests
    let mut digests = BTreeMap::new();
    let dj = obj(&top["digests"], "digests", Check::Digest)?;
    if dj.len() > MAX_DIGESTS {
        return Err(Error::header(Check::Digest, copy, "more than 8 digests"));
    }
    for (k, d) in dj {
        let id = id_key(k, "digest", Check::Digest)?;
        let d = obj(d, "digest", Check::Digest)?;
        let what = format!("digests.{k}");
        let ty = str_field(d, "type", &what, Check::Digest)?;
        if ty != "pbkdf2" {
            return Err(Error::header(
                Check::Digest,
                copy,
                format!("{what}: type `{ty}`, expected pbkdf2"),
            ));
        }
        let hash = str_field(d, "hash", &what, Check::Digest)?.to_string();
        if !["sha1", "sha256", "sha512"].contains(&hash.as_str()) {
            return Err(Error::header(
                Check::Digest,
                copy,
                format!("{what}: hash `{hash}` not supported"),
            ));
        }
        let iterations = u64_num(d, "iterations", &what, Check::Digest)?;
        if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
            return Err(Error::header(
                Check::Digest,
                copy,
                format!(
                    "{what}: {iterations} PBKDF2 iterations, outside {MIN_PBKDF2_ITERATIONS}…{MAX_PBKDF2_ITERATIONS}"
                ),
            ));
        }
        let salt = b64(d, "salt", &what, Check::Digest)?;
        let digest = b64(d, "digest", &what, Check::Digest)?;
        if !SALT_BYTES.contains(&salt.len()) || !DIGEST_BYTES.contains(&digest.len()) {
            return Err(Error::header(
                Check::Digest,
                copy,
                format!("{what}: salt or digest length out of bounds"),
            ));
        }
        let segments = id_list(d, "segments", &what, Check::Digest)?;
        if segments.iter().any(|&s| s != 0) {
            return Err(Error::header(
                Check::Digest,
                copy,
                format!("{what} refers to a missing segment"),
            ));
        }
        let keyslots_ref = id_list(d, "keyslots", &what, Check::Digest)?;
        if keyslots_ref
            .iter()
            .any(|s| !keyslots.contains_key(&s.to_string()))
        {
            return Err(Error::header(
                Check::Digest,
                copy,
                format!("{what} refers to a missing keyslot"),
            ));
        }
        digests.insert(
            id,
            Digest {
                keyslots: keyslots_ref,
                segments,
                hash,
                iterations: iterations as u32,
                salt,
                digest,
            },
        );
    }
    if let SegmentKind::Crypt { .. } = segment.kind
        && !digests.values().any(|d| d.segments.contains(&0))
    {
        return Err(Error::header(
            Check::Digest,
            copy,
            "no digest is assigned to the crypt segment",
        ));
    }
    // tokens
    let mut tokens = BTreeMap::new();
    let tj = obj(&top["tokens"], "tokens", Check::Token)?;
    if tj.len() > MAX_OBJECTS {
        return Err(Error::header(Check::Token, copy, "more than 32 tokens"));
    }
    for (k, t) in tj {
        let id = id_key(k, "token", Check::Token)?;
        let to = obj(t, "token", Check::Token)?;
        let what = format!("tokens.{k}");
        let ty = str_field(to, "type", &what, Check::Token)?;
        id_list(to, "keyslots", &what, Check::Token)?;
        let token = match ty {
            TOKEN_KMIP => {
                let servers_v = field(to, "servers", &what, Check::Token)?
                    .as_array()
                    .ok_or_else(|| {
                        Error::header(
                            Check::Token,
                            copy,
                            format!("{what}.servers is not an array"),
                        )
                    })?;
                if servers_v.is_empty() || servers_v.len() > MAX_SERVERS {
                    return Err(Error::header(
                        Check::Token,
                        copy,
                        format!("{what}.servers must list 1…{MAX_SERVERS} servers"),
                    ));
                }
                let mut servers = Vec::new();
                for s in servers_v {
                    match s.as_str() {
                        Some(s)
                            if !s.is_empty()
                                && s.len() <= MAX_TOKEN_TEXT
                                && !s.chars().any(char::is_control) =>
                        {
                            servers.push(s.to_string())
                        }
                        _ => {
                            return Err(Error::header(
                                Check::Token,
                                copy,
                                format!("{what}.servers holds an invalid entry"),
                            ));
                        }
                    }
                }
                let key_bits = u64_num(to, "key_bits", &what, Check::Token)?;
                if key_bits != 256 && key_bits != 512 {
                    return Err(Error::header(
                        Check::Token,
                        copy,
                        format!("{what}.key_bits {key_bits}, expected 256 or 512"),
                    ));
                }
                let digest = id_key(
                    str_field(to, "digest", &what, Check::Token)?,
                    "digest",
                    Check::Token,
                )?;
                if !digests.contains_key(&digest) {
                    return Err(Error::header(
                        Check::Token,
                        copy,
                        format!("{what} refers to missing digest {digest}"),
                    ));
                }
                Token::Kmip(KmipToken {
                    unique_identifier: token_text(to, "unique_identifier", &what)?,
                    servers,
                    key_bits: key_bits as u32,
                    created: token_text(to, "created", &what)?,
                    digest,
                })
            }
            TOKEN_CONVERSION => {
                Token::Conversion(conversion_from_json(to, &what, &digests, &segment)?)
            }
            _ => Token::Other(t.clone()),
        };
        tokens.insert(id, token);
    }
    let n_conv = tokens
        .values()
        .filter(|t| matches!(t, Token::Conversion(_)))
        .count();
    let flagged = requirements.iter().any(|r| r == REQUIREMENT_CONVERSION);
    if n_conv > 1 || (n_conv == 1) != flagged {
        return Err(Error::header(
            Check::Conversion,
            copy,
            format!(
                "{n_conv} conversion records but the requirement flag is {}",
                if flagged { "set" } else { "not set" }
            ),
        ));
    }
    let meta = Metadata {
        hdr_size,
        seqid,
        label,
        subsystem,
        uuid,
        keyslots_size,
        keyslots,
        segment,
        digests,
        tokens,
        flags,
        requirements,
    };
    if let Some((_, c)) = meta.conversion()
        && let Some(h) = c.hotzone
    {
        let tlen = h.size / HOTZONE_UNIT * HOTZONE_ENTRY;
        let ks_end = meta.keyslots_offset() + meta.keyslots_size;
        if h.table_offset < meta.keyslots_offset()
            || h.table_offset.checked_add(tlen).is_none_or(|e| e > ks_end)
        {
            return Err(Error::header(
                Check::Conversion,
                copy,
                "the hotzone table lies outside the keyslots area",
            ));
        }
    }
    Ok(meta)
}

fn conversion_from_json(
    to: &Map<String, Value>,
    what: &str,
    digests: &BTreeMap<u32, Digest>,
    segment: &Segment,
) -> Result<Conversion> {
    let c = Check::Conversion;
    let kind = match str_field(to, "kind", what, c)? {
        "encrypt" => ConversionKind::Encrypt,
        "rekey" => ConversionKind::Rekey,
        "decrypt" => ConversionKind::Decrypt,
        k => {
            return Err(Error::header(
                c,
                "metadata",
                format!("{what}.kind `{k}` unknown"),
            ));
        }
    };
    let digest_ref = |key: &str| -> Result<Option<u32>> {
        match to.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let id = id_key(s, "digest", c)?;
                if !digests.contains_key(&id) {
                    return Err(Error::header(
                        c,
                        "metadata",
                        format!("{what}.{key} refers to missing digest {id}"),
                    ));
                }
                Ok(Some(id))
            }
            Some(_) => Err(Error::header(
                c,
                "metadata",
                format!("{what}.{key} is not a string"),
            )),
        }
    };
    let old_digest = digest_ref("old_digest")?;
    let new_digest = digest_ref("new_digest")?;
    let shape_ok = match kind {
        ConversionKind::Encrypt => old_digest.is_none() && new_digest.is_some(),
        ConversionKind::Rekey => {
            old_digest.is_some() && new_digest.is_some() && old_digest != new_digest
        }
        ConversionKind::Decrypt => old_digest.is_some() && new_digest.is_none(),
    };
    if !shape_ok {
        return Err(Error::header(
            c,
            "metadata",
            format!(
                "{what}: old/new digests do not fit a {} conversion",
                kind.as_str()
            ),
        ));
    }
    let sector = match segment.kind {
        SegmentKind::Crypt { sector_size, .. } => sector_size as u64,
        SegmentKind::Linear => {
            return Err(Error::header(
                c,
                "metadata",
                "a conversion needs a crypt segment",
            ));
        }
    };
    let boundary = u64_str(to, "boundary", what, c)?;
    if boundary % sector != 0 || segment.size.is_some_and(|s| boundary > s) {
        return Err(Error::header(
            c,
            "metadata",
            format!("{what}.boundary {boundary} is not a sector boundary inside the segment"),
        ));
    }
    let hotzone = match to.get("hotzone") {
        None | Some(Value::Null) => None,
        Some(h) => {
            let h = obj(h, "hotzone", c)?;
            let hz = Hotzone {
                offset: u64_str(h, "offset", "hotzone", c)?,
                size: u64_str(h, "size", "hotzone", c)?,
                table_offset: u64_str(h, "table_offset", "hotzone", c)?,
            };
            if hz.offset != boundary
                || hz.size == 0
                || !hz.size.is_multiple_of(sector)
                || hz.size > 1 << 30
                || !hz.table_offset.is_multiple_of(512)
                || segment.size.is_some_and(|s| hz.offset + hz.size > s)
            {
                return Err(Error::header(
                    c,
                    "metadata",
                    format!(
                        "{what}.hotzone is not a sector-aligned region starting at the boundary"
                    ),
                ));
            }
            Some(hz)
        }
    };
    Ok(Conversion {
        kind,
        old_digest,
        new_digest,
        boundary,
        hotzone,
    })
}

/// The JSON text of `m`.
pub fn to_json(m: &Metadata) -> Value {
    let segment = match &m.segment.kind {
        SegmentKind::Linear => json!({
            "type": "linear",
            "offset": m.segment.offset.to_string(),
            "size": m.segment.size.map_or("dynamic".to_string(), |s| s.to_string()),
        }),
        SegmentKind::Crypt {
            encryption,
            sector_size,
            iv_tweak,
        } => json!({
            "type": "crypt",
            "offset": m.segment.offset.to_string(),
            "size": m.segment.size.map_or("dynamic".to_string(), |s| s.to_string()),
            "iv_tweak": iv_tweak.to_string(),
            "encryption": encryption,
            "sector_size": sector_size,
        }),
    };
    let ids = |v: &[u32]| Value::Array(v.iter().map(|i| Value::String(i.to_string())).collect());
    let mut digests = Map::new();
    for (id, d) in &m.digests {
        digests.insert(
            id.to_string(),
            json!({
                "type": "pbkdf2",
                "keyslots": ids(&d.keyslots),
                "segments": ids(&d.segments),
                "hash": d.hash,
                "iterations": d.iterations,
                "salt": openssl::base64::encode_block(&d.salt),
                "digest": openssl::base64::encode_block(&d.digest),
            }),
        );
    }
    let mut tokens = Map::new();
    for (id, t) in &m.tokens {
        let v = match t {
            Token::Kmip(k) => json!({
                "type": TOKEN_KMIP,
                "keyslots": [],
                "unique_identifier": k.unique_identifier,
                "servers": k.servers,
                "key_bits": k.key_bits,
                "created": k.created,
                "digest": k.digest.to_string(),
            }),
            Token::Conversion(c) => json!({
                "type": TOKEN_CONVERSION,
                "keyslots": [],
                "kind": c.kind.as_str(),
                "old_digest": c.old_digest.map(|d| d.to_string()),
                "new_digest": c.new_digest.map(|d| d.to_string()),
                "boundary": c.boundary.to_string(),
                "hotzone": c.hotzone.map(|h| json!({
                    "offset": h.offset.to_string(),
                    "size": h.size.to_string(),
                    "table_offset": h.table_offset.to_string(),
                    "unit": HOTZONE_UNIT,
                    "hash": "sha256",
                })),
            }),
            Token::Other(v) => v.clone(),
        };
        tokens.insert(id.to_string(), v);
    }
    let mut config = Map::new();
    config.insert(
        "json_size".into(),
        Value::String((m.hdr_size - BINARY_HEADER_SIZE as u64).to_string()),
    );
    config.insert(
        "keyslots_size".into(),
        Value::String(m.keyslots_size.to_string()),
    );
    if !m.flags.is_empty() {
        config.insert("flags".into(), json!(m.flags));
    }
    if !m.requirements.is_empty() {
        config.insert(
            "requirements".into(),
            json!({ "mandatory": m.requirements }),
        );
    }
    json!({
        "keyslots": Value::Object(m.keyslots.clone()),
        "tokens": Value::Object(tokens),
        "segments": { "0": segment },
        "digests": Value::Object(digests),
        "config": Value::Object(config),
    })
}

/// Encodes header copy `primary` / secondary of `m` (with `m.seqid`), checksum included.
pub fn encode_copy(m: &Metadata, primary: bool) -> Result<Vec<u8>> {
    let text = serde_json::to_vec(&to_json(m))
        .map_err(|e| Error::Usage(format!("JSON encoding failed: {e}")))?;
    let area = m.hdr_size as usize - BINARY_HEADER_SIZE;
    if text.len() >= area {
        return Err(Error::Usage(format!(
            "the metadata needs {} bytes of JSON but the area holds {}; fewer servers or tokens would fit",
            text.len(),
            area - 1
        )));
    }
    let mut b = vec![0u8; m.hdr_size as usize];
    b[..6].copy_from_slice(if primary {
        MAGIC_PRIMARY
    } else {
        MAGIC_SECONDARY
    });
    b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&2u16.to_be_bytes());
    b[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&m.hdr_size.to_be_bytes());
    b[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&m.seqid.to_be_bytes());
    put_text(&mut b, OFF_LABEL, 48, &m.label);
    put_text(&mut b, OFF_CSUM_ALG, 32, "sha256");
    openssl::rand::rand_bytes(&mut b[OFF_SALT..OFF_SALT + 64]).map_err(Error::crypto)?;
    put_text(&mut b, OFF_UUID, 40, &m.uuid);
    put_text(&mut b, OFF_SUBSYSTEM, 48, &m.subsystem);
    let off: u64 = if primary { 0 } else { m.hdr_size };
    b[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&off.to_be_bytes());
    b[BINARY_HEADER_SIZE..BINARY_HEADER_SIZE + text.len()].copy_from_slice(&text);
    fix_checksum(&mut b);
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Device level

/// What reading the header found beyond the metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// A copy that was damaged or stale, and why (it was rewritten when `repaired` is true).
    pub damaged: Option<String>,
    /// Whether the damaged copy was rewritten from the good one.
    pub repaired: bool,
}

fn read_copy(dev: &dyn BlockDevice, offset: u64) -> Result<Metadata> {
    let copy = if offset == 0 { "primary" } else { "secondary" };
    let mut bin = vec![0u8; BINARY_HEADER_SIZE];
    if offset + BINARY_HEADER_SIZE as u64 > dev.len() {
        return Err(Error::header(
            Check::DeviceSize,
            copy,
            format!(
                "the device ({} bytes) is too small for a LUKS2 header",
                dev.len()
            ),
        ));
    }
    dev.read_at(&mut bin, offset)
        .map_err(Error::io(format!("reading the {copy} LUKS2 header")))?;
    let hdr_size = check_binary(&bin, offset, copy)?;
    if offset + hdr_size > dev.len() {
        return Err(Error::header(
            Check::DeviceSize,
            copy,
            format!(
                "the device ({} bytes) is too small for the header",
                dev.len()
            ),
        ));
    }
    let mut all = vec![0u8; hdr_size as usize];
    dev.read_at(&mut all, offset)
        .map_err(Error::io(format!("reading the {copy} LUKS2 header")))?;
    parse_copy(&all, offset)
}

/// Reads both header copies, returns the valid one with the highest seqid, and rewrites the
/// other copy from it when it is damaged or older (if `repair`).
pub fn read_header(dev: &dyn BlockDevice, repair: bool) -> Result<(Metadata, ReadReport)> {
    let primary = read_copy(dev, 0);
    // The secondary copy sits at hdr_size; when the primary is unreadable, probe the LUKS2 sizes.
    let secondary = match &primary {
        Ok(p) => read_copy(dev, p.hdr_size),
        Err(_) => {
            let mut found = Err(Error::header(
                Check::Magic,
                "secondary",
                "no secondary header at any LUKS2 offset",
            ));
            for off in HDR_SIZES {
                if off + BINARY_HEADER_SIZE as u64 > dev.len() {
                    break;
                }
                let r = read_copy(dev, off);
                let magic_ok = !matches!(&r, Err(Error::Header(h)) if h.check == Check::Magic || h.check == Check::HeaderOffset);
                if magic_ok {
                    found = r;
                    break;
                }
            }
            found
        }
    };
    let (good, bad_primary, damaged) = match (primary, secondary) {
        (Ok(p), Ok(s)) => {
            if s.seqid > p.seqid {
                let why = format!("primary copy is older (seqid {} < {})", p.seqid, s.seqid);
                (s, true, Some(why))
            } else if p.seqid > s.seqid || p != s {
                let why = if p.seqid > s.seqid {
                    format!("secondary copy is older (seqid {} < {})", s.seqid, p.seqid)
                } else {
                    "secondary copy differs from the primary".to_string()
                };
                (p, false, Some(why))
            } else {
                (p, false, None)
            }
        }
        (Ok(p), Err(e)) => (
            p,
            false,
            Some(format!("secondary copy: {}", copy_damage(&e))),
        ),
        (Err(e), Ok(s)) => (s, true, Some(format!("primary copy: {}", copy_damage(&e)))),
        (Err(pe), Err(se)) => {
            // Report the more specific failure: the primary's, unless it has no magic at all.
            let e = match (&pe, &se) {
                (Error::Header(p), _) if p.check != Check::Magic => pe,
                (_, Error::Header(s)) if s.check != Check::Magic => se,
                _ => pe,
            };
            return Err(e);
        }
    };
    let mut report = ReadReport {
        damaged,
        repaired: false,
    };
    if report.damaged.is_some() && repair {
        let copy = encode_copy(&good, bad_primary)?;
        let off = if bad_primary { 0 } else { good.hdr_size };
        if dev.write_at(&copy, off).and_then(|_| dev.flush()).is_ok() {
            report.repaired = true;
        }
    }
    Ok((good, report))
}

/// What is wrong with one copy, without the next step [`Error::Header`] gives for a header that
/// cannot be used at all (the other copy is good).
fn copy_damage(e: &Error) -> String {
    match e {
        Error::Header(h) => h.to_string(),
        e => e.to_string(),
    }
}

/// Commits `m` with the next seqid: primary copy, flush, secondary copy, flush. A crash leaves
/// at least one valid copy, of the old or the new state.
pub fn write_header(dev: &dyn BlockDevice, m: &mut Metadata) -> Result<()> {
    m.seqid += 1;
    let p = encode_copy(m, true)?;
    let s = encode_copy(m, false)?;
    dev.write_at(&p, 0)
        .map_err(Error::io("writing the primary LUKS2 header"))?;
    dev.flush()
        .map_err(Error::io("flushing the primary LUKS2 header"))?;
    dev.write_at(&s, m.hdr_size)
        .map_err(Error::io("writing the secondary LUKS2 header"))?;
    dev.flush()
        .map_err(Error::io("flushing the secondary LUKS2 header"))?;
    Ok(())
}

/// A fresh random UUID (version 4) in its text form.
pub fn new_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).map_err(Error::crypto)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}
