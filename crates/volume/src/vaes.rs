//! XTS-AES for whole sectors with VAES (AES on 512-bit vectors, 4 blocks per instruction) on
//! x86-64 CPUs that have it.
//!
//! Why by hand: OpenSSL 3.0 (Debian 12) runs XTS-AES-128 with 128-bit AES-NI only; its
//! VAES/AVX-512 XTS code arrived in OpenSSL 3.2, AWS-LC and BoringSSL have no AES-128-XTS, and
//! RustCrypto's `xts-mode` works one block at a time. This path handles data made of whole
//! 256-byte groups (every 512- or 4096-byte sector); anything else, and every CPU without
//! VAES + AVX-512F, goes through OpenSSL. Tests compare it with OpenSSL and the IEEE / NIST
//! vectors.

use core::arch::x86_64::*;

/// Whether the CPU can run this path.
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("vaes")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("aes")
}

/// Expanded keys: data-key rounds for encryption and decryption, tweak-key rounds.
/// Zeroed on drop and locked in memory (it is key material).
pub(crate) struct Schedule {
    rounds: usize,
    enc: [[u8; 16]; 15],
    dec: [[u8; 16]; 15],
    tweak: [[u8; 16]; 15],
}

pub(crate) struct LockedSchedule(Box<Schedule>);

impl Drop for LockedSchedule {
    fn drop(&mut self) {
        let s: &mut Schedule = &mut self.0;
        for k in s
            .enc
            .iter_mut()
            .chain(s.dec.iter_mut())
            .chain(s.tweak.iter_mut())
        {
            for b in k.iter_mut() {
                // SAFETY: a valid, aligned, exclusive reference.
                unsafe { std::ptr::write_volatile(b, 0) };
            }
        }
        // SAFETY: the range is the live allocation locked in `new`.
        unsafe {
            libc::munlock(
                (s as *const Schedule).cast(),
                std::mem::size_of::<Schedule>(),
            );
        }
    }
}

macro_rules! expand_step {
    ($k:expr, $rcon:literal) => {{
        let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128($k, $rcon), 0xff);
        let mut k = $k;
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        _mm_xor_si128(k, t)
    }};
}

macro_rules! expand256_odd {
    ($k1:expr, $k0:expr) => {{
        let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128($k0, 0), 0xaa);
        let mut k = $k1;
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        _mm_xor_si128(k, t)
    }};
}

macro_rules! expand256_even {
    ($k0:expr, $k1:expr, $rcon:literal) => {{
        let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128($k1, $rcon), 0xff);
        let mut k = $k0;
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        _mm_xor_si128(k, t)
    }};
}

fn store(k: __m128i) -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: 16 writable bytes.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), k) };
    out
}

