//! What the `kinesis` source needs from a stream, behind a small trait: list the shards, get an
//! iterator, get records and, for enhanced fan-out, register a consumer and subscribe to a
//! shard. Implemented over the AWS SDK ([`super::sdk::SdkStream`]: AWS, or any
//! Kinesis-compatible endpoint such as `sluice serve` or a pipeline's embedded stream).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::BoxStream;

/// A boxed future of a backend call.
pub type ReadFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ReadError>> + Send + 'a>>;

/// One shard, as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDesc {
    /// `shardId-000000000000`.
    pub id: String,
    /// The parent (split) or `ShardToMerge` (merge).
    pub parent: Option<String>,
    /// The other parent of a merge.
    pub adjacent_parent: Option<String>,
    /// Hash key range, decimal.
    pub starting_hash_key: String,
    /// Hash key range, decimal.
    pub ending_hash_key: String,
    /// Whether the shard is closed (it has an ending sequence number).
    pub closed: bool,
}

impl ShardDesc {
    /// The shard's parents (none, one for a split, two for a merge).
    pub fn parents(&self) -> Vec<String> {
        self.parent.iter().chain(self.adjacent_parent.iter()).cloned().collect()
    }
}

/// Where an iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The oldest record kept.
    TrimHorizon,
    /// After the newest record.
    Latest,
    /// The first record that arrived at or after this time (epoch ms).
    AtTimestamp(u64),
    /// The record with this sequence number.
    AtSequence(String),
    /// The record after the one with this sequence number.
    AfterSequence(String),
}

/// One record as GetRecords returns it (possibly a KPL aggregate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Sequence number.
    pub sequence_number: String,
    /// Partition key.
    pub partition_key: String,
    /// Data.
    pub data: Bytes,
    /// Approximate arrival time, epoch ms.
    pub arrival_ms: u64,
}

/// One GetRecords answer, or one SubscribeToShard event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The records, in shard order.
    pub records: Vec<Fetched>,
    /// Where to go on (GetRecords: the next iterator; SubscribeToShard: the
    /// `ContinuationSequenceNumber`); `None` at the end of a closed shard.
    pub next_iterator: Option<String>,
    /// How far behind the tip this read was.
    pub millis_behind: Option<i64>,
    /// At the end of a closed shard: its children.
    pub child_shards: Vec<String>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// `ProvisionedThroughputExceededException` / `LimitExceededException`: back off.
    #[error("throttled: {0}")]
    Throttled(String),
    /// `ExpiredIteratorException`: get a new iterator from the last position.
    #[error("iterator expired: {0}")]
    ExpiredIterator(String),
    /// `ResourceNotFoundException`: the stream or shard does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// `ResourceInUseException`: the consumer exists already (RegisterStreamConsumer), or
    /// another subscription to the shard is active (SubscribeToShard).
    #[error("in use: {0}")]
    InUse(String),
    /// The backend cannot do this (e.g. enhanced fan-out).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Anything else (network, 5xx, ...): retried with backoff.
    #[error("{0}")]
    Other(String),
}

impl ReadError {
    /// Classifies an AWS error code.
    pub fn from_code(code: Option<&str>, message: String) -> ReadError {
        match code {
            Some("ProvisionedThroughputExceededException" | "LimitExceededException" | "ThrottlingException") => {
                ReadError::Throttled(message)
            }
            Some("ExpiredIteratorException") => ReadError::ExpiredIterator(message),
            Some("ResourceNotFoundException") => ReadError::NotFound(message),
            Some("ResourceInUseException") => ReadError::InUse(message),
            _ => ReadError::Other(message),
        }
    }
}

/// An enhanced fan-out consumer, as RegisterStreamConsumer / DescribeStreamConsumer describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Its ARN (what SubscribeToShard takes).
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `DELETING` (or `UPDATING`).
    pub status: String,
}

/// A subscription's events, in order; it ends when the server ends the subscription (after at
/// most 5 minutes, or at the end of a closed shard) and after yielding an error.
pub type PageStream = BoxStream<'static, Result<Page, ReadError>>;

fn unsupported<'a, T: 'a>(what: &str) -> ReadFuture<'a, T> {
    let message = format!("{what} (enhanced fan-out) is not supported by this backend");
    Box::pin(async move { Err(ReadError::Unsupported(message)) })
}

/// A stream the source reads.
pub trait StreamBackend: Send + Sync + 'static {
    /// The stream's name (for logs and metrics).
    fn stream_name(&self) -> &str;
    /// Every shard (ListShards, all pages).
    fn list_shards(&self) -> ReadFuture<'_, Vec<ShardDesc>>;
    /// GetShardIterator.
    fn shard_iterator<'a>(&'a self, shard: &'a str, at: &'a Position) -> ReadFuture<'a, String>;
    /// GetRecords.
    fn get_records<'a>(&'a self, iterator: &'a str, limit: u32) -> ReadFuture<'a, Page>;
    /// Waits at the tip of `shard` after a read found nothing new: at most `max` (the default
    /// just sleeps; the in-process embedded stream wakes as soon as a record is committed).
    fn idle<'a>(&'a self, shard: &'a str, max: std::time::Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let _ = shard;
        Box::pin(tokio::time::sleep(max))
    }
    /// The stream's ARN (DescribeStreamSummary), which records carry to the sinks.
    fn stream_arn(&self) -> ReadFuture<'_, String> {
        Box::pin(async { Err(ReadError::Unsupported("DescribeStreamSummary is not supported by this backend".into())) })
    }
    /// RegisterStreamConsumer on this stream; [`ReadError::InUse`] if it exists already.
    fn register_consumer<'a>(&'a self, name: &'a str) -> ReadFuture<'a, Consumer> {
        let _ = name;
        unsupported("RegisterStreamConsumer")
    }
    /// DescribeStreamConsumer on this stream, by name.
    fn describe_consumer<'a>(&'a self, name: &'a str) -> ReadFuture<'a, Consumer> {
        let _ = name;
        unsupported("DescribeStreamConsumer")
    }
    /// SubscribeToShard: resolves once the subscription is accepted; its events follow as
    /// [`Page`]s whose `next_iterator` is the continuation sequence number.
    fn subscribe<'a>(&'a self, consumer_arn: &'a str, shard: &'a str, at: &'a Position) -> ReadFuture<'a, PageStream> {
        let _ = (consumer_arn, shard, at);
        unsupported("SubscribeToShard")
    }
}

/// Orders two sequence numbers (decimal strings without leading zeros, as Kinesis issues
/// them: a longer one is larger).
pub fn cmp_sequence(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_sequence("9", "10"), Less);
        assert_eq!(cmp_sequence("49590", "49590"), Equal);
        assert_eq!(cmp_sequence("49591", "49590"), Greater);
    }

    #[test]
    fn codes_are_classified() {
        assert!(matches!(
            ReadError::from_code(Some("ProvisionedThroughputExceededException"), String::new()),
            ReadError::Throttled(_)
        ));
        assert!(matches!(
            ReadError::from_code(Some("ExpiredIteratorException"), String::new()),
            ReadError::ExpiredIterator(_)
        ));
        assert!(matches!(ReadError::from_code(None, String::new()), ReadError::Other(_)));
    }
}
