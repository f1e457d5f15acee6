//! Request encoding and cheap, panic-free response parsing for the hot paths.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use rand::{Rng, RngCore};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct PutRecordsIn<'a> {
    #[serde(rename = "StreamName")]
    stream_name: &'a str,
    #[serde(rename = "Records")]
    records: Vec<PutEntry>,
}

#[derive(Serialize)]
struct PutEntry {
    #[serde(rename = "Data")]
    data: String,
    #[serde(rename = "PartitionKey")]
    partition_key: String,
}

/// Encodes a PutRecords body of `batch` records of `record_size` random bytes,
/// each with a random 32-hex-digit partition key (spreads over all shards).
pub(crate) fn put_records_body(stream: &str, batch: usize, record_size: usize) -> serde_json::Result<Bytes> {
    let mut rng = rand::rng();
    let mut buf = vec![0u8; record_size];
    let records = (0..batch)
        .map(|_| {
            rng.fill_bytes(&mut buf);
            PutEntry { data: STANDARD.encode(&buf), partition_key: format!("{:032x}", rng.random::<u128>()) }
        })
        .collect();
    serde_json::to_vec(&PutRecordsIn { stream_name: stream, records }).map(Bytes::from)
}

/// Encodes a GetRecords body.
pub(crate) fn get_records_body(iterator: &str, limit: u32) -> serde_json::Result<Bytes> {
    #[derive(Serialize)]
    struct In<'a> {
        #[serde(rename = "ShardIterator")]
        shard_iterator: &'a str,
        #[serde(rename = "Limit")]
        limit: u32,
    }
    serde_json::to_vec(&In { shard_iterator: iterator, limit }).map(Bytes::from)
}

/// Encodes a GetShardIterator(TRIM_HORIZON) body.
pub(crate) fn trim_horizon_body(stream: &str, shard_id: &str) -> serde_json::Result<Bytes> {
    serde_json::to_vec(&serde_json::json!({
        "StreamName": stream,
        "ShardId": shard_id,
        "ShardIteratorType": "TRIM_HORIZON",
    }))
    .map(Bytes::from)
}

/// What a PutRecords response says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PutOutcome {
    /// `FailedRecordCount` (0 when absent).
    pub failed: u64,
    /// Number of entries in `Records`.
    pub entries: u64,
}

/// Parses a PutRecords response; `None` for anything malformed.
pub(crate) fn parse_put_records(body: &[u8]) -> Option<PutOutcome> {
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "FailedRecordCount", default)]
        failed: u64,
        #[serde(rename = "Records")]
        records: SeqCount,
    }
    let out: Out = serde_json::from_slice(body).ok()?;
    Some(PutOutcome { failed: out.failed, entries: out.records.0 })
}

/// Parses a GetShardIterator response; `None` for anything malformed.
pub(crate) fn parse_shard_iterator(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Out<'a> {
        #[serde(rename = "ShardIterator", borrow)]
        it: Cow<'a, str>,
    }
    serde_json::from_slice::<Out<'_>>(body).ok().map(|o| o.it.into_owned())
}

/// What a GetRecords response says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GetOutcome {
    /// Records returned.
    pub records: u64,
    /// Sum of the decoded payload sizes (computed from base64 lengths, nothing decoded).
    pub payload_bytes: u64,
    /// `NextShardIterator`, absent for a closed shard read to its end.
    pub next: Option<String>,
}

/// Parses a GetRecords response without decoding or allocating per record;
/// `None` for anything malformed.
pub(crate) fn parse_get_records(body: &[u8]) -> Option<GetOutcome> {
    #[derive(Deserialize)]
    struct Out<'a> {
        #[serde(rename = "NextShardIterator", borrow, default)]
        next: Option<Cow<'a, str>>,
        #[serde(rename = "Records")]
        records: RecordStats,
    }
    let out: Out<'_> = serde_json::from_slice(body).ok()?;
    Some(GetOutcome {
        records: out.records.count,
        payload_bytes: out.records.bytes,
        next: out.next.map(Cow::into_owned),
    })
}