fn load(b: &[u8]) -> __m128i {
    assert!(b.len() >= 16);
    // SAFETY: at least 16 readable bytes.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[target_feature(enable = "aes,sse2")]
fn expand128(key: &[u8]) -> [[u8; 16]; 15] {
    let mut rk = [[0u8; 16]; 15];
    let mut k = load(key);
    rk[0] = store(k);
    k = expand_step!(k, 0x01);
    rk[1] = store(k);
    k = expand_step!(k, 0x02);
    rk[2] = store(k);
    k = expand_step!(k, 0x04);
    rk[3] = store(k);
    k = expand_step!(k, 0x08);
    rk[4] = store(k);
    k = expand_step!(k, 0x10);
    rk[5] = store(k);
    k = expand_step!(k, 0x20);
    rk[6] = store(k);
    k = expand_step!(k, 0x40);
    rk[7] = store(k);
    k = expand_step!(k, 0x80);
    rk[8] = store(k);
    k = expand_step!(k, 0x1b);
    rk[9] = store(k);
    k = expand_step!(k, 0x36);
    rk[10] = store(k);
    rk
}

#[target_feature(enable = "aes,sse2")]
fn expand256(key: &[u8]) -> [[u8; 16]; 15] {
    let mut rk = [[0u8; 16]; 15];
    let mut k0 = load(&key[..16]);
    let mut k1 = load(&key[16..32]);
    rk[0] = store(k0);
    rk[1] = store(k1);
    k0 = expand256_even!(k0, k1, 0x01);
    rk[2] = store(k0);
    k1 = expand256_odd!(k1, k0);
    rk[3] = store(k1);
    k0 = expand256_even!(k0, k1, 0x02);
    rk[4] = store(k0);
    k1 = expand256_odd!(k1, k0);
    rk[5] = store(k1);
    k0 = expand256_even!(k0, k1, 0x04);
    rk[6] = store(k0);
    k1 = expand256_odd!(k1, k0);
    rk[7] = store(k1);
    k0 = expand256_even!(k0, k1, 0x08);
    rk[8] = store(k0);
    k1 = expand256_odd!(k1, k0);
    rk[9] = store(k1);
    k0 = expand256_even!(k0, k1, 0x10);
    rk[10] = store(k0);
    k1 = expand256_odd!(k1, k0);
    rk[11] = store(k1);
    k0 = expand256_even!(k0, k1, 0x20);
    rk[12] = store(k0);
    k1 = expand256_odd!(k1, k0);
    rk[13] = store(k1);
    k0 = expand256_even!(k0, k1, 0x40);
    rk[14] = store(k0);
    rk
}

#[target_feature(enable = "aes,sse2")]
fn inverse(enc: &[[u8; 16]; 15], rounds: usize) -> [[u8; 16]; 15] {
    let mut dec = [[0u8; 16]; 15];
    dec[0] = enc[rounds];
    for i in 1..rounds {
        dec[i] = store(_mm_aesimc_si128(load(&enc[rounds - i])));
    }
    dec[rounds] = enc[0];
    dec
}

impl LockedSchedule {
    /// Expands Key1 ‖ Key2 (32 or 64 bytes). Call only when [`available`] is true.
    pub(crate) fn new(key: &[u8]) -> LockedSchedule {
        let half = key.len() / 2;
        let rounds = if half == 16 { 10 } else { 14 };
        let mut s = Box::new(Schedule {
            rounds,
            enc: [[0; 16]; 15],
            dec: [[0; 16]; 15],
            tweak: [[0; 16]; 15],
        });
        // SAFETY: mlock only reads the address range of a live allocation.
        unsafe {
            libc::mlock(
                (&*s as *const Schedule).cast(),
                std::mem::size_of::<Schedule>(),
            );
        }
        // SAFETY: the caller checked `available()` (AES-NI present).
        unsafe {
            if half == 16 {
                s.enc = expand128(&key[..16]);
                s.tweak = expand128(&key[16..]);
            } else {
                s.enc = expand256(&key[..32]);
                s.tweak = expand256(&key[32..]);
            }
            s.dec = inverse(&s.enc, rounds);
        }
        LockedSchedule(s)
    }

    /// Encrypts (or decrypts) `data` in place as consecutive data units of `unit` bytes, unit
    /// `i` with tweak `first + i * step`. `unit` must be a multiple of 256.
    pub(crate) fn crypt(
        &self,
        encrypt: bool,
        first: u128,
        step: u128,
        unit: usize,
        data: &mut [u8],
    ) {
        debug_assert!(unit.is_multiple_of(256) && data.len().is_multiple_of(unit));
        // SAFETY: `new` is only called when `available()` holds.
        unsafe { crypt_units(&self.0, encrypt, first, step, unit, data) }
    }
}

fn mul_alpha(x: u128) -> u128 {
    (x << 1) ^ if x >> 127 == 1 { 0x87 } else { 0 }
}

/// Multiplies each 128-bit lane by α⁴ in GF(2¹²⁸) (XTS polynomial, little-endian lanes).
#[target_feature(enable = "avx512f")]
fn mul_alpha4(t: __m512i) -> __m512i {
    let carry = _mm512_srli_epi64::<60>(t);
    // Swap the two qwords of each lane: low qword gets the high qword's carry and vice versa.
    let c = _mm512_shuffle_epi32::<0x4e>(carry);
    let red = _mm512_xor_si512(
        _mm512_xor_si512(c, _mm512_slli_epi64::<1>(c)),
        _mm512_xor_si512(_mm512_slli_epi64::<2>(c), _mm512_slli_epi64::<7>(c)),
    );
    let fix = _mm512_mask_blend_epi64(0x55, c, red);
    _mm512_xor_si512(_mm512_slli_epi64::<4>(t), fix)
}

#[target_feature(enable = "avx512f,vaes,aes,sse2")]
unsafe fn crypt_units(
    s: &Schedule,
    encrypt: bool,
    first: u128,
    step: u128,
    unit: usize,
    data: &mut [u8],
) {
    let rounds = s.rounds;
    let keys = if encrypt { &s.enc } else { &s.dec };
    let mut rk = [_mm512_setzero_si512(); 15];
    for (r, k) in rk.iter_mut().zip(keys.iter()).take(rounds + 1) {
        *r = _mm512_broadcast_i32x4(load(k));
    }
    for (i, du) in data.chunks_exact_mut(unit).enumerate() {
        // T = E_K2(tweak)
        let iv = first.wrapping_add(i as u128 * step).to_le_bytes();
        let mut t = _mm_xor_si128(load(&iv), load(&s.tweak[0]));
        for k in &s.tweak[1..rounds] {
            t = _mm_aesenc_si128(t, load(k));
        }
        t = _mm_aesenclast_si128(t, load(&s.tweak[rounds]));
        let t0 = u128::from_le_bytes(store(t));
        let t1 = mul_alpha(t0);
        let t2 = mul_alpha(t1);
        let t3 = mul_alpha(t2);
        let lanes = [t0, t1, t2, t3];
        // SAFETY: 64 readable bytes.
        let mut tw = unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) };
        for group in du.chunks_exact_mut(256) {
            let p = group.as_mut_ptr();
            let ta = tw;
            let tb = mul_alpha4(ta);
            let tc = mul_alpha4(tb);
            let td = mul_alpha4(tc);
            tw = mul_alpha4(td);
            // SAFETY: `group` is 256 bytes: four 64-byte loads.
            let (mut a, mut b, mut c, mut d) = unsafe {
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(64).cast()),
                    _mm512_loadu_si512(p.add(128).cast()),
                    _mm512_loadu_si512(p.add(192).cast()),
                )
            };
            a = _mm512_xor_si512(_mm512_xor_si512(a, ta), rk[0]);
            b = _mm512_xor_si512(_mm512_xor_si512(b, tb), rk[0]);
            c = _mm512_xor_si512(_mm512_xor_si512(c, tc), rk[0]);
            d = _mm512_xor_si512(_mm512_xor_si512(d, td), rk[0]);
            if encrypt {
                for k in &rk[1..rounds] {
                    a = _mm512_aesenc_epi128(a, *k);
                    b = _mm512_aesenc_epi128(b, *k);
                    c = _mm512_aesenc_epi128(c, *k);
                    d = _mm512_aesenc_epi128(d, *k);
                }
                a = _mm512_aesenclast_epi128(a, rk[rounds]);
                b = _mm512_aesenclast_epi128(b, rk[rounds]);
                c = _mm512_aesenclast_epi128(c, rk[rounds]);
                d = _mm512_aesenclast_epi128(d, rk[rounds]);
            } else {
                for k in &rk[1..rounds] {
                    a = _mm512_aesdec_epi128(a, *k);
                    b = _mm512_aesdec_epi128(b, *k);
                    c = _mm512_aesdec_epi128(c, *k);
                    d = _mm512_aesdec_epi128(d, *k);
                }
                a = _mm512_aesdeclast_epi128(a, rk[rounds]);
                b = _mm512_aesdeclast_epi128(b, rk[rounds]);
                c = _mm512_aesdeclast_epi128(c, rk[rounds]);
                d = _mm512_aesdeclast_epi128(d, rk[rounds]);
            }
            // SAFETY: four 64-byte stores into `group`.
            unsafe {
                _mm512_storeu_si512(p.cast(), _mm512_xor_si512(a, ta));
                _mm512_storeu_si512(p.add(64).cast(), _mm512_xor_si512(b, tb));
                _mm512_storeu_si512(p.add(128).cast(), _mm512_xor_si512(c, tc));
                _mm512_storeu_si512(p.add(192).cast(), _mm512_xor_si512(d, td));
            }
        }
    }
    // Round keys on the stack are key material.
    for r in rk.iter_mut() {
        // SAFETY: a valid exclusive reference.
        unsafe { std::ptr::write_volatile(r, _mm512_setzero_si512()) };
    }
}
