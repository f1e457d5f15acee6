//! The `[sinks.NAME]` table of an `s3` sink, option by option.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Delivers records Firehose-style: concatenated into objects, buffered by size and time, named
/// and prefixed as Firehose names them.
///
/// ```toml
/// [sinks.lake]
/// type = "s3"
/// inputs = ["feed"]
/// url = "s3://my-bucket/raw"        # or "file:///var/lib/lake", or a relative directory
/// compression = "gzip"
/// buffer_size = "5MiB"
/// buffer_interval = "300s"
/// prefix = "racers/!{partitionKeyFromQuery:racer}/!{timestamp:yyyy/MM/dd/HH}/"
/// partition_keys = { racer = "/racer" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Where objects go: `s3://bucket[/key-prefix]` (the AWS credential chain from the
    /// environment; `endpoint` for S3-compatible stores), `file:///absolute/dir`, or a plain
    /// directory path (relative to the pipeline's data directory).
    pub url: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000` for MinIO or moto); requests are then
    /// path-style. Default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// AWS region. Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Deliver a partition's object once this much record data (before compression) is
    /// buffered. `"1MiB"`-style or bytes; 1 byte to 128 MiB (Firehose: 1–128 MiB). Default
    /// `"5MiB"`.
    #[serde(default = "default_buffer_size", deserialize_with = "sluice_core::size::deserialize")]
    pub buffer_size: u64,
    /// Deliver a partition's object once its oldest buffered record has waited this long;
    /// `0s` delivers whatever arrived together at once. 0 to 900 s; default `"300s"`.
    #[serde(default = "default_buffer_interval", with = "sluice_core::duration")]
    pub buffer_interval: Duration,
    /// `"none"` (default), `"gzip"` (`.gz`) or `"zstd"` (`.zst`): one compressed stream per
    /// object.
    #[serde(default)]
    pub compression: Compression,
    /// Bytes appended after every record. Firehose appends nothing; the default here is
    /// `"\n"`, so objects of JSON records are NDJSON. `""` concatenates as Firehose does.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Key prefix with Firehose expressions (`!{timestamp:yyyy/MM/dd/HH/}`,
    /// `!{firehose:random-string}`, `!{partitionKeyFromQuery:NAME}`). Without a timestamp
    /// expression `!{timestamp:yyyy/MM/dd/HH/}` is appended. Default `""`.
    #[serde(default)]
    pub prefix: String,
    /// Key prefix of objects holding records that could not be delivered (a partition key the
    /// record does not have ...); must hold `!{firehose:error-output-type}`. Default
    /// `"errors/!{firehose:error-output-type}/"`.
    #[serde(default = "default_error_prefix")]
    pub error_prefix: String,
    /// Dynamic partitioning: `NAME = "/json/pointer"`, used as `!{partitionKeyFromQuery:NAME}`.
    #[serde(default)]
    pub partition_keys: BTreeMap<String, String>,
    /// Most partitions buffered at once; records of a further partition go to the error
    /// prefix (`activePartitionExceeded`). Default 500, as Firehose.
    #[serde(default = "default_max_partitions")]
    pub max_partitions: usize,
    /// The `<name>` part of object names. Default: the sink's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The `<version>` part of object names. Default 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Object name extension. Default: `.gz` with gzip, `.zst` with zstd, none otherwise.
    #[serde(default)]
    pub file_extension: Option<String>,
    /// How long a failing upload is retried (with backoff) before its records are
    /// dead-lettered. Default `"24h"`, as Firehose's S3 retention.
    #[serde(default = "default_retry_duration", with = "sluice_core::duration")]
    pub retry_duration: Duration,
}

/// How an object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// As the records were.
    #[default]
    None,
    /// One gzip member per object.
    Gzip,
    /// One zstd frame per object.
    Zstd,
}

impl Compression {
    /// The default object extension.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }
}

fn default_buffer_size() -> u64 {
    5 << 20
}
fn default_buffer_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_delimiter() -> String {
    "\n".into()
}
fn default_error_prefix() -> String {
    "errors/!{firehose:error-output-type}/".into()
}
fn default_max_partitions() -> usize {
    500
}
fn default_version() -> u32 {
    1
}
fn default_retry_duration() -> Duration {
    Duration::from_secs(24 * 3600)
}
