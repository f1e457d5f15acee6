//! How the file and stdout sinks turn a record into one NDJSON line.
//!
//! Every line is one JSON value, so any NDJSON tool reads the output:
//!
//! - a payload that is valid UTF-8 JSON is written as it is. Raw line breaks can only occur as
//!   whitespace between JSON tokens (inside strings they must be escaped), so a pretty-printed
//!   payload has its `\r` and `\n` bytes replaced by spaces: the JSON value is unchanged.
//! - anything else (plain text, binary, invalid JSON, empty) is written as
//!   `{"payload_base64":"<standard padded base64>"}`, the field name the dead-letter files use.
//!
//! With `metadata = true` each line is instead an object with the record's place in the stream
//! it was read from (the `kinesis` source's [`Origin`] fields: `stream`, `shard_id`,
//! `sequence_number`, `sub_sequence_number`, `aggregated`, `partition_key`, `arrival_ms`, ...;
//! absent for records of other sources), `received_ms`, and the payload as `data` (JSON) or
//! `data_base64` (anything else).

use base64::Engine;
use sluice_flow::{Origin, Record};

/// Appends the line for `payload`, newline included, to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    if is_json(payload) {
        push_json(payload, out);
    } else {
        out.extend_from_slice(b"{\"payload_base64\":\"");
        push_base64(payload, out);
        out.extend_from_slice(b"\"}");
    }
    out.push(b'\n');
}

/// Appends the line for `record`: [`encode`]'s, or with `metadata` the object described above.
pub fn encode_record(record: &Record, metadata: bool, out: &mut Vec<u8>) {
    if !metadata {
        return encode(&record.payload, out);
    }
    out.push(b'{');
    if let Some(origin) = record.origin.as_deref() {
        push_origin_fields(origin, out);
    }
    out.extend_from_slice(format!("\"received_ms\":{},", record.received_ms).as_bytes());
    if is_json(&record.payload) {
        out.extend_from_slice(b"\"data\":");
        push_json(&record.payload, out);
    } else {
        out.extend_from_slice(b"\"data_base64\":\"");
        push_base64(&record.payload, out);
        out.push(b'"');
    }
    out.extend_from_slice(b"}\n");
}

/// The origin's fields, each followed by a comma (its JSON object without the braces).
fn push_origin_fields(origin: &Origin, out: &mut Vec<u8>) {
    if let Ok(json) = serde_json::to_vec(origin)
        && json.len() > 2
    {
        out.extend_from_slice(&json[1..json.len() - 1]);
        out.push(b',');
    }
}

fn push_json(payload: &[u8], out: &mut Vec<u8>) {
    out.extend(payload.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
}

fn push_base64(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(payload).as_bytes());
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
    fn with_metadata_a_line_carries_the_records_origin() {
        let origin = Origin {
            stream: "orders".into(),
            stream_arn: None,
            shard_id: "shardId-000000000001".into(),
            sequence_number: "4965".into(),
            sub_sequence_number: 2,
            aggregated: true,
            partition_key: "k\"1".into(),
            explicit_hash_key: None,
            arrival_ms: 1_700_000_000_000,
        };
        let rec = |payload: &'static [u8], origin: Option<Origin>| Record {
            id: 1,
            payload: bytes::Bytes::from_static(payload),
            received_ms: 1_700_000_000_100,
            origin: origin.map(std::sync::Arc::new),
        };
        let mut out = Vec::new();
        encode_record(&rec(b"{\"a\":\n1}", Some(origin)), true, &mut out);
        encode_record(&rec(b"\xff", None), true, &mut out);
        encode_record(&rec(b"{\"a\":1}", None), false, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"stream": "orders", "shard_id": "shardId-000000000001", "sequence_number": "4965",
                "sub_sequence_number": 2, "aggregated": true, "partition_key": "k\"1",
                "arrival_ms": 1_700_000_000_000u64, "received_ms": 1_700_000_000_100u64, "data": {"a": 1}})
        );
        assert_eq!(lines[1], serde_json::json!({"received_ms": 1_700_000_000_100u64, "data_base64": "/w=="}));
        assert_eq!(lines[2], serde_json::json!({"a": 1}), "without metadata: the payload alone");
    }

    #[test]
    fn everything_else_is_base64() {
        assert_eq!(line(b"hello world"), "{\"payload_base64\":\"aGVsbG8gd29ybGQ=\"}\n");
        assert_eq!(line(b""), "{\"payload_base64\":\"\"}\n");
        assert_eq!(line(b"\xff{}"), "{\"payload_base64\":\"/3t9\"}\n");
        assert_eq!(line(b"{\"a\":1} trailing"), "{\"payload_base64\":\"eyJhIjoxfSB0cmFpbGluZw==\"}\n");
    }
}
