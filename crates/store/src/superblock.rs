//! The store's superblock: two alternating 8 KiB slots at the start of the device, each holding
//! the store's own metadata and a copy of the database header page.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "ATRSTORE"
//!      8     4  format version (2; 1 is read too: its field at 56 is zero and means "no extent")
//!     12     4  length of the header copy (4096)
//!     16    16  store id (random, the same in both slots)
//!     32     8  sequence number (the newest valid slot wins)
//!     40     8  logical length of the database file
//!     48     8  written-up-to mark: bytes of the file at or above it read as zeros
//!     56     8  extent floor: no recording block of this state lies below this device offset
//!                   (all ones: none)
//!     64  4096  copy of the database's first page (its header and commit slots)
//!   4160  4000  zero
//!   8160    32  SHA-256 of bytes 0..8160
//! ```

use crate::codec::{DecodeError, Reader, Writer};

/// Size of one slot.
pub const SLOT_SIZE: usize = 8192;
/// Bytes of the database file kept in the superblock instead of in place: its first page.
pub const SHADOW_LEN: usize = 4096;
/// Largest logical file length accepted (far above any device; keeps arithmetic in range).
pub const MAX_LOGICAL_LEN: u64 = 1 << 56;
const MAGIC: &[u8; 8] = b"ATRSTORE";
const VERSION: u32 = 2;
/// Version 1 slots (stores made before recordings moved beside the database) are read too.
const VERSION_1: u32 = 1;
/// The extent floor of a state without recording blocks.
pub const NO_EXTENT: u64 = u64::MAX;
const SUM_OFFSET: usize = SLOT_SIZE - 32;
const RECORD: &str = "superblock";

/// One decoded slot.
#[derive(Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Store id, the same in both slots.
    pub store_id: [u8; 16],
    /// Sequence number; each persisted state takes the next one.
    pub seq: u64,
    /// Logical length of the database file.
    pub len: u64,
    /// File bytes at or above this offset read as zeros (never written since they were added).
    pub written_to: u64,
    /// No recording block referenced by this state lies below this device offset
    /// ([`NO_EXTENT`]: none); it bounds the database's growth at open, before the blocks
    /// are known.
    pub extent_floor: u64,
    /// The database file's first page.
    pub shadow: Vec<u8>,
}

impl std::fmt::Debug for Superblock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Superblock")
            .field("seq", &self.seq)
            .field("len", &self.len)
            .field("written_to", &self.written_to)
            .finish_non_exhaustive()
    }
}

impl Superblock {
    /// The slot image.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC)
            .u32(VERSION)
            .u32(SHADOW_LEN as u32)
            .raw(&self.store_id)
            .u64(self.seq)
            .u64(self.len)
            .u64(self.written_to)
            .u64(self.extent_floor);
        let mut shadow = self.shadow.clone();
        shadow.resize(SHADOW_LEN, 0);
        w.raw(&shadow);
        let mut b = w.finish();
        b.resize(SUM_OFFSET, 0);
        let sum = openssl::sha::sha256(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Decodes and checks one slot. Never panics, whatever the bytes.
    pub fn decode(b: &[u8]) -> Result<Superblock, DecodeError> {
        let bad = |field, offset, problem| DecodeError {
            record: RECORD,
            field,
            offset,
            problem,
        };
        if b.len() != SLOT_SIZE {
            return Err(bad("slot", 0, "not 8192 bytes long"));
        }
        if &b[..8] != MAGIC {
            return Err(bad("magic", 0, "not an atrest store superblock"));
        }
        if openssl::sha::sha256(&b[..SUM_OFFSET]) != b[SUM_OFFSET..] {
            return Err(bad(
                "checksum",
                SUM_OFFSET,
                "does not match: the slot is torn or damaged",
            ));
        }
        let mut r = Reader::new(RECORD, &b[..SUM_OFFSET]);
        r.array::<8>("magic")?;
        let version = r.u32("version")?;
        if version != VERSION && version != VERSION_1 {
            return Err(r.err(
                "version",
                "unknown superblock version (a newer atrest wrote it: run a newer atrest)",
            ));
        }
        if r.u32("header copy length")? as usize != SHADOW_LEN {
            return Err(r.err("header copy length", "not 4096"));
        }
        let store_id = r.array::<16>("store id")?;
        let seq = r.u64("sequence")?;
        let len = r.u64("length")?;
        if len > MAX_LOGICAL_LEN {
            return Err(r.err("length", "larger than any device"));
        }
        let written_to = r.u64("written-up-to mark")?;
        if written_to > len.max(SHADOW_LEN as u64) {
            return Err(r.err("written-up-to mark", "beyond the file length"));
        }
        let extent_floor = if version == VERSION_1 {
            if r.u64("reserved")? != 0 {
                return Err(r.err("reserved", "not zero"));
            }
            NO_EXTENT
        } else {
            r.u64("extent floor")?
        };
        let shadow = r.array::<SHADOW_LEN>("header copy")?.to_vec();
        Ok(Superblock {
            store_id,
            seq,
            len,
            written_to,
            extent_floor,
            shadow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            store_id: [7; 16],
            seq: 42,
            len: 1 << 20,
            written_to: 8192,
            extent_floor: 5 << 20,
            shadow: (0..SHADOW_LEN).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let b = s.encode();
        assert_eq!(b.len(), SLOT_SIZE);
        assert_eq!(Superblock::decode(&b).unwrap(), s);
    }

    #[test]
    fn any_damaged_byte_is_refused() {
        let b = sample().encode();
        for i in (0..SLOT_SIZE).step_by(97) {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(Superblock::decode(&c).is_err(), "byte {i}");
        }
        assert!(Superblock::decode(&b[..100]).is_err());
        assert!(Superblock::decode(&[0u8; SLOT_SIZE]).is_err());
    }

    #[test]
    fn inconsistent_fields_are_refused_even_with_a_good_checksum() {
        let mut s = sample();
        s.written_to = s.len + 1;
        let e = Superblock::decode(&s.encode()).unwrap_err();
        assert_eq!(e.field, "written-up-to mark");
        let mut s = sample();
        s.len = MAX_LOGICAL_LEN + 1;
        assert!(Superblock::decode(&s.encode()).is_err());
    }

    #[test]
    fn a_version_1_slot_is_read_with_no_extent() {
        let mut b = sample().encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[56..64].fill(0);
        let sum = openssl::sha::sha256(&b[..SUM_OFFSET]);
        b[SUM_OFFSET..].copy_from_slice(&sum);
        let s = Superblock::decode(&b).unwrap();
        assert_eq!(s.extent_floor, NO_EXTENT);
        assert_eq!(s.written_to, 8192);
        b[60] = 1;
        let sum = openssl::sha::sha256(&b[..SUM_OFFSET]);
        b[SUM_OFFSET..].copy_from_slice(&sum);
        assert_eq!(Superblock::decode(&b).unwrap_err().field, "reserved");
    }
}
