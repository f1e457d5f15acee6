//! The API called in-process, for a producer that runs in the same process as the embedded
//! stream (`sluice run` with no `endpoint`).
//!
//! It goes through the same operation code as HTTP requests: control-plane calls are decoded
//! and answered by [`crate::ops::dispatch`] exactly as a JSON request would be, and
//! [`LocalApi::put_records`] applies PutRecords' constraints, routing, shard limits and durable
//! group-committed append. What it skips is only the transport: HTTP, SigV4, and encoding each
//! record's data as base64 JSON and back.

use std::sync::Arc;

use crate::error::ApiError;
use crate::input::Fields;
use crate::ops;
use crate::ops::records::{PutEntry, PutOutcome};
use crate::state::{AppState, Ctx};
use crate::value::{self, Format, Out};

/// One record read in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecord {
    /// Its sequence number.
    pub sequence_number: String,
    /// `ApproximateArrivalTimestamp`, epoch ms.
    pub arrival_ms: u64,
    /// Partition key.
    pub partition_key: String,
    /// Data.
    pub data: bytes::Bytes,
}

/// One in-process GetRecords answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecords {
    /// The records, in shard order.
    pub records: Vec<LocalRecord>,
    /// `NextShardIterator`; `None` at the end of a closed shard.
    pub next_iterator: Option<String>,
    /// `MillisBehindLatest`.
    pub millis_behind: i64,
    /// At the end of a closed shard: the child shard ids.
    pub child_shards: Vec<String>,
    /// One past the shard's newest ordinal when it was read (compare with
    /// [`LocalApi::watch_shard`]).
    pub tip: u64,
}

/// A handle on a running embedded stream, for in-process calls. Cheap to clone.
#[derive(Clone)]
pub struct LocalApi {
    state: Arc<AppState>,
}

impl LocalApi {
    pub(crate) fn new(state: Arc<AppState>) -> LocalApi {
        LocalApi { state }
    }

    fn ctx(&self, format: Format) -> Ctx {
        Ctx { format, region: self.state.config.default_region.clone(), now_ms: sluice_core::now_ms() }
    }

