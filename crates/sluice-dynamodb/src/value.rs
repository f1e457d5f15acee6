//! Attribute values (S, N, B, BOOL, NULL, SS, NS, BS, L, M), their DynamoDB JSON form, and items.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value as Json};

use crate::error::{DynamoError, Result};
use crate::number::Number;

/// How deeply lists and maps may nest (DynamoDB's limit).
pub const MAX_NESTING: usize = 32;

/// An item: attribute name to value.
pub type Item = BTreeMap<String, Value>;

/// One attribute value. Sets are kept sorted and free of duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// String.
    S(String),
    /// Number.
    N(Number),
    /// Binary.
    B(Vec<u8>),
    /// Boolean.
    Bool(bool),
    /// Null.
    Null,
    /// String set.
    Ss(Vec<String>),
    /// Number set.
    Ns(Vec<Number>),
    /// Binary set.
    Bs(Vec<Vec<u8>>),
    /// List.
    L(Vec<Value>),
    /// Map.
    M(Item),
}

fn b64(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| {
        DynamoError::serialization(format!(
            "Base64 encoded length is expected a multiple of 4 bytes but found: {}",
            s.len()
        ))
    })
}

fn sorted_set<T: Ord + Clone>(mut v: Vec<T>, shown: impl Fn(&[T]) -> String) -> Result<Vec<T>> {
    let given = v.clone();
    v.sort();
    if v.windows(2).any(|w| w[0] == w[1]) {
        return Err(DynamoError::validation(format!(
            "One or more parameter values were invalid: Input collection {} contains duplicates.",
            shown(&given)
        )));
    }
    Ok(v)
}

