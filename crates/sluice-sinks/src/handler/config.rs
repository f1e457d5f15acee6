//! The `[sinks.NAME]` table of a `type = "handler"` sink: Lambda's Kinesis event-source-mapping
//! options under their Lambda names, plus how the function is reached.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Largest `batch_size` (Lambda's limit for Kinesis).
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Largest event Lambda sends: 6 MB of invocation payload.
pub const MAX_EVENT_BYTES: usize = 6 * 1024 * 1024;

/// Invokes a function with Lambda's Kinesis events, one shard per batch.
///
/// ```toml
/// [sinks.leaderboard]
/// type = "handler"
/// inputs = ["race"]
/// command = ["python3", "examples/leaderboard.py"]
/// batch_size = 500
/// maximum_batching_window = "1s"
/// tumbling_window = "10s"
/// maximum_retry_attempts = 3
/// bisect_batch_on_function_error = true
/// function_response_types = ["ReportBatchItemFailures"]
/// destination_on_failure = "handler-failures.ndjson"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The function as a long-lived process speaking JSON lines (see the module docs): the
    /// program and its arguments, e.g. `["python3", "handler.py"]`. Exactly one of `command`
    /// and `url` is required.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The function as an HTTP endpoint: each event is POSTed as JSON; the 2xx answer's body
    /// is the function's result, any other status (or no answer within `timeout`) a
    /// function error.
    #[serde(default)]
    pub url: Option<String>,
    /// Directory `command` runs in. A relative path is taken relative to the pipeline's data
    /// directory. Default: sluice's own working directory.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Most invocations running at once over all shards: with `command`, the size of the
    /// process pool (processes are started when first needed and kept). Default 10, 1..=256.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long one invocation may take (Lambda's function timeout). A process that does not
    /// answer in time is killed and replaced; the invocation is a function error. A freshly
    /// started process gets 10 s more for its first answer (its start-up, like Lambda's init
    /// phase). Default `"3s"`.
    #[serde(default = "default_timeout", with = "sluice_core::duration")]
    pub timeout: Duration,
    /// Most records per invocation, 1..=10000. Default 100. A batch is also cut before its
    /// event would exceed 6 MB.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long to gather records before invoking when the batch is not full, up to `"300s"`.
    /// Default `"0s"`: invoke with whatever records are already there.
    #[serde(default, with = "sluice_core::duration")]
    pub maximum_batching_window: Duration,
    /// How often a failed batch is retried before its records go to `destination_on_failure`:
    /// -1 (default) retries until the records are older than `maximum_record_age`, forever if
    /// that is -1 too; else 0..=10000. Bisecting does not use up retries.
    #[serde(default = "minus_one")]
    pub maximum_retry_attempts: i64,
    /// Records older than this (by arrival time) are not invoked any more but go to
    /// `destination_on_failure`: -1 (default, never), or seconds in 60..=604800 (an integer, or
    /// a duration string such as `"1h"`).
    #[serde(default = "minus_one", deserialize_with = "seconds_or_duration")]
    pub maximum_record_age: i64,
    /// Split a failing batch in two and invoke each half, recursively, to isolate bad
    /// records. Default false.
    #[serde(default)]
    pub bisect_batch_on_function_error: bool,
    /// `["ReportBatchItemFailures"]`: the function may answer
    /// `{"batchItemFailures":[{"itemIdentifier":"<sequenceNumber>"}]}`; records before the
    /// lowest failed sequence number are done and the batch is retried from it. Default `[]`.
    #[serde(default)]
    pub function_response_types: Vec<FunctionResponseType>,
    /// Where batches that failed for good are described, one Lambda on-failure record per
    /// line: a file path (NDJSON; relative to the pipeline's data directory), or `"sink:NAME"`: the
    /// on-failure records (JSON) become events that sink NAME reads (it gets this sink added to
    /// its `inputs`). Default: none (the records still go to the pipeline's dead-letter file).
    #[serde(default)]
    pub destination_on_failure: Option<String>,
    /// Concurrent batches per shard, 1..=10. Default 1. Records are spread over the lanes by
    /// partition key, so one key's records are always invoked in order and never concurrently.
    #[serde(default = "default_parallelization_factor")]
    pub parallelization_factor: u32,
    /// Tumbling windows of this length (by the records' arrival time), up to `"900s"`; `"0s"`
    /// (default) for none. Needs `parallelization_factor = 1`, as in Lambda. Sub-second
    /// lengths are allowed (Lambda counts whole seconds).
    #[serde(default, with = "sluice_core::duration")]
    pub tumbling_window: Duration,
    /// Firehose-style record transformation: the function gets Firehose's transformation event
    /// and answers `{"records":[{"recordId","result":"Ok"|"Dropped"|"ProcessingFailed",
    /// "data"}]}`; the `Ok` records' `data` become events that sinks naming this sink in
    /// `inputs` read. Default false. Not with `tumbling_window` or `function_response_types`.
    #[serde(default)]
    pub transform: bool,
    /// `awsRegion` of every event record and the region of made-up ARNs. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub aws_region: String,
    /// `invokeIdentityArn` of every event record. Default
    /// `arn:aws:iam::000000000000:role/sluice-handler`.
    #[serde(default = "default_identity")]
    pub invoke_identity_arn: String,
    /// `requestContext.functionArn` of on-failure records. Default
    /// `arn:aws:lambda:<aws_region>:000000000000:function:<sink name>`.
    #[serde(default)]
    pub function_arn: Option<String>,
}

/// A `function_response_types` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FunctionResponseType {
    /// Partial batch responses (`batchItemFailures`).
    ReportBatchItemFailures,
}

