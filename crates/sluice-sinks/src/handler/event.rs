//! Lambda's Kinesis event, built from sluice records, and the function's answers read back.
//! Pure: no I/O, so the exact shapes are unit-tested here.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};
use sluice_flow::{Origin, Record};

/// Shard id of records that did not come from a stream (a websocket or SSE source): they form
/// one pseudo-shard per sink.
pub const LOCAL_SHARD: &str = "shardId-local";
/// Partition key of records without an origin: one key, so they keep their spool order at any
/// `parallelization_factor`.
pub const LOCAL_PARTITION_KEY: &str = "local";
/// Account in ARNs sluice makes up.
const ACCOUNT: &str = "000000000000";

/// What the event names of the sink itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The sink's name (the stream name of origin-less records).
    pub sink: String,
    /// `awsRegion`.
    pub region: String,
    /// `invokeIdentityArn`.
    pub invoke_identity_arn: String,
    /// `requestContext.functionArn` of on-failure records.
    pub function_arn: String,
}

/// One record as the event shows it: the Kinesis fields, whether from an origin or made up.
#[derive(Debug, Clone)]
pub struct Item {
    /// The spool record.
    pub record: Record,
    /// `shardId-…`.
    pub shard_id: Arc<str>,
    /// The stream's ARN.
    pub stream_arn: Arc<str>,
    /// Kinesis sequence number (of the aggregate, for a de-aggregated KPL user record).
    pub sequence_number: String,
    /// Partition key.
    pub partition_key: String,
    /// Approximate arrival time, epoch ms: the stream's, or when the source received it.
    pub arrival_ms: u64,
}

impl Item {
    /// The Kinesis view of `record`. Origin-less records: shard [`LOCAL_SHARD`], partition key
    /// [`LOCAL_PARTITION_KEY`], sequence number = the spool record id (increasing in spool
    /// order, so "lowest failed sequence number" means the same as on a stream), arrival =
    /// `received_ms`, stream = the sink's name.
    pub fn new(record: Record, id: &Identity) -> Item {
        match record.origin.clone() {
            Some(o) => Item {
                shard_id: Arc::from(o.shard_id.as_str()),
                stream_arn: Arc::from(stream_arn(&o, id).as_str()),
                sequence_number: o.sequence_number.clone(),
                partition_key: o.partition_key.clone(),
                arrival_ms: o.arrival_ms,
                record,
            },
            None => Item {
                shard_id: Arc::from(LOCAL_SHARD),
                stream_arn: Arc::from(format!("arn:aws:kinesis:{}:{ACCOUNT}:stream/{}", id.region, id.sink).as_str()),
                sequence_number: record.id.to_string(),
                partition_key: LOCAL_PARTITION_KEY.to_owned(),
                arrival_ms: record.received_ms,
                record,
            },
        }
    }

    /// Rough size of this record in an event, to keep events under 6 MB.
    pub fn event_bytes(&self) -> usize {
        self.record.payload.len().div_ceil(3) * 4 + self.partition_key.len() + 2 * self.sequence_number.len() + 400
    }
}

fn stream_arn(o: &Origin, id: &Identity) -> String {
    o.stream_arn.clone().unwrap_or_else(|| format!("arn:aws:kinesis:{}:{ACCOUNT}:stream/{}", id.region, o.stream))
}

/// The made-up function ARN of a sink.
pub fn default_function_arn(region: &str, sink: &str) -> String {
    format!("arn:aws:lambda:{region}:{ACCOUNT}:function:{sink}")
}

/// One entry of `Records`, serialized without building a `Value` (this runs per record).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordOut<'a> {
    kinesis: KinesisOut<'a>,
    event_source: &'static str,
    event_version: &'static str,
    #[serde(rename = "eventID")]
    event_id: String,
    event_name: &'static str,
    invoke_identity_arn: &'a str,
    aws_region: &'a str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct KinesisOut<'a> {
    kinesis_schema_version: &'static str,
    partition_key: &'a str,
    sequence_number: &'a str,
    data: String,
    approximate_arrival_timestamp: f64,
}

fn record_out<'a>(item: &'a Item, id: &'a Identity) -> RecordOut<'a> {
    RecordOut {
        kinesis: KinesisOut {
            kinesis_schema_version: "1.0",
            partition_key: &item.partition_key,
            sequence_number: &item.sequence_number,
            data: base64::engine::general_purpose::STANDARD.encode(&item.record.payload),
            approximate_arrival_timestamp: item.arrival_ms as f64 / 1000.0,
        },
        event_source: "aws:kinesis",
        event_version: "1.0",
        event_id: format!("{}:{}", item.shard_id, item.sequence_number),
        event_name: "aws:kinesis:record",
        invoke_identity_arn: &id.invoke_identity_arn,
        aws_region: &id.region,
        event_source_arn: &item.stream_arn,
    }
}

