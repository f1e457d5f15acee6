//! Component kinds: `type = "..."` → the crate that builds it. Adding a source or sink touches
//! its own folder in that crate and its `KINDS` list; nothing here changes.

use std::path::Path;
use std::sync::Arc;

use sluice_flow::{FlowError, Sink, Source};
use sluice_kinesis_api::LocalApi;
use sluice_sinks::kinesis::KinesisBackend;

use crate::config::{ComponentConfig, ConfigError, PipelineConfig};
use crate::embedded::EmbeddedStream;
use crate::embedded_reader::EmbeddedReader;
use sluice_sources::kinesis::backend::StreamBackend;

/// Turns a component's build error into a located config error; `track` holds the path of the
/// field serde was reading when it failed.
fn locate(
    cfg: &PipelineConfig,
    c: &ComponentConfig,
    section: &str,
    track: serde_path_to_error::Track,
    e: FlowError,
) -> ConfigError {
    let message = match e {
        FlowError::Config { message, .. } | FlowError::Fatal { message, .. } => message,
    };
    let path = track.path().to_string();
    let field = if path.is_empty() || path == "." { backticked(&message) } else { Some(path) };
    let first_line = message.lines().next().unwrap_or("").trim().to_owned();
    cfg.error_at(c, section, field.as_deref(), first_line)
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_owned())
}

/// Builds a source from its table; a `kinesis` source without `endpoint` reads the embedded
/// stream (in-process when `embedded` has its API, else over HTTP at its URL).
pub fn build_source(
    cfg: &PipelineConfig,
    c: &ComponentConfig,
    embedded: Option<&Embedded>,
) -> Result<Box<dyn Source>, ConfigError> {
    if !sluice_sources::KINDS.contains(&c.kind.as_str()) {
        return Err(cfg.error_at(
            c,
            "sources",
            Some("type"),
            format!("unknown source type {:?}; known: {:?}", c.kind, sluice_sources::KINDS),
        ));
    }
    let mut options = c.options.clone();
    let mut local = None;
    if wants_embedded(c)
        && let Some(embedded) = embedded
    {
        options.insert("endpoint".into(), toml::Value::String(embedded.url.clone()));
        if let (Some(api), Some(stream)) = (&embedded.api, c.options.get("stream_name").and_then(|v| v.as_str())) {
            local = Some(Arc::new(EmbeddedReader::new(api.clone(), stream)) as Arc<dyn StreamBackend>);
        }
    }
    let built = match local {
        Some(backend) => sluice_sources::build_kinesis_in_process(&c.name, &options, backend),
        None => sluice_sources::build_from(&c.name, &c.kind, &options),
    };
    built.map_err(|e| {
        let first_line = e.message.lines().next().unwrap_or("").trim().to_owned();
        cfg.error_at(c, "sources", e.field.as_deref(), first_line)
    })
}

/// Whether a sink or source needs the embedded stream (`kinesis` without `endpoint`) or its
/// DynamoDB endpoint (`dynamodb` without `endpoint`).
pub fn wants_embedded(c: &ComponentConfig) -> bool {
    (c.kind == "kinesis" || c.kind == "dynamodb") && !c.options.contains_key("endpoint")
}

/// The embedded stream as sinks reach it.
pub struct Embedded {
    /// Its URL (what logs and `/health` show, and what other tools use).
    pub url: String,
    /// In-process access, which a `kinesis` sink writes through (`None`: over HTTP, as when
    /// only validating a file).
    pub api: Option<LocalApi>,
}

/// Builds a sink from its table; `embedded` is the embedded stream when it runs.
pub fn build_sink(
    cfg: &PipelineConfig,
    c: &ComponentConfig,
    data_dir: &Path,
    embedded: Option<&Embedded>,
) -> Result<Box<dyn Sink>, ConfigError> {
    if !sluice_sinks::KINDS.contains(&c.kind.as_str()) {
        return Err(cfg.error_at(
            c,
            "sinks",
            Some("type"),
            format!("unknown sink type {:?}; known: {:?}", c.kind, sluice_sinks::KINDS),
        ));
    }
    let mut c = c.clone();
    let mut env = sluice_sinks::BuildEnv::new(data_dir);
    if c.kind == "dynamodb"
        && wants_embedded(&c)
        && let Some(embedded) = embedded
    {
        c.options.insert("endpoint".into(), toml::Value::String(embedded.url.clone()));
    }
    if wants_embedded(&c)
        && let Some(embedded) = embedded
    {
        if let (Some(api), Some(stream)) = (&embedded.api, c.options.get("stream_name").and_then(|v| v.as_str())) {
            env.kinesis = Some(Arc::new(EmbeddedStream::new(api.clone(), stream)) as Arc<dyn KinesisBackend>);
        }
        c.options.insert("endpoint".into(), toml::Value::String(embedded.url.clone()));
        // The embedded stream enforces no shard limits, so pacing to them would only slow
        // delivery; an explicit `rate_limit` still wins.
        c.options.entry("rate_limit").or_insert(toml::Value::Boolean(false));
    }
    let mut track = serde_path_to_error::Track::new();
    let value = toml::Value::Table(c.options.clone());
    sluice_sinks::build(&c.kind, &c.name, serde_path_to_error::Deserializer::new(value, &mut track), &env)
        .map_err(|e| locate(cfg, &c, "sinks", track, e))
}