fn default_concurrency() -> usize {
    10
}
fn default_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_batch_size() -> usize {
    100
}
fn minus_one() -> i64 {
    -1
}
fn default_parallelization_factor() -> u32 {
    1
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_identity() -> String {
    "arn:aws:iam::000000000000:role/sluice-handler".into()
}

/// An integer number of seconds (-1 allowed), or a duration string.
fn seconds_or_duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(i64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(s) => Ok(s),
        Raw::Text(t) => {
            let d = sluice_core::duration::parse(&t).map_err(serde::de::Error::custom)?;
            i64::try_from(d.as_secs()).map_err(serde::de::Error::custom)
        }
    }
}

impl HandlerConfig {
    /// Checks the values serde cannot; the message names the offending option and its range.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.command, &self.url) {
            (Some(_), Some(_)) | (None, None) => return Err("exactly one of `command` and `url` is required".into()),
            (Some(c), None) if c.is_empty() || c[0].is_empty() => {
                return Err("`command` must name a program, e.g. [\"python3\", \"handler.py\"]".into());
            }
            (None, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return Err(format!("`url` {u:?} must start with http:// or https://"));
            }
            _ => {}
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err("`concurrency` must be 1..=256".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(900) {
            return Err("`timeout` must be above 0 and at most 900s".into());
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(format!("`batch_size` must be 1..={MAX_BATCH_SIZE}"));
        }
        if self.maximum_batching_window > Duration::from_secs(300) {
            return Err("`maximum_batching_window` must be at most 300s".into());
        }
        if !(self.maximum_retry_attempts == -1 || (0..=10_000).contains(&self.maximum_retry_attempts)) {
            return Err("`maximum_retry_attempts` must be -1 (infinite) or 0..=10000".into());
        }
        if !(self.maximum_record_age == -1 || (60..=604_800).contains(&self.maximum_record_age)) {
            return Err("`maximum_record_age` must be -1 (infinite) or 60..=604800 seconds".into());
        }
        if !(1..=10).contains(&self.parallelization_factor) {
            return Err("`parallelization_factor` must be 1..=10".into());
        }
        if self.tumbling_window > Duration::from_secs(900) {
            return Err("`tumbling_window` must be at most 900s".into());
        }
        if !self.tumbling_window.is_zero() && self.parallelization_factor != 1 {
            return Err("`tumbling_window` needs `parallelization_factor = 1`".into());
        }
        if self.transform && (!self.tumbling_window.is_zero() || self.reports_item_failures()) {
            return Err("`transform` does not combine with `tumbling_window` or `function_response_types`".into());
        }
        if let Some(d) = &self.destination_on_failure {
            if d.is_empty() || d == "sink:" {
                return Err("`destination_on_failure` must be a file path or \"sink:NAME\"".into());
            }
            if self.transform && self.failure_sink().is_some() {
                return Err("`destination_on_failure = \"sink:...\"` does not combine with `transform` (both use the handler's output)".into());
            }
        }
        Ok(())
    }

    /// The sink named by `destination_on_failure = "sink:NAME"`.
    pub fn failure_sink(&self) -> Option<&str> {
        self.destination_on_failure.as_deref().and_then(|d| d.strip_prefix("sink:"))
    }

    /// Whether the function may answer with `batchItemFailures`.
    pub fn reports_item_failures(&self) -> bool {
        self.function_response_types.contains(&FunctionResponseType::ReportBatchItemFailures)
    }

    /// `maximum_retry_attempts` as a limit (`None`: infinite).
    pub fn retry_limit(&self) -> Option<u32> {
        u32::try_from(self.maximum_retry_attempts).ok()
    }

    /// `maximum_record_age` in ms (`None`: infinite).
    pub fn record_age_limit_ms(&self) -> Option<u64> {
        u64::try_from(self.maximum_record_age).ok().map(|s| s * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HandlerConfig, String> {
        let c: HandlerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn defaults_are_lambdas() {
        let c = parse("command = [\"python3\", \"h.py\"]").expect("valid");
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.maximum_batching_window, Duration::ZERO);
        assert_eq!(c.retry_limit(), None);
        assert_eq!(c.record_age_limit_ms(), None);
        assert_eq!(c.parallelization_factor, 1);
        assert!(!c.bisect_batch_on_function_error && !c.reports_item_failures());
    }

    #[test]
    fn ranges_are_named() {
        let base = "command = [\"h\"]\n";
        for (extra, want) in [
            ("parallelization_factor = 11", "parallelization_factor` must be 1..=10"),
            ("batch_size = 10001", "batch_size` must be 1..=10000"),
            ("maximum_retry_attempts = -2", "maximum_retry_attempts` must be -1"),
            ("maximum_record_age = 59", "maximum_record_age` must be -1"),
            ("maximum_batching_window = \"301s\"", "maximum_batching_window` must be at most 300s"),
            ("tumbling_window = \"901s\"", "tumbling_window` must be at most 900s"),
            ("tumbling_window = \"10s\"\nparallelization_factor = 2", "needs `parallelization_factor = 1`"),
            ("destination_on_failure = \"sink:\"", "file path or"),
            ("transform = true\ndestination_on_failure = \"sink:x\"", "does not combine"),
            ("url = \"http://x\"", "exactly one of"),
        ] {
            let err = parse(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.contains(want), "{extra}: {err}");
        }
        assert!(parse("url = \"ftp://x\"").is_err());
        assert!(parse("command = [\"h\"]\nbogus = 1").expect_err("unknown").contains("bogus"));
        let c = parse(
            "command = [\"h\"]\nmaximum_record_age = \"1h\"\nfunction_response_types = [\"ReportBatchItemFailures\"]",
        )
        .expect("valid");
        assert_eq!(c.record_age_limit_ms(), Some(3_600_000));
        assert!(c.reports_item_failures());
    }
}
