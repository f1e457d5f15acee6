//! What the sink needs of a Kinesis endpoint, as a trait: the AWS SDK client
//! ([`super::client::StreamClient`]) for any URL or real AWS, or an in-process handle on the
//! embedded stream that the pipeline passes in (no HTTP, no base64 JSON).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::dispatch::{CallError, Entry, EntryResult};
use super::shard_map::ShardMap;

/// A boxed future borrowing its backend.
pub type CallFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send + 'a>>;

/// The calls the sink makes, bound to one stream.
pub trait KinesisBackend: Send + Sync + 'static {
    /// The stream's name (for logs).
    fn stream_name(&self) -> &str;
    /// CreateStream with `shards` shards; false when the stream exists already.
    fn create_stream(&self, shards: u32) -> CallFuture<'_, bool>;
    /// The stream's status as DescribeStreamSummary gives it (`ACTIVE`, `CREATING` …).
    fn stream_status(&self) -> CallFuture<'_, String>;
    /// All shards of the stream, open and closed (ListShards, every page).
    fn shard_map(&self) -> CallFuture<'_, ShardMap>;
    /// One PutRecords call; per-entry results in request order.
    fn put_records<'a>(&'a self, entries: &'a [Entry]) -> CallFuture<'a, Vec<EntryResult>>;
}

/// Creates the stream if `create` and it does not exist, and waits (up to 5 minutes) until it
/// takes writes.
pub async fn ensure_stream(backend: &dyn KinesisBackend, create: bool, shards: u32) -> Result<(), CallError> {
    if create && backend.create_stream(shards).await? {
        tracing::info!(stream = %backend.stream_name(), shards, "created the stream");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let status = backend.stream_status().await?;
        if status == "ACTIVE" || status == "UPDATING" {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CallError::Transient(format!("stream {} is still {status}", backend.stream_name())));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the sink reacts to an error code.
pub(crate) enum ErrorKind {
    Rejected,
    NotFound,
    Throttled,
    Other,
}

impl ErrorKind {
    pub(crate) fn of(code: &str) -> ErrorKind {
        match code {
            "ValidationException" | "InvalidArgumentException" => ErrorKind::Rejected,
            "ResourceNotFoundException" => ErrorKind::NotFound,
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "RequestLimitExceeded"
            | "SlowDown" => ErrorKind::Throttled,
            _ => ErrorKind::Other,
        }
    }
}

impl CallError {
    /// The reaction to a whole-call error with this AWS error code (`None`: no code, e.g. a
    /// connection failure).
    pub fn from_code(code: Option<&str>, text: String) -> CallError {
        match code.map(ErrorKind::of) {
            Some(ErrorKind::Rejected) => CallError::Rejected(text),
            Some(ErrorKind::NotFound) => CallError::NotFound(text),
            Some(ErrorKind::Throttled) => CallError::Throttled(text),
            _ => CallError::Transient(text),
        }
    }
}

impl EntryResult {
    /// The result of an entry that failed with this error code.
    pub fn failed(code: &str, message: String) -> EntryResult {
        match ErrorKind::of(code) {
            ErrorKind::Throttled => EntryResult::Throttled,
            ErrorKind::Rejected => EntryResult::Rejected { code: code.to_owned(), message },
            _ => EntryResult::Failed { code: code.to_owned(), message },
        }
    }
}
