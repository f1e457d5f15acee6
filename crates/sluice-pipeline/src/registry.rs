//! Component kinds: `type = "..."` → the crate that builds it. Adding a source or sink touches
//! its own folder and one line here.

use std::path::Path;

use sluice_flow::{Sink, Source};

use crate::config::{ComponentConfig, ConfigError, PipelineConfig};

/// Source kinds this build knows.
pub const SOURCE_KINDS: &[&str] = &[];
/// Sink kinds this build knows.
pub const SINK_KINDS: &[&str] = &[];

/// Builds a source from its table.
pub fn build_source(cfg: &PipelineConfig, c: &ComponentConfig) -> Result<Box<dyn Source>, ConfigError> {
    Err(cfg.error_at(c, "sources", Some("type"), format!("unknown source type {:?}; known: {SOURCE_KINDS:?}", c.kind)))
}

/// Whether a sink needs the embedded stream (a `kinesis` sink without `endpoint`).
pub fn wants_embedded(c: &ComponentConfig) -> bool {
    c.kind == "kinesis" && !c.options.contains_key("endpoint")
}

/// Builds a sink from its table; `embedded` is the embedded stream's URL when it runs.
pub fn build_sink(
    cfg: &PipelineConfig,
    c: &ComponentConfig,
    _data_dir: &Path,
    _embedded: Option<&str>,
) -> Result<Box<dyn Sink>, ConfigError> {
    Err(cfg.error_at(c, "sinks", Some("type"), format!("unknown sink type {:?}; known: {SINK_KINDS:?}", c.kind)))
}
