//! Secret bytes: locked in memory, zeroed on drop, never printed.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// How much of the process memory is locked in RAM (see [`harden_process`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every current and future page (`mlockall(MCL_CURRENT | MCL_FUTURE)`).
    All,
    /// Only the key buffers ([`SecretBytes`]), each with its own `mlock`: locking everything
    /// was not attempted because future allocations would then fail once the limit is reached.
    KeysOnly {
        /// `RLIMIT_MEMLOCK` in bytes.
        limit: u64,
    },
    /// `mlockall` was attempted and refused (the reason); key buffers are locked one by one.
    Failed(String),
}

/// What [`harden_process`] did.
#[derive(Debug)]
pub struct Hardening {
    /// `RLIMIT_CORE` set to 0 (soft and hard), or why not.
    pub core_limit: Result<(), String>,
    /// `PR_SET_DUMPABLE` set to 0, or why not.
    pub not_dumpable: Result<(), String>,
    /// How process memory was locked against swapping (key buffers at least).
    pub memory: MemoryLock,
    reported: AtomicBool,
}

impl Hardening {
    /// What could not be done against core dumps, each with what to do (empty when both held;
    /// neither needs a privilege, so this is expected to be empty).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = &self.core_limit {
            out.push(format!(
                "core dumps could not be turned off (setrlimit RLIMIT_CORE 0: {e}); a crash may \
                 write key material to disk: disable core dumps for this service"
            ));
        }
        if let Err(e) = &self.not_dumpable {
            out.push(format!(
                "the process could not be made non-dumpable (prctl PR_SET_DUMPABLE 0: {e}); \
                 disable core dumps and ptrace for this service"
            ));
        }
        if let MemoryLock::Failed(e) = &self.memory {
            out.push(format!(
                "process memory could not be locked in RAM (mlockall: {e}); key buffers are \
                 locked one by one, other memory holding keys (TLS and cipher state) may reach \
                 swap: grant CAP_IPC_LOCK or set LimitMEMLOCK=infinity"
            ));
        }
        out
    }

    /// When only key buffers are locked: a sentence saying so and what to do.
    pub fn memory_note(&self) -> Option<String> {
        match &self.memory {
            MemoryLock::KeysOnly { limit } => Some(format!(
                "process memory is not locked as a whole (RLIMIT_MEMLOCK is {} KiB and the \
                 process lacks CAP_IPC_LOCK): only the key buffers are locked, other memory \
                 holding keys (TLS and cipher state) may reach swap; grant CAP_IPC_LOCK or set \
                 LimitMEMLOCK=infinity to lock everything",
                limit / 1024
            )),
            _ => None,
        }
    }

    /// [`Hardening::problems`] and [`Hardening::memory_note`] the first time it is asked,
    /// nothing afterwards: whoever reports them does it once per process.
    pub fn take_report(&self) -> Vec<String> {
        if self.reported.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        let mut out = self.problems();
        out.extend(self.memory_note());
        out
    }
}

/// A growable byte buffer in memory of its own that is *not* locked in RAM, even after
/// [`harden_process`] locked all memory: for bulk data that holds no key (a recording being
/// uploaded), so that many of them cannot pin locked memory. Lock what holds keys, not every
/// buffer.
///
/// Backed by its own anonymous mapping (never shared with another allocation, so unlocking it
/// can never unlock a key's page), unlocked with `munlock` as soon as it is mapped, grown
/// geometrically as data arrives, unmapped on drop.
pub struct UnlockedBytes {
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its mapping exclusively; access goes through &self / &mut self.
unsafe impl Send for UnlockedBytes {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for UnlockedBytes {}

impl fmt::Debug for UnlockedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnlockedBytes({} of {} bytes)", self.len, self.cap)
    }
}

impl Default for UnlockedBytes {
    fn default() -> Self {
        UnlockedBytes::new()
    }
}

impl UnlockedBytes {
    /// An empty buffer (nothing mapped yet).
    pub fn new() -> UnlockedBytes {
        UnlockedBytes {
            ptr: std::ptr::null_mut(),
            cap: 0,
            len: 0,
        }
    }

    fn map(cap: usize) -> std::io::Result<*mut u8> {
        // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the range is the mapping just made, owned by no one else. Under
        // mlockall(MCL_FUTURE) the new mapping is locked; this lifts it for this range only.
        unsafe {
            libc::munlock(p, cap);
        }
        Ok(p.cast())
    }

    /// Makes room for `additional` more bytes, growing geometrically (at least `min_step`),
    /// never past `limit` bytes of capacity unless the data needs it.
    pub fn reserve(
        &mut self,
        additional: usize,
        min_step: usize,
        limit: usize,
    ) -> std::io::Result<()> {
        let want = self.len + additional;
        if want <= self.cap {
            return Ok(());
        }
        let page = 4096;
        let cap = (self.cap * 2).max(min_step).max(want).min(limit.max(want));
        let cap = cap.div_ceil(page) * page;
        let p = UnlockedBytes::map(cap)?;
        if self.len > 0 {
            // SAFETY: both ranges are live mappings of at least `len` bytes and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr, p, self.len) };
        }
        self.release();
        self.ptr = p;
        self.cap = cap;
        Ok(())
    }

