//! Lambda's on-failure records, and the NDJSON file they are appended to.
//!
//! Like Lambda's, a record describes the failed range (shard, first and last sequence number,
//! arrival times, count) and carries no data: a consumer reads the range from the stream. The
//! records' payloads also go to the pipeline's dead-letter file, since the spool forgets
//! acknowledged records.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::event::{Identity, Item, iso8601};
use super::retry::Condition;

/// One on-failure record for `items` (of one shard, in order, not empty).
pub fn record(items: &[Item], id: &Identity, condition: Condition, invokes: u32, now_ms: u64) -> Value {
    let first = items.first();
    let last = items.last();
    let seq = |i: Option<&Item>| i.map(|i| i.sequence_number.clone()).unwrap_or_default();
    let arrival = |i: Option<&Item>| i.map(|i| iso8601(i.arrival_ms, true)).unwrap_or_default();
    json!({
        "requestContext": {
            "requestId": uuid::Uuid::new_v4().to_string(),
            "functionArn": id.function_arn,
            "condition": condition.as_str(),
            "approximateInvokeCount": invokes,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": iso8601(now_ms, true),
        "KinesisBatchInfo": {
            "shardId": first.map(|i| &*i.shard_id).unwrap_or_default(),
            "startSequenceNumber": seq(first),
            "endSequenceNumber": seq(last),
            "approximateArrivalOfFirstRecord": arrival(first),
            "approximateArrivalOfLastRecord": arrival(last),
            "batchSize": items.len(),
            "streamArn": first.map(|i| &*i.stream_arn).unwrap_or_default(),
        },
    })
}

/// Where on-failure records go.
pub enum Destination {
    /// Appended to an NDJSON file.
    File(FailureFile),
    /// Emitted as events of the sink's output (`"sink:NAME"`; the pipeline routes them).
    Output,
}

/// Appends on-failure records to one file, fsynced before [`append`](Self::append) returns.
/// Cheap to clone.
#[derive(Clone)]
pub struct FailureFile {
    path: PathBuf,
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl FailureFile {
    /// The file at `path` (created with its directory on first use).
    pub fn new(path: PathBuf) -> FailureFile {
        FailureFile { path, file: Arc::new(Mutex::new(None)) }
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one line and fsyncs (blocking work runs off the async threads).
    pub async fn append(&self, record: &Value) -> std::io::Result<()> {
        let mut line = record.to_string().into_bytes();
        line.push(b'\n');
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = this.file.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                if let Some(parent) = this.path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                *guard = Some(std::fs::OpenOptions::new().create(true).append(true).open(&this.path)?);
            }
            let Some(f) = guard.as_mut() else { return Err(std::io::Error::other("no file")) };
            f.write_all(&line)?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
