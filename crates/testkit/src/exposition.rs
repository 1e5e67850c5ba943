//! A strict reader of the Prometheus text exposition format 0.0.4, for tests of `/metrics`:
//! every line is a HELP, a TYPE or a sample; every sample belongs to a family typed before it,
//! families do not interleave, nothing repeats; counters end in `_total`; every histogram has,
//! per label set, buckets in increasing `le` with cumulative counts, a `+Inf` bucket equal to
//! its `_count`, and a `_sum`.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample: its name, labels (in order) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with its `_total`, `_bucket`, ... suffix).
    pub name: String,
    /// The labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition: family types and every sample in order.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Each family's TYPE (`counter`, `gauge`, `histogram`, ...) by family name.
    pub types: BTreeMap<String, String>,
    /// Every sample, in the order written.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// The one value of `name` with `labels`; panics when there is not exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let f = self.find(name, labels);
        assert_eq!(f.len(), 1, "{name} {labels:?}: {f:?}");
        f[0].value
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || (colon && ch == ':'))
}

fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

fn labels(mut s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").ok_or("a label without =\"")?;
        if !is_name(name, false) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => v.push('\\'),
                    Some((_, '"')) => v.push('"'),
                    Some((_, 'n')) => v.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => v.push(c),
            }
        };
        out.push((name.to_owned(), v));
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(out)
}

fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        {
            return Some(base);
        }
    }
    None
}

/// Parses `text` strictly; the first problem is returned with its line number.
pub fn parse(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut e = Exposition::default();
    let mut helps = HashSet::new();
    let mut done_families: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        let mut switch = |fam: &str, current: &mut Option<String>| -> Result<(), String> {
            if current.as_deref() != Some(fam) {
                if done_families.contains(fam) {
                    return Err(format!("family {fam} interleaved with another"));
                }
                if let Some(c) = current.take() {
                    done_families.insert(c);
                }
                *current = Some(fam.to_owned());
            }
            Ok(())
        };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text".into()))?;
            if !is_name(name, true) || !helps.insert(name.to_owned()) {
                return Err(at("bad or repeated HELP".into()));
            }
            switch(name, &mut current).map_err(at)?;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without type".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if !is_name(name, true) || e.types.contains_key(name) {
                return Err(at("bad or repeated TYPE".into()));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("a counter's name should end in _total".into()));
            }
            switch(name, &mut current).map_err(at)?;
            if e.samples
                .iter()
                .any(|s| family_of(&s.name, &e.types) == Some(name))
            {
                return Err(at("TYPE after the family's samples".into()));
            }
            e.types.insert(name.to_owned(), kind.to_owned());
        } else if line.starts_with('#') || line.trim().is_empty() {
            return Err(at("neither HELP, TYPE nor a sample".into()));
        } else {
            let (series, val) = match line.find('{') {
                Some(b) => {
                    let close = line.rfind('}').ok_or_else(|| at("no closing }".into()))?;
                    let name = &line[..b];
                    let l = labels(&line[b + 1..close]).map_err(at)?;
                    ((name, l), line[close + 1..].trim_start_matches(' '))
                }
                None => {
                    let (name, v) = line.split_once(' ').ok_or_else(|| at("no value".into()))?;
                    ((name, Vec::new()), v)
                }
            };
            let (name, labels) = series;
            if !is_name(name, true) {
                return Err(at("bad metric name".into()));
            }
            let mut parts = val.split(' ');
            let v = parts
                .next()
                .and_then(value)
                .ok_or_else(|| at("bad value".into()))?;
            if let Some(ts) = parts.next()
                && ts.parse::<i64>().is_err()
            {
                return Err(at("bad timestamp".into()));
            }
            if parts.next().is_some() {
                return Err(at("trailing text".into()));
            }
            let fam = family_of(name, &e.types)
                .ok_or_else(|| at("a sample of a family without TYPE".into()))?
                .to_owned();
            switch(&fam, &mut current).map_err(at)?;
            let mut key: Vec<_> = labels.clone();
            key.sort();
            if !seen.insert((name.to_owned(), format!("{key:?}"))) {
                return Err(at("the same series twice".into()));
            }
            if e.types[&fam] == "histogram"
                && name.ends_with("_bucket")
                && !labels.iter().any(|(k, _)| k == "le")
            {
                return Err(at("a bucket without le".into()));
            }
            e.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: v,
            });
        }
    }
    check_histograms(&e)?;
    Ok(e)
}

fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (fam, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        // Label set (without le) → buckets, sum, count.
        type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
        let mut by: HashMap<String, Series> = HashMap::new();
        for s in &e.samples {
            let mut rest: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            rest.sort();
            let k = format!("{rest:?}");
            let entry = by.entry(k).or_default();
            if s.name == format!("{fam}_bucket") {
                let le = value(s.label("le").unwrap_or("")).ok_or(format!("{fam}: bad le"))?;
                entry.0.push((le, s.value));
            } else if s.name == format!("{fam}_sum") {
                entry.1 = Some(s.value);
            } else if s.name == format!("{fam}_count") {
                entry.2 = Some(s.value);
            }
        }
        for (labels, (buckets, sum, count)) in by {
            if buckets.is_empty() && sum.is_none() && count.is_none() {
                continue;
            }
            let count = count.ok_or(format!("{fam}{labels}: no _count"))?;
            sum.ok_or(format!("{fam}{labels}: no _sum"))?;
            if !buckets.windows(2).all(|w| w[0].0 < w[1].0) {
                return Err(format!("{fam}{labels}: buckets not in increasing le"));
            }
            if !buckets.windows(2).all(|w| w[0].1 <= w[1].1) {
                return Err(format!("{fam}{labels}: bucket counts not cumulative"));
            }
            match buckets.last() {
                Some((le, n)) if le.is_infinite() && *n == count => {}
                _ => return Err(format!("{fam}{labels}: no +Inf bucket equal to _count")),
            }
        }
    }
    Ok(())
}

/// One plain HTTP GET of `path` on a metrics address (`HOST:PORT`): the status and the body
/// (de-chunked, strictly, when the answer is chunked).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// GET /metrics on `addr`: 200, read strictly by [`parse`] and checked by
/// [`crate::promtool_check`].
pub fn scrape(addr: &str) -> Exposition {
    let (s, text) = get(addr, "/metrics");
    assert_eq!(s, 200);
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    crate::promtool_check(&text);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\\\\\"} 3\n\
        # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
        h_sum 0.3\nh_count 2\n";

    #[test]
    fn accepts_a_good_exposition_and_reads_values() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.value("a_total", &[("x", "q\"\n\\")]), 3.0);
        assert_eq!(e.value("h_count", &[]), 2.0);
    }

    #[test]
    fn refuses_what_is_not_strictly_right() {
        for (bad, why) in [
            (GOOD.replace("h_count 2\n", "h_count 3\n"), "+Inf"),
            (
                GOOD.replace("h_bucket{le=\"0.1\"} 1", "h_bucket{le=\"0.1\"} 5"),
                "cumulative",
            ),
            (GOOD.replace("h_sum 0.3\n", ""), "_sum"),
            (
                GOOD.replace("a_total counter", "a_total gauge\n# TYPE a_total counter"),
                "TYPE",
            ),
            (GOOD.replace("a_total{", "b{"), "without TYPE"),
            (GOOD.replace(" 3\n", " three\n"), "bad value"),
            (GOOD.replace("# HELP h H.", "# a comment"), "neither"),
            (format!("{GOOD}a_total{{x=\"z\"}} 1\n"), "interleaved"),
            (GOOD.trim_end().to_owned(), "newline"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