impl Value {
    /// The type descriptor: `S`, `N`, `B`, `BOOL`, `NULL`, `SS`, `NS`, `BS`, `L` or `M`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::S(_) => "S",
            Value::N(_) => "N",
            Value::B(_) => "B",
            Value::Bool(_) => "BOOL",
            Value::Null => "NULL",
            Value::Ss(_) => "SS",
            Value::Ns(_) => "NS",
            Value::Bs(_) => "BS",
            Value::L(_) => "L",
            Value::M(_) => "M",
        }
    }

    /// Decodes `{"S": "x"}` and friends.
    pub fn from_json(j: &Json) -> Result<Value> {
        Value::from_json_at(j, 0)
    }

    fn from_json_at(j: &Json, depth: usize) -> Result<Value> {
        if depth > MAX_NESTING {
            return Err(DynamoError::validation("Nesting Levels have exceeded supported limits"));
        }
        let Json::Object(m) = j else {
            return Err(DynamoError::serialization(
                "Unexpected value type in payload: expected an AttributeValue structure",
            ));
        };
        let mut it = m.iter();
        let (Some((k, v)), None) = (it.next(), it.next()) else {
            return Err(DynamoError::validation(if m.is_empty() {
                "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
            } else {
                "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes"
            }));
        };
        let str_of = |v: &Json| -> Result<String> {
            v.as_str().map(str::to_owned).ok_or_else(|| {
                DynamoError::serialization(format!("Unexpected value type in payload: {k} expects a string"))
            })
        };
        let list_of = |v: &Json| -> Result<Vec<String>> {
            let Json::Array(a) = v else {
                return Err(DynamoError::serialization(format!(
                    "Unexpected value type in payload: {k} expects a list"
                )));
            };
            a.iter().map(str_of).collect()
        };
        let empty_set = |what: &str| {
            DynamoError::validation(format!(
                "One or more parameter values were invalid: An {what} set  may not be empty"
            ))
        };
        Ok(match k.as_str() {
            "S" => Value::S(str_of(v)?),
            "N" => Value::N(Number::parse(&str_of(v)?)?),
            "B" => Value::B(b64(&str_of(v)?)?),
            "BOOL" => Value::Bool(v.as_bool().ok_or_else(|| {
                DynamoError::serialization("Unexpected value type in payload: BOOL expects a boolean")
            })?),
            "NULL" => match v.as_bool() {
                Some(true) => Value::Null,
                Some(false) => {
                    return Err(DynamoError::validation(
                        "One or more parameter values were invalid: Null attribute value types must have the value of true",
                    ));
                }
                None => {
                    return Err(DynamoError::serialization("Unexpected value type in payload: NULL expects a boolean"));
                }
            },
            "SS" => {
                let v = list_of(v)?;
                if v.is_empty() {
                    return Err(empty_set("string"));
                }
                Value::Ss(sorted_set(v, |s| format!("[{}]", s.join(", ")))?)
            }
            "NS" => {
                let v = list_of(v)?.iter().map(|s| Number::parse(s)).collect::<Result<Vec<_>>>()?;
                if v.is_empty() {
                    return Err(empty_set("number"));
                }
                Value::Ns(sorted_set(v, |s| {
                    format!("[{}]", s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                })?)
            }
            "BS" => {
                let v = list_of(v)?.iter().map(|s| b64(s)).collect::<Result<Vec<_>>>()?;
                if v.is_empty() {
                    return Err(empty_set("binary"));
                }
                Value::Bs(sorted_set(v, |_| "of binaries".into())?)
            }
            "L" => {
                let Json::Array(a) = v else {
                    return Err(DynamoError::serialization("Unexpected value type in payload: L expects a list"));
                };
                Value::L(a.iter().map(|x| Value::from_json_at(x, depth + 1)).collect::<Result<_>>()?)
            }
            "M" => Value::M(item_from_json_at(v, depth + 1)?),
            other => {
                return Err(DynamoError::serialization(format!("Unexpected field type in AttributeValue: {other}")));
            }
        })
    }

    /// Encodes to DynamoDB JSON.
    pub fn to_json(&self) -> Json {
        let enc = |b: &[u8]| Json::String(base64::engine::general_purpose::STANDARD.encode(b));
        let (k, v) = match self {
            Value::S(s) => ("S", Json::String(s.clone())),
            Value::N(n) => ("N", Json::String(n.to_string())),
            Value::B(b) => ("B", enc(b)),
            Value::Bool(b) => ("BOOL", Json::Bool(*b)),
            Value::Null => ("NULL", Json::Bool(true)),
            Value::Ss(v) => ("SS", Json::Array(v.iter().map(|s| Json::String(s.clone())).collect())),
            Value::Ns(v) => ("NS", Json::Array(v.iter().map(|n| Json::String(n.to_string())).collect())),
            Value::Bs(v) => ("BS", Json::Array(v.iter().map(|b| enc(b)).collect())),
            Value::L(v) => ("L", Json::Array(v.iter().map(Value::to_json).collect())),
            Value::M(m) => ("M", item_to_json(m)),
        };
        let mut m = Map::with_capacity(1);
        m.insert(k.to_owned(), v);
        Json::Object(m)
    }

    /// Bytes this value counts for in the item size (as DynamoDB sizes them, roughly).
    pub fn size(&self) -> usize {
        match self {
            Value::S(s) => s.len(),
            Value::N(n) => n.to_string().len() / 2 + 1,
            Value::B(b) => b.len(),
            Value::Bool(_) | Value::Null => 1,
            Value::Ss(v) => v.iter().map(String::len).sum(),
            Value::Ns(v) => v.iter().map(|n| n.to_string().len() / 2 + 1).sum(),
            Value::Bs(v) => v.iter().map(Vec::len).sum(),
            Value::L(v) => 3 + v.iter().map(|x| 1 + x.size()).sum::<usize>(),
            Value::M(m) => 3 + m.iter().map(|(k, x)| 1 + k.len() + x.size()).sum::<usize>(),
        }
    }

    /// Ordering for `<`, `<=`, `>`, `>=`, BETWEEN: defined for two S, two N or two B only.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::S(a), Value::S(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Value::N(a), Value::N(b)) => Some(a.cmp(b)),
            (Value::B(a), Value::B(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// Decodes an item (`{"name": {"S": …}, …}`).
pub fn item_from_json(j: &Json) -> Result<Item> {
    item_from_json_at(j, 0)
}

fn item_from_json_at(j: &Json, depth: usize) -> Result<Item> {
    let Json::Object(m) = j else {
        return Err(DynamoError::serialization("Unexpected value type in payload: expected a map of AttributeValues"));
    };
    m.iter().map(|(k, v)| Ok((k.clone(), Value::from_json_at(v, depth)?))).collect()
}

/// Encodes an item.
pub fn item_to_json(item: &Item) -> Json {
    Json::Object(item.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// The size of an item in bytes (names plus values).
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + v.size()).sum()
}

/// A key attribute's scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScalarType {
    /// String.
    S,
    /// Number.
    N,
    /// Binary.
    B,
}

impl ScalarType {
    /// Parses `S`, `N` or `B`.
    pub fn parse(s: &str) -> Option<ScalarType> {
        match s {
            "S" => Some(ScalarType::S),
            "N" => Some(ScalarType::N),
            "B" => Some(ScalarType::B),
            _ => None,
        }
    }

    /// Its descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            ScalarType::S => "S",
            ScalarType::N => "N",
            ScalarType::B => "B",
        }
    }
}

