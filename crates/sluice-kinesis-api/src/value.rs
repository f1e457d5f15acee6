//! One request/response model for both wire formats.
//!
//! Requests in JSON (`application/x-amz-json-1.1`) and CBOR (`application/x-amz-cbor-1.1`) are
//! decoded into the same [`Value`] tree, so every operation validates one shape. Responses are
//! built as an [`Out`] tree and written in the request's format: blobs become base64 strings in
//! JSON and byte strings in CBOR; timestamps become epoch seconds (with a fraction) in JSON and
//! tag 1 + integer epoch milliseconds in CBOR (the Java SDK's convention).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The request's wire format; answers use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-amz-json-1.1` (also plain `application/json`).
    Json,
    /// `application/x-amz-cbor-1.1`.
    Cbor,
}

impl Format {
    /// The content type answers carry.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/x-amz-json-1.1",
            Format::Cbor => "application/x-amz-cbor-1.1",
        }
    }
}

/// A decoded request value. Strings borrow from the request body when they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `null` / CBOR null or undefined.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A float.
    Float(f64),
    /// A text string.
    Str(Cow<'a, str>),
    /// A byte string (CBOR only).
    Bytes(Cow<'a, [u8]>),
    /// An array.
    List(Vec<Value<'a>>),
    /// A map with text keys, in wire order.
    Map(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// A member of a map by name.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The JSON-ish name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Bytes(_) => "blob",
            Value::List(_) => "list",
            Value::Map(_) => "structure",
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value<'de>, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value<'de>, E> {
        i128::try_from(v).map(Value::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value<'de>, E> {
        Ok(Value::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }
    fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Value<'de>, E> {
        Ok(Value::Bytes(Cow::Borrowed(v)))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value<'de>, E> {
        Ok(Value::Bytes(Cow::Owned(v.to_vec())))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value<'de>, E> {
        Ok(Value::Bytes(Cow::Owned(v)))
    }
    fn visit_none<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            let v = map.next_value()?;
            out.push((k.0, v));
        }
        Ok(Value::Map(out))
    }
}

/// A map key: text only (CBOR allows any key type; Kinesis shapes never use others).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

fn from_cbor(v: ciborium::value::Value) -> Result<Value<'static>, String> {
    use ciborium::value::Value as C;
    Ok(match v {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => Value::Int(i128::from(i)),
        C::Float(f) => Value::Float(f),
        C::Text(s) => Value::Str(Cow::Owned(s)),
        C::Bytes(b) => Value::Bytes(Cow::Owned(b)),
        C::Tag(_, inner) => from_cbor(*inner)?,
        C::Array(items) => Value::List(items.into_iter().map(from_cbor).collect::<Result<_, _>>()?),
        C::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| match k {
                    C::Text(k) => Ok((Cow::Owned(k), from_cbor(v)?)),
                    other => Err(format!("map keys must be text strings, got {other:?}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(format!("unsupported CBOR item {other:?}")),
    })
}

impl Value<'_> {
    /// Copies every borrowed part.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(n) => Value::Int(n),
            Value::Float(f) => Value::Float(f),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::List(l) => Value::List(l.into_iter().map(Value::into_owned).collect()),
            Value::Map(m) => {
                Value::Map(m.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect())
            }
        }
    }
}

/// Decodes a request body. An empty body is an empty structure.
pub fn decode(format: Format, body: &[u8]) -> Result<Value<'_>, String> {
    if body.iter().all(u8::is_ascii_whitespace) && format == Format::Json || body.is_empty() {
        return Ok(Value::Map(Vec::new()));
    }
    match format {
        Format::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Format::Cbor => {
            // ciborium skips tags in self-describing mode, so tag 1 (timestamps) yields its number.
            // Through ciborium's own value type, which understands tags (tag 1 timestamps carry
            // their number through) and indefinite-length items.
            let v: ciborium::value::Value =
                ciborium::de::from_reader_with_recursion_limit(body, 64).map_err(|e| format!("{e:?}"))?;
            from_cbor(v)
        }
    }
}

/// A response value.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (JSON number / CBOR double).
    Float(f64),
    /// A text string.
    Str(String),
    /// A blob.
    Bytes(Vec<u8>),
    /// A timestamp, epoch ms.
    Timestamp(u64),
    /// A list.
    List(Vec<Out>),
    /// A structure; members equal to `Out::Null` are left out.
    Map(Vec<(&'static str, Out)>),
    /// Already-encoded JSON, written verbatim (hot paths build their answers directly). Only
    /// produced for JSON requests.
    RawJson(Vec<u8>),
}

impl From<&str> for Out {
    fn from(s: &str) -> Out {
        Out::Str(s.to_owned())
    }
}
impl From<String> for Out {
    fn from(s: String) -> Out {
        Out::Str(s)
    }
}
impl From<bool> for Out {
    fn from(b: bool) -> Out {
        Out::Bool(b)
    }
}
impl From<u32> for Out {
    fn from(n: u32) -> Out {
        Out::Int(n.into())
    }
}
impl From<i64> for Out {
    fn from(n: i64) -> Out {
        Out::Int(n)
    }
}
impl From<usize> for Out {
    fn from(n: usize) -> Out {
        Out::Int(n as i64)
    }
}
impl<T: Into<Out>> From<Option<T>> for Out {
    fn from(o: Option<T>) -> Out {
        o.map_or(Out::Null, Into::into)
    }
}
impl<T: Into<Out>> From<Vec<T>> for Out {
    fn from(v: Vec<T>) -> Out {
        Out::List(v.into_iter().map(Into::into).collect())
    }
}

/// Builds a structure: `obj![("Name", value), ...]`.
#[macro_export]
macro_rules! obj {
    ($(($k:expr, $v:expr)),* $(,)?) => {
        $crate::value::Out::Map(vec![$(($k, $crate::value::Out::from($v))),*])
    };
}

impl Out {
    /// Serialises in the given format.
    pub fn encode(&self, format: Format) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        match format {
            Format::Json => write_json(self, &mut buf),
            Format::Cbor => write_cbor(self, &mut buf),
        }
        buf
    }
}

