//! The recovery key (break-glass): a high-entropy passphrase in a standard LUKS2 keyslot
//! (argon2id), so that stock cryptsetup opens the volume with it and no KMIP server.
//!
//! - [`RecoveryKey`]: the text (8 groups of 6 digits, each group a multiple of 11, so a typo is
//!   caught per group before the slow KDF), generated from 128 random bits, parsed tolerantly;
//! - [`RecoveryKdf`]: the argon2id cost atrest writes, and the bounds a keyslot read from disk
//!   must respect before atrest runs its KDF;
//! - the keyslot itself: argon2id → XTS key of the keyslot area; anti-forensic split (LUKS AF,
//!   SHA-256 diffusion, 4000 stripes) of the volume key, encrypted with `aes-xts-plain64` in
//!   512-byte sectors numbered from 0 at the area's start.
//!
//! The format is in docs/volume-format.md, "Recovery keyslot". The AF splitter and the text form
//! are written here because no maintained crate offers them (a few dozen lines each); argon2id
//! is RustCrypto's `argon2`, XTS and SHA-256 are OpenSSL's.

use std::fmt;

use serde_json::{Map, Value, json};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use crate::xts::XtsCipher;

/// Anti-forensic stripes of a LUKS keyslot (the only value cryptsetup accepts).
pub const AF_STRIPES: usize = 4000;
/// Sector size of the keyslot area encryption (LUKS: always 512).
const AREA_SECTOR: usize = 512;
/// Key length of the keyslot area cipher (`aes-xts-plain64`, two AES-256 keys).
const AREA_KEY_BYTES: usize = 64;
/// Bytes reserved per recovery keyslot area: the anti-forensic material of a 512-bit volume key
/// (64 × 4000 bytes), rounded up to 4096.
pub const RECOVERY_AREA_BYTES: u64 = 258_048;
/// Recovery keyslot areas reserved at the end of the keyslots area: one for the current
/// recovery key, two for its replacement during a rekey (one per key), so that the new slots
/// are written before the old one is removed.
pub const RECOVERY_AREAS: u64 = 3;
/// Bytes at the end of the keyslots area reserved for recovery keyslots (conversion tables stay
/// below).
pub const RECOVERY_REGION_BYTES: u64 = RECOVERY_AREA_BYTES * RECOVERY_AREAS;
/// Groups of digits in a recovery key.
pub const GROUPS: usize = 8;
/// Digits per group.
pub const GROUP_DIGITS: usize = 6;
/// Length of the canonical text (`dddddd-…-dddddd`), which is the LUKS2 passphrase.
pub const TEXT_LEN: usize = GROUPS * GROUP_DIGITS + GROUPS - 1;

/// Largest argon2 memory a keyslot may ask for before atrest runs its KDF: 1 GiB (in KiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// Smallest argon2 memory accepted (cryptsetup's minimum), KiB.
pub const MIN_ARGON2_MEMORY_KIB: u32 = 32;
/// Most argon2 passes accepted.
pub const MAX_ARGON2_TIME: u32 = 16;
/// Most argon2 lanes accepted.
pub const MAX_ARGON2_LANES: u32 = 16;
/// Most argon2 work (memory in KiB × passes) one keyslot may ask for: 4 GiB·passes, a few
/// seconds on one core; a forged header cannot make an unlock attempt run for minutes.
pub const MAX_ARGON2_WORK: u64 = 4 << 20;
/// Recovery keyslots tried per unlock attempt (at most two exist: one per key of a rekey).
pub const MAX_RECOVERY_SLOTS_TRIED: usize = 4;

/// The argon2id cost of a recovery keyslot atrest writes.
///
/// Default: 256 MiB, 4 passes, 4 lanes (about a second on one core of the appliance class of
/// machine). The recovery key has 128 random bits, so the KDF adds no needed strength; it only
/// has to be a standard, cryptsetup-compatible one, and cheap enough that a small appliance can
/// run it at unlock. Tests use a smaller memory (`ATREST_RECOVERY_KDF_MEMORY_KIB` in the CLI and
/// the appliance; see docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryKdf {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub time: u32,
    /// Lanes (`cpus` in the keyslot).
    pub lanes: u32,
}

