//! The TTLV encoding of KMIP (KMIP 1.x spec §9.1, 2.x spec §10.1): Tag (3 bytes), Type (1 byte),
//! Length (4 bytes, big-endian, padding excluded), Value (padded with zeros to a multiple of 8).
//!
//! The decoder is strict and bounded: every length is checked against the buffer and the parent
//! structure, padding must be zero, fixed-size types must have their fixed length, text must be
//! UTF-8, nesting is limited in depth and the whole message in size. It never panics and never
//! allocates more than the input it was given. Errors say where they happened (byte offset and
//! the path of tags leading there).
//!
//! This codec is written here rather than taken from a crate: the only published TTLV codec
//! (`kmip-ttlv`) is serde-driven, client-only in practice and unmaintained since 2023, and a
//! server must decode requests as strictly as a client decodes responses.

use std::fmt;

use zeroize::Zeroize;

/// Largest message the decoder accepts by default: 1 MiB. KMIP messages atrest exchanges are
/// a few hundred bytes; this bounds what a hostile peer can make us buffer.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1 << 20;

/// Deepest nesting of Structures the decoder accepts by default. The deepest KMIP message in
/// the 1.x and 2.x specs nests about 10 levels (Response Message / Batch Item / Response Payload /
/// Template-Attribute / Attribute / Attribute Value / …); 32 leaves room and stops stack
/// exhaustion by a message of nested empty structures.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Length of a TTLV item header: tag (3), type (1), length (4).
pub const HEADER_LEN: usize = 8;

/// A KMIP tag: the 3 significant bytes of the item's first 4 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl Tag {
    /// The name of the tag in the KMIP specification tables, if it has one.
    pub fn name(self) -> Option<&'static str> {
        crate::registry::TAG_NAMES
            .binary_search_by_key(&self.0, |&(t, _)| t)
            .ok()
            .map(|i| crate::registry::TAG_NAMES[i].1)
    }

    /// The tag whose specification name is `name` (e.g. "Cryptographic Algorithm").
    pub fn from_name(name: &str) -> Option<Tag> {
        crate::registry::TAG_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|&(t, _)| Tag(t))
    }

    /// Whether the tag is in the extension range 0x54xxxx.
    pub fn is_extension(self) -> bool {
        self.0 >> 16 == 0x54
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:06X})", self.0),
            None => write!(f, "0x{:06X}", self.0),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "0x{:06X}", self.0),
        }
    }
}

/// The item types of TTLV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ItemType {
    /// Structure: a sequence of items.
    Structure = 0x01,
    /// Integer: 32-bit signed, in 8 bytes with padding.
    Integer = 0x02,
    /// Long Integer: 64-bit signed.
    LongInteger = 0x03,
    /// Big Integer: two's complement, a multiple of 8 bytes.
    BigInteger = 0x04,
    /// Enumeration: 32-bit unsigned, in 8 bytes with padding.
    Enumeration = 0x05,
    /// Boolean: 0 or 1 in 8 bytes.
    Boolean = 0x06,
    /// Text String: UTF-8, padded to a multiple of 8 bytes.
    TextString = 0x07,
    /// Byte String: padded to a multiple of 8 bytes.
    ByteString = 0x08,
    /// Date-Time: POSIX seconds, 64-bit signed.
    DateTime = 0x09,
    /// Interval: seconds, 32-bit unsigned, in 8 bytes with padding.
    Interval = 0x0A,
    /// Date-Time Extended (KMIP 2.0 and later): POSIX microseconds, 64-bit signed.
    DateTimeExtended = 0x0B,
}

impl ItemType {
    fn from_byte(b: u8) -> Option<ItemType> {
        Some(match b {
            0x01 => ItemType::Structure,
            0x02 => ItemType::Integer,
            0x03 => ItemType::LongInteger,
            0x04 => ItemType::BigInteger,
            0x05 => ItemType::Enumeration,
            0x06 => ItemType::Boolean,
            0x07 => ItemType::TextString,
            0x08 => ItemType::ByteString,
            0x09 => ItemType::DateTime,
            0x0A => ItemType::Interval,
            0x0B => ItemType::DateTimeExtended,
            _ => return None,
        })
    }

