//! Configuration: typed key → value settings with a schema version, changed atomically.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Error, Result, storage};
use crate::store::{META, Store};

const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const SCHEMA_KEY: &str = "config.schema";
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest text or bytes value.
pub const MAX_VALUE_LEN: usize = 256 << 10;

/// A setting's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// true / false.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// UTF-8 text (up to [`MAX_VALUE_LEN`] bytes).
    Text(String),
    /// Bytes (up to [`MAX_VALUE_LEN`]).
    Bytes(Vec<u8>),
}

impl Value {
    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The number, if this is a float.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    /// The bytes, if these are bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::new();
        match self {
            Value::Bool(b) => {
                w.u8(0).u8(*b as u8);
            }
            Value::Int(i) => {
                w.u8(1).i64(*i);
            }
            Value::Float(f) => {
                w.u8(2).u64(f.to_bits());
            }
            Value::Text(s) => {
                check_len(s.len())?;
                w.u8(3).str(s);
            }
            Value::Bytes(b) => {
                check_len(b.len())?;
                w.u8(4).bytes(b);
            }
        }
        Ok(w.finish())
    }

    /// Decodes a stored value. Never panics.
    pub fn decode(b: &[u8]) -> Result<Value, DecodeError> {
        let mut r = Reader::new("configuration value", b);
        let v = match r.u8("type")? {
            0 => match r.u8("bool")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(r.err("bool", "neither 0 nor 1")),
            },
            1 => Value::Int(r.i64("int")?),
            2 => Value::Float(f64::from_bits(r.u64("float")?)),
            3 => Value::Text(r.str("text", MAX_VALUE_LEN)?.to_string()),
            4 => Value::Bytes(r.bytes("bytes", MAX_VALUE_LEN)?.to_vec()),
            _ => return Err(r.err("type", "unknown value type")),
        };
        r.end()?;
        Ok(v)
    }
}

fn check_len(n: usize) -> Result<()> {
    if n > MAX_VALUE_LEN {
        return Err(Error::Invalid(format!(
            "a configuration value of {n} bytes is longer than the limit of {MAX_VALUE_LEN} bytes: store large content as a recording"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "configuration key {key:?} is not valid: use 1 to {MAX_KEY_LEN} bytes of printable text"
        )));
    }
    Ok(())
}

/// One change of [`Config::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Sets a key.
    Set(String, Value),
    /// Deletes a key (no error when absent).
    Delete(String),
    /// Sets the schema version.
    SchemaVersion(u32),
}

pub(crate) fn init_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(CONFIG)
        .map_err(storage("open the configuration table"))?;
    Ok(())
}

fn schema_of(v: Option<&[u8]>) -> Result<u32> {
    match v {
        None => Ok(0),
        Some(b) => <[u8; 4]>::try_from(b)
            .map(u32::from_le_bytes)
            .map_err(|_| Error::Corrupt {
                what: "the configuration schema version".into(),
            }),
    }
}

/// The configuration of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    pub(crate) store: &'a Store,
}

