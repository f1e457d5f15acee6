//! Reading request members and checking the model's constraints.
//!
//! Wrong JSON/CBOR types are `SerializationException` at once (the request cannot be read);
//! constraint violations are collected and answered together as one `ValidationException` in
//! AWS's wording: `N validation error(s) detected: Value '…' at 'memberPath' failed to satisfy
//! constraint: Member must …` joined by `; `, at most ten.

use std::borrow::Cow;

use base64::Engine;

use crate::error::ApiError;
use crate::value::{Format, Value};

/// Stream, consumer and shard-id pattern.
pub const NAME_PATTERN: &str = "[a-zA-Z0-9_.-]+";

/// Whether `s` matches `[a-zA-Z0-9_.-]+`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `StreamName` → `streamName`; used for member paths in validation messages.
pub fn lower_camel(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A structure member reader bound to one map of the request.
#[derive(Clone, Copy)]
pub struct Fields<'r, 'a> {
    map: &'r Value<'a>,
    format: Format,
}

fn type_error(name: &str, expected: &str, got: &Value<'_>) -> ApiError {
    ApiError::serialization(format!("Unexpected value type for '{name}': expected {expected}, got {}", got.type_name()))
}

impl<'r, 'a> Fields<'r, 'a> {
    /// Wraps a structure value; anything else is a SerializationException.
    pub fn new(map: &'r Value<'a>, format: Format, what: &str) -> Result<Self, ApiError> {
        match map {
            Value::Map(_) => Ok(Fields { map, format }),
            other => Err(type_error(what, "structure", other)),
        }
    }

    fn raw(&self, name: &str) -> Option<&'r Value<'a>> {
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Whether the member is present (and not null).
    pub fn has(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// A string member.
    pub fn str(&self, name: &str) -> Result<Option<&'r str>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.as_ref())),
            Some(other) => Err(type_error(name, "string", other)),
        }
    }

    /// An integer member (integral floats are accepted, as the Java services do).
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Int(n)) => Ok(Some((*n).clamp(i64::MIN as i128, i64::MAX as i128) as i64)),
            Some(Value::Float(f)) if f.fract() == 0.0 && f.is_finite() => Ok(Some(*f as i64)),
            Some(other) => Err(type_error(name, "integer", other)),
        }
    }

    /// A boolean member.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(type_error(name, "boolean", other)),
        }
    }

    /// A list member.
    pub fn list(&self, name: &str) -> Result<Option<&'r [Value<'a>]>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::List(items)) => Ok(Some(items)),
            Some(other) => Err(type_error(name, "list", other)),
        }
    }

    /// A nested structure member.
    pub fn structure(&self, name: &str) -> Result<Option<Fields<'r, 'a>>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => Fields::new(v, self.format, name).map(Some),
        }
    }

    /// A map member of string → string (tags).
    pub fn string_map(&self, name: &str) -> Result<Option<Vec<(&'r str, &'r str)>>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Map(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Str(s) => Ok((k.as_ref(), s.as_ref())),
                    other => Err(type_error(name, "string", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(type_error(name, "map", other)),
        }
    }

    /// A blob: base64 text in JSON (strictly padded, standard alphabet), a byte string in CBOR.
    pub fn blob(&self, name: &str) -> Result<Option<Cow<'r, [u8]>>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(Cow::Borrowed(b.as_ref()))),
            Some(Value::Str(s)) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map(|v| Some(Cow::Owned(v)))
                .map_err(|_| {
                    ApiError::serialization(format!(
                        "Base64 encoded blob '{name}' could not be decoded: invalid base64"
                    ))
                }),
            Some(other) => Err(type_error(name, "blob", other)),
        }
    }

    /// A timestamp as epoch ms. JSON sends epoch seconds (integer or fractional). CBOR from the
    /// Java SDK sends tag 1 with epoch *milliseconds*, while RFC 8949 tools send seconds; a CBOR
    /// value below 10^11 (1973 in ms, year 5138 in s) is therefore read as seconds.
    pub fn timestamp(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let v = match self.raw(name) {
            None => return Ok(None),
            Some(Value::Int(n)) => *n as f64,
            Some(Value::Float(f)) if f.is_finite() => *f,
            Some(other) => return Err(type_error(name, "timestamp", other)),
        };
        let seconds = match self.format {
            Format::Json => true,
            Format::Cbor => v.abs() < 1e11,
        };
        Ok(Some(if seconds { (v * 1000.0).round() as i64 } else { v.round() as i64 }))
    }
}

/// Collects constraint violations for one ValidationException.
#[derive(Default)]
pub struct Checker {
    errors: Vec<String>,
    /// A semantic error found while reading members ("Either StreamName or StreamARN…"):
    /// AWS reports it only when no constraint is violated.
    after: Option<ApiError>,
}

/// How a value is shown in a validation message.
pub fn show_str(s: &str) -> String {
    format!("'{s}'")
}

impl Checker {
    /// A new, empty checker.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Records one violation; `shown` is the value as AWS prints it (`'x'` or `null`).
    pub fn fail(&mut self, shown: impl Into<String>, path: &str, constraint: impl AsRef<str>) {
        self.errors.push(format!(
            "Value {} at '{}' failed to satisfy constraint: Member must {}",
            shown.into(),
            path,
            constraint.as_ref()
        ));
    }

