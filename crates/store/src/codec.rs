//! A small bounded binary codec for the records the store keeps in its tables.
//!
//! Every field is little-endian; strings and byte strings carry a `u32` length prefix that is
//! checked against the bytes left and against a per-field limit before anything is allocated.
//! Decoding never panics: every failure is a [`DecodeError`] naming the field and its offset.

use std::fmt;

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The record type.
    pub record: &'static str,
    /// The field being read.
    pub field: &'static str,
    /// Byte offset of the field in the record.
    pub offset: usize,
    /// What was wrong.
    pub problem: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} record: field {} at byte {}: {}",
            self.record, self.field, self.offset, self.problem
        )
    }
}

impl std::error::Error for DecodeError {}

/// Appends fields to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Writer {
        Writer { buf: Vec::new() }
    }
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// A length-prefixed byte string. Callers check lengths against the field limits first,
    /// so the length always fits in a `u32`.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32).raw(v)
    }
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from a record, never past its end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    record: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(record: &'static str, buf: &'a [u8]) -> Reader<'a> {
        Reader {
            record,
            buf,
            pos: 0,
        }
    }

    pub(crate) fn err(&self, field: &'static str, problem: &'static str) -> DecodeError {
        DecodeError {
            record: self.record,
            field,
            offset: self.pos,
            problem,
        }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(self.err(field, "the record ends inside this field"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let s = self.take(field, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    /// A length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(self.err(field, "longer than its limit"));
        }
        self.take(field, n)
    }
    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let b = self.bytes(field, max)?;
        std::str::from_utf8(b).map_err(|_| self.err(field, "not UTF-8"))
    }
    /// Fails when bytes are left over.
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(self.err("end", "unexpected bytes after the last field"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut w = Writer::new();
        w.u8(7)
            .u32(9)
            .u64(10)
            .i64(-3)
            .str("héllo")
            .bytes(&[1, 2, 3]);
        let b = w.finish();
        let mut r = Reader::new("test", &b);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 9);
        assert_eq!(r.u64("c").unwrap(), 10);
        assert_eq!(r.i64("d").unwrap(), -3);
        assert_eq!(r.str("e", 16).unwrap(), "héllo");
        assert_eq!(r.bytes("f", 3).unwrap(), &[1, 2, 3]);
        r.end().unwrap();
        // Every truncation fails cleanly.
        for cut in 0..b.len() {
            let mut r = Reader::new("test", &b[..cut]);
            let res = (|| {
                r.u8("a")?;
                r.u32("b")?;
                r.u64("c")?;
                r.i64("d")?;
                r.str("e", 16)?;
                r.bytes("f", 3)?;
                r.end()
            })();
            assert!(res.is_err());
        }
        // A length over the limit is refused before reading.
        let mut r = Reader::new("test", &[255, 255, 255, 255]);
        let e = r.bytes("big", 10).unwrap_err();
        assert_eq!(e.problem, "longer than its limit");
    }
}