/// One entry of `Records`, as JSON.
pub fn record_json(item: &Item, id: &Identity) -> Value {
    serde_json::to_value(record_out(item, id)).unwrap_or(Value::Null)
}

/// The tumbling-window part of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowFields {
    /// Window start, epoch ms (inclusive).
    pub start_ms: u64,
    /// Window end, epoch ms (exclusive).
    pub end_ms: u64,
    /// The state the previous invocation of this shard and window returned (`{}` at first).
    pub state: Value,
    /// The last invocation of this window: no records, the final state to act on.
    pub is_final: bool,
    /// The window ends early because its state grew past 1 MB.
    pub terminated_early: bool,
}

#[derive(serde::Serialize)]
struct EventOut<'a> {
    #[serde(rename = "Records")]
    records: Vec<RecordOut<'a>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    window: Option<WindowOut<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WindowOut<'a> {
    window: WindowSpan,
    state: &'a Value,
    shard_id: &'a str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
    is_final_invoke_for_window: bool,
    is_window_terminated_early: bool,
}

#[derive(serde::Serialize)]
struct WindowSpan {
    start: String,
    end: String,
}

fn event_out<'a>(
    items: &'a [Item],
    id: &'a Identity,
    shard: &'a str,
    stream_arn: &'a str,
    window: Option<&'a WindowFields>,
) -> EventOut<'a> {
    EventOut {
        records: items.iter().map(|i| record_out(i, id)).collect(),
        window: window.map(|w| WindowOut {
            window: WindowSpan { start: iso8601(w.start_ms, false), end: iso8601(w.end_ms, false) },
            state: &w.state,
            shard_id: shard,
            event_source_arn: stream_arn,
            is_final_invoke_for_window: w.is_final,
            is_window_terminated_early: w.terminated_early,
        }),
    }
}

/// The whole event for `items` (all of one shard), with the window fields when windows are on.
/// `shard` and `stream_arn` name the shard also when `items` is empty (a final invoke).
pub fn event(items: &[Item], id: &Identity, shard: &str, stream_arn: &str, window: Option<&WindowFields>) -> Value {
    serde_json::to_value(event_out(items, id, shard, stream_arn, window)).unwrap_or(Value::Null)
}

/// [`event`] as the bytes sent to the function.
pub fn event_bytes(
    items: &[Item],
    id: &Identity,
    shard: &str,
    stream_arn: &str,
    window: Option<&WindowFields>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&event_out(items, id, shard, stream_arn, window))
}

/// Firehose's transformation event for `items` (one shard).
pub fn transform_event(items: &[Item], id: &Identity, invocation_id: &str) -> Value {
    let records: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut r = json!({
                "recordId": i.record.id.to_string(),
                "approximateArrivalTimestamp": i.arrival_ms,
                "data": base64::engine::general_purpose::STANDARD.encode(&i.record.payload),
            });
            if let (Some(o), Some(map)) = (&i.record.origin, r.as_object_mut()) {
                map.insert(
                    "kinesisRecordMetadata".into(),
                    json!({
                        "shardId": o.shard_id,
                        "partitionKey": o.partition_key,
                        "approximateArrivalTimestamp": o.arrival_ms,
                        "sequenceNumber": o.sequence_number,
                        "subsequenceNumber": o.sub_sequence_number.to_string(),
                    }),
                );
            }
            r
        })
        .collect();
    let mut ev = json!({
        "invocationId": invocation_id,
        "deliveryStreamArn": format!("arn:aws:firehose:{}:{ACCOUNT}:deliverystream/{}", id.region, id.sink),
        "region": id.region,
        "records": records,
    });
    if let (Some(first), Some(map)) = (items.first(), ev.as_object_mut())
        && first.record.origin.is_some()
    {
        map.insert("sourceKinesisStreamArn".into(), json!(&*first.stream_arn));
    }
    ev
}

/// What a transformation answered for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformed {
    /// The record's new payload.
    Ok(bytes::Bytes),
    /// Deliberately left out.
    Dropped,
    /// The function could not transform it.
    Failed,
}

