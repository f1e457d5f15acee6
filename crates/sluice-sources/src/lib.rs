//! Sources: outbound connections to data providers, kept alive forever, whose every message
//! becomes a [`sluice_flow::Event`].
//!
//! | `type` | module | messages |
//! |---|---|---|
//! | `"websocket"` | [`websocket`] | text and binary frames |
//! | `"sse"` | [`sse`] | Server-Sent Events `data` |
//! | `"http"` | [`http`] | lines of a streaming response (NDJSON) |
//!
//! Each module is a transport with a config struct of its own options and a
//! `build(name, common, config)` that checks them and returns a [`sluice_flow::Source`]; the
//! options every kind takes are [`CommonConfig`]. The three share one supervisor
//! (`supervisor`): replicas, reconnects, rotation aligned by position, cursor extraction,
//! de-duplication, gaps, alarms, dead letters, metrics ([`metrics`] lists them).
//!
//! Not here: durability (the spool), batching, and anything about sinks.

mod alarm;
pub mod config;
mod cursor;
mod dedup;
mod gaps;
pub mod http;
pub mod kinesis;
pub mod metrics;
pub mod sse;
mod supervisor;
pub mod websocket;

pub use config::{CommonConfig, Headers, HeartbeatConfig, Messages, ResumeConfig};
pub use http::HttpConfig;
pub use sse::SseConfig;
pub use websocket::WebSocketConfig;

/// The `type` values this crate builds.
pub const KINDS: &[&str] = &["websocket", "sse", "http", "kinesis"];

/// Why a source's options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    /// The option at fault as a dotted path (`dedup.window`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Builds a `kinesis` source that polls the embedded stream of this process through `backend`
/// (no HTTP, no base64; it waits for commits at the tip instead of sleeping).
pub fn build_kinesis_in_process(
    name: &str,
    options: &toml::Table,
    backend: std::sync::Arc<dyn kinesis::backend::StreamBackend>,
) -> Result<Box<dyn sluice_flow::Source>, OptionError> {
    kinesis::source::build_in_process(name, parse(options.clone())?, backend).map_err(option_error)
}

fn option_error(e: sluice_flow::FlowError) -> OptionError {
    let message = match e {
        sluice_flow::FlowError::Config { message, .. } | sluice_flow::FlowError::Fatal { message, .. } => message,
    };
    OptionError { field: backticked(&message), message }
}

/// Builds a source of kind `kind` (one of [`KINDS`]) from its options (the table without
/// `type`). The options every kind takes ([`CommonConfig`], keys in [`config::COMMON_FIELDS`])
/// and the kind's own are each checked strictly: unknown keys and bad values are errors
/// naming the option.
pub fn build_from(name: &str, kind: &str, options: &toml::Table) -> Result<Box<dyn sluice_flow::Source>, OptionError> {
    if kind == "kinesis" {
        // A consumer of a stream: none of the connection options apply.
        return kinesis::source::build(name, parse(options.clone())?).map_err(option_error);
    }
    let (common, own): (toml::Table, toml::Table) =
        options.clone().into_iter().partition(|(k, _)| config::COMMON_FIELDS.contains(&k.as_str()));
    let common: CommonConfig = parse(common)?;
    let built = match kind {
        "websocket" => websocket::build(name, common, parse(own)?),
        "sse" => sse::build(name, common, parse(own)?),
        "http" => http::build(name, common, parse(own)?),
        other => {
            return Err(OptionError {
                field: Some("type".into()),
                message: format!("unknown source type {other:?}; known: {KINDS:?}"),
            });
        }
    };
    built.map_err(|e| {
        let message = match e {
            sluice_flow::FlowError::Config { message, .. } | sluice_flow::FlowError::Fatal { message, .. } => message,
        };
        OptionError { field: backticked(&message), message }
    })
}

/// Deserializes one half of a source's table, naming the field at fault.
fn parse<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, OptionError> {
    let mut track = serde_path_to_error::Track::new();
    T::deserialize(serde_path_to_error::Deserializer::new(toml::Value::Table(table), &mut track)).map_err(|e| {
        let path = track.path().to_string();
        let mut message = e.to_string();
        if message.starts_with("unknown field") {
            message.push_str(&format!("; or one the options every source takes: {}", config::COMMON_FIELDS.join(", ")));
        }
        OptionError { field: (!path.is_empty() && path != ".").then_some(path), message }
    })
}

/// The first `backticked` word of a message (the option a check names).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_owned())
}
