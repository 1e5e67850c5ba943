//! Object attributes in both encodings: 1.x `Attribute { Attribute Name, Attribute Index?,
//! Attribute Value }` (inside Template-Attribute, or directly in Locate / Get Attributes
//! payloads) and 2.x `Attributes { <attribute item tagged with its own tag>* }`.

use super::{
    CryptographicAlgorithm, Fields, MessageError, NameType, ObjectType, ProtocolVersion, State,
    tags,
};
use crate::ttlv::{Item, Tag, Value};

/// One attribute: its specification name ("Cryptographic Algorithm", "Name", …), the 1.x
/// Attribute Index if any, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute's name in the specification.
    pub name: String,
    /// Attribute Index (1.x only): which of several values of the attribute.
    pub index: Option<i32>,
    /// The Attribute Value (2.x: the attribute item's value).
    pub value: Value,
}

/// A list of attributes, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes(pub Vec<Attribute>);

impl Attributes {
    /// No attributes.
    pub fn new() -> Self {
        Attributes(Vec::new())
    }

    /// Whether there is no attribute.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds an attribute.
    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.push(name, value);
        self
    }

    /// Appends attribute `name` with `value` (no index).
    pub fn push(&mut self, name: &str, value: Value) {
        self.0.push(Attribute {
            name: name.to_owned(),
            index: None,
            value,
        });
    }

    /// The first value of attribute `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    fn enumeration(&self, name: &str) -> Option<u32> {
        match self.get(name)? {
            Value::Enumeration(v) => Some(*v),
            _ => None,
        }
    }

    fn integer(&self, name: &str) -> Option<i32> {
        match self.get(name)? {
            Value::Integer(v) => Some(*v),
            _ => None,
        }
    }

    /// The Cryptographic Algorithm attribute.
    pub fn cryptographic_algorithm(&self) -> Option<CryptographicAlgorithm> {
        self.enumeration("Cryptographic Algorithm")
            .map(CryptographicAlgorithm)
    }

    /// The Cryptographic Length attribute, in bits.
    pub fn cryptographic_length(&self) -> Option<i32> {
        self.integer("Cryptographic Length")
    }

    /// The Cryptographic Usage Mask attribute (bits in [`super::usage`]).
    pub fn usage_mask(&self) -> Option<i32> {
        self.integer("Cryptographic Usage Mask")
    }

    /// The State attribute.
    pub fn state(&self) -> Option<State> {
        self.enumeration("State").map(State)
    }

    /// The Object Type attribute.
    pub fn object_type(&self) -> Option<ObjectType> {
        self.enumeration("Object Type").map(ObjectType)
    }

    /// A Date-Time attribute ("Initial Date", "Activation Date", …) in POSIX seconds.
    pub fn date(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::DateTime(v) => Some(*v),
            _ => None,
        }
    }

    /// The Name Values of every Name attribute.
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|a| a.name == "Name")
            .filter_map(|a| match &a.value {
                Value::Structure(c) => c.iter().find_map(|i| match (&i.tag, &i.value) {
                    (t, Value::TextString(s)) if *t == tags::NAME_VALUE => Some(s.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .collect()
    }

    /// The value of a Name attribute with Name Type "Uninterpreted Text String".
    pub fn name_value(name: &str) -> Value {
        Value::Structure(vec![
            Item::new(tags::NAME_VALUE, Value::TextString(name.to_owned())),
            Item::new(
                tags::NAME_TYPE,
                Value::Enumeration(NameType::UNINTERPRETED_TEXT_STRING.0),
            ),
        ])
    }

    /// The 1.x `Attribute` structures.
    pub fn to_1x_items(&self) -> Vec<Item> {
        self.0
            .iter()
            .map(|a| {
                let mut v = vec![Item::new(
                    tags::ATTRIBUTE_NAME,
                    Value::TextString(a.name.clone()),
                )];
                if let Some(i) = a.index {
                    v.push(Item::new(tags::ATTRIBUTE_INDEX, Value::Integer(i)));
                }
                v.push(Item::new(tags::ATTRIBUTE_VALUE, a.value.clone()));
                Item::structure(tags::ATTRIBUTE, v)
            })
            .collect()
    }

    /// The 2.x `Attributes` structure. Attributes whose name is not a tag of the specification
    /// (custom "x-" attributes) have no 2.x form here and are left out.
    pub fn to_2x_item(&self) -> Item {
        Item::structure(
            tags::ATTRIBUTES,
            self.0
                .iter()
                .filter_map(|a| Some(Item::new(Tag::from_name(&a.name)?, a.value.clone())))
                .collect(),
        )
    }

    /// Attributes in the encoding of `version`: 2.x an `Attributes` structure, 1.x a
    /// `Template-Attribute` holding `Attribute` structures.
    pub fn to_template(&self, version: ProtocolVersion) -> Item {
        if version.is_2x() {
            self.to_2x_item()
        } else {
            Item::structure(tags::TEMPLATE_ATTRIBUTE, self.to_1x_items())
        }
    }

    /// Collects the attributes found in `parent`, whatever the encoding: 1.x `Attribute`
    /// children, a 1.x `Template-Attribute` child, or a 2.x `Attributes` child.
    pub fn from_parent(parent: &Item) -> Result<Self, MessageError> {
        let mut out = Attributes::new();
        for child in parent.children() {
            if child.tag == tags::ATTRIBUTE {
                out.0.push(attribute_1x(child)?);
            } else if child.tag == tags::TEMPLATE_ATTRIBUTE {
                for a in child.children_with(tags::ATTRIBUTE) {
                    out.0.push(attribute_1x(a)?);
                }
            } else if child.tag == tags::ATTRIBUTES {
                for a in child.children() {
                    out.0.push(Attribute {
                        name: a.tag.to_string(),
                        index: None,
                        value: a.value.clone(),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn attribute_1x(item: &Item) -> Result<Attribute, MessageError> {
    let f = Fields::new(item);
    Ok(Attribute {
        name: f.text(tags::ATTRIBUTE_NAME)?,
        index: f.opt_integer(tags::ATTRIBUTE_INDEX)?,
        value: f.required(tags::ATTRIBUTE_VALUE)?.value.clone(),
    })
}
