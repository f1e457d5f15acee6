//! Server state shared by every request, and the per-request context.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_storage::{Catalog, Store, StreamMeta, StreamStatus};

use crate::error::ApiError;
use crate::input::{Checker, Fields};
use crate::limits::Limits;
use crate::value::Format;

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Emulate per-shard throughput limits.
    pub enforce_limits: bool,
    /// How long CREATING / UPDATING / DELETING last, ms (0 = instant).
    pub transition_ms: u64,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Account id used in ARNs.
    pub account_id: String,
    /// Region used in ARNs when the request's signature names none.
    pub default_region: String,
    /// How long one SubscribeToShard subscription lasts, ms.
    pub subscription_ms: u64,
    /// Largest shard count one stream may have (and the account total).
    pub shard_limit: u32,
    /// When set, every request's SigV4 signature is verified against these keys.
    pub credentials: Option<crate::sigv4::Credentials>,
    /// A request header must arrive within this; also how long an idle keep-alive connection
    /// is kept (see [`crate::server::HttpOptions`]).
    pub header_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            enforce_limits: false,
            transition_ms: 0,
            max_body_bytes: 16 * 1024 * 1024,
            account_id: "000000000000".into(),
            default_region: "us-east-1".into(),
            subscription_ms: 300_000,
            shard_limit: 10_000,
            credentials: None,
            header_timeout: crate::server::DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Live SubscribeToShard subscriptions by (consumer ARN, shard index): start time and a
/// sender that ends the older subscription when a newer one takes over.
pub type Subscriptions = Mutex<HashMap<(String, u32), (u64, tokio::sync::watch::Sender<bool>)>>;

/// Shared state.
pub struct AppState {
    /// The storage engine.
    pub store: Store,
    /// Settings.
    pub config: ApiConfig,
    /// Throughput limits.
    pub limits: Limits,
    /// Secret for iterators and pagination tokens.
    pub secret: [u8; 32],
    /// Live subscriptions.
    pub subscriptions: Subscriptions,
    /// Flips to true on shutdown; long-lived responses end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Last time (epoch ms) an iterator was issued or used per (stream tag, shard): iterators
    /// are stateless tokens, so "open iterators" is counted as shards read in the last 5 min.
    pub iterator_activity: Mutex<HashMap<(u32, u32), u64>>,
}

/// Per-request context.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Wire format of the request and its answer.
    pub format: Format,
    /// Region from the request's credential scope.
    pub region: String,
    /// Request arrival, epoch ms.
    pub now_ms: u64,
}

impl AppState {
    /// Notes that an iterator on a shard was issued or used.
    pub fn touch_iterator(&self, tag: u32, shard: u32, now_ms: u64) {
        self.iterator_activity.lock().unwrap_or_else(|p| p.into_inner()).insert((tag, shard), now_ms);
    }

    /// Shards with an iterator issued or used in the last five minutes (forgets older ones).
    pub fn open_iterators(&self, now_ms: u64) -> usize {
        let mut m = self.iterator_activity.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, t| now_ms.saturating_sub(*t) <= sluice_core::iterator::ITERATOR_TTL_MS);
        m.len()
    }

    /// The ARN of a stream.
    pub fn stream_arn(&self, ctx: &Ctx, name: &str) -> String {
        format!("arn:aws:kinesis:{}:{}:stream/{}", ctx.region, self.config.account_id, name)
    }

    /// The status a stream reports now (transitional states settle after `status_until_ms`).
    pub fn status(&self, meta: &StreamMeta, now_ms: u64) -> StreamStatus {
        match meta.status {
            StreamStatus::Creating | StreamStatus::Updating if now_ms >= meta.status_until_ms => StreamStatus::Active,
            s => s,
        }
    }

    /// Error for a stream that does not exist.
    pub fn stream_not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(format!("Stream {name} under account {} not found.", self.config.account_id))
    }

    /// Looks a stream up in a catalog snapshot.
    pub fn find<'c>(&self, catalog: &'c Catalog, name: &str, now_ms: u64) -> Result<&'c StreamMeta, ApiError> {
        match catalog.streams.get(name) {
            Some(m) if !(m.status == StreamStatus::Deleting && now_ms >= m.status_until_ms) => Ok(m),
            _ => Err(self.stream_not_found(name)),
        }
    }
}

/// Whether `s` looks like a stream ARN: `arn:aws*:kinesis:*:<12 digits>:stream/<name>`.
pub fn parse_stream_arn(s: &str) -> Option<&str> {
    let mut parts = s.splitn(6, ':');
    let (arn, partition, service, _region, account, resource) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let ok = arn == "arn"
        && partition.starts_with("aws")
        && service == "kinesis"
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit());
    let name = resource.strip_prefix("stream/")?;
    (ok && !name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
}

/// Reads `StreamName` and/or `StreamARN` (they must agree) and returns the stream name.
/// Constraint failures go to `check`; the name is returned only when usable.
pub fn stream_name<'r>(f: &Fields<'r, '_>, check: &mut Checker) -> Result<Option<&'r str>, ApiError> {
    let name = f.str("StreamName")?;
    let arn = f.str("StreamARN")?;
    check.name(name, "streamName");
    check.length(arn, "streamARN", 1, 2048);
    check.pattern(arn, "streamARN", |a| parse_stream_arn(a).is_some(), "arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+");
    let from_arn = arn.and_then(parse_stream_arn);
    // Semantic errors wait until every constraint was checked (`Checker::finish`).
    match (name, from_arn) {
        (Some(n), Some(a)) if n != a => {
            check.after(ApiError::invalid_argument(format!(
                "StreamARN {} does not match StreamName {n}.",
                arn.unwrap_or("")
            )));
            Ok(Some(n))
        }
        (Some(n), _) => Ok(Some(n)),
        (None, Some(a)) => Ok(Some(a)),
        (None, None) if arn.is_none() => {
            check.after(ApiError::invalid_argument("Either StreamName or StreamARN should be provided."));
            Ok(None)
        }
        (None, None) => Ok(None),
    }
}

/// Shared handle.
pub type Shared = Arc<AppState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns() {
        assert_eq!(parse_stream_arn("arn:aws:kinesis:us-east-1:000000000000:stream/a.b"), Some("a.b"));
        assert_eq!(parse_stream_arn("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/x"), Some("x"));
        assert_eq!(parse_stream_arn("arn:aws:kinesis:us-east-1:0000:stream/x"), None);
        assert_eq!(parse_stream_arn("arn:aws:s3:us-east-1:000000000000:stream/x"), None);
        assert_eq!(parse_stream_arn("nope"), None);
    }
}