impl Default for RecoveryKdf {
    fn default() -> Self {
        RecoveryKdf {
            memory_kib: 256 * 1024,
            time: 4,
            lanes: 4,
        }
    }
}

/// Environment variable that lowers the argon2 memory of new recovery keyslots (tests).
pub const KDF_MEMORY_ENV: &str = "ATREST_RECOVERY_KDF_MEMORY_KIB";

impl RecoveryKdf {
    /// The default cost, with the memory taken from [`KDF_MEMORY_ENV`] when it is set to a
    /// value within bounds (at least 8 MiB).
    pub fn from_env() -> RecoveryKdf {
        let mut k = RecoveryKdf::default();
        if let Some(m) = std::env::var(KDF_MEMORY_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|m| (8 * 1024..=MAX_ARGON2_MEMORY_KIB).contains(m))
        {
            k.memory_kib = m;
        }
        k
    }

    /// Checks the cost against the named bounds.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_ARGON2_MEMORY_KIB..=MAX_ARGON2_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(format!(
                "argon2 memory {} KiB outside {MIN_ARGON2_MEMORY_KIB}…{MAX_ARGON2_MEMORY_KIB} KiB",
                self.memory_kib
            ));
        }
        if !(1..=MAX_ARGON2_TIME).contains(&self.time) {
            return Err(format!(
                "argon2 time {} outside 1…{MAX_ARGON2_TIME}",
                self.time
            ));
        }
        if !(1..=MAX_ARGON2_LANES).contains(&self.lanes) {
            return Err(format!(
                "argon2 lanes {} outside 1…{MAX_ARGON2_LANES}",
                self.lanes
            ));
        }
        if self.memory_kib as u64 * self.time as u64 > MAX_ARGON2_WORK {
            return Err(format!(
                "argon2 work {} KiB × {} passes exceeds {MAX_ARGON2_WORK} KiB·passes",
                self.memory_kib, self.time
            ));
        }
        Ok(())
    }
}

/// A recovery key: 128 random bits shown as 8 groups of 6 digits (`123453-…`), each group
/// `11 × v` for a 16-bit `v`. Zeroed on drop; `Debug` never prints it.
pub struct RecoveryKey {
    text: Zeroizing<String>,
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey([REDACTED])")
    }
}

impl RecoveryKey {
    /// A new recovery key from 128 bits of OpenSSL's CSPRNG.
    pub fn generate() -> Result<RecoveryKey> {
        let mut raw = Zeroizing::new([0u8; 16]);
        openssl::rand::rand_bytes(&mut raw[..]).map_err(Error::crypto)?;
        let mut text = Zeroizing::new(String::with_capacity(TEXT_LEN));
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let v = u16::from_be_bytes([pair[0], pair[1]]) as u32 * 11;
            if i > 0 {
                text.push('-');
            }
            let mut digits = [b'0'; GROUP_DIGITS];
            let mut n = v;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            text.extend(digits.iter().map(|&b| b as char));
            digits.zeroize();
        }
        Ok(RecoveryKey { text })
    }

    /// Parses a recovery key as a person types it: spaces, dashes and line breaks anywhere are
    /// ignored; 48 digits must remain, and each group of 6 must be a multiple of 11 below
    /// 720 896. The error says which group is wrong, never what was typed.
    pub fn parse(input: &str) -> Result<RecoveryKey> {
        if input.len() > 1024 {
            return Err(Error::Usage(
                "the recovery key text is too long: it is 8 groups of 6 digits".into(),
            ));
        }
        let mut digits = Zeroizing::new(Vec::with_capacity(GROUPS * GROUP_DIGITS));
        for c in input.chars() {
            match c {
                '0'..='9' => digits.push(c as u8),
                ' ' | '-' | '\t' | '\r' | '\n' => {}
                _ => {
                    return Err(Error::Usage(
                        "the recovery key holds a character other than digits, spaces and \
                         dashes: it is 8 groups of 6 digits, as shown when it was made"
                            .into(),
                    ));
                }
            }
        }
        if digits.len() != GROUPS * GROUP_DIGITS {
            return Err(Error::Usage(format!(
                "the recovery key has {} digits; it has 48 (8 groups of 6): check that no group \
                 is missing",
                digits.len()
            )));
        }
        let mut text = Zeroizing::new(String::with_capacity(TEXT_LEN));
        for (i, g) in digits.chunks_exact(GROUP_DIGITS).enumerate() {
            let v = g.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32);
            if !v.is_multiple_of(11) || v / 11 > u16::MAX as u32 {
                return Err(Error::Usage(format!(
                    "group {} of the recovery key is mistyped (its check fails): compare it with \
                     the recovery key as it was shown",
                    i + 1
                )));
            }
            if i > 0 {
                text.push('-');
            }
            text.extend(g.iter().map(|&b| b as char));
        }
        Ok(RecoveryKey { text })
    }

    /// The canonical text (`dddddd-dddddd-…`, 55 characters): what to show, and the LUKS2
    /// passphrase cryptsetup is given.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// What [`open_keyslot`] and [`make_keyslot`] need of a keyslot (parsed, bounded).
