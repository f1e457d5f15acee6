//! [`StreamBackend`] over the AWS SDK: Amazon Kinesis (`endpoint = "aws"`, the default
//! credential chain) or any Kinesis-compatible endpoint URL (`sluice serve`, moto, ...),
//! including enhanced fan-out (RegisterStreamConsumer, DescribeStreamConsumer, SubscribeToShard).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::{BehaviorVersion, Region};
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{Record, ShardIteratorType, StartingPosition, SubscribeToShardEventStream};
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::aws::{aws_chain, env_or_placeholder_credentials};
use super::backend::{Consumer, Fetched, Page, PageStream, Position, ReadError, ReadFuture, ShardDesc, StreamBackend};

/// A Kinesis stream reached through the AWS SDK.
#[derive(Clone)]
pub struct SdkStream {
    client: aws_sdk_kinesis::Client,
    stream: Arc<str>,
    /// Per-call timeout (a subscription's first answer is bounded by it too).
    timeout: Duration,
    /// The stream's ARN, which the consumer calls take; asked for once.
    stream_arn: Arc<OnceCell<String>>,
}

/// Where an [`SdkStream`] connects.
#[derive(Debug, Clone)]
pub struct SdkOptions {
    /// `"aws"` (the default credential and region chain) or an endpoint URL.
    pub endpoint: String,
    /// Region (default: the chain's, else `us-east-1`).
    pub region: Option<String>,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl SdkStream {
    /// Builds the SDK client (no call is made yet). Retries are off: the reader retries with
    /// its own backoff and counts them.
    pub async fn connect(stream: &str, opts: &SdkOptions) -> SdkStream {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            .operation_attempt_timeout(opts.timeout)
            .operation_timeout(opts.timeout)
            .build();
        let conf = if opts.endpoint == "aws" {
            let shared = aws_chain(opts.region.clone()).await;
            aws_sdk_kinesis::config::Builder::from(&shared)
                .retry_config(RetryConfig::disabled())
                .timeout_config(timeouts)
                .build()
        } else {
            aws_sdk_kinesis::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(opts.region.clone().unwrap_or_else(|| "us-east-1".to_owned())))
                .credentials_provider(env_or_placeholder_credentials())
                .endpoint_url(&opts.endpoint)
                .retry_config(RetryConfig::disabled())
                .timeout_config(timeouts)
                .build()
        };
        SdkStream {
            client: aws_sdk_kinesis::Client::from_conf(conf),
            stream: Arc::from(stream),
            timeout: opts.timeout,
            stream_arn: Arc::new(OnceCell::new()),
        }
    }

