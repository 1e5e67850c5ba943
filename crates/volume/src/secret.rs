//! Secret bytes: locked in memory, zeroed on drop, never printed.

use std::fmt;

use zeroize::Zeroize;

/// A buffer of secret bytes (key material).
///
/// - its pages are locked with `mlock(2)` so they are never swapped out (best effort: a
///   process without the privilege or the `RLIMIT_MEMLOCK` budget keeps working, and
///   [`SecretBytes::is_locked`] says so);
/// - the bytes are overwritten with zeros when the value is dropped;
/// - `Debug` prints the length only.
pub struct SecretBytes {
    bytes: Box<[u8]>,
    locked: bool,
}

impl SecretBytes {
    /// Moves `bytes` into locked memory and zeroes the caller's copy.
    pub fn from_slice_zeroizing(bytes: &mut [u8]) -> SecretBytes {
        let mut secret = SecretBytes::zeroed(bytes.len());
        secret.bytes.copy_from_slice(bytes);
        bytes.zeroize();
        secret
    }

    /// A buffer of `len` zero bytes, locked in memory.
    pub fn zeroed(len: usize) -> SecretBytes {
        let bytes = vec![0u8; len].into_boxed_slice();
        let locked = lock(&bytes);
        SecretBytes { bytes, locked }
    }

    /// Fresh random bytes from OpenSSL's CSPRNG.
    pub fn random(len: usize) -> Result<SecretBytes, openssl::error::ErrorStack> {
        let mut secret = SecretBytes::zeroed(len);
        openssl::rand::rand_bytes(&mut secret.bytes)?;
        Ok(secret)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// Mutable access, e.g. to fill the buffer from a network read.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether `mlock` succeeded for this buffer.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Clone for SecretBytes {
    fn clone(&self) -> SecretBytes {
        let mut copy = SecretBytes::zeroed(self.len());
        copy.bytes.copy_from_slice(&self.bytes);
        copy
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked && !self.bytes.is_empty() {
            // SAFETY: the range is the live allocation locked in `lock`.
            unsafe {
                libc::munlock(self.bytes.as_ptr().cast(), self.bytes.len());
            }
        }
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.bytes.len())
    }
}

fn lock(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: mlock only reads the address range, which is a live allocation.
    unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) == 0 }
}

/// Process-wide hardening for a process that holds volume keys: no core dumps
/// (`RLIMIT_CORE` = 0, `PR_SET_DUMPABLE` = 0) and, best effort, all current and future pages
/// locked (`mlockall`), which also covers the key schedules inside OpenSSL.
///
/// Returns a list of the measures that could not be applied, for the caller to log.
pub fn harden_process() -> Vec<String> {
    let mut missed = Vec::new();
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            missed.push(format!(
                "RLIMIT_CORE=0: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            missed.push(format!(
                "PR_SET_DUMPABLE=0: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) != 0 {
            missed.push(format!("mlockall: {}", std::io::Error::last_os_error()));
        }
    }
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_source_zeroed() {
        let mut raw = [7u8; 32];
        let s = SecretBytes::from_slice_zeroizing(&mut raw);
        assert_eq!(raw, [0u8; 32]);
        assert_eq!(s.expose(), &[7u8; 32]);
        let shown = format!("{s:?}");
        assert!(!shown.contains('7'.to_string().repeat(2).as_str()));
        assert!(shown.contains("REDACTED"));
    }
}
