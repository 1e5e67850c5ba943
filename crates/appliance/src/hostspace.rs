//! The file system under the content volume's image: its free space (shown beside the
//! volume's own) and the size of the image made on the first start.

use std::path::Path;

use crate::content::MIN_VOLUME_SIZE;

/// Bytes an unprivileged writer may still allocate on the file system holding `path`
/// (`statvfs`: available blocks × fragment size); `None` when it cannot be asked.
#[allow(unsafe_code)]
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to a statvfs the call fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the structure.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Free space kept on the file system when the image's size is chosen from it: 1/20 of the
/// free space, at least 64 MiB and at most 8 GiB (for the appliance's other files, logs, and
/// whatever else shares the file system).
pub fn margin(free: u64) -> u64 {
    (free / 20).clamp(64 << 20, 8 << 30)
}

/// The size of the content volume image made on the first start in `dir` when no size is
/// given: the file system's free space less [`margin`], in whole MiB, at least
/// [`MIN_VOLUME_SIZE`]. The image is sparse, so this reserves nothing; when the file system
/// runs out under it, writes fail as "the disk under the volume is full" (507) and nothing
/// acknowledged is lost.
pub fn default_volume_size(dir: &Path) -> u64 {
    // The data directory may not exist yet: ask the nearest ancestor that does.
    let free = dir.ancestors().find_map(free_bytes).unwrap_or(0);
    (free.saturating_sub(margin(free)) & !((1 << 20) - 1)).max(MIN_VOLUME_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_from_the_free_space_with_a_margin() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let size = default_volume_size(&dir.path().join("not/yet/made"));
        assert!(size.is_multiple_of(1 << 20));
        assert!(size >= MIN_VOLUME_SIZE);
        if free > MIN_VOLUME_SIZE + (64 << 20) {
            assert!(size <= free - (64 << 20), "{size} of {free} free");
            assert!(
                size + margin(free) + (1 << 20) > free,
                "{size} of {free} free"
            );
        }
        assert_eq!(margin(0), 64 << 20);
        assert_eq!(margin(1 << 50), 8 << 30);
        assert_eq!(margin(100 << 30), 5 << 30);
        assert!(free_bytes(Path::new("/nonexistent/path/here")).is_none());
    }
}
