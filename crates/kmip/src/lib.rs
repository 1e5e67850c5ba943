//! KMIP for atrest.
//!
//! - [`ttlv`]: the TTLV codec — strict, bounded, no I/O.
//! - [`message`]: KMIP 1.0–2.1 request and response messages and the operations atrest uses,
//!   in both the 1.x (Template-Attribute) and 2.x (Attributes) encodings — no I/O.
//! - [`client`]: a KMIP client over mutual TLS with version negotiation, timeouts and failover.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod message;
pub mod ttlv;

mod registry;

/// The name of value `value` of the KMIP enumeration (or mask bit) `enumeration`, e.g.
/// `enum_name("Result Reason", 1) == Some("Item Not Found")`.
pub fn enum_name(enumeration: &str, value: u32) -> Option<&'static str> {
    let values = registry::values(enumeration)?;
    values.iter().find(|(v, _)| *v == value).map(|&(_, n)| n)
}

/// The value of the KMIP enumeration value named `name` in `enumeration`.
pub fn enum_value(enumeration: &str, name: &str) -> Option<u32> {
    let values = registry::values(enumeration)?;
    values.iter().find(|(_, n)| *n == name).map(|&(v, _)| v)
}