    /// Calls a non-streaming operation with a JSON request; answers its JSON response (`null`
    /// for operations without one).
    pub async fn call(&self, op: &str, request: &serde_json::Value) -> Result<serde_json::Value, ApiError> {
        let body = serde_json::to_vec(request).map_err(|e| ApiError::serialization(e.to_string()))?;
        let tree = value::decode(Format::Json, &body)
            .map_err(|e| ApiError::serialization(format!("Could not parse the request: {e}")))?;
        let fields = Fields::new(&tree, Format::Json, "request")?;
        let out = ops::dispatch(&self.state, &self.ctx(Format::Json), op, fields).await?;
        let bytes = match out {
            Out::Null => return Ok(serde_json::Value::Null),
            Out::RawJson(raw) => raw,
            other => other.encode(Format::Json),
        };
        serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(format!("unreadable answer: {e}")))
    }

    /// GetRecords with a shard iterator from `GetShardIterator` (at most `limit` records,
    /// 1..=10,000): the same iterator checks, read limits and answer as the HTTP operation,
    /// without encoding the data as base64 JSON.
    pub fn get_records(&self, iterator: &str, limit: u32) -> Result<LocalRecords, ApiError> {
        if !(1..=10_000).contains(&limit) {
            return Err(ApiError::invalid_argument(format!("Limit {limit} is not within 1..=10000")));
        }
        let got = ops::records::read_records(&self.state, &self.ctx(Format::Json), iterator, limit as usize)?;
        let mut seqs = sluice_core::seq::SequenceWriter::new(got.tag, got.shard);
        let mut digits = Vec::with_capacity(64);
        let records = got
            .records
            .into_iter()
            .map(|r| {
                digits.clear();
                seqs.write(r.ordinal, r.arrival_ms, &mut digits);
                LocalRecord {
                    sequence_number: String::from_utf8_lossy(&digits).into_owned(),
                    arrival_ms: r.arrival_ms,
                    partition_key: r.partition_key,
                    data: bytes::Bytes::from(r.data),
                }
            })
            .collect();
        Ok(LocalRecords {
            records,
            next_iterator: got.next_iterator,
            millis_behind: got.millis_behind,
            child_shards: got.child_ids,
            tip: got.tip,
        })
    }

    /// A watch of one shard's next ordinal, which moves with every commit to it: a reader at
    /// the tip waits on it instead of polling.
    pub fn watch_shard(&self, stream: &str, shard: &str) -> Result<tokio::sync::watch::Receiver<u64>, ApiError> {
        let index = sluice_core::ShardId::parse(shard)
            .ok_or_else(|| ApiError::invalid_argument(format!("{shard:?} is not a shard id")))?;
        let tag = {
            let cat = self.state.store.catalog();
            match cat.streams.get(stream) {
                Some(meta) => meta.tag,
                None => return Err(self.state.stream_not_found(stream)),
            }
        };
        Ok(self.state.store.watch(stream, tag, index.0)?)
    }

    /// PutRecords into `stream`; one outcome per entry, in order. Durable when it returns.
    pub async fn put_records(&self, stream: &str, entries: &[PutEntry<'_>]) -> Result<Vec<PutOutcome>, ApiError> {
        ops::records::put_records_typed(&self.state, &self.ctx(Format::Json), stream, entries).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ApiConfig;
    use bytes::Bytes;

    async fn api(dir: &std::path::Path) -> (crate::Server, LocalApi) {
        let store = sluice_storage::Store::open(sluice_storage::StoreConfig::new(dir.to_path_buf())).expect("store");
        let addr = "127.0.0.1:0".parse().expect("addr");
        let server = crate::Server::start(store, ApiConfig::default(), addr, None).await.expect("server");
        let local = server.local();
        (server, local)
    }

    #[tokio::test]
    async fn control_plane_calls_answer_like_json_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, api) = api(dir.path()).await;
        let created = api.call("CreateStream", &serde_json::json!({"StreamName": "s", "ShardCount": 2})).await;
        assert_eq!(created.expect("create"), serde_json::Value::Null);
        let again = api.call("CreateStream", &serde_json::json!({"StreamName": "s", "ShardCount": 2})).await;
        assert_eq!(again.expect_err("exists").kind, "ResourceInUseException");
        let shards = api.call("ListShards", &serde_json::json!({"StreamName": "s"})).await.expect("list");
        assert_eq!(shards["Shards"].as_array().map(Vec::len), Some(2));
        let bad = api.call("ListShards", &serde_json::json!({"StreamName": "no such"})).await;
        assert_eq!(bad.expect_err("invalid name").kind, "ValidationException");
        server.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn put_records_checks_routes_and_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, api) = api(dir.path()).await;
        api.call("CreateStream", &serde_json::json!({"StreamName": "s", "ShardCount": 4})).await.expect("create");
        let entries: Vec<PutEntry<'_>> = ["a", "b", "c", "a"]
            .iter()
            .map(|k| PutEntry {
                data: Bytes::from_static(b"payload"),
                partition_key: k,
                explicit_hash_key: None,
                key_hash: None,
            })
            .collect();
        let out = api.put_records("s", &entries).await.expect("put");
        let accepted: Vec<(sluice_core::ShardId, sluice_core::SequenceNumber)> = out
            .iter()
            .map(|o| match o {
                PutOutcome::Accepted { shard, sequence_number } => (*shard, *sequence_number),
                PutOutcome::Throttled { message } => panic!("throttled: {message}"),
            })
            .collect();
        assert_eq!(accepted[0].0, accepted[3].0, "same key, same shard");
        assert!(accepted[3].1 > accepted[0].1, "later record, higher sequence number");
        let expected = sluice_core::partition_key_hash("b");
        let shards = api.call("ListShards", &serde_json::json!({"StreamName": "s"})).await.expect("list");
        let holder = shards["Shards"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| {
                let start: u128 =
                    s["HashKeyRange"]["StartingHashKey"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
                let end: u128 = s["HashKeyRange"]["EndingHashKey"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
                (start..=end).contains(&expected)
            })
            .and_then(|s| s["ShardId"].as_str())
            .map(str::to_owned);
        assert_eq!(holder, Some(accepted[1].0.to_string()), "routed by MD5 of the key");

        let empty_key =
            [PutEntry { data: Bytes::from_static(b"x"), partition_key: "", explicit_hash_key: None, key_hash: None }];
        let err = api.put_records("s", &empty_key).await.expect_err("empty key");
        assert_eq!(err.kind, "ValidationException");
        assert!(err.message.contains("records.1.member.partitionKey"), "{}", err.message);
        let big = Bytes::from(vec![0u8; 1024 * 1024]);
        let too_big = [PutEntry { data: big, partition_key: "k", explicit_hash_key: None, key_hash: None }];
        assert_eq!(api.put_records("s", &too_big).await.expect_err("too big").kind, "InvalidArgumentException");
        let missing =
            [PutEntry { data: Bytes::from_static(b"x"), partition_key: "k", explicit_hash_key: None, key_hash: None }];
        assert_eq!(api.put_records("gone", &missing).await.expect_err("missing").kind, "ResourceNotFoundException");
        server.shutdown().await.expect("shutdown");
    }
}