/// Length of the decoded form of a (padded or unpadded) standard base64 string.
fn base64_decoded_len(s: &str) -> u64 {
    let b = s.as_bytes();
    let pad = b.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    ((b.len() - pad) as u64 * 3) / 4
}

/// Counts the elements of a JSON array without keeping them.
struct SeqCount(u64);

impl<'de> Deserialize<'de> for SeqCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeqCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeqCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(SeqCount(n))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Record count and payload bytes of a GetRecords `Records` array.
struct RecordStats {
    count: u64,
    bytes: u64,
}

impl<'de> Deserialize<'de> for RecordStats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Rec<'a> {
            #[serde(rename = "Data", borrow)]
            data: Cow<'a, str>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RecordStats;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RecordStats, A::Error> {
                let mut stats = RecordStats { count: 0, bytes: 0 };
                while let Some(rec) = seq.next_element::<Rec<'de>>()? {
                    stats.count += 1;
                    stats.bytes += base64_decoded_len(&rec.data);
                }
                Ok(stats)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Turns a JSON error into a short message (for control-plane parse failures).
pub(crate) fn bad_response(op: &str, body: &[u8]) -> anyhow::Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    anyhow::anyhow!("unexpected {op} response: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_len_matches_base64() {
        for n in 0..40 {
            let data = vec![7u8; n];
            let padded = STANDARD.encode(&data);
            assert_eq!(base64_decoded_len(&padded), n as u64, "padded {n}");
            let unpadded = padded.trim_end_matches('=');
            assert_eq!(base64_decoded_len(unpadded), n as u64, "unpadded {n}");
        }
    }

    #[test]
    fn put_body_roundtrip() {
        let body = put_records_body("bench", 3, 10).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["StreamName"], "bench");
        let recs = v["Records"].as_array().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0]["PartitionKey"].as_str().unwrap().len(), 32);
        let data = STANDARD.decode(recs[0]["Data"].as_str().unwrap()).unwrap();
        assert_eq!(data.len(), 10);
    }

    #[test]
    fn put_response() {
        let ok = br#"{"FailedRecordCount":1,"Records":[{"SequenceNumber":"1","ShardId":"s"},{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"x"}]}"#;
        assert_eq!(parse_put_records(ok), Some(PutOutcome { failed: 1, entries: 2 }));
        assert_eq!(parse_put_records(b"<html>"), None);
        assert_eq!(parse_put_records(br#"{"FailedRecordCount":"x"}"#), None);
        assert_eq!(parse_put_records(br#"{"FailedRecordCount":0}"#), None);
    }

    #[test]
    fn get_response() {
        let body = br#"{"MillisBehindLatest":0,"NextShardIterator":"AAA\/B=","Records":[
            {"SequenceNumber":"1","ApproximateArrivalTimestamp":1.5,"Data":"AAECAw==","PartitionKey":"k"},
            {"SequenceNumber":"2","Data":"AAEC","PartitionKey":"k","EncryptionType":"NONE"}]}"#;
        assert_eq!(
            parse_get_records(body),
            Some(GetOutcome { records: 2, payload_bytes: 7, next: Some("AAA/B=".into()) })
        );
        let closed = br#"{"Records":[],"MillisBehindLatest":0}"#;
        assert_eq!(parse_get_records(closed), Some(GetOutcome { records: 0, payload_bytes: 0, next: None }));
        assert_eq!(parse_get_records(b""), None);
        assert_eq!(parse_get_records(br#"{"Records":[{"Data":5}]}"#), None);
    }

    #[test]
    fn iterator_response() {
        assert_eq!(parse_shard_iterator(br#"{"ShardIterator":"abc"}"#), Some("abc".into()));
        assert_eq!(parse_shard_iterator(br#"{"ShardIterator":null}"#), None);
    }
}
