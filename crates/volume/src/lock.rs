//! The volume lock: one process writes a volume at a time, and nobody reads it while it does.
//!
//! `atrest serve` and every `atrest volume` command take it before they open the volume:
//! exclusive to change anything (format, a conversion, unlocking a volume whose conversion
//! may have left a chunk to finish, repairing a header copy), shared to only read it (`dump`,
//! and `export` and `unlock` of a volume with no conversion under way, on a read-only device). It is a BSD lock (`flock(2)`),
//! taken without waiting: a volume in use is refused at once with a sentence that says so. The
//! kernel drops it when the process ends, however it ends, so a crash never leaves a stale
//! lock behind.
//!
//! Where the lock lives:
//! - an image file: the file `IMAGE.lock` beside it (`volume.img` → `volume.img.lock`),
//!   created mode 0600 on first use and never removed (removing it while another process waits
//!   for it would split the lock in two). The image path is resolved first (symbolic links,
//!   `..`), so every spelling of one image takes one lock;
//! - a block device, or any path under `/dev`: the device node itself, opened read-only (a
//!   file beside it in `/dev` would vanish at reboot and could not be created by every user
//!   who may open the device). This is also the lock udev honours: while atrest holds it
//!   exclusively, udev does not probe the device; udev's own short shared lock during a probe
//!   can make a command started right after the device appeared fail once — run it again.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How a volume is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Readers: any number at once, and no writer.
    Shared,
    /// One writer, and nobody else.
    Exclusive,
}

/// A held volume lock; dropping it (or ending the process) releases it.
#[derive(Debug)]
pub struct VolumeLock {
    file: File,
    lock_path: PathBuf,
    mode: LockMode,
}

/// Why a volume lock was not taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock in a mode that excludes the one asked for.
    InUse {
        /// The volume, as the caller named it.
        volume: PathBuf,
        /// The file or device that carries the lock.
        lock_path: PathBuf,
    },
    /// The lock file (or device) could not be opened or created.
    Open {
        /// The file or device that carries the lock.
        lock_path: PathBuf,
        /// Whether it is the device node itself.
        device: bool,
        /// The OS error.
        source: io::Error,
    },
    /// flock(2) failed for another reason than a conflicting lock.
    Lock {
        /// The file or device that carries the lock.
        lock_path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::InUse { volume, lock_path } => write!(
                f,
                "the volume {} is in use by another atrest appliance or `atrest volume` command \
                 (it holds the lock on {}); stop that process, or wait until it has finished, \
                 then try again",
                volume.display(),
                lock_path.display()
            ),
            LockError::Open {
                lock_path,
                device: true,
                source,
            } => write!(
                f,
                "cannot open the device {} to lock it ({source}); check that it exists and that \
                 this user may open it",
                lock_path.display()
            ),
            LockError::Open {
                lock_path, source, ..
            } => write!(
                f,
                "cannot open the lock file {} ({source}); run as a user who may create and open \
                 files in its directory",
                lock_path.display()
            ),
            LockError::Lock { lock_path, source } => write!(
                f,
                "cannot lock {} ({source}); check the file system it is on",
                lock_path.display()
            ),
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::InUse { .. } => None,
            LockError::Open { source, .. } | LockError::Lock { source, .. } => Some(source),
        }
    }
}

impl VolumeLock {
    /// Takes the exclusive lock of the volume at `image` (which need not exist yet), without
    /// waiting.
    pub fn exclusive(image: &Path) -> Result<VolumeLock, LockError> {
        VolumeLock::take(image, LockMode::Exclusive)
    }

    /// Takes a shared lock of the volume at `image`, without waiting.
    pub fn shared(image: &Path) -> Result<VolumeLock, LockError> {
        VolumeLock::take(image, LockMode::Shared)
    }

    /// Takes the lock of the volume at `image` in `mode`, without waiting.
    pub fn take(image: &Path, mode: LockMode) -> Result<VolumeLock, LockError> {
        let (lock_path, device) = lock_target(image);
        let file = if device {
            OpenOptions::new().read(true).open(&lock_path)
        } else {
            open_lock_file(&lock_path)
        }
        .map_err(|source| LockError::Open {
            lock_path: lock_path.clone(),
            device,
            source,
        })?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let source = io::Error::last_os_error();
            return Err(if source.kind() == io::ErrorKind::WouldBlock {
                LockError::InUse {
                    volume: image.to_path_buf(),
                    lock_path,
                }
            } else {
                LockError::Lock { lock_path, source }
            });
        }
        Ok(VolumeLock {
            file,
            lock_path,
            mode,
        })
    }

    /// The file or device node that carries the lock of the volume at `image`.
    pub fn lock_path(image: &Path) -> PathBuf {
        lock_target(image).0
    }

    /// The file or device node that carries this lock.
    pub fn path(&self) -> &Path {
        &self.lock_path
    }

    /// How it is held.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The open file that carries the lock; the lock lasts as long as the file stays open.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Creates the lock file mode 0600 (or opens it as it is); read-only when it exists but may
/// not be written, as flock needs no write access. Symbolic links are not followed.
fn open_lock_file(path: &Path) -> io::Result<File> {
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    match rw {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|_| e)
        }
        r => r,
    }
}