    /// Appends `data` (growing as [`UnlockedBytes::reserve`] with no limit).
    pub fn extend_from_slice(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.reserve(data.len(), 64 << 10, usize::MAX)?;
        // SAFETY: `reserve` made room for `data.len()` bytes after `len`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(self.len), data.len()) };
        self.len += data.len();
        Ok(())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: `len` bytes of the live mapping are initialised.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory mapped.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Forgets the bytes, keeping the memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn release(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the mapping made in `map`, of `cap` bytes, not used after this.
            unsafe { libc::munmap(self.ptr.cast(), self.cap) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for UnlockedBytes {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether the page holding `p` is locked in RAM (from /proc/self/smaps; for tests).
#[doc(hidden)]
pub fn page_is_locked(p: *const u8) -> Option<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let addr = p as usize;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = a <= addr && addr < b;
            continue;
        }
        if inside && let Some(v) = line.strip_prefix("VmFlags:") {
            return Some(v.split_whitespace().any(|f| f == "lo"));
        }
    }
    None
}

static HARDENING: OnceLock<Hardening> = OnceLock::new();

/// Process-wide hardening for every process that holds key material, applied once (later
/// calls return the first result):
///
/// - no core dumps: `RLIMIT_CORE` = 0 (soft and hard) and `PR_SET_DUMPABLE` = 0. Neither needs a
///   privilege; both hold whoever runs the process. Non-dumpable also keeps other processes of
///   the same user from attaching with ptrace or reading `/proc/PID/mem`.
/// - memory locked in RAM: `mlockall(MCL_CURRENT | MCL_FUTURE)` only when every future
///   allocation can be locked too (`CAP_IPC_LOCK`, or an unlimited `RLIMIT_MEMLOCK`). With a
///   finite limit MCL_FUTURE would make allocations (`mmap`, thread stacks) fail once the limit
///   is reached — a conversion would abort halfway — and how much the process will map cannot be
///   known in advance, so then only the key buffers are locked ([`SecretBytes`]) and
///   [`Hardening::memory_note`] says so.
pub fn harden_process() -> &'static Hardening {
    HARDENING.get_or_init(|| {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls with valid arguments.
        let core_limit = match unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().to_string()),
        };
        // SAFETY: as above.
        let not_dumpable = match unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().to_string()),
        };
        let limit = memlock_limit();
        let memory = if has_cap_ipc_lock() || limit.is_none() {
            // SAFETY: as above.
            match unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } {
                0 => MemoryLock::All,
                _ => MemoryLock::Failed(std::io::Error::last_os_error().to_string()),
            }
        } else {
            MemoryLock::KeysOnly {
                limit: limit.unwrap_or(0),
            }
        };
        Hardening {
            core_limit,
            not_dumpable,
            memory,
            reported: AtomicBool::new(false),
        }
    })
}

/// `RLIMIT_MEMLOCK` in bytes; `None` when unlimited.
fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Some(0);
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Whether CAP_IPC_LOCK is in the effective set (it lifts RLIMIT_MEMLOCK). Root in a container
/// often lacks it, so the user id says nothing.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unlocked_bytes_stay_unlocked_when_everything_else_is_locked() {
        let h = harden_process();
        let mut b = UnlockedBytes::new();
        b.extend_from_slice(&[1u8; 100_000]).unwrap();
        b.extend_from_slice(&[2u8; 300_000]).unwrap();
        assert_eq!(b.len(), 400_000);
        assert!(b.as_slice()[..100_000].iter().all(|&x| x == 1));
        assert!(b.as_slice()[100_000..].iter().all(|&x| x == 2));
        assert_eq!(super::page_is_locked(b.as_slice().as_ptr()), Some(false));
        let key = SecretBytes::random(32).unwrap();
        if key.is_locked() {
            assert_eq!(super::page_is_locked(key.expose().as_ptr()), Some(true));
        }
        if h.memory == MemoryLock::All {
            // The rest of the memory is locked (mlockall), the buffer is not.
            let other = vec![7u8; 1 << 20];
            assert_eq!(super::page_is_locked(other.as_ptr()), Some(true));
        }
        b.clear();
        assert!(b.is_empty() && b.capacity() >= 400_000);
    }

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

    #[test]
    fn harden_process_turns_core_dumps_off_and_reports_once() {
        let h = harden_process();
        assert!(h.core_limit.is_ok() && h.not_dumpable.is_ok(), "{h:?}");
        let mut lim = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: reading a limit into a valid struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
        // SAFETY: reading a flag.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        let _ = h.take_report();
        assert!(h.take_report().is_empty(), "reported twice");
        assert!(std::ptr::eq(h, harden_process()));
    }
}
