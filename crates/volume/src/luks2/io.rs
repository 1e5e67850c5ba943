//! Reading both header copies from a device, choosing the newest valid one, repair, and the
//! two-copy commit.

use super::binary::{BINARY_HEADER_SIZE, HDR_SIZES, check_binary, encode_copy, parse_copy};
use super::model::Metadata;
use crate::device::BlockDevice;
use crate::error::{Check, Error, Result};
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
    write_header_deferred(dev, m)?;
    dev.flush()
        .map_err(Error::io("flushing the secondary LUKS2 header"))?;
    Ok(())
}

/// [`write_header`] without the last flush: the primary copy is durable when this returns, the
/// secondary copy only written. The caller must flush before it writes either copy again (so
/// that at most one copy is ever in flight); a crash before that leaves the durable primary,
/// which readers take (the newest valid copy). A conversion uses this for its per-chunk commit,
/// whose following data flush makes the secondary durable too.
pub fn write_header_deferred(dev: &dyn BlockDevice, m: &mut Metadata) -> Result<()> {
    m.seqid += 1;
    let p = encode_copy(m, true)?;
    let s = encode_copy(m, false)?;
    dev.write_at(&p, 0)
        .map_err(Error::io("writing the primary LUKS2 header"))?;
    dev.flush()
        .map_err(Error::io("flushing the primary LUKS2 header"))?;
    dev.write_at(&s, m.hdr_size)
        .map_err(Error::io("writing the secondary LUKS2 header"))?;
    Ok(())
}

/// A fresh random UUID (version 4) in its text form, from OpenSSL's random generator.
pub fn new_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).map_err(Error::crypto)?;
    Ok(uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string())
}