/// One key attribute's value, ordered as DynamoDB orders sort keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPart {
    /// A number (numeric order).
    N(Number),
    /// A string (UTF-8 byte order).
    S(String),
    /// Binary (unsigned byte order).
    B(Vec<u8>),
}

impl KeyPart {
    /// The key part of `v`, when it is a scalar.
    pub fn of(v: &Value) -> Option<KeyPart> {
        match v {
            Value::S(s) => Some(KeyPart::S(s.clone())),
            Value::N(n) => Some(KeyPart::N(n.clone())),
            Value::B(b) => Some(KeyPart::B(b.clone())),
            _ => None,
        }
    }

    /// Back to a value.
    pub fn to_value(&self) -> Value {
        match self {
            KeyPart::S(s) => Value::S(s.clone()),
            KeyPart::N(n) => Value::N(n.clone()),
            KeyPart::B(b) => Value::B(b.clone()),
        }
    }
}

/// A primary key: partition key and optional sort key.
pub type Key = (KeyPart, Option<KeyPart>);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_every_type() {
        let j = json!({
            "s": {"S": "x"}, "n": {"N": "1.50"}, "b": {"B": "AAE="}, "t": {"BOOL": true}, "z": {"NULL": true},
            "ss": {"SS": ["b", "a"]}, "ns": {"NS": ["10", "9"]}, "bs": {"BS": ["AQ=="]},
            "l": {"L": [{"S": "a"}, {"N": "1"}]}, "m": {"M": {"k": {"S": "v"}}}
        });
        let item = item_from_json(&j).unwrap();
        assert_eq!(item["n"], Value::N(Number::parse("1.5").unwrap()));
        let back = item_to_json(&item);
        assert_eq!(back["n"], json!({"N": "1.5"}));
        assert_eq!(back["ss"], json!({"SS": ["a", "b"]}));
        assert_eq!(back["ns"], json!({"NS": ["9", "10"]}));
        assert_eq!(item_from_json(&back).unwrap(), item);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            json!({}),
            json!({"S": "a", "N": "1"}),
            json!({"S": 1}),
            json!({"N": "x"}),
            json!({"NULL": false}),
            json!({"SS": []}),
            json!({"SS": ["a", "a"]}),
            json!({"Q": "a"}),
            json!("S"),
            json!({"B": "!!"}),
            (0..40).fold(json!({"S": "x"}), |acc, _| json!({"L": [acc]})),
        ] {
            assert!(Value::from_json(&bad).is_err(), "{bad} should be refused");
        }
    }
}
