//! The embedded stream as a `kinesis` source's backend: GetRecords goes straight into the
//! stream's operation code in this process ([`LocalApi::get_records`]), with the service's
//! iterator checks and read limits but without HTTP and base64 JSON; and a reader at the tip
//! of a shard waits for the next commit to it instead of sleeping `idle_between_reads`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_kinesis_api::{ApiError, LocalApi};
use sluice_sources::kinesis::backend::{Fetched, Page, Position, ReadError, ReadFuture, ShardDesc, StreamBackend};
use tokio::sync::watch;

/// One stream of the embedded server, read in-process.
pub struct EmbeddedReader {
    api: LocalApi,
    stream: String,
    /// Per shard, a watch of its commits kept between waits, so that a commit between a read
    /// and the next wait is not missed.
    commits: Mutex<HashMap<String, watch::Receiver<u64>>>,
}

impl EmbeddedReader {
    /// A backend reading `stream`.
    pub fn new(api: LocalApi, stream: impl Into<String>) -> EmbeddedReader {
        EmbeddedReader { api, stream: stream.into(), commits: Mutex::new(HashMap::new()) }
    }

    async fn call(&self, op: &str, request: Value) -> Result<Value, ReadError> {
        self.api.call(op, &request).await.map_err(read_error)
    }

    async fn list(&self) -> Result<Vec<ShardDesc>, ReadError> {
        let mut shards = Vec::new();
        let mut request = json!({"StreamName": self.stream});
        loop {
            let page = self.call("ListShards", request).await?;
            for s in page["Shards"].as_array().into_iter().flatten() {
                let text = |v: &Value| v.as_str().map(str::to_owned);
                shards.push(ShardDesc {
                    id: text(&s["ShardId"]).unwrap_or_default(),
                    parent: text(&s["ParentShardId"]),
                    adjacent_parent: text(&s["AdjacentParentShardId"]),
                    starting_hash_key: text(&s["HashKeyRange"]["StartingHashKey"]).unwrap_or_default(),
                    ending_hash_key: text(&s["HashKeyRange"]["EndingHashKey"]).unwrap_or_default(),
                    closed: s["SequenceNumberRange"]["EndingSequenceNumber"].is_string(),
                });
            }
            match page["NextToken"].as_str() {
                Some(token) => request = json!({"NextToken": token}),
                None => return Ok(shards),
            }
        }
    }

    async fn iterator(&self, shard: &str, at: &Position) -> Result<String, ReadError> {
        let mut request = json!({"StreamName": self.stream, "ShardId": shard});
        let (kind, extra) = match at {
            Position::TrimHorizon => ("TRIM_HORIZON", None),
            Position::Latest => ("LATEST", None),
            Position::AtTimestamp(ms) => ("AT_TIMESTAMP", Some(("Timestamp", json!(*ms as f64 / 1000.0)))),
            Position::AtSequence(seq) => ("AT_SEQUENCE_NUMBER", Some(("StartingSequenceNumber", json!(seq)))),
            Position::AfterSequence(seq) => ("AFTER_SEQUENCE_NUMBER", Some(("StartingSequenceNumber", json!(seq)))),
        };
        request["ShardIteratorType"] = json!(kind);
        if let Some((k, v)) = extra {
            request[k] = v;
        }
        let out = self.call("GetShardIterator", request).await?;
        out["ShardIterator"].as_str().map(str::to_owned).ok_or_else(|| ReadError::Other("no ShardIterator".into()))
    }

    fn records(&self, iterator: &str, limit: u32) -> Result<Page, ReadError> {
        let got = self.api.get_records(iterator, limit).map_err(read_error)?;
        Ok(Page {
            records: got
                .records
                .into_iter()
                .map(|r| Fetched {
                    sequence_number: r.sequence_number,
                    partition_key: r.partition_key,
                    data: r.data,
                    arrival_ms: r.arrival_ms,
                })
                .collect(),
            next_iterator: got.next_iterator,
            millis_behind: Some(got.millis_behind),
            child_shards: got.child_shards,
        })
    }

    async fn wait_for_commit(&self, shard: &str, max: Duration) {
        let taken = self.commits.lock().unwrap_or_else(|p| p.into_inner()).remove(shard);
        let rx = match taken {
            Some(rx) => Some(rx),
            None => self.api.watch_shard(&self.stream, shard).ok(),
        };
        let Some(mut rx) = rx else {
            tokio::time::sleep(max).await;
            return;
        };
        match tokio::time::timeout(max, rx.changed()).await {
            Ok(Ok(())) | Err(_) => {
                rx.borrow_and_update();
                self.commits.lock().unwrap_or_else(|p| p.into_inner()).insert(shard.to_owned(), rx);
            }
            // The shard or stream is gone: the next read says so.
            Ok(Err(_)) => {}
        }
    }
}

fn read_error(e: ApiError) -> ReadError {
    ReadError::from_code(Some(e.kind), e.to_string())
}

impl StreamBackend for EmbeddedReader {
    fn stream_name(&self) -> &str {
        &self.stream
    }

    fn list_shards(&self) -> ReadFuture<'_, Vec<ShardDesc>> {
        Box::pin(self.list())
    }

    fn shard_iterator<'a>(&'a self, shard: &'a str, at: &'a Position) -> ReadFuture<'a, String> {
        Box::pin(self.iterator(shard, at))
    }

    fn get_records<'a>(&'a self, iterator: &'a str, limit: u32) -> ReadFuture<'a, Page> {
        Box::pin(async move { self.records(iterator, limit) })
    }

    fn idle<'a>(&'a self, shard: &'a str, max: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.wait_for_commit(shard, max))
    }

    fn stream_arn(&self) -> ReadFuture<'_, String> {
        Box::pin(async move {
            let out = self.call("DescribeStreamSummary", json!({"StreamName": self.stream})).await?;
            out["StreamDescriptionSummary"]["StreamARN"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ReadError::Other("no StreamARN".into()))
        })
    }
}
