//! Choosing a record's partition key from the `partition_key` option.

use std::borrow::Cow;

use sluice_core::json_pointer::{Found, Pointer};

/// Longest partition key Kinesis accepts, in UTF-16 units (what kinesalite counts; for keys
/// without astral characters this equals Unicode characters).
const MAX_KEY_UNITS: usize = 256;

/// A parsed `partition_key` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKeySpec {
    /// A fresh random key per record.
    Random,
    /// The same key for every record.
    Fixed(String),
    /// A template of text and JSON pointers (a bare pointer is a template of one part).
    Template(Vec<Part>),
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// A JSON pointer (RFC 6901) into the payload.
    Pointer(Pointer),
}

/// The key chosen for one record (borrowed from the payload or the spec when it can be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// As configured.
    Chosen(Cow<'a, str>),
    /// The payload was not JSON or lacked a field: a random key.
    Fallback(String),
}

impl PartitionKeySpec {
    /// Parses the option; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<PartitionKeySpec, String> {
        if spec == "random" {
            return Ok(PartitionKeySpec::Random);
        }
        if spec.is_empty() {
            return Err("`partition_key` must not be empty (use \"random\", \"/pointer\" or a template)".into());
        }
        if spec.starts_with('/') {
            return Ok(PartitionKeySpec::Template(vec![Part::Pointer(pointer(spec, spec)?)]));
        }
        if !spec.contains('{') {
            return Ok(PartitionKeySpec::Fixed(truncate(spec.to_owned())));
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = spec.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut pointer = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => pointer.push(c),
                            None => return Err(format!("`partition_key` {spec:?}: '{{' without a closing '}}'")),
                        }
                    }
                    if !pointer.starts_with('/') {
                        return Err(format!(
                            "`partition_key` {spec:?}: {{{pointer}}} is not a JSON pointer (write e.g. {{/racer}})"
                        ));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Pointer(self::pointer(spec, &pointer)?));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(PartitionKeySpec::Template(parts))
    }

    /// The key for a payload.
    pub fn key_for<'a>(&'a self, payload: &'a [u8]) -> Key<'a> {
        match self {
            PartitionKeySpec::Random => Key::Chosen(Cow::Owned(random_key())),
            PartitionKeySpec::Fixed(k) => Key::Chosen(Cow::Borrowed(k)),
            // The common case, a bare pointer to a short string or number: no copy.
            PartitionKeySpec::Template(parts) if matches!(parts.as_slice(), [Part::Pointer(_)]) => {
                let [Part::Pointer(p)] = parts.as_slice() else { unreachable!("matched above") };
                let text: Cow<'a, str> = match p.find_early(payload) {
                    Err(_) | Ok(None) | Ok(Some(Found::Null)) => return Key::Fallback(random_key()),
                    Ok(Some(Found::Str(s))) => s,
                    Ok(Some(Found::Number(text) | Found::Composite(text))) => Cow::Borrowed(text),
                    Ok(Some(Found::Bool(b))) => Cow::Borrowed(if b { "true" } else { "false" }),
                };
                if text.is_empty() {
                    Key::Fallback(random_key())
                } else if text.len() <= MAX_KEY_UNITS {
                    Key::Chosen(text)
                } else {
                    Key::Chosen(Cow::Owned(truncate(text.into_owned())))
                }
            }
            PartitionKeySpec::Template(parts) => {
                let mut key = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => key.push_str(t),
                        // Only the key matters here: stop reading the payload once it is found.
                        Part::Pointer(p) => match p.find_early(payload) {
                            Err(_) | Ok(None) | Ok(Some(Found::Null)) => return Key::Fallback(random_key()),
                            Ok(Some(Found::Str(s))) => key.push_str(&s),
                            Ok(Some(Found::Number(text) | Found::Composite(text))) => key.push_str(text),
                            Ok(Some(Found::Bool(b))) => key.push_str(if b { "true" } else { "false" }),
                        },
                    }
                }
                if key.is_empty() { Key::Fallback(random_key()) } else { Key::Chosen(Cow::Owned(truncate(key))) }
            }
        }
    }
}

fn pointer(spec: &str, text: &str) -> Result<Pointer, String> {
    Pointer::parse(text).map_err(|e| format!("`partition_key` {spec:?}: {e}"))
}

/// A random 128-bit key in hex (spreads evenly over shards).
pub fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Cuts a key to at most 256 UTF-16 units, on a character boundary.
fn truncate(mut key: String) -> String {
    let mut units = 0;
    for (i, c) in key.char_indices() {
        units += c.len_utf16();
        if units > MAX_KEY_UNITS {
            key.truncate(i);
            break;
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(spec: &str, payload: &str) -> Key<'static> {
        match PartitionKeySpec::parse(spec).expect("spec").key_for(payload.as_bytes()) {
            Key::Chosen(k) => Key::Chosen(Cow::Owned(k.into_owned())),
            Key::Fallback(k) => Key::Fallback(k),
        }
    }

    #[test]
    fn pointers_and_templates() {
        assert_eq!(chosen("/racer", r#"{"racer":"ham"}"#), Key::Chosen("ham".into()));
        assert_eq!(chosen("/racer", r#"{"racer":44}"#), Key::Chosen("44".into()));
        assert_eq!(chosen("/a/b", r#"{"a":{"b":true}}"#), Key::Chosen("true".into()));
        assert_eq!(chosen("{/racer}-{/lap}", r#"{"racer":"ver","lap":12}"#), Key::Chosen("ver-12".into()));
        assert_eq!(chosen("car:{/racer}", r#"{"racer":[1,2]}"#), Key::Chosen("car:[1,2]".into()));
        assert_eq!(chosen("{{x}}{/r}", r#"{"r":"y"}"#), Key::Chosen("{x}y".into()));
        assert_eq!(chosen("fixed", "not json"), Key::Chosen("fixed".into()));
    }

    #[test]
    fn missing_fields_and_non_json_fall_back_to_random() {
        assert!(matches!(chosen("/racer", r#"{"lap":1}"#), Key::Fallback(k) if k.len() == 32));
        assert!(matches!(chosen("/racer", r#"{"racer":null}"#), Key::Fallback(_)));
        assert!(matches!(chosen("/racer", "garbage"), Key::Fallback(_)));
        assert!(matches!(chosen("/racer", r#"{"racer":""}"#), Key::Fallback(_)));
        let Key::Chosen(a) = chosen("random", "") else { panic!("random is chosen") };
        let Key::Chosen(b) = chosen("random", "") else { panic!("random is chosen") };
        assert_ne!(a, b);
    }

    #[test]
    fn bad_specs_and_long_keys() {
        assert!(PartitionKeySpec::parse("{/racer").is_err());
        assert!(PartitionKeySpec::parse("{racer}").is_err());
        assert!(PartitionKeySpec::parse("").is_err());
        assert!(PartitionKeySpec::parse("/a~2").is_err());
        assert!(PartitionKeySpec::parse("k-{/a~}").is_err());
        let long = "é".repeat(300);
        let Key::Chosen(k) = chosen("/k", &format!(r#"{{"k":"{long}"}}"#)) else { panic!("chosen") };
        assert_eq!(k.chars().count(), 256);
        let astral = "😀".repeat(200);
        let Key::Chosen(k) = chosen("/k", &format!(r#"{{"k":"{astral}"}}"#)) else { panic!("chosen") };
        assert_eq!(k.chars().count(), 128);
    }
}