fn write_json(v: &Out, out: &mut Vec<u8>) {
    match v {
        Out::Null => out.extend_from_slice(b"null"),
        Out::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Out::Int(n) => out.extend_from_slice(itoa(*n).as_bytes()),
        Out::Float(f) => {
            if f.is_finite() {
                out.extend_from_slice(f.to_string().as_bytes())
            } else {
                out.extend_from_slice(b"null")
            }
        }
        Out::Str(s) => write_json_str(s, out),
        Out::Bytes(b) => write_json_blob(b, out),
        Out::Timestamp(ms) => write_json_timestamp(*ms, out),
        Out::RawJson(raw) => out.extend_from_slice(raw),
        Out::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out);
            }
            out.push(b']');
        }
        Out::Map(members) => {
            out.push(b'{');
            let mut first = true;
            for (k, item) in members {
                if *item == Out::Null {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_json_str(k, out);
                out.push(b':');
                write_json(item, out);
            }
            out.push(b'}');
        }
    }
}

fn itoa(n: i64) -> String {
    n.to_string()
}

/// Writes epoch ms as epoch seconds with a millisecond fraction, as the AWS JSON protocols do.
pub fn write_json_timestamp(ms: u64, out: &mut Vec<u8>) {
    let secs = ms / 1000;
    let frac = ms % 1000;
    out.extend_from_slice(secs.to_string().as_bytes());
    if frac != 0 {
        let digits = [b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
        let mut n = 4;
        while digits[n - 1] == b'0' {
            n -= 1;
        }
        out.extend_from_slice(&digits[..n]);
    }
}

/// Writes a blob as a quoted base64 string.
pub fn write_json_blob(b: &[u8], out: &mut Vec<u8>) {
    use base64::Engine;
    out.push(b'"');
    let start = out.len();
    out.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
    let written = base64::engine::general_purpose::STANDARD.encode_slice(b, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Writes a quoted, escaped JSON string.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most strings (keys, ids, iterators) need no escaping: copy them whole.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn cbor_head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_cbor(v: &Out, out: &mut Vec<u8>) {
    match v {
        Out::Null => out.push(0xf6),
        Out::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Out::Int(n) if *n >= 0 => cbor_head(0, *n as u64, out),
        Out::Int(n) => cbor_head(1, (-1 - *n) as u64, out),
        Out::Float(f) => {
            out.push(0xfb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Out::Str(s) => {
            cbor_head(3, s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        // Never produced for CBOR requests; written as a text string rather than lost.
        Out::RawJson(raw) => {
            cbor_head(3, raw.len() as u64, out);
            out.extend_from_slice(raw);
        }
        Out::Bytes(b) => {
            cbor_head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Out::Timestamp(ms) => {
            cbor_head(6, 1, out);
            cbor_head(0, *ms, out);
        }
        Out::List(items) => {
            cbor_head(4, items.len() as u64, out);
            for item in items {
                write_cbor(item, out);
            }
        }
        Out::Map(members) => {
            let n = members.iter().filter(|(_, v)| *v != Out::Null).count();
            cbor_head(5, n as u64, out);
            for (k, item) in members.iter().filter(|(_, v)| *v != Out::Null) {
                cbor_head(3, k.len() as u64, out);
                out.extend_from_slice(k.as_bytes());
                write_cbor(item, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_of_shapes() {
        let v = obj![
            ("A", "x\"y\n"),
            ("B", Out::Bytes(b"hi".to_vec())),
            ("C", Out::Timestamp(1459799926480)),
            ("D", Out::Null)
        ];
        let s = String::from_utf8(v.encode(Format::Json)).unwrap_or_default();
        assert_eq!(s, r#"{"A":"x\"y\n","B":"aGk=","C":1459799926.48}"#);
    }

    #[test]
    fn cbor_timestamp_is_tag_1_ms_and_blob_is_bytes() {
        let v = obj![("T", Out::Timestamp(1000)), ("B", Out::Bytes(vec![1, 2]))];
        let b = v.encode(Format::Cbor);
        assert_eq!(b, vec![0xa2, 0x61, b'T', 0xc1, 0x19, 0x03, 0xe8, 0x61, b'B', 0x42, 1, 2]);
    }

    #[test]
    fn cbor_decode_tags_and_indefinite_maps() {
        // {_ "T": 1(1000), "B": h'0102'} with an indefinite-length map.
        let body = [0xbf, 0x61, b'T', 0xc1, 0x19, 0x03, 0xe8, 0x61, b'B', 0x42, 1, 2, 0xff];
        let v = decode(Format::Cbor, &body).unwrap_or(Value::Null);
        assert_eq!(v.get("T"), Some(&Value::Int(1000)));
        assert_eq!(v.get("B"), Some(&Value::Bytes(Cow::Owned(vec![1, 2]))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(Format::Json, b"{\"a\":").is_err());
        assert!(decode(Format::Cbor, &[0xbf, 0x61]).is_err());
        assert!(decode(Format::Cbor, &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode(Format::Json, &bytes);
            let _ = decode(Format::Cbor, &bytes);
        }

        #[test]
        fn json_text_never_panics(s in "[\\[\\]{}\":,0-9a-zA-Z.eE+-]{0,200}") {
            if let Ok(v) = decode(Format::Json, s.as_bytes()) {
                let _ = v.get("a");
            }
        }
    }
}