    async fn list(&self) -> Result<Vec<ShardDesc>, ReadError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(self.stream.as_ref()),
            };
            let out = req.send().await.map_err(classify)?;
            for s in out.shards() {
                let (start, end) = s
                    .hash_key_range()
                    .map(|r| (r.starting_hash_key().to_owned(), r.ending_hash_key().to_owned()))
                    .unwrap_or_default();
                shards.push(ShardDesc {
                    id: s.shard_id().to_owned(),
                    parent: s.parent_shard_id().map(str::to_owned),
                    adjacent_parent: s.adjacent_parent_shard_id().map(str::to_owned),
                    starting_hash_key: start,
                    ending_hash_key: end,
                    closed: s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_some()),
                });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(shards)
    }

    async fn iterator(&self, shard: &str, at: &Position) -> Result<String, ReadError> {
        let req = self.client.get_shard_iterator().stream_name(self.stream.as_ref()).shard_id(shard);
        let req = match at {
            Position::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Position::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            Position::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms as i64)),
            Position::AtSequence(seq) => {
                req.shard_iterator_type(ShardIteratorType::AtSequenceNumber).starting_sequence_number(seq)
            }
            Position::AfterSequence(seq) => {
                req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
            }
        };
        let out = req.send().await.map_err(classify)?;
        out.shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| ReadError::Other(format!("GetShardIterator for {shard} answered no iterator")))
    }

    async fn records(&self, iterator: &str, limit: u32) -> Result<Page, ReadError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, 10_000) as i32)
            .send()
            .await
            .map_err(classify)?;
        Ok(Page {
            records: out.records().iter().map(fetched).collect(),
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind: out.millis_behind_latest(),
            child_shards: out.child_shards().iter().map(|c| c.shard_id().to_owned()).collect(),
        })
    }

    async fn arn(&self) -> Result<&str, ReadError> {
        let arn = self
            .stream_arn
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .describe_stream_summary()
                    .stream_name(self.stream.as_ref())
                    .send()
                    .await
                    .map_err(classify)?;
                out.stream_description_summary()
                    .map(|d| d.stream_arn().to_owned())
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| {
                        ReadError::Other(format!("DescribeStreamSummary of {} answered no ARN", self.stream))
                    })
            })
            .await?;
        Ok(arn.as_str())
    }

    async fn register(&self, name: &str) -> Result<Consumer, ReadError> {
        let arn = self.arn().await?;
        let out = self
            .client
            .register_stream_consumer()
            .stream_arn(arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(classify)?;
        let c = out
            .consumer()
            .ok_or_else(|| ReadError::Other(format!("RegisterStreamConsumer {name} answered no consumer")))?;
        Ok(Consumer { arn: c.consumer_arn().to_owned(), status: c.consumer_status().as_str().to_owned() })
    }

    async fn describe(&self, name: &str) -> Result<Consumer, ReadError> {
        let arn = self.arn().await?;
        let out = self
            .client
            .describe_stream_consumer()
            .stream_arn(arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(classify)?;
        let c = out
            .consumer_description()
            .ok_or_else(|| ReadError::Other(format!("DescribeStreamConsumer {name} answered no description")))?;
        Ok(Consumer { arn: c.consumer_arn().to_owned(), status: c.consumer_status().as_str().to_owned() })
    }

    async fn subscription(&self, consumer_arn: &str, shard: &str, at: &Position) -> Result<PageStream, ReadError> {
        let pos = match at {
            Position::TrimHorizon => StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon),
            Position::Latest => StartingPosition::builder().r#type(ShardIteratorType::Latest),
            Position::AtTimestamp(ms) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms as i64)),
            Position::AtSequence(seq) => {
                StartingPosition::builder().r#type(ShardIteratorType::AtSequenceNumber).sequence_number(seq)
            }
            Position::AfterSequence(seq) => {
                StartingPosition::builder().r#type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq)
            }
        }
        .build()
        .map_err(|e| ReadError::Other(format!("StartingPosition: {e}")))?;
        // The client's operation timeouts would cut a subscription that lasts minutes; only
        // its first answer (the initial response) is bounded here.
        let no_operation_timeouts = aws_sdk_kinesis::config::Builder::default().timeout_config(
            TimeoutConfig::builder().disable_operation_timeout().disable_operation_attempt_timeout().build(),
        );
        let call = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard)
            .starting_position(pos)
            .customize()
            .config_override(no_operation_timeouts)
            .send();
        let out = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ReadError::Other(format!("SubscribeToShard {shard}: no answer within {:?}", self.timeout)))?
            .map_err(classify)?;
        // One event a turn; after an error the stream ends (the receiver is dropped).
        let events = futures_util::stream::unfold(Some(out.event_stream), |rx| async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(e))) => {
                        let page = Page {
                            records: e.records().iter().map(fetched).collect(),
                            next_iterator: Some(e.continuation_sequence_number().to_owned()).filter(|c| !c.is_empty()),
                            millis_behind: Some(e.millis_behind_latest()),
                            child_shards: e.child_shards().iter().map(|c| c.shard_id().to_owned()).collect(),
                        };
                        return Some((Ok(page), Some(rx)));
                    }
                    // Event kinds this SDK version does not know: skipped.
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(e) => return Some((Err(classify(e)), None)),
                }
            }
        });
        Ok(Box::pin(events))
    }
}

fn fetched(r: &Record) -> Fetched {
    Fetched {
        sequence_number: r.sequence_number().to_owned(),
        partition_key: r.partition_key().unwrap_or_default().to_owned(),
        data: Bytes::copy_from_slice(r.data().as_ref()),
        arrival_ms: r.approximate_arrival_timestamp().and_then(|t| t.to_millis().ok()).map_or(0, |ms| ms.max(0) as u64),
    }
}

impl StreamBackend for SdkStream {
    fn stream_name(&self) -> &str {
        &self.stream
    }

    fn stream_arn(&self) -> ReadFuture<'_, String> {
        Box::pin(async move { self.arn().await.map(str::to_owned) })
    }

    fn list_shards(&self) -> ReadFuture<'_, Vec<ShardDesc>> {
        Box::pin(self.list())
    }

    fn shard_iterator<'a>(&'a self, shard: &'a str, at: &'a Position) -> ReadFuture<'a, String> {
        Box::pin(self.iterator(shard, at))
    }

    fn get_records<'a>(&'a self, iterator: &'a str, limit: u32) -> ReadFuture<'a, Page> {
        Box::pin(self.records(iterator, limit))
    }

    fn register_consumer<'a>(&'a self, name: &'a str) -> ReadFuture<'a, Consumer> {
        Box::pin(self.register(name))
    }

    fn describe_consumer<'a>(&'a self, name: &'a str) -> ReadFuture<'a, Consumer> {
        Box::pin(self.describe(name))
    }

    fn subscribe<'a>(&'a self, consumer_arn: &'a str, shard: &'a str, at: &'a Position) -> ReadFuture<'a, PageStream> {
        Box::pin(self.subscription(consumer_arn, shard, at))
    }
}

fn classify<E, R>(err: SdkError<E, R>) -> ReadError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = match &err {
        SdkError::ServiceError(se) => se.err().code().map(str::to_owned),
        _ => None,
    };
    ReadError::from_code(code.as_deref(), DisplayErrorContext(&err).to_string())
}
