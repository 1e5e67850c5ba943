//! The binary header of a LUKS2 header copy (docs/volume-format.md, section 2): magic,
//! version, sizes, sequence id, text fields, checksum; and the JSON area that follows it.

use serde_json::Value;

use super::json::{from_json, to_json};
use super::{MAX_JSON_SIZE, Metadata};
use crate::error::{Check, Error, Result};

/// Size of the binary part of a header copy.
pub const BINARY_HEADER_SIZE: usize = 4096;

pub(super) const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
pub(super) const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
pub(super) const HDR_SIZES: [u64; 9] = [
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
pub(super) fn check_binary(b: &[u8], offset: u64, copy: &'static str) -> Result<u64> {
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
    from_json(&value, hdr_size, seqid, label, subsystem, uuid)
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