    /// The name used in the specification ("Long Integer", "Date-Time", …).
    pub fn name(self) -> &'static str {
        match self {
            ItemType::Structure => "Structure",
            ItemType::Integer => "Integer",
            ItemType::LongInteger => "Long Integer",
            ItemType::BigInteger => "Big Integer",
            ItemType::Enumeration => "Enumeration",
            ItemType::Boolean => "Boolean",
            ItemType::TextString => "Text String",
            ItemType::ByteString => "Byte String",
            ItemType::DateTime => "Date-Time",
            ItemType::Interval => "Interval",
            ItemType::DateTimeExtended => "Date-Time Extended",
        }
    }

    /// The fixed value length of the type, if it has one.
    fn fixed_len(self) -> Option<usize> {
        match self {
            ItemType::Integer | ItemType::Enumeration | ItemType::Interval => Some(4),
            ItemType::LongInteger
            | ItemType::Boolean
            | ItemType::DateTime
            | ItemType::DateTimeExtended => Some(8),
            _ => None,
        }
    }
}

/// The value of a TTLV item.
///
/// Byte Strings may hold key material: they are zeroed when dropped and `Debug` prints only
/// their length.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// The items of a Structure.
    Structure(Vec<Item>),
    /// An Integer.
    Integer(i32),
    /// A Long Integer.
    LongInteger(i64),
    /// Two's-complement big-endian bytes, sign-extended to a multiple of 8 bytes (as on the wire).
    BigInteger(Vec<u8>),
    /// An Enumeration's value.
    Enumeration(u32),
    /// A Boolean.
    Boolean(bool),
    /// A Text String.
    TextString(String),
    /// A Byte String.
    ByteString(Vec<u8>),
    /// POSIX time in seconds (UTC).
    DateTime(i64),
    /// Seconds.
    Interval(u32),
    /// POSIX time in microseconds (UTC).
    DateTimeExtended(i64),
}

impl Drop for Value {
    fn drop(&mut self) {
        if let Value::ByteString(b) = self {
            b.zeroize();
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Structure(items) => f.debug_list().entries(items).finish(),
            Value::Integer(v) => write!(f, "Integer({v})"),
            Value::LongInteger(v) => write!(f, "LongInteger({v})"),
            Value::BigInteger(v) => write!(f, "BigInteger({} bytes)", v.len()),
            Value::Enumeration(v) => write!(f, "Enumeration(0x{v:08X})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::TextString(v) => write!(f, "TextString({v:?})"),
            Value::ByteString(v) => write!(f, "ByteString(<{} bytes redacted>)", v.len()),
            Value::DateTime(v) => write!(f, "DateTime({v})"),
            Value::Interval(v) => write!(f, "Interval({v})"),
            Value::DateTimeExtended(v) => write!(f, "DateTimeExtended({v})"),
        }
    }
}

impl Value {
    /// The item type of this value.
    pub fn item_type(&self) -> ItemType {
        match self {
            Value::Structure(_) => ItemType::Structure,
            Value::Integer(_) => ItemType::Integer,
            Value::LongInteger(_) => ItemType::LongInteger,
            Value::BigInteger(_) => ItemType::BigInteger,
            Value::Enumeration(_) => ItemType::Enumeration,
            Value::Boolean(_) => ItemType::Boolean,
            Value::TextString(_) => ItemType::TextString,
            Value::ByteString(_) => ItemType::ByteString,
            Value::DateTime(_) => ItemType::DateTime,
            Value::Interval(_) => ItemType::Interval,
            Value::DateTimeExtended(_) => ItemType::DateTimeExtended,
        }
    }
}

/// One TTLV item: a tag and a value.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    /// The item's tag.
    pub tag: Tag,
    /// The item's value (its type is the value's variant).
    pub value: Value,
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:?}", self.tag, self.value)
    }
}

