//! The Kinesis sink: records into an Amazon Kinesis data stream (or the embedded one) with
//! PutRecords.
//!
//! A record flows: *prepare* (partition key from the payload, optional gzip/zstd compression,
//! the 1 MiB size check) → `dispatch` (per-shard lanes, per-key order, rate limits, KPL
//! aggregation, batches of ≤ 500 records / ≤ 5 MiB sent when full or after `linger`) →
//! `client` (one PutRecords call per batch, up to `max_in_flight` at once) → back to
//! `dispatch`, which acknowledges each accepted record and retries exactly the failed entries.
//!
//! **Guarantees.**
//! - A record is acknowledged as delivered only after PutRecords reported its entry accepted.
//! - A failed entry is retried as it was (same bytes, same key) after a backoff with jitter;
//!   the other entries of the call are not sent again.
//! - Throttling (`ProvisionedThroughputExceededException`) never fails a record: it slows the
//!   shard's pace down and retries. Whole-call errors (connection refused, 5xx, timeouts,
//!   `ResourceNotFoundException`) are retried forever with capped backoff and logged; the
//!   source's spool keeps the data meanwhile.
//! - A record that can never be accepted — over 1 MiB (data + key) after compression, or
//!   refused with `ValidationException` / `InvalidArgumentException` — is written to the
//!   dead-letter file and acknowledged as dead-lettered. When a whole call is refused, its
//!   entries are sent one per call to find the culprit; a refused aggregate is split. With
//!   `max_retries` set, an entry that fails that many more times with other errors (e.g.
//!   `InternalFailure`) is dead-lettered too.
//!
//! **Ordering (`ordering = "per_key"`, the default).** Records with the same partition key
//! reach the stream in input order, even through retries: the sink keeps at most one
//! not-yet-acknowledged PutRecords entry per partition key in flight, and the next record of
//! that key is sent only after the previous one was accepted (or dead-lettered). A hot key is
//! therefore limited to one record per round trip — unless `aggregate = true`, where all its
//! waiting records ride in one aggregate, in order. With `ordering = "none"` records are sent
//! as they come and a retried record may land after later ones of the same key.
//!
//! **Rate limits.** From ListShards the sink predicts each record's shard (MD5 of the key) and
//! paces every shard below 1,000 records/s and 1 MiB/s (`rate_limit = true`), slowing further
//! when throttled. The shard map is fetched again every 60 s, after `ResourceNotFoundException`,
//! and when a record lands on a shard other than predicted (a reshard).
//!
//! **KPL aggregation (`aggregate = true`).** Records predicted for the same shard are packed
//! into aggregates of at most 50 KiB in the KPL format ([`sluice_core::kpl`]): partition key
//! `"a"`, explicit hash key = the first user record's hash, so the aggregate lands on that
//! shard; a container with a single record is sent as a plain record. If an aggregate lands on
//! an unexpected shard (the map was stale), its sub-records outside that shard's range are sent
//! again, as the KPL does, because the KCL drops such aggregates. With compression, each user
//! record is compressed before aggregation.
//!
//! Metrics (label `sink`): `sluice_sink_records_put_total`, `_retried_total`,
//! `_throttled_total`, `_failed_total`, `_dead_lettered_total`,
//! `sluice_sink_partition_key_fallback_total`, histograms `sluice_sink_batch_seconds` and
//! `sluice_sink_end_to_end_seconds`, gauge `sluice_sink_in_flight`.

use sluice_flow::{FlowError, Sink};

mod backend;
mod client;
mod config;
mod dispatch;
mod partition_key;
mod rate;
mod shard_map;
mod sink;
mod stats;

pub use backend::{CallFuture, KinesisBackend};
pub use config::{
    Compression, KinesisConfig, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, Ordering, RetryBackoff,
};
pub use dispatch::{CallError, Entry, EntryResult};
pub use partition_key::{Key, PartitionKeySpec};
pub use shard_map::{ShardInfo, ShardMap};
pub use sink::{KinesisSink, compress};

/// Checks the config and builds the sink (it connects when it runs). It keeps no state of its
/// own; `env.kinesis`, when given, is used instead of an SDK client for `endpoint`.
pub fn build(name: &str, config: KinesisConfig, env: &crate::BuildEnv<'_>) -> Result<Box<dyn Sink>, FlowError> {
    config.validate().map_err(|m| crate::config_error(name, m))?;
    let spec = PartitionKeySpec::parse(&config.partition_key).map_err(|m| crate::config_error(name, m))?;
    Ok(Box::new(KinesisSink::new(name, config, spec, env.kinesis.clone())))
}
