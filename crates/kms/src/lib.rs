//! The KMIP server bundled with atrest.