impl Item {
    /// An item of `tag` and `value`.
    pub fn new(tag: Tag, value: Value) -> Item {
        Item { tag, value }
    }

    /// A Structure item of `tag` holding `children`.
    pub fn structure(tag: Tag, children: Vec<Item>) -> Item {
        Item::new(tag, Value::Structure(children))
    }

    /// The children of a Structure (empty for any other type).
    pub fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(c) => c,
            _ => &[],
        }
    }

    /// The first child with `tag`.
    pub fn child(&self, tag: Tag) -> Option<&Item> {
        self.children().iter().find(|c| c.tag == tag)
    }

    /// Every child with `tag`, in order.
    pub fn children_with(&self, tag: Tag) -> impl Iterator<Item = &Item> {
        self.children().iter().filter(move |c| c.tag == tag)
    }

    /// Length of the encoded item, header and padding included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + padded(self.value_len())
    }

    fn value_len(&self) -> usize {
        match &self.value {
            Value::Structure(c) => c.iter().map(Item::encoded_len).sum(),
            Value::Integer(_) | Value::Enumeration(_) | Value::Interval(_) => 4,
            Value::LongInteger(_)
            | Value::Boolean(_)
            | Value::DateTime(_)
            | Value::DateTimeExtended(_) => 8,
            Value::BigInteger(b) => b.len(),
            Value::TextString(s) => s.len(),
            Value::ByteString(b) => b.len(),
        }
    }

    /// Encodes the item into a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Appends the encoded item to `out`.
    ///
    /// Big Integers are written as given (the caller keeps them a multiple of 8 bytes; see
    /// [`big_integer_from_bytes`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.value_len();
        let tag = self.tag.0.to_be_bytes();
        out.extend_from_slice(&tag[1..4]);
        out.push(self.value.item_type() as u8);
        // A single item larger than 4 GiB cannot be expressed; messages are bounded far below.
        out.extend_from_slice(&(len as u32).to_be_bytes());
        match &self.value {
            Value::Structure(c) => {
                for item in c {
                    item.encode(out);
                }
            }
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::LongInteger(v) | Value::DateTime(v) | Value::DateTimeExtended(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Boolean(v) => out.extend_from_slice(&(*v as u64).to_be_bytes()),
            Value::BigInteger(b) | Value::ByteString(b) => out.extend_from_slice(b),
            Value::TextString(s) => out.extend_from_slice(s.as_bytes()),
        }
        out.resize(out.len() + padded(len) - len, 0);
    }
}

/// Sign-extends two's-complement big-endian bytes to a multiple of 8 bytes, as a Big Integer
/// value must be on the wire.
pub fn big_integer_from_bytes(bytes: &[u8]) -> Vec<u8> {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let total = padded(bytes.len().max(1));
    let mut out = vec![if negative { 0xFF } else { 0 }; total - bytes.len()];
    out.extend_from_slice(bytes);
    out
}

fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// Bounds on what the decoder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message, in bytes (header included).
    pub max_message_len: usize,
    /// Deepest nesting of Structures (the top-level item is depth 1).
    pub max_depth: usize,
    /// Accept tags outside 0x42xxxx (KMIP) and 0x54xxxx (extensions). The spec defines no
    /// others; some servers put vendor data under such tags. Off by default.
    pub any_tag_prefix: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_depth: DEFAULT_MAX_DEPTH,
            any_tag_prefix: false,
        }
    }
}

