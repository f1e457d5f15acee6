//! A JSON record as a DynamoDB item, without I/O.
//!
//! JSON maps onto DynamoDB's types as the AWS SDKs' document clients map it: string → `S`,
//! number → `N` (its JSON text, so no precision is lost on the way), `true`/`false` → `BOOL`,
//! `null` → `NULL`, array → `L`, object → `M`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::value::RawValue;
use sluice_core::json_pointer::{Found, Pointer};

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Why a record cannot become an item (the dead-letter reason and a detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// Short metric label.
    pub reason: &'static str,
    /// For the log and the dead-letter file.
    pub detail: String,
}

fn unusable(reason: &'static str, detail: impl Into<String>) -> Unusable {
    Unusable { reason, detail: detail.into() }
}

/// A record made into an item, with what identifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The item, key attributes included.
    pub item: HashMap<String, AttributeValue>,
    /// The key attributes' values, in `key` order (for duplicates within a batch).
    pub key: Vec<String>,
    /// The version attribute's value, when versions are kept.
    pub version: Option<String>,
}

/// Turns `payload` (a JSON object) into an item: its fields, plus each `key` attribute taken
/// from its pointer (a string or a number there), plus the version field's number.
pub fn prepare(payload: &[u8], key: &[(String, Pointer)], version: Option<&str>) -> Result<Prepared, Unusable> {
    let doc: &RawValue = serde_json::from_slice(payload).map_err(|e| unusable("invalid_json", e.to_string()))?;
    let mut item = match attribute(doc).map_err(|e| unusable("invalid_json", e.to_string()))? {
        AttributeValue::M(fields) => fields,
        _ => return Err(unusable("not_an_object", "a record must be a JSON object to become an item")),
    };
    let mut key_values = Vec::with_capacity(key.len());
    for (name, pointer) in key {
        let value = match pointer.find(payload) {
            Ok(Some(Found::Str(s))) => AttributeValue::S(s.into_owned()),
            Ok(Some(Found::Number(n))) => AttributeValue::N(n.to_owned()),
            Ok(Some(_)) => {
                return Err(unusable("bad_key", format!("key {name} ({pointer}) is not a string or a number")));
            }
            Ok(None) => return Err(unusable("no_key", format!("key {name} ({pointer}) is missing"))),
            Err(e) => return Err(unusable("invalid_json", e.to_string())),
        };
        if matches!(&value, AttributeValue::S(s) if s.is_empty()) {
            return Err(unusable("bad_key", format!("key {name} ({pointer}) is an empty string")));
        }
        key_values.push(match &value {
            AttributeValue::S(s) => format!("S:{s}"),
            AttributeValue::N(n) => format!("N:{n}"),
            _ => String::new(),
        });
        item.insert(name.clone(), value);
    }
    let version = match version {
        None => None,
        Some(field) => match item.get(field) {
            Some(AttributeValue::N(n)) => Some(n.clone()),
            _ => return Err(unusable("no_version", format!("version field {field} is missing or not a number"))),
        },
    };
    let size = item_size(&item);
    if size > MAX_ITEM_BYTES {
        return Err(unusable("too_large", format!("item of about {size} bytes is over DynamoDB's 400 KB")));
    }
    Ok(Prepared { item, key: key_values, version })
}

/// Walks the JSON keeping every number's text as written (`f64` would round big integers).
fn attribute(raw: &RawValue) -> serde_json::Result<AttributeValue> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'{') => {
            let fields: HashMap<String, &RawValue> = serde_json::from_str(text)?;
            AttributeValue::M(
                fields.into_iter().map(|(k, v)| Ok((k, attribute(v)?))).collect::<serde_json::Result<_>>()?,
            )
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            AttributeValue::L(items.into_iter().map(attribute).collect::<serde_json::Result<_>>()?)
        }
        Some(b'"') => AttributeValue::S(serde_json::from_str(text)?),
        Some(b't') => AttributeValue::Bool(true),
        Some(b'f') => AttributeValue::Bool(false),
        Some(b'n') => AttributeValue::Null(true),
        _ => AttributeValue::N(text.to_owned()),
    })
}

/// DynamoDB's item size, approximately (names plus values; numbers counted as their text).
fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    fn size(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::L(l) => 3 + l.iter().map(|x| 1 + size(x)).sum::<usize>(),
            AttributeValue::M(m) => 3 + m.iter().map(|(k, x)| 1 + k.len() + size(x)).sum::<usize>(),
            _ => 1,
        }
    }
    item.iter().map(|(k, v)| k.len() + size(v)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: &[(&str, &str)]) -> Vec<(String, Pointer)> {
        spec.iter().map(|(n, p)| ((*n).to_owned(), Pointer::parse(p).expect("pointer"))).collect()
    }

    #[test]
    fn json_types_map_onto_dynamodb_types() {
        let p = prepare(
            br#"{"racer":"r7","seq":12,"big":123456789012345678901234567890,"ok":true,"none":null,"laps":[1,"x"],"pos":{"lat":1.5}}"#,
            &key(&[("pk", "/racer"), ("sk", "/seq")]),
            Some("seq"),
        )
        .expect("item");
        let i = &p.item;
        assert_eq!(i["pk"], AttributeValue::S("r7".into()));
        assert_eq!(i["sk"], AttributeValue::N("12".into()));
        assert_eq!(i["big"], AttributeValue::N("123456789012345678901234567890".into()));
        assert_eq!(i["ok"], AttributeValue::Bool(true));
        assert_eq!(i["none"], AttributeValue::Null(true));
        assert_eq!(i["laps"], AttributeValue::L(vec![AttributeValue::N("1".into()), AttributeValue::S("x".into())]));
        assert_eq!(i["pos"], AttributeValue::M([("lat".to_owned(), AttributeValue::N("1.5".into()))].into()));
        assert_eq!(p.key, vec!["S:r7".to_owned(), "N:12".to_owned()]);
        assert_eq!(p.version.as_deref(), Some("12"));
    }

    #[test]
    fn unusable_records_say_why() {
        let k = key(&[("racer", "/racer")]);
        for (payload, reason) in [
            (&b"not json"[..], "invalid_json"),
            (b"[1,2]", "not_an_object"),
            (br#"{"seq":1}"#, "no_key"),
            (br#"{"racer":{"a":1}}"#, "bad_key"),
            (br#"{"racer":""}"#, "bad_key"),
        ] {
            assert_eq!(prepare(payload, &k, None).map(|_| ()).map_err(|e| e.reason), Err(reason), "{payload:?}");
        }
        assert_eq!(prepare(br#"{"racer":"a"}"#, &k, Some("seq")).map_err(|e| e.reason).err(), Some("no_version"));
        let big = format!(r#"{{"racer":"a","pad":"{}"}}"#, "x".repeat(MAX_ITEM_BYTES));
        assert_eq!(prepare(big.as_bytes(), &k, None).map_err(|e| e.reason).err(), Some("too_large"));
    }
}