struct Slot {
    key_size: usize,
    area_offset: u64,
    area_size: u64,
    kdf: RecoveryKdf,
    argon2i: bool,
    salt: Vec<u8>,
}

fn slot_err(id: &str, detail: impl fmt::Display) -> String {
    format!("keyslot {id}: {detail}")
}

/// Parses keyslot `id` for opening with a recovery key: a `luks2` keyslot with an argon2id (or
/// argon2i) KDF within the bounds, LUKS1 AF with SHA-256 and 4000 stripes, an `aes-xts-plain64`
/// raw area inside the keyslots area. Anything else is refused with a reason (never run).
fn parse_slot(id: &str, v: &Value, ks_start: u64, ks_end: u64) -> Result<Slot, String> {
    let o = v.as_object().ok_or_else(|| slot_err(id, "not an object"))?;
    let s = |o: &Map<String, Value>, k: &str| -> Result<String, String> {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| slot_err(id, format!("`{k}` missing or not a string")))
    };
    let n = |o: &Map<String, Value>, k: &str| -> Result<u64, String> {
        o.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| slot_err(id, format!("`{k}` missing or not a number")))
    };
    let sub = |k: &str| -> Result<&Map<String, Value>, String> {
        o.get(k)
            .and_then(Value::as_object)
            .ok_or_else(|| slot_err(id, format!("`{k}` missing")))
    };
    if s(o, "type")? != "luks2" {
        return Err(slot_err(id, "not a luks2 passphrase keyslot"));
    }
    let key_size = n(o, "key_size")?;
    if key_size != 32 && key_size != 64 {
        return Err(slot_err(
            id,
            format!("key_size {key_size}, expected 32 or 64"),
        ));
    }
    let af = sub("af")?;
    if s(af, "type")? != "luks1" || s(af, "hash")? != "sha256" || n(af, "stripes")? != 4000 {
        return Err(slot_err(
            id,
            "anti-forensic split other than luks1/sha256/4000 stripes",
        ));
    }
    let area = sub("area")?;
    if s(area, "type")? != "raw" || s(area, "encryption")? != "aes-xts-plain64" {
        return Err(slot_err(id, "area is not raw aes-xts-plain64"));
    }
    if n(area, "key_size")? != AREA_KEY_BYTES as u64 {
        return Err(slot_err(id, "area key_size is not 64"));
    }
    let dec = |k: &str| -> Result<u64, String> {
        s(area, k)?
            .parse::<u64>()
            .map_err(|_| slot_err(id, format!("area.{k} is not a decimal string")))
    };
    let (area_offset, area_size) = (dec("offset")?, dec("size")?);
    let need = (key_size as usize * AF_STRIPES).div_ceil(AREA_SECTOR) * AREA_SECTOR;
    if area_size < need as u64
        || area_offset < ks_start
        || area_offset
            .checked_add(area_size)
            .is_none_or(|e| e > ks_end)
    {
        return Err(slot_err(
            id,
            "area lies outside the keyslots area or is too small",
        ));
    }
    let kdf = sub("kdf")?;
    let argon2i = match s(kdf, "type")?.as_str() {
        "argon2id" => false,
        "argon2i" => true,
        t => {
            return Err(slot_err(
                id,
                format!("KDF `{t}`; atrest opens argon2 keyslots"),
            ));
        }
    };
    let small = |k: &str| -> Result<u32, String> {
        u32::try_from(n(kdf, k)?).map_err(|_| slot_err(id, format!("kdf.{k} out of range")))
    };
    let cost = RecoveryKdf {
        memory_kib: small("memory")?,
        time: small("time")?,
        lanes: small("cpus")?,
    };
    cost.check().map_err(|e| slot_err(id, e))?;
    let salt_b64 = s(kdf, "salt")?;
    if salt_b64.len() > 128 {
        return Err(slot_err(id, "kdf.salt too long"));
    }
    let salt = openssl::base64::decode_block(&salt_b64)
        .map_err(|_| slot_err(id, "kdf.salt is not base64"))?;
    if !(16..=64).contains(&salt.len()) {
        return Err(slot_err(id, "kdf.salt length outside 16…64 bytes"));
    }
    Ok(Slot {
        key_size: key_size as usize,
        area_offset,
        area_size,
        kdf: cost,
        argon2i,
        salt,
    })
}

