//! Sources: outbound connections to data providers, kept alive forever, whose every message
//! becomes a [`sluice_flow::Event`].
//!
//! | `type` | module | messages |
//! |---|---|---|
//! | `"websocket"` | [`websocket`] | text and binary frames |
//! | `"sse"` | [`sse`] | Server-Sent Events `data` |
//! | `"http"` | [`http`] | lines of a streaming response (NDJSON) |
//!
//! Each module has a config struct (what a `[sources.NAME]` table holds, minus `type`) and a
//! `build(name, config)` that checks it and returns a [`sluice_flow::Source`]. The three share
//! one supervisor (`supervisor`): reconnect with backoff and jitter, make-before-break rotation,
//! cursor extraction, de-duplication and gap detection, dead letters, metrics
//! ([`metrics`] lists them).
//!
//! Not here: durability (the spool), batching, and anything about sinks.

pub mod config;
mod cursor;
pub mod http;
pub mod metrics;
pub mod sse;
mod supervisor;
pub mod websocket;

pub use config::{Headers, HeartbeatConfig, Messages, ResumeConfig};
pub use http::HttpConfig;
pub use sse::SseConfig;
pub use websocket::WebSocketConfig;

/// The `type` values this crate builds.
pub const KINDS: &[&str] = &["websocket", "sse", "http"];

/// Builds a source of kind `kind` (one of [`KINDS`]) from its options (the table without
/// `type`), e.g. `build_from("race", "websocket", toml_table)`. Unknown options and bad values
/// are [`sluice_flow::FlowError::Config`] errors naming the option.
pub fn build_from<'de, D>(
    name: &str,
    kind: &str,
    options: D,
) -> Result<Box<dyn sluice_flow::Source>, sluice_flow::FlowError>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    let bad = |e: D::Error| config::config_error(name, e.to_string());
    match kind {
        "websocket" => websocket::build(name, WebSocketConfig::deserialize(options).map_err(bad)?),
        "sse" => sse::build(name, SseConfig::deserialize(options).map_err(bad)?),
        "http" => http::build(name, HttpConfig::deserialize(options).map_err(bad)?),
        other => Err(config::config_error(name, format!("unknown source type {other:?}; known: {KINDS:?}"))),
    }
}
