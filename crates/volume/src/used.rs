//! What the layer above the volume says about which bytes of the data segment hold content.

/// Tells an online conversion which parts of the data segment hold content. The conversion asks
/// while it holds the lock on the range, so no write to the range can start or be under way;
/// the answer must be conservative: `true` whenever any byte of the range may hold content that
/// will be read again (committed, pending or about to be written).
pub trait UsedRanges: Send + Sync {
    /// Whether any byte of `[offset, offset + len)` of the data segment (offsets relative to
    /// the segment's start) may hold content.
    fn in_use(&self, offset: u64, len: u64) -> bool;
}