/// Reads a transformation answer: one entry per item, in item order. `Err` (a sentence) when
/// the answer does not name every record exactly once with a valid result.
pub fn read_transform(result: &Value, items: &[Item]) -> Result<Vec<Transformed>, String> {
    let Some(records) = result.get("records").and_then(Value::as_array) else {
        return Err("a transformation must answer `{\"records\": [...]}`".into());
    };
    if records.len() != items.len() {
        return Err(format!("{} records answered for {} sent", records.len(), items.len()));
    }
    let mut out: Vec<Option<Transformed>> = vec![None; items.len()];
    for r in records {
        let Some(id) = r.get("recordId").and_then(Value::as_str) else {
            return Err(format!("answer record {r} has no `recordId`"));
        };
        let Some(at) = items.iter().position(|i| i.record.id.to_string() == id) else {
            return Err(format!("answer names recordId {id:?}, which was not sent"));
        };
        if out[at].is_some() {
            return Err(format!("answer names recordId {id:?} twice"));
        }
        out[at] = Some(match r.get("result").and_then(Value::as_str) {
            Some("Ok") => {
                let data =
                    r.get("data").and_then(Value::as_str).ok_or_else(|| format!("record {id}: `Ok` without `data`"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| format!("record {id}: `data` is not base64: {e}"))?;
                Transformed::Ok(bytes::Bytes::from(bytes))
            }
            Some("Dropped") => Transformed::Dropped,
            Some("ProcessingFailed") => Transformed::Failed,
            other => return Err(format!("record {id}: result {other:?} is not Ok, Dropped or ProcessingFailed")),
        });
    }
    Ok(out.into_iter().flatten().collect())
}

/// What a successful invocation's answer means for its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Index (into the invoked items) of the first record of the lowest failed sequence
    /// number: everything before it is done. `None`: the whole batch succeeded.
    pub first_failed: Option<usize>,
    /// The window state returned (windows only).
    pub state: Option<Value>,
    /// Per record, what a transformation answered (`transform` only).
    pub transformed: Option<Vec<Transformed>>,
}

/// Reads a function's result for `items`. `Err` (a sentence) makes the whole batch a function
/// error: with `item_failures`, an answer that is not an object or null, a `batchItemFailures`
/// that is not a list, or an entry without a known `itemIdentifier`; with `windows`, an answer
/// without `state`.
pub fn read_answer(result: &Value, items: &[Item], item_failures: bool, windows: bool) -> Result<Answer, String> {
    let state = if windows {
        match result.get("state") {
            Some(s) if !s.is_null() => Some(s.clone()),
            _ => return Err("a tumbling-window function must answer with a `state`".into()),
        }
    } else {
        None
    };
    if !item_failures {
        return Ok(Answer { first_failed: None, state, transformed: None });
    }
    let failures = match result {
        Value::Null => return Ok(Answer { first_failed: None, state, transformed: None }),
        Value::Object(o) => match o.get("batchItemFailures") {
            None | Some(Value::Null) => return Ok(Answer { first_failed: None, state, transformed: None }),
            Some(Value::Array(list)) => list,
            Some(_) => return Err("`batchItemFailures` is not a list".into()),
        },
        _ => return Err("the answer is neither an object nor null".into()),
    };
    // The earliest failed record in batch order: on a stream that is the lowest sequence
    // number; on the pseudo-shard, whose record ids of two inputs interleave, it still means
    // "nothing before it failed".
    let mut first_failed: Option<usize> = None;
    for entry in failures {
        let Some(seq) = entry.get("itemIdentifier").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
            return Err(format!("batchItemFailures entry {entry} has no `itemIdentifier`"));
        };
        let Some(at) = items.iter().position(|i| i.sequence_number == seq) else {
            return Err(format!("batchItemFailures names {seq:?}, which is not in the batch"));
        };
        first_failed = Some(first_failed.map_or(at, |f| f.min(at)));
    }
    Ok(Answer { first_failed, state, transformed: None })
}