impl Config<'_> {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Value>> {
        let txn = self.store.read()?;
        let t = txn
            .open_table(CONFIG)
            .map_err(storage("open the configuration"))?;
        let v = t.get(key).map_err(storage("read the configuration"))?;
        Ok(match v {
            Some(v) => Some(Value::decode(v.value())?),
            None => None,
        })
    }

    /// All settings, sorted by key.
    pub fn list(&self) -> Result<Vec<(String, Value)>> {
        self.list_prefix("")
    }

    /// The settings whose key starts with `prefix`, sorted by key.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Value)>> {
        let txn = self.store.read()?;
        let t = txn
            .open_table(CONFIG)
            .map_err(storage("open the configuration"))?;
        let mut out = Vec::new();
        for e in t
            .range(prefix..)
            .map_err(storage("read the configuration"))?
        {
            let (k, v) = e.map_err(storage("read the configuration"))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), Value::decode(v.value())?));
        }
        Ok(out)
    }

    /// The schema version (0 until set).
    pub fn schema_version(&self) -> Result<u32> {
        let txn = self.store.read()?;
        let t = txn.open_table(META).map_err(storage("open the metadata"))?;
        let v = t.get(SCHEMA_KEY).map_err(storage("read the metadata"))?;
        schema_of(v.as_ref().map(|v| v.value()))
    }

    /// Sets one key.
    pub fn set(&self, key: &str, value: Value) -> Result<()> {
        self.apply(&[Change::Set(key.to_string(), value)])
    }

    /// Deletes one key; returns whether it was set.
    pub fn delete(&self, key: &str) -> Result<bool> {
        self.update(|t| t.delete(key))
    }

    /// Applies all `changes` atomically: after a crash either all or none are there.
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        self.update(|t| {
            for c in changes {
                match c {
                    Change::Set(k, v) => t.set(k, v)?,
                    Change::Delete(k) => {
                        t.delete(k)?;
                    }
                    Change::SchemaVersion(n) => t.set_schema_version(*n)?,
                }
            }
            Ok(())
        })
    }

    /// Runs `f` in one transaction: it reads and changes settings (e.g. a schema migration),
    /// and everything it did is committed together when it returns `Ok`, or nothing when it
    /// returns an error.
    pub fn update<T>(&self, f: impl FnOnce(&mut ConfigTxn<'_>) -> Result<T>) -> Result<T> {
        self.store.write("change the configuration", false, |txn| {
            let mut t = ConfigTxn {
                table: txn
                    .open_table(CONFIG)
                    .map_err(storage("open the configuration"))?,
                meta: txn.open_table(META).map_err(storage("open the metadata"))?,
            };
            f(&mut t)
        })
    }
}

/// Settings inside one [`Config::update`] transaction.
pub struct ConfigTxn<'t> {
    table: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
}

impl std::fmt::Debug for ConfigTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigTxn").finish_non_exhaustive()
    }
}

impl ConfigTxn<'_> {
    /// The value of `key` as this transaction sees it.
    pub fn get(&self, key: &str) -> Result<Option<Value>> {
        let v = self
            .table
            .get(key)
            .map_err(storage("read the configuration"))?;
        Ok(match v {
            Some(v) => Some(Value::decode(v.value())?),
            None => None,
        })
    }

    /// Sets `key`.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<()> {
        check_key(key)?;
        let b = value.encode()?;
        self.table
            .insert(key, &b[..])
            .map_err(storage("write the configuration"))?;
        Ok(())
    }

    /// Deletes `key`; returns whether it was set.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        Ok(self
            .table
            .remove(key)
            .map_err(storage("write the configuration"))?
            .is_some())
    }

    /// All settings as this transaction sees them.
    pub fn list(&self) -> Result<Vec<(String, Value)>> {
        let mut out = Vec::new();
        for e in self
            .table
            .iter()
            .map_err(storage("read the configuration"))?
        {
            let (k, v) = e.map_err(storage("read the configuration"))?;
            out.push((k.value().to_string(), Value::decode(v.value())?));
        }
        Ok(out)
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<u32> {
        let v = self
            .meta
            .get(SCHEMA_KEY)
            .map_err(storage("read the metadata"))?;
        schema_of(v.as_ref().map(|v| v.value()))
    }

    /// Sets the schema version.
    pub fn set_schema_version(&mut self, version: u32) -> Result<()> {
        self.meta
            .insert(SCHEMA_KEY, &version.to_le_bytes()[..])
            .map_err(storage("write the metadata"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_bytes_are_refused() {
        for v in [
            Value::Bool(true),
            Value::Int(-5),
            Value::Float(1.5),
            Value::Text("x=1".into()),
            Value::Bytes(vec![0, 1, 2]),
        ] {
            let b = v.encode().unwrap();
            assert_eq!(Value::decode(&b).unwrap(), v);
            for cut in 0..b.len() {
                assert!(Value::decode(&b[..cut]).is_err());
            }
            let mut long = b.clone();
            long.push(0);
            assert!(Value::decode(&long).is_err());
        }
        assert!(Value::decode(&[9]).is_err());
        assert!(Value::decode(&[0, 2]).is_err());
        assert!(Value::Text("a".repeat(MAX_VALUE_LEN + 1)).encode().is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}