/// The lock's path for `image`, and whether it is the device node itself.
fn lock_target(image: &Path) -> (PathBuf, bool) {
    let resolved = resolve(image);
    let block = std::fs::metadata(&resolved).is_ok_and(|m| m.file_type().is_block_device());
    if block || resolved.starts_with("/dev") {
        return (resolved, true);
    }
    let mut name = resolved.into_os_string();
    name.push(".lock");
    (PathBuf::from(name), false)
}

/// `image` with symbolic links and `..` resolved; for an image that does not exist yet, its
/// directory resolved and its name kept.
fn resolve(image: &Path) -> PathBuf {
    if let Ok(p) = image.canonicalize() {
        return p;
    }
    let parent = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), image.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => image.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let d = std::env::temp_dir()
                .join(format!("atrest-volume-lock-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d.canonicalize().unwrap())
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn in_use(r: Result<VolumeLock, LockError>) -> String {
        match r {
            Err(e @ LockError::InUse { .. }) => e.to_string(),
            other => panic!("expected the volume to be in use, got {other:?}"),
        }
    }

    #[test]
    fn the_lock_file_is_the_image_path_plus_lock() {
        let s = Scratch::new("name");
        let img = s.0.join("volume.img");
        assert_eq!(VolumeLock::lock_path(&img), s.0.join("volume.img.lock"));
        assert_eq!(
            VolumeLock::lock_path(&s.0.join("disk")),
            s.0.join("disk.lock")
        );
        // Another spelling of the same image, and a symbolic link to it, take the same lock.
        std::fs::write(&img, b"x").unwrap();
        std::fs::create_dir(s.0.join("sub")).unwrap();
        assert_eq!(
            VolumeLock::lock_path(&s.0.join("sub/../volume.img")),
            s.0.join("volume.img.lock")
        );
        std::os::unix::fs::symlink(&img, s.0.join("link.img")).unwrap();
        assert_eq!(
            VolumeLock::lock_path(&s.0.join("link.img")),
            s.0.join("volume.img.lock")
        );
    }

    #[test]
    fn devices_are_locked_on_their_own_node() {
        assert_eq!(
            lock_target(Path::new("/dev/loop7")),
            (PathBuf::from("/dev/loop7"), true)
        );
        assert_eq!(
            lock_target(Path::new("/dev/mapper/x")),
            (PathBuf::from("/dev/mapper/x"), true)
        );
    }

    #[test]
    fn exclusive_excludes_everyone_and_shared_only_writers() {
        let s = Scratch::new("modes");
        let img = s.0.join("volume.img");
        let x = VolumeLock::exclusive(&img).unwrap();
        assert_eq!(x.mode(), LockMode::Exclusive);
        assert_eq!(x.path(), s.0.join("volume.img.lock"));
        in_use(VolumeLock::exclusive(&img));
        in_use(VolumeLock::shared(&img));
        drop(x);

        let a = VolumeLock::shared(&img).unwrap();
        let b = VolumeLock::shared(&img).unwrap();
        in_use(VolumeLock::exclusive(&img));
        drop(a);
        in_use(VolumeLock::exclusive(&img));
        drop(b);
        let x = VolumeLock::exclusive(&img).unwrap();
        // A lock handed on as its file lasts as long as the file.
        let f = x.into_file();
        in_use(VolumeLock::shared(&img));
        drop(f);
        VolumeLock::shared(&img).unwrap();
        // Another image in the same directory is independent.
        let _x = VolumeLock::exclusive(&img).unwrap();
        VolumeLock::exclusive(&s.0.join("other.img")).unwrap();
    }

    #[test]
    fn the_refusal_names_the_volume_and_what_to_do() {
        let s = Scratch::new("message");
        let img = s.0.join("volume.img");
        let _x = VolumeLock::exclusive(&img).unwrap();
        let msg = in_use(VolumeLock::shared(&img));
        assert!(msg.contains(&img.display().to_string()), "{msg}");
        assert!(msg.contains("in use by another atrest appliance"), "{msg}");
        assert!(msg.contains("`atrest volume` command"), "{msg}");
        assert!(msg.contains("stop that process, or wait"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn the_lock_file_is_created_0600_and_kept() {
        let s = Scratch::new("mode");
        let img = s.0.join("volume.img");
        drop(VolumeLock::shared(&img).unwrap());
        let lp = s.0.join("volume.img.lock");
        let mode = std::fs::metadata(&lp).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!img.exists(), "locking never creates the image");
        // A lock file that may only be read still carries a shared lock.
        std::fs::set_permissions(&lp, std::fs::Permissions::from_mode(0o400)).unwrap();
        let r = VolumeLock::shared(&img).unwrap();
        in_use(VolumeLock::exclusive(&img));
        drop(r);
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let s = Scratch::new("missing");
        let e = VolumeLock::exclusive(&s.0.join("no/such/volume.img")).unwrap_err();
        assert!(matches!(e, LockError::Open { device: false, .. }), "{e:?}");
        assert!(e.to_string().contains("cannot open the lock file"), "{e}");
    }

    #[test]
    fn a_symbolic_link_as_lock_file_is_refused() {
        let s = Scratch::new("symlink");
        let target = s.0.join("elsewhere");
        std::os::unix::fs::symlink(&target, s.0.join("volume.img.lock")).unwrap();
        let e = VolumeLock::exclusive(&s.0.join("volume.img")).unwrap_err();
        assert!(matches!(e, LockError::Open { .. }), "{e:?}");
        assert!(!target.exists());
    }
}
