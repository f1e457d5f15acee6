//! The Kinesis API as the sink uses it, over aws-sdk-kinesis: make sure the stream exists,
//! learn its shards, put batches. Every failure is mapped to a [`CallError`] that says how to
//! react; the SDK's own retries are off, because the dispatcher retries exactly the entries
//! that failed.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_core::HashKeyRange;
use sluice_core::hash::parse_hash_key;

use super::backend::{CallFuture, KinesisBackend};
use super::config::KinesisConfig;
use super::dispatch::{CallError, Entry, EntryResult};
use super::shard_map::{ShardInfo, ShardMap};

/// A Kinesis client bound to one stream.
#[derive(Clone)]
pub struct StreamClient {
    client: aws_sdk_kinesis::Client,
    stream: Arc<str>,
}

impl StreamClient {
    /// Builds the SDK client for the configured endpoint.
    pub async fn connect(config: &KinesisConfig) -> StreamClient {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .operation_attempt_timeout(config.request_timeout)
            .operation_timeout(config.request_timeout)
            .build();
        let shared = crate::aws::sdk_config(&config.endpoint, config.region.clone()).await;
        let conf = aws_sdk_kinesis::config::Builder::from(&shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .build();
        StreamClient {
            client: aws_sdk_kinesis::Client::from_conf(conf),
            stream: Arc::from(config.stream_name.as_str()),
        }
    }

    /// CreateStream; false when it exists already.
    pub async fn create_stream(&self, shards: u32) -> Result<bool, CallError> {
        let created =
            self.client.create_stream().stream_name(self.stream.as_ref()).shard_count(shards as i32).send().await;
        match created {
            Ok(_) => Ok(true),
            Err(e) if code_of(&e) == Some("ResourceInUseException") => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    /// The stream's status (DescribeStreamSummary), e.g. `ACTIVE`.
    pub async fn stream_status(&self) -> Result<String, CallError> {
        let out =
            self.client.describe_stream_summary().stream_name(self.stream.as_ref()).send().await.map_err(classify)?;
        Ok(out.stream_description_summary().map(|s| s.stream_status().as_str().to_owned()).unwrap_or_default())
    }

    /// All shards of the stream (ListShards, every page).
    pub async fn shard_map(&self) -> Result<ShardMap, CallError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(self.stream.as_ref()),
            };
            let out = req.send().await.map_err(classify)?;
            for s in out.shards() {
                let Some(range) = s.hash_key_range() else { continue };
                let (Ok(start), Ok(end)) =
                    (parse_hash_key(range.starting_hash_key()), parse_hash_key(range.ending_hash_key()))
                else {
                    continue;
                };
                let open = s.sequence_number_range().is_none_or(|r| r.ending_sequence_number().is_none());
                shards.push(ShardInfo { id: Arc::from(s.shard_id()), range: HashKeyRange { start, end }, open });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(ShardMap::new(shards))
    }

    /// One PutRecords call; per-entry results in request order.
    pub async fn put_records(&self, entries: &[Entry]) -> Result<Vec<EntryResult>, CallError> {
        let mut records = Vec::with_capacity(entries.len());
        for e in entries {
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data.to_vec()))
                .partition_key(e.partition_key.as_ref())
                .set_explicit_hash_key(e.explicit_hash_key.clone())
                .build()
                .map_err(|err| CallError::Rejected(format!("bad entry: {err}")))?;
            records.push(entry);
        }
        let out = self
            .client
            .put_records()
            .stream_name(self.stream.as_ref())
            .set_records(Some(records))
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .records()
            .iter()
            .map(|r| match (r.error_code(), r.shard_id()) {
                (None, Some(shard)) => EntryResult::Accepted { shard_id: Arc::from(shard) },
                (None, None) => {
                    EntryResult::Failed { code: "MissingShardId".into(), message: "no shard id and no error".into() }
                }
                (Some(code), _) => EntryResult::failed(code, r.error_message().unwrap_or_default().to_owned()),
            })
            .collect())
    }
}

/// `AWS_ACCESS_KEY_ID` & co. if set, else fixed dummy keys (the embedded server and most local
/// emulators check only that a signature is present).
fn code_of<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

fn classify<E, R>(err: SdkError<E, R>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = code_of(&err).map(str::to_owned);
    CallError::from_code(code.as_deref(), DisplayErrorContext(&err).to_string())
}

impl KinesisBackend for StreamClient {
    fn stream_name(&self) -> &str {
        &self.stream
    }

    fn create_stream(&self, shards: u32) -> CallFuture<'_, bool> {
        Box::pin(StreamClient::create_stream(self, shards))
    }

    fn stream_status(&self) -> CallFuture<'_, String> {
        Box::pin(StreamClient::stream_status(self))
    }

    fn shard_map(&self) -> CallFuture<'_, ShardMap> {
        Box::pin(StreamClient::shard_map(self))
    }

    fn put_records<'a>(&'a self, entries: &'a [Entry]) -> CallFuture<'a, Vec<EntryResult>> {
        Box::pin(StreamClient::put_records(self, entries))
    }
}
