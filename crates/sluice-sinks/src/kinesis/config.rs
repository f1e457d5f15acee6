//! The `[sinks.NAME]` table of a `type = "kinesis"` sink.

use std::time::Duration;

use serde::Deserialize;

/// Largest PutRecords request: 500 records.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Largest PutRecords request: 5 MiB of data and partition keys.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Largest record the stream accepts: data plus partition key.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Puts records into an Amazon Kinesis data stream (or sluice's embedded one).
///
/// ```toml
/// [sinks.kinesis]
/// type = "kinesis"
/// inputs = ["telemetry"]
/// stream_name = "telemetry"
/// partition_key = "{/racer}-{/lap}"
/// linger = "50ms"
/// aggregate = true
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    /// Name of the stream to put records into.
    pub stream_name: String,
    /// How each record's partition key is made: `"random"` (a fresh random key per record, the
    /// default), a JSON pointer into the payload such as `"/racer"`, or a template mixing text
    /// and `{/pointer}` parts such as `"{/racer}-{/lap}"`; any other text is used as a fixed key.
    /// A record that is not JSON, or lacks a field, gets a random key instead and is counted in
    /// `sluice_sink_partition_key_fallback_total`. Strings are used without quotes, numbers and
    /// booleans as written, objects and arrays as compact JSON; keys longer than 256 characters
    /// are cut to 256.
    #[serde(default = "default_partition_key")]
    pub partition_key: String,
    /// Where the Kinesis API is: a URL such as `"http://127.0.0.1:4567"` (static credentials:
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` if set, else dummy
    /// ones), or `"aws"` for the real service with the standard AWS credential and region
    /// chain. The pipeline fills in its embedded server's URL when this is left out.
    pub endpoint: String,
    /// AWS region to sign for. Default: `us-east-1` with a URL endpoint; the standard region
    /// chain (`AWS_REGION`, profile …, then `us-east-1`) with `endpoint = "aws"`.
    #[serde(default)]
    pub region: Option<String>,
    /// Create the stream (with `shards` shards) if it does not exist. Default true.
    #[serde(default = "default_true")]
    pub create_stream: bool,
    /// Shard count used when the sink creates the stream. Default 4.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// How long a record may wait for more to fill a batch. Default `"50ms"`.
    #[serde(default = "default_linger", with = "sluice_core::duration")]
    pub linger: Duration,
    /// Most Kinesis records per PutRecords call, 1..=500. Default 500.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Most bytes (data + partition keys) per PutRecords call, up to 5 MiB (5242880). Default
    /// 5 MiB.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How often a record may fail with a non-throttling error (e.g. `InternalFailure`) before
    /// it is dead-lettered. Default: unset, retry forever. Throttling and whole-call errors
    /// (connection refused, 5xx, timeouts) never count: those are always retried.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Backoff between retries: exponential from `base` up to `max`, with jitter.
    #[serde(default)]
    pub retry_backoff: RetryBackoff,
    /// `"per_key"` (default): records with the same partition key reach the stream in input
    /// order, even through retries. `"none"`: no ordering promise, more throughput for hot keys.
    #[serde(default)]
    pub ordering: Ordering,
    /// Pack records bound for the same shard into KPL aggregates (at most 50 KiB each; a lone
    /// record is sent as is). Consumers must de-aggregate (KCL, `aws-kinesis-agg`). Default false.
    #[serde(default)]
    pub aggregate: bool,
    /// Compress each record's payload: `"none"` (default), `"gzip"` or `"zstd"`. With
    /// `aggregate`, each user record is compressed before aggregation.
    #[serde(default)]
    pub compression: Compression,
    /// Most PutRecords calls in flight at once. Default 4. Per-key ordering holds at any value.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Stay under each shard's write limit (1,000 records/s and 1 MiB/s) using the shard map
    /// from ListShards, slowing a shard down further when it is throttled. Default true.
    #[serde(default = "default_true")]
    pub rate_limit: bool,
    /// Time limit of one API call (connecting included). Default `"30s"`.
    #[serde(default = "default_request_timeout", with = "sluice_core::duration")]
    pub request_timeout: Duration,
}

/// Retry backoff: the n-th retry waits a random time between half and all of
/// `min(max, base · 2^(n−1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackoff {
    /// First delay. Default `"100ms"`.
    #[serde(default = "default_backoff_base", with = "sluice_core::duration")]
    pub base: Duration,
    /// Longest delay. Default `"10s"`.
    #[serde(default = "default_backoff_max", with = "sluice_core::duration")]
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { base: default_backoff_base(), max: default_backoff_max() }
    }
}

/// Ordering promise of the Kinesis sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Same partition key, same order as the input.
    #[default]
    PerKey,
    /// No promise.
    None,
}