/// Why a TTLV decode failed, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset of the item (or field) at fault, from the start of the input.
    pub offset: usize,
    /// Tags of the enclosing structures, outermost first, then the item at fault if known.
    pub path: Vec<Tag>,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What was wrong with the input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Fewer bytes than an item header.
    TruncatedHeader {
        /// Bytes left in the parent or the input.
        available: usize,
    },
    /// The item announces more bytes than its parent (or the input) holds.
    Overrun {
        /// Bytes the item needs (header, value and padding).
        needed: usize,
        /// Bytes left in the parent or the input.
        available: usize,
    },
    /// The tag's first byte is neither 0x42 (KMIP) nor 0x54 (extension).
    BadTagPrefix {
        /// The tag read (3 bytes).
        tag: u32,
    },
    /// The type byte is not a TTLV item type.
    UnknownType {
        /// The type byte read.
        byte: u8,
    },
    /// A fixed-size type with another length, or a Big Integer / Structure length that is not a
    /// multiple of 8.
    BadLength {
        /// The item's type.
        item_type: ItemType,
        /// The length it announces, in bytes.
        length: usize,
    },
    /// Padding bytes that are not zero.
    NonZeroPadding,
    /// A Boolean other than 0 or 1.
    BadBoolean {
        /// The value read.
        value: u64,
    },
    /// A Text String that is not UTF-8.
    InvalidUtf8,
    /// Structures nested deeper than the limit.
    TooDeep {
        /// The deepest nesting allowed.
        max: usize,
    },
    /// The message is larger than the limit.
    TooLarge {
        /// The message's length (as given, or as its header announces), in bytes.
        length: usize,
        /// The largest length allowed, in bytes.
        max: usize,
    },
    /// Bytes after the top-level item.
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::TruncatedHeader { available } => {
                write!(f, "truncated item header ({available} of 8 bytes)")
            }
            DecodeErrorKind::Overrun { needed, available } => write!(
                f,
                "item needs {needed} bytes but only {available} remain in its parent"
            ),
            DecodeErrorKind::BadTagPrefix { tag } => write!(
                f,
                "tag 0x{tag:06X} is neither a KMIP tag (0x42xxxx) nor an extension (0x54xxxx)"
            ),
            DecodeErrorKind::UnknownType { byte } => write!(f, "unknown item type 0x{byte:02X}"),
            DecodeErrorKind::BadLength { item_type, length } => match item_type.fixed_len() {
                Some(n) => write!(f, "{} of length {length}, must be {n}", item_type.name()),
                None => write!(
                    f,
                    "{} of length {length}, must be a multiple of 8",
                    item_type.name()
                ),
            },
            DecodeErrorKind::NonZeroPadding => f.write_str("padding bytes are not zero"),
            DecodeErrorKind::BadBoolean { value } => {
                write!(f, "Boolean value {value}, must be 0 or 1")
            }
            DecodeErrorKind::InvalidUtf8 => f.write_str("Text String is not valid UTF-8"),
            DecodeErrorKind::TooDeep { max } => {
                write!(f, "structures nested deeper than {max} levels")
            }
            DecodeErrorKind::TooLarge { length, max } => {
                write!(f, "message of {length} bytes exceeds the limit of {max}")
            }
            DecodeErrorKind::TrailingBytes { count } => {
                write!(f, "{count} bytes after the end of the message")
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid TTLV at byte {}", self.offset)?;
        if !self.path.is_empty() {
            f.write_str(" (in ")?;
            for (i, t) in self.path.iter().enumerate() {
                if i > 0 {
                    f.write_str(" / ")?;
                }
                write!(f, "{t}")?;
            }
            f.write_str(")")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes exactly one TTLV item that fills `input`.
pub fn decode(input: &[u8], limits: &Limits) -> Result<Item, DecodeError> {
    if input.len() > limits.max_message_len {
        return Err(DecodeError {
            offset: 0,
            path: Vec::new(),
            kind: DecodeErrorKind::TooLarge {
                length: input.len(),
                max: limits.max_message_len,
            },
        });
    }
    let mut d = Decoder {
        input,
        limits,
        path: Vec::new(),
    };
    let (item, end) = d.item(0, input.len(), 1)?;
    if end != input.len() {
        return Err(DecodeError {
            offset: end,
            path: Vec::new(),
            kind: DecodeErrorKind::TrailingBytes {
                count: input.len() - end,
            },
        });
    }
    Ok(item)
}

/// Reads the total length (header + padded value) of the item whose first 8 bytes are
/// `header`: how many bytes a stream reader must read for the whole message. Checks the tag
/// prefix and type so that garbage is refused before anything is buffered.
pub fn message_len(header: &[u8; HEADER_LEN], limits: &Limits) -> Result<usize, DecodeError> {
    let err = |kind| DecodeError {
        offset: 0,
        path: Vec::new(),
        kind,
    };
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    if !limits.any_tag_prefix && header[0] != 0x42 && header[0] != 0x54 {
        return Err(err(DecodeErrorKind::BadTagPrefix { tag }));
    }
    if header[3] != ItemType::Structure as u8 {
        return Err(err(match ItemType::from_byte(header[3]) {
            None => DecodeErrorKind::UnknownType { byte: header[3] },
            Some(t) => DecodeErrorKind::BadLength {
                item_type: t,
                length: 0,
            },
        }));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if !len.is_multiple_of(8) {
        return Err(err(DecodeErrorKind::BadLength {
            item_type: ItemType::Structure,
            length: len,
        }));
    }
    let total = HEADER_LEN + len;
    if total > limits.max_message_len {
        return Err(err(DecodeErrorKind::TooLarge {
            length: total,
            max: limits.max_message_len,
        }));
    }
    Ok(total)
}

struct Decoder<'a> {
    input: &'a [u8],
    limits: &'a Limits,
    path: Vec<Tag>,
}

impl Decoder<'_> {
    fn fail(&self, offset: usize, tag: Option<Tag>, kind: DecodeErrorKind) -> DecodeError {
        let mut path = self.path.clone();
        path.extend(tag);
        DecodeError { offset, path, kind }
    }

    /// Decodes the item at `pos`, which must end at or before `end`. Returns it and the offset
    /// just past its padding.
    fn item(&mut self, pos: usize, end: usize, depth: usize) -> Result<(Item, usize), DecodeError> {
        let available = end - pos;
        if available < HEADER_LEN {
            return Err(self.fail(pos, None, DecodeErrorKind::TruncatedHeader { available }));
        }
        let h = &self.input[pos..pos + HEADER_LEN];
        let tag_raw = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let tag = Tag(tag_raw);
        if !self.limits.any_tag_prefix && h[0] != 0x42 && h[0] != 0x54 {
            return Err(self.fail(pos, None, DecodeErrorKind::BadTagPrefix { tag: tag_raw }));
        }
        let Some(item_type) = ItemType::from_byte(h[3]) else {
            return Err(self.fail(pos, Some(tag), DecodeErrorKind::UnknownType { byte: h[3] }));
        };
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let bad_len = || DecodeErrorKind::BadLength {
            item_type,
            length: len,
        };
        match item_type.fixed_len() {
            Some(n) if n != len => return Err(self.fail(pos, Some(tag), bad_len())),
            None if matches!(item_type, ItemType::Structure) && !len.is_multiple_of(8) => {
                return Err(self.fail(pos, Some(tag), bad_len()));
            }
            None if matches!(item_type, ItemType::BigInteger)
                && (!len.is_multiple_of(8) || len == 0) =>
            {
                return Err(self.fail(pos, Some(tag), bad_len()));
            }
            _ => {}
        }
        let needed = HEADER_LEN + padded(len);
        if needed > available {
            return Err(self.fail(
                pos,
                Some(tag),
                DecodeErrorKind::Overrun { needed, available },
            ));
        }
        let vstart = pos + HEADER_LEN;
        let vend = vstart + len;
        let next = pos + needed;
        if self.input[vend..next].iter().any(|&b| b != 0) {
            return Err(self.fail(vend, Some(tag), DecodeErrorKind::NonZeroPadding));
        }
        let v = &self.input[vstart..vend];
        let value = match item_type {
            ItemType::Structure => {
                if depth > self.limits.max_depth {
                    return Err(self.fail(
                        pos,
                        Some(tag),
                        DecodeErrorKind::TooDeep {
                            max: self.limits.max_depth,
                        },
                    ));
                }
                self.path.push(tag);
                let mut children = Vec::new();
                let mut p = vstart;
                while p < vend {
                    let (child, n) = self.item(p, vend, depth + 1)?;
                    children.push(child);
                    p = n;
                }
                self.path.pop();
                Value::Structure(children)
            }
            ItemType::Integer => Value::Integer(i32::from_be_bytes(arr4(v))),
            ItemType::Enumeration => Value::Enumeration(u32::from_be_bytes(arr4(v))),
            ItemType::Interval => Value::Interval(u32::from_be_bytes(arr4(v))),
            ItemType::LongInteger => Value::LongInteger(i64::from_be_bytes(arr8(v))),
            ItemType::DateTime => Value::DateTime(i64::from_be_bytes(arr8(v))),
            ItemType::DateTimeExtended => Value::DateTimeExtended(i64::from_be_bytes(arr8(v))),
            ItemType::Boolean => match u64::from_be_bytes(arr8(v)) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                value => {
                    return Err(self.fail(pos, Some(tag), DecodeErrorKind::BadBoolean { value }));
                }
            },
            ItemType::BigInteger => Value::BigInteger(v.to_vec()),
            ItemType::ByteString => Value::ByteString(v.to_vec()),
            ItemType::TextString => match std::str::from_utf8(v) {
                Ok(s) => Value::TextString(s.to_owned()),
                Err(_) => return Err(self.fail(vstart, Some(tag), DecodeErrorKind::InvalidUtf8)),
            },
        };
        Ok((Item { tag, value }, next))
    }
}

