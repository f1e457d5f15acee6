//! The sinks of a sluice pipeline: where spooled records finally go.
//!
//! Each sink lives in its own module with a user-facing config struct (one `[sinks.NAME]` table
//! of the pipeline file, minus the pipeline's own `type` and `inputs` keys) and a `build`
//! function that checks the config and returns a [`sluice_flow::Sink`]:
//!
//! - [`kinesis`]: Amazon Kinesis Data Streams (or the embedded `sluice serve`) through PutRecords,
//!   with batching, exact partial-failure retries, per-key ordering, per-shard rate limiting,
//!   optional KPL aggregation and per-record compression.
//! - [`file`]: rotating NDJSON files, optionally gzip-compressed.
//! - [`handler`]: a function invoked like AWS Lambda with Kinesis events (a pool of processes
//!   speaking JSON lines, or an HTTP endpoint), with retries, bisection, partial batch
//!   responses, on-failure records, parallelization and tumbling windows.
//! - [`stdout`]: NDJSON lines on standard output.
//! - [`s3`]: Firehose-style objects in S3, an S3-compatible store or a local directory.
//! - [`dynamodb`]: every record an item of a DynamoDB table (BatchWriteItem, or conditional
//!   puts that keep the newest version).
//!
//! Every sink acknowledges a record only once it is durably delivered (accepted by Kinesis,
//! fsynced to a file, flushed to stdout) or written to the dead-letter file; nothing is
//! acknowledged early and nothing is dropped silently. This crate does not read the pipeline
//! file, spool, or talk to sources; [`build`] is the one registry the pipeline calls.

use std::path::Path;

use serde::Deserialize;
use sluice_flow::{FlowError, Sink};

mod aws;
pub mod dynamodb;
pub mod file;
pub mod handler;
pub mod kinesis;
mod line;
pub mod s3;
pub mod stdout;
pub mod time;

/// The sink types [`build`] knows, as written in `type = "..."`.
pub const KINDS: &[&str] = &["kinesis", "file", "handler", "stdout", "s3", "dynamodb"];

/// What the pipeline lends every sink it builds.
#[derive(Clone)]
pub struct BuildEnv<'a> {
    /// The pipeline's data directory.
    pub data_dir: &'a Path,
    /// For a `kinesis` sink writing to the embedded stream: its in-process handle, used instead
    /// of an HTTP client.
    pub kinesis: Option<std::sync::Arc<dyn kinesis::KinesisBackend>>,
}

impl<'a> BuildEnv<'a> {
    /// Only a data directory.
    pub fn new(data_dir: &'a Path) -> BuildEnv<'a> {
        BuildEnv { data_dir, kinesis: None }
    }
}

/// Builds the sink of type `kind` named `name` from its config table (any serde
/// deserializer, e.g. a `toml::Table` with `type` and `inputs` removed).
pub fn build<'de, D>(kind: &str, name: &str, config: D, env: &BuildEnv<'_>) -> Result<Box<dyn Sink>, FlowError>
where
    D: serde::Deserializer<'de>,
{
    fn parse<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(name: &str, config: D) -> Result<T, FlowError> {
        T::deserialize(config).map_err(|e| config_error(name, e.to_string()))
    }
    match kind {
        "kinesis" => kinesis::build(name, parse(name, config)?, env),
        "file" => file::build(name, parse(name, config)?, env.data_dir),
        "handler" => handler::build(name, parse(name, config)?, env.data_dir),
        "stdout" => stdout::build(name, parse(name, config)?, env.data_dir),
        "s3" => s3::build(name, parse(name, config)?, env.data_dir),
        "dynamodb" => dynamodb::build(name, parse(name, config)?),
        other => Err(config_error(name, format!("unknown sink type {other:?} (known: {})", KINDS.join(", ")))),
    }
}

fn config_error(name: &str, message: impl Into<String>) -> FlowError {
    FlowError::Config { component: name.to_owned(), message: message.into() }
}