/// Per-record payload compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Payloads as they are.
    #[default]
    None,
    /// Each payload is one gzip member.
    Gzip,
    /// Each payload is one zstd frame.
    Zstd,
}

fn default_partition_key() -> String {
    "random".into()
}
fn default_true() -> bool {
    true
}
fn default_shards() -> u32 {
    4
}
fn default_linger() -> Duration {
    Duration::from_millis(50)
}
fn default_max_batch_records() -> usize {
    MAX_BATCH_RECORDS
}
fn default_max_batch_bytes() -> usize {
    MAX_BATCH_BYTES
}
fn default_max_in_flight() -> usize {
    4
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}

impl KinesisConfig {
    /// A config with every default, for `stream_name` at `endpoint`.
    pub fn new(stream_name: impl Into<String>, endpoint: impl Into<String>) -> KinesisConfig {
        KinesisConfig {
            stream_name: stream_name.into(),
            partition_key: default_partition_key(),
            endpoint: endpoint.into(),
            region: None,
            create_stream: true,
            shards: default_shards(),
            linger: default_linger(),
            max_batch_records: MAX_BATCH_RECORDS,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_retries: None,
            retry_backoff: RetryBackoff::default(),
            ordering: Ordering::PerKey,
            aggregate: false,
            compression: Compression::None,
            max_in_flight: default_max_in_flight(),
            rate_limit: true,
            request_timeout: default_request_timeout(),
        }
    }

    /// Checks the values serde cannot; the message names the offending option.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |n: &str| {
            (1..=128).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        if !name_ok(&self.stream_name) {
            return Err(format!("`stream_name` {:?} must be 1..128 characters of [a-zA-Z0-9_.-]", self.stream_name));
        }
        if self.endpoint != "aws" && !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!("`endpoint` {:?} must be an http(s):// URL or \"aws\"", self.endpoint));
        }
        if self.shards == 0 {
            return Err("`shards` must be at least 1".into());
        }
        if !(1..=MAX_BATCH_RECORDS).contains(&self.max_batch_records) {
            return Err(format!("`max_batch_records` must be 1..={MAX_BATCH_RECORDS}, not {}", self.max_batch_records));
        }
        if !(1..=MAX_BATCH_BYTES).contains(&self.max_batch_bytes) {
            return Err(format!("`max_batch_bytes` must be 1..={MAX_BATCH_BYTES}, not {}", self.max_batch_bytes));
        }
        if self.max_in_flight == 0 {
            return Err("`max_in_flight` must be at least 1".into());
        }
        if self.retry_backoff.base.is_zero() || self.retry_backoff.base > self.retry_backoff.max {
            return Err("`retry_backoff.base` must be above zero and at most `retry_backoff.max`".into());
        }
        if self.request_timeout.is_zero() {
            return Err("`request_timeout` must be above zero".into());
        }
        super::partition_key::PartitionKeySpec::parse(&self.partition_key).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults() {
        let c: KinesisConfig = toml::from_str(
            r#"
            stream_name = "telemetry"
            endpoint = "http://127.0.0.1:4567"
            "#,
        )
        .expect("parse");
        assert_eq!(c, KinesisConfig::new("telemetry", "http://127.0.0.1:4567"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn toml_with_everything() {
        let c: KinesisConfig = toml::from_str(
            r#"
            stream_name = "telemetry"
            endpoint = "aws"
            region = "eu-west-1"
            partition_key = "{/racer}-{/lap}"
            create_stream = false
            shards = 2
            linger = "10ms"
            max_batch_records = 100
            max_batch_bytes = 1048576
            max_retries = 5
            retry_backoff = { base = "50ms", max = "2s" }
            ordering = "none"
            aggregate = true
            compression = "zstd"
            max_in_flight = 8
            rate_limit = false
            request_timeout = "5s"
            "#,
        )
        .expect("parse");
        assert_eq!(c.linger, Duration::from_millis(10));
        assert_eq!(c.retry_backoff.max, Duration::from_secs(2));
        assert_eq!(c.ordering, Ordering::None);
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.max_retries, Some(5));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_and_invalid_options_are_refused() {
        let unknown = toml::from_str::<KinesisConfig>("stream_name = \"s\"\nendpoint = \"aws\"\nshard = 3\n");
        assert!(unknown.is_err());
        let mut c = KinesisConfig::new("s", "aws");
        c.max_batch_records = 501;
        assert!(c.validate().expect_err("too many").contains("max_batch_records"));
        let mut c = KinesisConfig::new("s", "localhost:4567");
        assert!(c.validate().expect_err("bad url").contains("endpoint"));
        c.endpoint = "aws".into();
        c.partition_key = "{/unclosed".into();
        assert!(c.validate().is_err());
    }
}
