//! The embedded stream as a `kinesis` sink's backend: calls go straight into the stream's
//! operation code in this process ([`sluice_kinesis_api::LocalApi`]) instead of over HTTP, so
//! records are neither base64-encoded into JSON nor parsed back. The semantics are the
//! service's: the same checks, routing, limits and durable append as a PutRecords request.

use std::sync::{Arc, Mutex};

use serde_json::json;
use sluice_core::hash::parse_hash_key;
use sluice_core::{HashKeyRange, ShardId};
use sluice_kinesis_api::{ApiError, LocalApi, PutEntry, PutOutcome};
use sluice_sinks::kinesis::{CallError, CallFuture, Entry, EntryResult, KinesisBackend, ShardInfo, ShardMap};

/// One stream of the embedded server, reached in-process.
pub struct EmbeddedStream {
    api: LocalApi,
    stream: String,
    /// Shard ids by index, made once (every accepted record reports one).
    ids: Mutex<Vec<Arc<str>>>,
}

impl EmbeddedStream {
    /// A backend writing to `stream`.
    pub fn new(api: LocalApi, stream: impl Into<String>) -> EmbeddedStream {
        EmbeddedStream { api, stream: stream.into(), ids: Mutex::new(Vec::new()) }
    }
}

fn shard_name(ids: &mut Vec<Arc<str>>, shard: ShardId) -> Arc<str> {
    let i = shard.0 as usize;
    while ids.len() <= i {
        let next = ShardId(ids.len() as u32).to_string();
        ids.push(Arc::from(next));
    }
    ids[i].clone()
}

fn call_error(e: ApiError) -> CallError {
    CallError::from_code(Some(e.kind), e.to_string())
}

impl KinesisBackend for EmbeddedStream {
    fn stream_name(&self) -> &str {
        &self.stream
    }

    fn create_stream(&self, shards: u32) -> CallFuture<'_, bool> {
        Box::pin(async move {
            let request = json!({"StreamName": self.stream, "ShardCount": shards});
            match self.api.call("CreateStream", &request).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind == "ResourceInUseException" => Ok(false),
                Err(e) => Err(call_error(e)),
            }
        })
    }

    fn stream_status(&self) -> CallFuture<'_, String> {
        Box::pin(async move {
            let summary = self
                .api
                .call("DescribeStreamSummary", &json!({"StreamName": self.stream}))
                .await
                .map_err(call_error)?;
            Ok(summary["StreamDescriptionSummary"]["StreamStatus"].as_str().unwrap_or("").to_owned())
        })
    }

    fn shard_map(&self) -> CallFuture<'_, ShardMap> {
        Box::pin(async move {
            let mut shards = Vec::new();
            let mut request = json!({"StreamName": self.stream});
            loop {
                let page = self.api.call("ListShards", &request).await.map_err(call_error)?;
                for s in page["Shards"].as_array().into_iter().flatten() {
                    let range = &s["HashKeyRange"];
                    let (Some(id), Some(start), Some(end)) = (
                        s["ShardId"].as_str(),
                        range["StartingHashKey"].as_str().and_then(|k| parse_hash_key(k).ok()),
                        range["EndingHashKey"].as_str().and_then(|k| parse_hash_key(k).ok()),
                    ) else {
                        continue;
                    };
                    let open = s["SequenceNumberRange"]["EndingSequenceNumber"].is_null();
                    shards.push(ShardInfo { id: id.into(), range: HashKeyRange { start, end }, open });
                }
                match page["NextToken"].as_str() {
                    Some(token) if !token.is_empty() => request = json!({"NextToken": token}),
                    _ => break,
                }
            }
            Ok(ShardMap::new(shards))
        })
    }

    fn put_records<'a>(&'a self, entries: &'a [Entry]) -> CallFuture<'a, Vec<EntryResult>> {
        Box::pin(async move {
            let puts: Vec<PutEntry<'_>> = entries
                .iter()
                .map(|e| PutEntry {
                    data: e.data.clone(),
                    partition_key: &e.partition_key,
                    explicit_hash_key: e.explicit_hash_key.as_deref(),
                    key_hash: Some(e.route()),
                })
                .collect();
            let outcomes = self.api.put_records(&self.stream, &puts).await.map_err(call_error)?;
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            Ok(outcomes
                .into_iter()
                .map(|o| match o {
                    PutOutcome::Accepted { shard, .. } => {
                        EntryResult::Accepted { shard_id: shard_name(&mut ids, shard) }
                    }
                    PutOutcome::Throttled { .. } => EntryResult::Throttled,
                })
                .collect())
        })
    }
}