    /// Records one violation whose constraint text is given whole (`Map keys must …`).
    pub fn fail_whole(&mut self, shown: impl Into<String>, path: &str, constraint: &str) {
        self.errors.push(format!("Value {} at '{}' failed to satisfy constraint: {constraint}", shown.into(), path));
    }

    /// Records "must not be null" when `v` is None; passes `v` through.
    pub fn required<T>(&mut self, v: Option<T>, path: &str) -> Option<T> {
        if v.is_none() {
            self.fail("null", path, "not be null");
        }
        v
    }

    /// Length bounds of a string (in characters).
    pub fn length(&mut self, s: Option<&str>, path: &str, min: usize, max: usize) {
        if let Some(s) = s {
            let n = s.chars().count();
            if n < min {
                self.fail(show_str(s), path, format!("have length greater than or equal to {min}"));
            } else if n > max {
                self.fail(show_str(s), path, format!("have length less than or equal to {max}"));
            }
        }
    }

    /// A stream/consumer name: 1..=128 characters of `[a-zA-Z0-9_.-]`. As AWS reports it: the
    /// pattern first, then the length (an empty name fails both).
    pub fn name(&mut self, s: Option<&str>, path: &str) {
        if let Some(s) = s
            && !is_name(s)
        {
            self.fail(show_str(s), path, format!("satisfy regular expression pattern: {NAME_PATTERN}"));
        }
        self.length(s, path, 1, 128);
    }

    /// Keeps a semantic error for [`Checker::finish`], which answers it only when no
    /// constraint is violated (the first one kept wins).
    pub fn after(&mut self, e: ApiError) {
        self.after.get_or_insert(e);
    }

    /// A regular-expression constraint checked by `ok`.
    pub fn pattern(&mut self, s: Option<&str>, path: &str, ok: impl Fn(&str) -> bool, pattern: &str) {
        if let Some(s) = s
            && !ok(s)
        {
            self.fail(show_str(s), path, format!("satisfy regular expression pattern: {pattern}"));
        }
    }

    /// Numeric bounds. The value is shown as the service's 32-bit integers hold it (clamped).
    pub fn range(&mut self, n: Option<i64>, path: &str, min: i64, max: i64) {
        if let Some(n) = n.map(|n| n.clamp(i64::from(i32::MIN), i64::from(i32::MAX))) {
            if n < min {
                self.fail(show_str(&n.to_string()), path, format!("have value greater than or equal to {min}"));
            } else if n > max {
                self.fail(show_str(&n.to_string()), path, format!("have value less than or equal to {max}"));
            }
        }
    }

    /// An enum value.
    pub fn one_of(&mut self, s: Option<&str>, path: &str, allowed: &[&str]) {
        if let Some(s) = s
            && !allowed.contains(&s)
        {
            self.fail(show_str(s), path, format!("satisfy enum value set: [{}]", allowed.join(", ")));
        }
    }

    /// Element count of a list.
    pub fn count(&mut self, n: Option<usize>, path: &str, min: usize, max: usize) {
        if let Some(n) = n {
            let shown = "'[...]'";
            if n < min {
                self.fail(shown, path, format!("have length greater than or equal to {min}"));
            } else if n > max {
                self.fail(shown, path, format!("have length less than or equal to {max}"));
            }
        }
    }

    /// Size of a blob in bytes, shown the way the Java service shows buffers.
    pub fn blob_size(&mut self, n: Option<usize>, path: &str, max: usize) {
        if let Some(n) = n
            && n > max
        {
            self.fail(
                format!("'java.nio.HeapByteBuffer[pos=0 lim={n} cap={n}]'"),
                path,
                format!("have length less than or equal to {max}"),
            );
        }
    }

    /// Forgets the kept semantic error (for operations where it does not apply).
    pub fn clear_after(&mut self) {
        self.after = None;
    }

    /// Whether anything was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Ok, or one ValidationException listing up to ten violations.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            return self.after.map_or(Ok(()), Err);
        }
        let n = self.errors.len();
        let shown: Vec<&str> = self.errors.iter().take(10).map(String::as_str).collect();
        Err(ApiError::validation(format!(
            "{n} validation error{} detected: {}",
            if n == 1 { "" } else { "s" },
            shown.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shapes() {
        let mut c = Checker::new();
        c.name(Some("bad name!"), "streamName");
        let e = c.finish().err().map(|e| e.message).unwrap_or_default();
        assert_eq!(
            e,
            "1 validation error detected: Value 'bad name!' at 'streamName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        );
        let mut c = Checker::new();
        c.required::<&str>(None, "streamName");
        c.range(Some(0), "shardCount", 1, 100000);
        let e = c.finish().err().map(|e| e.message).unwrap_or_default();
        assert!(e.starts_with("2 validation errors detected: Value null at 'streamName'"), "{e}");
        assert!(e.contains("; Value '0' at 'shardCount' failed to satisfy constraint: Member must have value greater than or equal to 1"));
    }

    #[test]
    fn lower_camel_paths() {
        assert_eq!(lower_camel("StreamName"), "streamName");
        assert_eq!(lower_camel(""), "");
    }
}
