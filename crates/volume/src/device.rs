//! Block devices: byte-addressed storage that can be read, written, flushed and sized.

use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A byte-addressed device: a regular file, a raw block device, an in-memory buffer, or the data
/// segment of an unlocked volume (plain or encrypted, also during a conversion).
///
/// Methods take `&self` so one device can serve several threads at once.
pub trait BlockDevice: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Reads the size from the medium again (a disk or image that grew since it was opened)
    /// and returns it; [`BlockDevice::len`] returns it from then on. The default keeps the size.
    fn refresh_len(&self) -> io::Result<u64> {
        Ok(self.len())
    }
    /// True when the size is 0.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A hint: start writing `len` bytes at `offset` back to the medium now, so that a later
    /// `flush` waits less. Durability still needs `flush`. The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
}

pub(crate) fn out_of_range(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "access of {len} bytes at offset {offset} goes past the end of the device ({size} bytes)"
        ),
    )
}

pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(out_of_range(offset, len, size)),
    }
}

/// A regular file or a raw block device.
///
/// A block device is sized with the `BLKGETSIZE64` ioctl, and flushed with `fdatasync(2)`,
/// which on a block device also flushes the disk's volatile write cache. Before it is opened, it
/// is refused when it is mounted (`/proc/self/mountinfo`, the device or one of its partitions)
/// or held by another kernel device (`/sys/dev/block/MAJ:MIN/holders`: device mapper, RAID);
/// opened read-write it is also claimed exclusively (`O_EXCL`), which fails while a file system,
/// another kernel user or another program's exclusive open has it. Such a refusal is an error of
/// kind [`io::ErrorKind::ResourceBusy`] whose message is one sentence saying what to do.
///
/// I/O goes through the page cache (no `O_DIRECT`): the store above reads its metadata
/// repeatedly and writes it in small pieces, which the cache serves, and every commit ends with
/// a flush that reaches the medium.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    len: AtomicU64,
    path: PathBuf,
    writable: bool,
    block: bool,
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong =
    (2 << 30) | ((std::mem::size_of::<usize>() as libc::c_ulong) << 16) | (0x12 << 8) | 114;

fn busy(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "the block device {} is in use ({why}); unmount it or stop what uses it, or choose \
             another device, then try again",
            path.display()
        ),
    )
}

/// The mount points of the devices `devs` (`major:minor`).
fn mounts_of(devs: &[String]) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && devs.iter().any(|d| d == f[2])).then(|| f[4].replace("\\040", " "))
        })
        .collect()
}

/// Refuses a block device that is mounted or held by another kernel device.
fn check_not_in_use(path: &Path, rdev: u64) -> io::Result<()> {
    let id = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{id}"));
    // The device itself and its partitions (subdirectories with a `partition` file).
    let mut devs = vec![id];
    let mut holders: Vec<String> = Vec::new();
    let mut dirs = vec![sys.clone()];
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                    devs.push(d.trim().to_owned());
                }
                dirs.push(e.path());
            }
        }
    }
    for d in &dirs {
        if let Ok(entries) = std::fs::read_dir(d.join("holders")) {
            holders.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into()),
            );
        }
    }
    let mounts = mounts_of(&devs);
    if !mounts.is_empty() {
        return Err(busy(path, &format!("mounted at {}", mounts.join(", "))));
    }
    if !holders.is_empty() {
        return Err(busy(path, &format!("held by {}", holders.join(", "))));
    }
    Ok(())
}

/// The size of the block device open as `file` (`BLKGETSIZE64`).
fn block_device_size(file: &File) -> io::Result<u64> {
    let mut len: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `len`, which outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut len as *mut u64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len)
}

impl FileDevice {
    /// Opens `path` for reading and writing (a block device exclusively).
    pub fn open(path: &Path) -> io::Result<FileDevice> {
        FileDevice::open_existing(path, true)
    }

    /// Opens `path` read-only (writes fail with `PermissionDenied`).
    pub fn open_read_only(path: &Path) -> io::Result<FileDevice> {
        FileDevice::open_existing(path, false)
    }

    fn open_existing(path: &Path, writable: bool) -> io::Result<FileDevice> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
        let meta = std::fs::metadata(path)?;
        if !meta.file_type().is_block_device() {
            let file = OpenOptions::new().read(true).write(writable).open(path)?;
            return FileDevice::from_file(file, path, writable);
        }
        check_not_in_use(path, meta.rdev())?;
        let mut oo = OpenOptions::new();
        oo.read(true).write(writable);
        if writable {
            // On a block device, O_EXCL without O_CREAT claims it: EBUSY while a file system,
            // device mapper, RAID or another exclusive open has it.
            oo.custom_flags(libc::O_EXCL);
        }
        let file = oo.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                busy(
                    path,
                    "claimed by a file system, device mapper, RAID or another program",
                )
            } else {
                e
            }
        })?;
        let len = block_device_size(&file)?;
        Ok(FileDevice {
            file,
            len: AtomicU64::new(len),
            path: path.to_path_buf(),
            writable,
            block: true,
        })
    }

    /// Creates (or truncates) a regular file of `len` bytes; the new space reads as zeros.
    pub fn create(path: &Path, len: u64) -> io::Result<FileDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(len)?;
        FileDevice::from_file(file, path, true)
    }

    fn from_file(mut file: File, path: &Path, writable: bool) -> io::Result<FileDevice> {
        // Seeking to the end works for regular files and block devices alike.
        let len = file.seek(SeekFrom::End(0))?;
        Ok(FileDevice {
            file,
            len: AtomicU64::new(len),
            path: path.to_path_buf(),
            writable,
            block: false,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is a block device (not a regular file).
    pub fn is_block_device(&self) -> bool {
        self.block
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len())?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "device opened read-only",
            ));
        }
        check_range(offset, buf.len(), self.len())?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn refresh_len(&self) -> io::Result<u64> {
        let len = if self.block {
            block_device_size(&self.file)?
        } else {
            self.file.metadata()?.len()
        };
        self.len.store(len, Ordering::Release);
        Ok(len)
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        if self.writable {
            // SAFETY: a plain system call on an open descriptor; failure only loses the hint.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }
}

/// An in-memory device (tests, fuzzing, tools).
#[derive(Debug)]
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
}

impl MemDevice {
    /// A device of `len` zero bytes.
    pub fn new(len: usize) -> MemDevice {
        MemDevice::from_vec(vec![0; len])
    }

    /// A device holding `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> MemDevice {
        MemDevice {
            bytes: RwLock::new(bytes),
        }
    }

    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.read();
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&bytes[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write();
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let o = offset as usize;
        bytes[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.read().len() as u64
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn refresh_len(&self) -> io::Result<u64> {
        (**self).refresh_len()
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        (**self).start_writeback(offset, len)
    }
}
