//! Block devices: byte-addressed storage that can be read, written, flushed and sized.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    len: u64,
    path: PathBuf,
    writable: bool,
}

impl FileDevice {
    /// Opens `path` for reading and writing.
    pub fn open(path: &Path) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        FileDevice::from_file(file, path, true)
    }

    /// Opens `path` read-only (writes fail with `PermissionDenied`).
    pub fn open_read_only(path: &Path) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).open(path)?;
        FileDevice::from_file(file, path, false)
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
            len,
            path: path.to_path_buf(),
            writable,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "device opened read-only",
            ));
        }
        check_range(offset, buf.len(), self.len)?;
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
        self.len
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
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
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&bytes[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let o = offset as usize;
        bytes[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64
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
    fn start_writeback(&self, offset: u64, len: u64) {
        (**self).start_writeback(offset, len)
    }
}