fn arr4(v: &[u8]) -> [u8; 4] {
    let mut a = [0; 4];
    a.copy_from_slice(v);
    a
}

fn arr8(v: &[u8]) -> [u8; 8] {
    let mut a = [0; 8];
    a.copy_from_slice(v);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn spec_structure_round_trip() {
        let bytes =
            hex("42002001000000204200040500000004000000FE000000004200050200000004000000FF00000000");
        let item = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(item.children().len(), 2);
        assert_eq!(item.to_bytes(), bytes);
    }

    #[test]
    fn depth_limit_is_enforced() {
        // 40 nested empty structures.
        let mut item = Item::structure(Tag(0x420079), vec![]);
        for _ in 0..40 {
            item = Item::structure(Tag(0x420079), vec![item]);
        }
        let err = decode(&item.to_bytes(), &Limits::default()).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::TooDeep { max: 32 }),
            "{err}"
        );
    }

    #[test]
    fn size_limit_is_enforced_before_decoding() {
        let limits = Limits {
            max_message_len: 64,
            ..Limits::default()
        };
        let header = [0x42, 0x00, 0x7B, 0x01, 0x7F, 0xFF, 0xFF, 0xF8];
        let err = message_len(&header, &limits).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::TooLarge { .. }));
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn big_integer_sign_extension() {
        assert_eq!(big_integer_from_bytes(&[0x80]), hex("FFFFFFFFFFFFFF80"));
        assert_eq!(big_integer_from_bytes(&[0x7F]), hex("000000000000007F"));
        assert_eq!(big_integer_from_bytes(&[]), hex("0000000000000000"));
    }

    #[test]
    fn byte_strings_are_redacted_in_debug() {
        let item = Item::new(Tag(0x420043), Value::ByteString(vec![0xAB; 32]));
        let s = format!("{item:?}");
        assert!(
            !s.contains("AB") && !s.contains("ab") && !s.contains("171"),
            "{s}"
        );
        assert!(s.contains("Key Material") && s.contains("32 bytes"), "{s}");
    }
}