/// Checks keyslot `v` as [`crate::Volume::keys_from_recovery_key`] does before running its KDF
/// (for the fuzz target and tools): `Ok(())` when it would be tried, else the reason.
pub fn check_keyslot(v: &Value, ks_start: u64, ks_end: u64) -> Result<(), String> {
    parse_slot("0", v, ks_start, ks_end).map(drop)
}

/// The keyslot area offset and size of a keyslot (any type), if it names them.
pub(crate) fn area_of(v: &Value) -> Option<(u64, u64)> {
    let a = v.get("area")?;
    let off = a.get("offset")?.as_str()?.parse().ok()?;
    let size = a.get("size")?.as_str()?.parse().ok()?;
    Some((off, size))
}

fn argon2_key(kdf: &RecoveryKdf, argon2i: bool, pass: &[u8], salt: &[u8]) -> Result<XtsCipher> {
    let params = argon2::Params::new(kdf.memory_kib, kdf.time, kdf.lanes, Some(AREA_KEY_BYTES))
        .map_err(|e| Error::State(format!("argon2 parameters refused: {e}")))?;
    let alg = if argon2i {
        argon2::Algorithm::Argon2i
    } else {
        argon2::Algorithm::Argon2id
    };
    let a = argon2::Argon2::new(alg, argon2::Version::V0x13, params);
    let mut key = SecretBytes::zeroed(AREA_KEY_BYTES);
    a.hash_password_into(pass, salt, key.expose_mut())
        .map_err(|e| Error::State(format!("argon2 failed: {e}")))?;
    XtsCipher::new(&key).map_err(|_| {
        Error::State("the keyslot key derived from the recovery key is unusable for XTS".into())
    })
}

fn sha256_diffuse(block: &mut [u8]) {
    let mut out = Zeroizing::new(vec![0u8; block.len()]);
    for (i, (src, dst)) in block.chunks(32).zip(out.chunks_mut(32)).enumerate() {
        let mut h = openssl::sha::Sha256::new();
        h.update(&(i as u32).to_be_bytes());
        h.update(src);
        let mut d = h.finish();
        dst.copy_from_slice(&d[..dst.len()]);
        d.zeroize();
    }
    block.copy_from_slice(&out);
}

/// LUKS anti-forensic split of `key` into `AF_STRIPES` stripes (random stripes, the last one
/// the key XOR the diffused sum of the others).
fn af_split(key: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * AF_STRIPES]);
    openssl::rand::rand_bytes(&mut out[..n * (AF_STRIPES - 1)]).map_err(Error::crypto)?;
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for stripe in out[..n * (AF_STRIPES - 1)].chunks_exact(n) {
        acc.iter_mut().zip(stripe).for_each(|(a, s)| *a ^= s);
        sha256_diffuse(&mut acc);
    }
    let last = &mut out[n * (AF_STRIPES - 1)..];
    for ((o, a), k) in last.iter_mut().zip(acc.iter()).zip(key) {
        *o = a ^ k;
    }
    Ok(out)
}

