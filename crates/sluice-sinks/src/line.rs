//! How the file and stdout sinks turn a record into one NDJSON line.
//!
//! Every line is one JSON value, so any NDJSON tool reads the output:
//!
//! - a payload that is valid UTF-8 JSON is written as it is. Raw line breaks can only occur as
//!   whitespace between JSON tokens (inside strings they must be escaped), so a pretty-printed
//!   payload has its `\r` and `\n` bytes replaced by spaces: the JSON value is unchanged.
//! - anything else (plain text, binary, invalid JSON, empty) is written as
//!   `{"payload_base64":"<standard padded base64>"}`, the field name the dead-letter files use.

use base64::Engine;

/// Appends the line for `payload`, newline included, to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    if is_json(payload) {
        out.extend(payload.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    } else {
        out.extend_from_slice(b"{\"payload_base64\":\"");
        out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(payload).as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.push(b'\n');
}

fn is_json(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok() && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(p: &[u8]) -> String {
        let mut out = Vec::new();
        encode(p, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn json_is_written_as_is() {
        assert_eq!(line(br#"{"a":1,"b":"x"}"#), "{\"a\":1,\"b\":\"x\"}\n");
        assert_eq!(line(b"42"), "42\n");
    }

    #[test]
    fn pretty_json_becomes_one_line_with_the_same_value() {
        let pretty = b"{\r\n  \"a\": [1,\n 2]\n}";
        let l = line(pretty);
        assert_eq!(l.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v, serde_json::json!({"a": [1, 2]}));
    }

    #[test]
    fn everything_else_is_base64() {
        assert_eq!(line(b"hello world"), "{\"payload_base64\":\"aGVsbG8gd29ybGQ=\"}\n");
        assert_eq!(line(b""), "{\"payload_base64\":\"\"}\n");
        assert_eq!(line(b"\xff{}"), "{\"payload_base64\":\"/3t9\"}\n");
        assert_eq!(line(b"{\"a\":1} trailing"), "{\"payload_base64\":\"eyJhIjoxfSB0cmFpbGluZw==\"}\n");
    }
}
