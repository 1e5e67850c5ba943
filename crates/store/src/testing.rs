//! Test support: what a test needs to reach below the store's interface (history rewritten as
//! an attacker with write access to the pages could, a format-1 recording).
//!
//! The power-loss device for crash tests is `atrest_volume::testing::CrashDevice` (the volume's
//! `testing` feature).

/// Rewrites the text of audit event `seq` in `store` and recomputes every hash after it up to
/// the recorded head, as someone with write access to the store's pages (but not the seal key)
/// could: the hash chain then checks, only the seal under the volume key tells.
pub fn rewrite_audit_history(store: &crate::Store, seq: u64, text: &str) -> crate::Result<()> {
    crate::audit::rewrite_history(store, seq, text)
}

/// Stores `data` as recording `id` the way a format-1 store kept it (chunks of 1020 KiB inside
/// the database) and marks the store as format 1: what an appliance made before format 2 has.
pub fn put_format_1_recording(
    store: &crate::Store,
    id: &str,
    session: &str,
    data: &[u8],
) -> crate::Result<()> {
    crate::recordings::put_format_1(store, id, session, data)
}

/// The store format number recorded in the store.
pub fn recorded_format(store: &crate::Store) -> crate::Result<u32> {
    crate::store::recorded_format(store)
}