/// Inverse of [`af_split`].
fn af_merge(material: &[u8], n: usize) -> SecretBytes {
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for stripe in material[..n * (AF_STRIPES - 1)].chunks_exact(n) {
        acc.iter_mut().zip(stripe).for_each(|(a, s)| *a ^= s);
        sha256_diffuse(&mut acc);
    }
    let mut key = SecretBytes::zeroed(n);
    for ((k, a), m) in key
        .expose_mut()
        .iter_mut()
        .zip(acc.iter())
        .zip(&material[n * (AF_STRIPES - 1)..n * AF_STRIPES])
    {
        *k = a ^ m;
    }
    key
}

/// A new recovery keyslot for `volume_key`: the JSON object and the bytes of its area (to be
/// written at `area_offset` before the header that names it is committed).
pub(crate) fn make_keyslot(
    rk: &RecoveryKey,
    volume_key: &[u8],
    kdf: &RecoveryKdf,
    area_offset: u64,
) -> Result<(Value, Vec<u8>)> {
    kdf.check()
        .map_err(|e| Error::Usage(format!("recovery key KDF cost: {e}")))?;
    let mut salt = [0u8; 32];
    openssl::rand::rand_bytes(&mut salt).map_err(Error::crypto)?;
    let cipher = argon2_key(kdf, false, rk.expose().as_bytes(), &salt)?;
    let af = af_split(volume_key)?;
    let mut area = vec![0u8; RECOVERY_AREA_BYTES as usize];
    area[..af.len()].copy_from_slice(&af);
    let enc_len = af.len().div_ceil(AREA_SECTOR) * AREA_SECTOR;
    cipher.encrypt_sectors(0, AREA_SECTOR, &mut area[..enc_len])?;
    let json = json!({
        "type": "luks2",
        "key_size": volume_key.len(),
        "af": {"type": "luks1", "stripes": AF_STRIPES, "hash": "sha256"},
        "area": {
            "type": "raw",
            "offset": area_offset.to_string(),
            "size": RECOVERY_AREA_BYTES.to_string(),
            "encryption": "aes-xts-plain64",
            "key_size": AREA_KEY_BYTES,
        },
        "kdf": {
            "type": "argon2id",
            "time": kdf.time,
            "memory": kdf.memory_kib,
            "cpus": kdf.lanes,
            "salt": openssl::base64::encode_block(&salt),
        },
    });
    Ok((json, area))
}

