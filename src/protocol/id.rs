//! Request ids, kept exactly as they arrived.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON-RPC id: a number, a string, or null. ASIC firmware matches answers to requests by id, so
/// the id is echoed back byte for byte: `1` stays `1`, `"1"` stays `"1"`, `1.0` stays `1.0`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Id {
    /// A numeric id, in serde_json's lossless form (integer or float as sent).
    Number(serde_json::Number),
    /// A string id.
    String(String),
    /// No id (notifications, or a request that sent `null`).
    #[default]
    Null,
}

impl Id {
    /// Whether this is the null id.
    pub fn is_null(&self) -> bool {
        matches!(self, Id::Null)
    }
}

impl From<u64> for Id {
    fn from(value: u64) -> Self {
        Id::Number(value.into())
    }
}

impl From<&str> for Id {
    fn from(value: &str) -> Self {
        Id::String(value.to_owned())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{s:?}"),
            Id::Null => f.write_str("null"),
        }
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Number(n) => n.serialize(serializer),
            Id::String(s) => serializer.serialize_str(s),
            Id::Null => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a string or null")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id::Number(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                serde_json::Number::from_f64(v)
                    .map(Id::Number)
                    .ok_or_else(|| E::custom("id is not a finite number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Id, E> {
                Ok(Id::String(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Id, E> {
                Ok(Id::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Id, E> {
                Ok(Id::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Id, D::Error> {
                d.deserialize_any(IdVisitor)
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}
