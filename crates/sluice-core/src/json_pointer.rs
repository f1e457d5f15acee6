//! JSON pointers (RFC 6901) evaluated on raw message bytes, for cursors and partition keys.
//!
//! [`Pointer::find`] walks the document once with serde, compares object keys without
//! allocating, skips everything off the pointer's path, and still checks that the whole input
//! is one JSON document (its structure and escapes; strings off the path are not checked for
//! UTF-8, which text frames already guarantee). Nothing is built but the found value's borrowed text: on the
//! hot path (every provider message, every record) this is several times cheaper than parsing
//! into a `serde_json::Value` and calling `Value::pointer`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A parsed JSON pointer (`""` is the whole document, `/seq`, `/data/0/id`, `/a~1b` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

/// The value found at a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// A number, as its JSON text.
    Number(&'a str),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object or array, as its JSON text (whitespace as in the input).
    Composite(&'a str),
}

impl Found<'_> {
    /// A string's content or a number's text; `None` for anything else (what a cursor may be).
    pub fn scalar_text(&self) -> Option<&str> {
        match self {
            Found::Str(s) => Some(s),
            Found::Number(n) => Some(n),
            _ => None,
        }
    }
}

impl Pointer {
    /// Parses RFC 6901 syntax.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { text: String::new(), tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("a JSON pointer starts with '/' (e.g. \"/seq\"), found {text:?}"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "invalid escape in JSON pointer {text:?} ('~' must be followed by 0 or 1)"
                            ));
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(Pointer { text: text.to_owned(), tokens })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the pointer, or `None` when the path does not exist. Errors when `doc` is
    /// not exactly one valid JSON document.
    pub fn find<'a>(&self, doc: &'a [u8]) -> Result<Option<Found<'a>>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(doc);
        let raw = PathSeed { path: &self.tokens }.deserialize(&mut de)?;
        de.end()?;
        raw.map(classify).transpose()
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn classify(raw: &RawValue) -> Result<Found<'_>, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') => {
            let inner = &text[1..text.len() - 1];
            if inner.contains('\\') {
                Found::Str(Cow::Owned(serde_json::from_str::<String>(text)?))
            } else {
                Found::Str(Cow::Borrowed(inner))
            }
        }
        Some(b'n') => Found::Null,
        Some(b't') => Found::Bool(true),
        Some(b'f') => Found::Bool(false),
        Some(b'{' | b'[') => Found::Composite(text),
        _ => Found::Number(text),
    })
}

struct PathSeed<'p> {
    path: &'p [String],
}

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.path.is_empty() {
            return <&'de RawValue as serde::Deserialize>::deserialize(deserializer).map(Some);
        }
        deserializer.deserialize_any(PathVisitor { path: self.path })
    }
}

/// Compares a map key with one pointer token without allocating (borrowed when unescaped).
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// Walks one level of a container towards the pointer's target; scalars off the path are
/// just "not found".
struct PathVisitor<'p> {
    path: &'p [String],
}