/// Opens keyslot `id` with `rk`: the candidate volume key (to be checked against the keyslot's
/// digest by the caller). `read` reads the keyslots area. Errors say why the slot was not tried.
pub(crate) fn open_keyslot(
    id: &str,
    v: &Value,
    ks_start: u64,
    ks_end: u64,
    rk: &RecoveryKey,
    read: &dyn Fn(&mut [u8], u64) -> std::io::Result<()>,
) -> Result<SecretBytes> {
    let slot = parse_slot(id, v, ks_start, ks_end).map_err(Error::State)?;
    let af_len = slot.key_size * AF_STRIPES;
    let enc_len = af_len.div_ceil(AREA_SECTOR) * AREA_SECTOR;
    debug_assert!(enc_len as u64 <= slot.area_size);
    let cipher = argon2_key(&slot.kdf, slot.argon2i, rk.expose().as_bytes(), &slot.salt)?;
    let mut area = Zeroizing::new(vec![0u8; enc_len]);
    read(&mut area, slot.area_offset).map_err(Error::io("reading the recovery keyslot area"))?;
    cipher.decrypt_sectors(0, AREA_SECTOR, &mut area)?;
    Ok(af_merge(&area[..af_len], slot.key_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_typos_are_caught() {
        let k = RecoveryKey::generate().unwrap();
        assert_eq!(k.expose().len(), TEXT_LEN);
        let spaced = k.expose().replace('-', " ");
        assert_eq!(RecoveryKey::parse(&spaced).unwrap().expose(), k.expose());
        assert_eq!(
            RecoveryKey::parse(&format!("{}\n", k.expose().replace('-', "")))
                .unwrap()
                .expose(),
            k.expose()
        );
        // One digit changed: a multiple of 11 changed in one digit is never a multiple of 11.
        let mut t = k.expose().as_bytes().to_vec();
        t[9] = if t[9] == b'9' { b'0' } else { t[9] + 1 };
        let e = RecoveryKey::parse(std::str::from_utf8(&t).unwrap()).unwrap_err();
        assert!(e.to_string().contains("group 2"), "{e}");
        assert!(RecoveryKey::parse("12345").is_err());
        assert!(RecoveryKey::parse(&format!("{}x", k.expose())).is_err());
        // 720896 = 11 × 65536: a multiple of 11 but not a 16-bit group.
        let big = format!("720896{}", &k.expose()[6..]);
        assert!(RecoveryKey::parse(&big).is_err());
        assert!(!format!("{k:?}").contains(&k.expose()[..6]));
    }

    #[test]
    fn af_split_merges_back() {
        let key: Vec<u8> = (0..64u8).collect();
        let m = af_split(&key).unwrap();
        assert_eq!(af_merge(&m, 64).expose(), &key[..]);
        let m = af_split(&key[..32]).unwrap();
        assert_eq!(af_merge(&m, 32).expose(), &key[..32]);
    }

    /// Hostile keyslots are refused with a reason before any KDF work, never a panic.
    #[test]
    fn hostile_keyslots_are_refused_before_the_kdf() {
        let good = || {
            json!({"type": "luks2", "key_size": 32,
                "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
                "area": {"type": "raw", "offset": "1048576", "size": "258048",
                         "encryption": "aes-xts-plain64", "key_size": 64},
                "kdf": {"type": "argon2id", "time": 4, "memory": 262144, "cpus": 4,
                        "salt": openssl::base64::encode_block(&[7u8; 32])}})
        };
        let (start, end) = (32768, 2 << 20);
        assert!(parse_slot("0", &good(), start, end).is_ok());
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "memory",
                Box::new(|v| v["kdf"]["memory"] = json!(4u64 << 20)),
            ),
            ("memory", Box::new(|v| v["kdf"]["memory"] = json!(u64::MAX))),
            ("time", Box::new(|v| v["kdf"]["time"] = json!(1000))),
            (
                "work",
                Box::new(|v| {
                    v["kdf"]["memory"] = json!(1 << 20);
                    v["kdf"]["time"] = json!(5);
                }),
            ),
            ("lanes", Box::new(|v| v["kdf"]["cpus"] = json!(0))),
            ("KDF", Box::new(|v| v["kdf"]["type"] = json!("pbkdf2"))),
            ("salt", Box::new(|v| v["kdf"]["salt"] = json!("!!"))),
            (
                "salt",
                Box::new(|v| v["kdf"]["salt"] = json!("A".repeat(100_000))),
            ),
            (
                "outside",
                Box::new(|v| v["area"]["offset"] = json!("18446744073709551615")),
            ),
            ("outside", Box::new(|v| v["area"]["size"] = json!("4096"))),
            ("outside", Box::new(|v| v["area"]["offset"] = json!("0"))),
            ("decimal", Box::new(|v| v["area"]["offset"] = json!("-1"))),
            ("key_size", Box::new(|v| v["key_size"] = json!(4096))),
            ("anti-forensic", Box::new(|v| v["af"]["stripes"] = json!(1))),
            (
                "raw",
                Box::new(|v| v["area"]["encryption"] = json!("cipher_null")),
            ),
            ("missing", Box::new(|v| v["kdf"] = json!(null))),
            ("not an object", Box::new(|v| *v = json!("x"))),
            ("luks2", Box::new(|v| v["type"] = json!("luks1"))),
        ];
        for (want, f) in cases {
            let mut v = good();
            f(&mut v);
            let Err(e) = parse_slot("3", &v, start, end) else {
                panic!("accepted: {v}");
            };
            assert!(
                e.starts_with("keyslot 3: ") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn kdf_bounds_refuse_costly_headers() {
        assert!(RecoveryKdf::default().check().is_ok());
        let big = RecoveryKdf {
            memory_kib: 4 << 20,
            ..Default::default()
        };
        assert!(big.check().is_err());
        let long = RecoveryKdf {
            memory_kib: 1 << 20,
            time: 8,
            lanes: 4,
        };
        assert!(long.check().unwrap_err().contains("work"));
    }
}
