//! The one grammar of sizes, for every flag and config-file entry that takes one: a number of
//! bytes, optionally followed by K, M, G or T — powers of 1024 — written also KB/KiB, MB/MiB,
//! GB/GiB, TB/TiB, in any case (`4096`, `64K`, `16M`, `2GiB`, `1t`).

/// Parses a size (see the module documentation); the error says what is wrong and how to
/// write one. Usable as a clap `value_parser`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let how = "write a number of bytes, optionally with K, M, G or T (powers of 1024), e.g. 64M";
    if num.is_empty() {
        return Err(format!("size {s:?} does not start with a number; {how}"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is too large"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("size {s:?}: unknown unit {:?}; {how}", unit.trim())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn one_grammar() {
        for (s, v) in [
            ("4096", 4096),
            ("0", 0),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("16M", 16 << 20),
            ("16 MiB", 16 << 20),
            ("16MB", 16 << 20),
            ("2GiB", 2 << 30),
            ("1G", 1 << 30),
            ("1t", 1 << 40),
            ("512B", 512),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for s in [
            "",
            "M",
            "2X",
            "1.5G",
            "-1",
            "99999999999T",
            "18446744073709551616",
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains(&format!("{s:?}")), "{s}: {e}");
        }
    }
}
