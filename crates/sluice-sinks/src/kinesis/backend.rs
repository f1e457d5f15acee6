//! What the sink needs of a Kinesis endpoint, as a trait: the AWS SDK client
//! ([`super::client::StreamClient`]) for any URL or real AWS, or an in-process handle on the
//! embedded stream that the pipeline passes in (no HTTP, no base64 JSON).

use std::future::Future;
use std::pin::Pin;

use super::dispatch::{CallError, Entry, EntryResult};
use super::shard_map::ShardMap;

/// A boxed future borrowing its backend.
pub type CallFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send + 'a>>;

/// The three calls the sink makes, bound to one stream.
pub trait KinesisBackend: Send + Sync + 'static {
    /// Creates the stream if `create` and it does not exist, and waits until it takes writes.
    fn ensure_stream(&self, create: bool, shards: u32) -> CallFuture<'_, ()>;
    /// All shards of the stream, open and closed (ListShards, every page).
    fn shard_map(&self) -> CallFuture<'_, ShardMap>;
    /// One PutRecords call; per-entry results in request order.
    fn put_records<'a>(&'a self, entries: &'a [Entry]) -> CallFuture<'a, Vec<EntryResult>>;
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
