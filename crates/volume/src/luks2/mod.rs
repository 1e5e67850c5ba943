//! The LUKS2 header: binary header copies, JSON metadata, validation, authentication, repair
//! and commit.
//!
//! Layout and every field atrest writes are described in docs/volume-format.md, whose sections
//! these files follow, one concept each (as cryptsetup's lib/luks2 does):
//!
//! - [`binary`]: the 4096-byte binary header of each copy, its checksum, the JSON area;
//! - [`json`]: the JSON text, parsed section by section in the order of the format document:
//!   [`config`], [`keyslots`], [`segment`], [`digest`], [`token`], [`conversion`];
//! - [`mac`]: the header MAC that binds the metadata steering atrest to a volume key;
//! - [`model`]: the in-memory model ([`Metadata`]) and its state changes;
//! - [`io`]: reading both copies from a device, choosing one, repair and commit.
//!
//! The on-disk form (`encode_copy` / `parse_copy`) and the in-memory model are separate types.

pub mod binary;
pub mod config;
pub mod conversion;
pub mod digest;
pub mod io;
pub mod json;
pub mod keyslots;
pub mod mac;
pub mod model;
pub mod segment;
pub mod token;

pub use binary::{BINARY_HEADER_SIZE, encode_copy, fix_checksum, parse_copy};
pub use io::{ReadReport, new_uuid, read_header, write_header, write_header_deferred};
pub use json::to_json;
pub use mac::{HeaderMac, MacKey};
pub use model::{
    Conversion, ConversionKind, Digest, Hotzone, KmipToken, Metadata, RecordVersion, Segment,
    SegmentKind, Token,
};

/// Header copy size (binary header + JSON area) atrest writes.
pub const DEFAULT_HDR_SIZE: u64 = 16 * 1024;
/// Largest LUKS2 header copy; bounds what a reader allocates for the JSON area.
pub const MAX_HDR_SIZE: u64 = 4 * 1024 * 1024;
/// Largest JSON text accepted (the JSON area of the largest header copy).
pub const MAX_JSON_SIZE: u64 = MAX_HDR_SIZE - BINARY_HEADER_SIZE as u64;
/// Fewest PBKDF2 iterations accepted in a digest (cryptsetup's own minimum).
pub const MIN_PBKDF2_ITERATIONS: u64 = 1000;
/// Most PBKDF2 iterations accepted in a digest, and in all digests of a header together: bounds
/// the time a hostile header can make one unlock attempt spend checking a key (about 10 s of
/// SHA-256 on one core, whatever the number of digests).
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
/// Requirement flag present while a conversion is under way (conversion record version 2:
/// xxh3-128 table, table digest, skipped sub-ranges).
pub const REQUIREMENT_CONVERSION: &str = "atrest-conversion-v2";
/// Requirement flag of a conversion record of version 1 (SHA-256 table), written by earlier
/// atrest versions: still read, recovered and resumed (the next commit writes version 2).
pub const REQUIREMENT_CONVERSION_V1: &str = "atrest-conversion-v1";
/// Bytes per checksum unit in the conversion hotzone table.
pub const HOTZONE_UNIT: u64 = 512;
/// Bytes of a hotzone's sub-range whose use the layer above is asked about, and which a
/// record of version 2 may mark as skipped (one bit each in `hotzone.skip`).
pub const SKIP_GRANULE: u64 = 1 << 20;
/// Largest hotzone (conversion chunk) a header may name: recovery at unlock reads the whole
/// hotzone and its table into memory, so a hostile header must not make that large.
pub const MAX_HOTZONE_SIZE: u64 = 64 << 20;
/// Largest keyslots area (cryptsetup's limit, 128 MiB).
pub const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;
/// Token type of the header MAC.
pub const TOKEN_MAC: &str = "atrest-header-mac";