pub use crate::time::iso8601;

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            sink: "fn".into(),
            region: "eu-west-1".into(),
            invoke_identity_arn: "arn:aws:iam::000000000000:role/r".into(),
            function_arn: default_function_arn("eu-west-1", "fn"),
        }
    }

    fn item(seq: &str, origin: bool) -> Item {
        let origin = origin.then(|| {
            Arc::new(Origin {
                stream: "race".into(),
                stream_arn: None,
                shard_id: "shardId-000000000002".into(),
                sequence_number: seq.into(),
                sub_sequence_number: 0,
                aggregated: false,
                partition_key: "k1".into(),
                explicit_hash_key: None,
                arrival_ms: 1_701_760_153_593,
            })
        });
        Item::new(Record { id: 7, payload: "Hello".into(), received_ms: 1_000, origin }, &identity())
    }

    #[test]
    fn records_carry_lambdas_fields() {
        let id = identity();
        let v = record_json(&item("495903", true), &id);
        assert_eq!(v["kinesis"]["data"], "SGVsbG8=");
        assert_eq!(v["kinesis"]["approximateArrivalTimestamp"], 1_701_760_153.593);
        assert_eq!(v["eventID"], "shardId-000000000002:495903");
        assert_eq!(v["eventSourceARN"], "arn:aws:kinesis:eu-west-1:000000000000:stream/race");
        let local = record_json(&item("", false), &id);
        assert_eq!(local["eventID"], "shardId-local:7");
        assert_eq!(local["kinesis"]["partitionKey"], "local");
        assert_eq!(local["eventSourceARN"], "arn:aws:kinesis:eu-west-1:000000000000:stream/fn");
    }

    #[test]
    fn window_events_name_the_shard_even_without_records() {
        let w = WindowFields { start_ms: 0, end_ms: 10_000, state: json!({}), is_final: true, terminated_early: false };
        let v = event(&[], &identity(), "shardId-1", "arn:s", Some(&w));
        assert_eq!(v["Records"], json!([]));
        assert_eq!(v["window"], json!({"start": "1970-01-01T00:00:00Z", "end": "1970-01-01T00:00:10Z"}));
        assert_eq!((v["shardId"].as_str(), v["isFinalInvokeForWindow"].as_bool()), (Some("shardId-1"), Some(true)));
        assert!(event(&[], &identity(), "s", "a", None).get("window").is_none());
    }

    #[test]
    fn item_failures_retry_from_the_lowest_sequence_number() {
        let items: Vec<Item> = ["100", "200", "200", "300", "1000"].iter().map(|s| item(s, true)).collect();
        let answer = |v: Value| read_answer(&v, &items, true, false);
        assert_eq!(
            answer(json!({"batchItemFailures": [{"itemIdentifier": "1000"}, {"itemIdentifier": "200"}]}))
                .map(|a| a.first_failed),
            Ok(Some(1))
        );
        for ok in [json!(null), json!({}), json!({"batchItemFailures": null}), json!({"batchItemFailures": []})] {
            assert_eq!(answer(ok).map(|a| a.first_failed), Ok(None));
        }
        for bad in [
            json!("ok"),
            json!({"batchItemFailures": {}}),
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"itemIdentfier": "100"}]}),
            json!({"batchItemFailures": [{"itemIdentifier": "999"}]}),
        ] {
            assert!(answer(bad.clone()).is_err(), "{bad}");
        }
        assert!(read_answer(&json!("anything"), &items, false, false).is_ok(), "ignored without the response type");
        assert!(read_answer(&json!({}), &items, false, true).is_err(), "windows need a state");
    }

    #[test]
    fn transformations_get_firehoses_event_and_must_answer_every_record_once() {
        let mut second = item("2", true);
        second.record.id = 8;
        let items = [item("49590338271490256608559692538361571095921575989136588898", true), second];
        let ev = transform_event(&items, &identity(), "inv-1");
        assert_eq!(ev["invocationId"], "inv-1");
        assert_eq!(ev["deliveryStreamArn"], "arn:aws:firehose:eu-west-1:000000000000:deliverystream/fn");
        let r0 = &ev["records"][0];
        assert_eq!(r0["recordId"], items[0].record.id.to_string());
        assert_eq!(r0["approximateArrivalTimestamp"], 1_701_760_153_593u64);
        assert_eq!(r0["kinesisRecordMetadata"]["shardId"], "shardId-000000000002");
        assert_eq!(r0["kinesisRecordMetadata"]["subsequenceNumber"], "0");
        let id = |i: usize| items[i].record.id.to_string();
        let ok = json!({"records": [
            {"recordId": id(1), "result": "Dropped"},
            {"recordId": id(0), "result": "Ok", "data": "eyJhIjoxfQ=="},
        ]});
        assert_eq!(
            read_transform(&ok, &items),
            Ok(vec![Transformed::Ok(bytes::Bytes::from_static(b"{\"a\":1}")), Transformed::Dropped])
        );
        for (bad, want) in [
            (json!({"records": [{"recordId": id(0), "result": "Dropped"}]}), "1 records answered for 2"),
            (
                json!({"records": [{"recordId": id(0), "result": "Dropped"}, {"recordId": id(0), "result": "Dropped"}]}),
                "twice",
            ),
            (
                json!({"records": [{"recordId": id(0), "result": "Ok"}, {"recordId": id(1), "result": "Dropped"}]}),
                "without `data`",
            ),
            (
                json!({"records": [{"recordId": id(0), "result": "Maybe"}, {"recordId": id(1), "result": "Dropped"}]}),
                "is not Ok",
            ),
            (
                json!({"records": [{"recordId": "nope", "result": "Dropped"}, {"recordId": id(1), "result": "Dropped"}]}),
                "not sent",
            ),
            (json!(null), "must answer"),
        ] {
            let e = read_transform(&bad, &items).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