impl<'de> Visitor<'de> for PathVisitor<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let Some((head, rest)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(None);
        };
        while let Some(hit) = map.next_key_seed(KeyIs(head))? {
            if hit && found.is_none() {
                found = map.next_value_seed(PathSeed { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let target = self.path.split_first().and_then(|(head, rest)| Some((array_index(head)?, rest)));
        let mut index = 0usize;
        loop {
            match target {
                Some((wanted, rest)) if wanted == index => match seq.next_element_seed(PathSeed { path: rest })? {
                    Some(value) => found = value,
                    None => break,
                },
                _ => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            index += 1;
        }
        Ok(found)
    }
}

/// An array index token: `0` or digits without a leading zero (RFC 6901 §4).
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(pointer: &str, doc: &str) -> Result<Option<Found<'static>>, serde_json::Error> {
        let doc: &'static str = Box::leak(doc.to_owned().into_boxed_str());
        Pointer::parse(pointer).expect("pointer").find(doc.as_bytes())
    }

    fn scalar(pointer: &str, doc: &str) -> Option<String> {
        find(pointer, doc).expect("valid").and_then(|f| f.scalar_text().map(str::to_owned))
    }

    #[test]
    fn pointers_find_values_anywhere() {
        assert_eq!(scalar("/seq", r#"{"a":[1,{"b":2}],"seq":42}"#), Some("42".into()));
        assert_eq!(scalar("/seq", r#"{"seq":"abc"}"#), Some("abc".into()));
        assert_eq!(scalar("/data/1/id", r#"{"data":[{"id":1},{"id":-7}]}"#), Some("-7".into()));
        assert_eq!(scalar("/a~1b/~0c", r#"{"a/b":{"~c":"x"}}"#), Some("x".into()));
        assert_eq!(scalar("", "17"), Some("17".into()));
        assert_eq!(scalar("/seq", r#"{"seq":1.5e3}"#), Some("1.5e3".into()));
        assert_eq!(scalar("/seq", r#"{"seq":"\u00e9\n"}"#), Some("é\n".into()));
        assert_eq!(scalar("/s\"q", r#"{"s\"q":1}"#), Some("1".into()));
        assert_eq!(find("/o", r#"{"o": {"a": [1, 2]} }"#).expect("valid"), Some(Found::Composite(r#"{"a": [1, 2]}"#)));
        assert_eq!(find("/n", r#"{"n":null}"#).expect("valid"), Some(Found::Null));
        assert_eq!(find("/b", r#"{"b":false}"#).expect("valid"), Some(Found::Bool(false)));
        assert_eq!(find("", r#" "x" "#).expect("valid"), Some(Found::Str(Cow::Borrowed("x"))));
    }

    #[test]
    fn the_first_of_duplicate_keys_wins() {
        assert_eq!(scalar("/k", r#"{"k":1,"k":2}"#), Some("1".into()));
    }

    #[test]
    fn missing_paths_are_none() {
        assert_eq!(find("/seq", r#"{"type":"subscribed"}"#).expect("valid"), None);
        assert_eq!(find("/seq/0", r#"{"seq":[]}"#).expect("valid"), None);
        assert_eq!(find("/seq", r#"[1,2]"#).expect("valid"), None);
        assert_eq!(find("/01", r#"[1,2]"#).expect("valid"), None);
        assert_eq!(find("/1", r#"[1,2]"#).expect("valid"), Some(Found::Number("2")));
        assert_eq!(find("/seq", r#""text""#).expect("valid"), None);
        assert_eq!(find("/a/b", r#"{"a":3}"#).expect("valid"), None);
    }

    #[test]
    fn invalid_json_is_an_error() {
        for doc in ["not json", r#"{"seq":1"#, r#"{"seq":1} trailing"#, r#"{"a":[1,}"#, "", "{\"seq\":\"\\x\"}"] {
            assert!(find("/seq", doc).is_err(), "{doc:?}");
        }
    }

    #[test]
    fn pointer_syntax_is_checked() {
        assert!(Pointer::parse("seq").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        assert_eq!(Pointer::parse("/a~1b").expect("p").to_string(), "/a~1b");
    }

    #[test]
    fn agrees_with_serde_json_value_pointer() {
        let docs =
            [r#"{"racer":17,"seq":9,"m":{"x":[1,"two",{"y":null}]},"s":"a\u0041"}"#, r#"[{"a":1},{"a":2.5},"z"]"#];
        let pointers = ["/racer", "/seq", "/m/x/1", "/m/x/2/y", "/m/x/3", "/s", "/0/a", "/1/a", "/2", "/nope"];
        for doc in docs {
            let value: serde_json::Value = serde_json::from_str(doc).expect("json");
            for p in pointers {
                let ours = find(p, doc).expect("valid");
                let theirs = value.pointer(p);
                match (ours, theirs) {
                    (None, None) => {}
                    (Some(Found::Str(a)), Some(serde_json::Value::String(b))) => assert_eq!(&a, b),
                    (Some(Found::Number(a)), Some(serde_json::Value::Number(b))) => assert_eq!(a, b.to_string()),
                    (Some(Found::Null), Some(serde_json::Value::Null)) => {}
                    (Some(Found::Composite(a)), Some(b)) => {
                        assert_eq!(serde_json::from_str::<serde_json::Value>(a).expect("json"), *b)
                    }
                    (a, b) => panic!("{p} in {doc}: {a:?} vs {b:?}"),
                }
            }
        }
    }
}
