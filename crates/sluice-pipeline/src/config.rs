//! Pipeline files: TOML in the style Vector users know.
//!
//! ```toml
//! data_dir = "./sluice-data"
//! [sources.race]            # any name
//! type = "websocket"        # the component kind
//! url = "ws://127.0.0.1:8765/ws"
//! [sinks.stream]
//! type = "kinesis"
//! inputs = ["race"]
//! stream_name = "race"
//! ```
//!
//! `${VAR}` inside double-quoted strings reads the environment (for tokens; the value is
//! escaped for TOML, and a missing variable is an error naming its line). Unknown keys and bad
//! values are errors of the form `FILE:LINE:COL: sources.race.ping_interval: <what is wrong>`.
//! Each component's own options are checked by the component's config type (see the registry).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted path of the offending field (`sources.race.url`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The top level of a pipeline file. Component tables are kept raw here and checked by the
/// registry against each component's own type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    embedded: EmbeddedSection,
    #[serde(default)]
    spool: SpoolSection,
    #[serde(default)]
    sources: BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    sinks: BTreeMap<String, toml::Spanned<toml::Table>>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}

/// `[api]`: where `sluice run` serves `/metrics` and `/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Listen address (port 0 picks a free one).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// A sink that has acknowledged nothing for this long while records wait for it raises
    /// `sink_failing` (`/health` 503). Default `"60s"`.
    #[serde(default = "default_sink_failing_after", deserialize_with = "sluice_core::duration::deserialize")]
    pub sink_failing_after: std::time::Duration,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection { listen: default_api_listen(), sink_failing_after: default_sink_failing_after() }
    }
}

fn default_sink_failing_after() -> std::time::Duration {
    crate::runtime::DEFAULT_SINK_FAILING_AFTER
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9598))
}

/// `[embedded]`: the in-process Kinesis-compatible stream that `kinesis` sinks without an
/// `endpoint` deliver to, served so that other tools can read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSection {
    /// Listen address.
    #[serde(default = "default_embedded_listen")]
    pub listen: SocketAddr,
    /// `fsync` (default) or `os`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// How long the stream's group commit waits for more appends before it writes a group
    /// that is not full (`"2ms"` by default; `"0ms"`: never waits). At low rates this lets one
    /// fsync cover many appends.
    #[serde(default = "default_linger", deserialize_with = "sluice_core::duration::deserialize")]
    pub linger: std::time::Duration,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        EmbeddedSection {
            listen: default_embedded_listen(),
            durability: default_durability(),
            linger: default_linger(),
        }
    }
}

fn default_linger() -> std::time::Duration {
    crate::spool::DEFAULT_LINGER
}

fn default_embedded_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4567))
}

fn default_durability() -> String {
    "fsync".into()
}

/// `[spool]`: the on-disk buffer between sources and sinks.
///
/// A spooled event is kept until every sink reading its source has acknowledged it (the
/// spool is trimmed, a whole segment at a time, below the lowest saved watermark), however
/// long a sink is down. `max_age` opts into dropping older events anyway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// `fsync` (default: an event is on disk before it counts as received) or `os`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// Drop spooled events older than this (`"7d"`, `"12h"`) even if a sink has not
    /// acknowledged them yet (whole segments; each such event is counted in
    /// `sluice_pipeline_spool_expired_total` and logged). Default: unset, keep until delivered.
    #[serde(default, deserialize_with = "sluice_core::duration::deserialize_opt")]
    pub max_age: Option<std::time::Duration>,
    /// Size at which a spool segment is closed and a new one started (the unit of trimming).
    /// Default 64 MiB; smaller values are for tests and small disks.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// How long the spool's group commit waits for more appends before it writes a group that
    /// is not full (`"2ms"` by default; `"0ms"`: never waits).
    #[serde(default = "default_linger", deserialize_with = "sluice_core::duration::deserialize")]
    pub linger: std::time::Duration,
    /// Removed (it trimmed undelivered events by age); refused with a pointer to `max_age`.
    #[serde(default)]
    retention_hours: Option<toml::Value>,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            durability: default_durability(),
            max_age: None,
            segment_bytes: default_segment_bytes(),
            linger: default_linger(),
            retention_hours: None,
        }
    }
}

fn default_segment_bytes() -> u64 {
    64 << 20
}

/// Smallest `[spool] segment_bytes` accepted (a segment must hold a few records).
const MIN_SEGMENT_BYTES: u64 = 1024;

/// One component table, with its kind and location.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// Name in the file.
    pub name: String,
    /// `type = "..."`.
    pub kind: String,
    /// `inputs = [...]` (sinks only).
    pub inputs: Vec<String>,
    /// The remaining options, checked by the component.
    pub options: toml::Table,
    /// Byte span of the table in the file (for error lines).
    pub span: std::ops::Range<usize>,
}

/// A parsed pipeline file (components not yet checked against their types).
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The file it came from.
    pub file: String,
    /// The text after `${VAR}` substitution (for locating errors).
    pub text: String,
    /// Where spools, cursors, dead letters and the embedded stream live.
    pub data_dir: PathBuf,
    /// `[api]`.
    pub api: ApiSection,
    /// `[embedded]`.
    pub embedded: EmbeddedSection,
    /// `[spool]`.
    pub spool: SpoolSection,
    /// Sources in name order.
    pub sources: Vec<ComponentConfig>,
    /// Sinks in name order.
    pub sinks: Vec<ComponentConfig>,
}

/// The sink a `handler` sends its on-failure records to (`destination_on_failure = "sink:NAME"`).
fn failure_sink(c: &ComponentConfig) -> Option<&str> {
    if c.kind != "handler" {
        return None;
    }
    c.options.get("destination_on_failure").and_then(toml::Value::as_str).and_then(|d| d.strip_prefix("sink:"))
}

/// A `handler` sink with `transform = true`: its answers are events other sinks can read.
fn is_transform(c: &ComponentConfig) -> bool {
    c.kind == "handler" && c.options.get("transform").and_then(toml::Value::as_bool) == Some(true)
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

/// Replaces `${VAR}` with the environment's value, escaped for a TOML basic string.
fn substitute_env(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            let (line, column) = line_col(text, offset + start);
            return Err(ConfigError {
                file: file.into(),
                line: Some(line),
                column: Some(column),
                field: None,
                message: "unterminated ${...}".into(),
            });
        };
        let name = &after[..end];
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let value = valid.then(|| env(name)).flatten().ok_or_else(|| {
            let (line, column) = line_col(text, offset + start);
            ConfigError {
                file: file.into(),
                line: Some(line),
                column: Some(column),
                field: None,
                message: if valid {
                    format!("environment variable {name} is not set")
                } else {
                    format!("invalid variable reference ${{{name}}}")
                },
            }
        })?;
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            }
        }
        let consumed = start + 2 + end + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unzip();
    ConfigError { file: file.into(), line, column, field: None, message: e.message().trim().to_owned() }
}

fn split_component(
    file: &str,
    text: &str,
    section: &str,
    name: &str,
    table: toml::Spanned<toml::Table>,
    is_sink: bool,
) -> Result<ComponentConfig, ConfigError> {
    let span = table.span();
    let mut options = table.into_inner();
    let err = |field: &str, message: String| {
        let (line, column) = locate_key(text, &span, field).unwrap_or_else(|| line_col(text, span.start));
        ConfigError {
            file: file.into(),
            line: Some(line),
            column: Some(column),
            field: Some(format!("{section}.{name}.{field}")),
            message,
        }
    };
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        || name.is_empty()
        || name.len() > 64
    {
        return Err(err(
            "",
            format!("component names may use letters, digits, '_', '-' and '.', up to 64 characters; got {name:?}"),
        ));
    }
    let kind = match options.remove("type") {
        Some(toml::Value::String(s)) => s,
        Some(other) => return Err(err("type", format!("expected a string, found {}", other.type_str()))),
        None => return Err(err("type", "missing field `type`".into())),
    };
    let inputs = if is_sink {
        match options.remove("inputs") {
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    other => {
                        Err(err("inputs", format!("expected a list of source names, found a {}", other.type_str())))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(err("inputs", format!("expected a list of source names, found {}", other.type_str())));
            }
            // A sink fed only by a handler's `destination_on_failure = "sink:NAME"` needs none;
            // the graph check refuses a sink left without inputs.
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    Ok(ComponentConfig { name: name.to_owned(), kind, inputs, options, span })
}

/// Finds `key =` inside a component's span (for error lines).
pub fn locate_key(text: &str, span: &std::ops::Range<usize>, key: &str) -> Option<(usize, usize)> {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if leaf.is_empty() {
        return None;
    }
    // A `[section.name]` table's span may cover only its header: search to the next header.
    let body = text.get(span.start..)?;
    let mut pos = 0;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        if i > 0 && line.trim_start().starts_with('[') && pos >= span.len() {
            break;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(after) = trimmed.strip_prefix(leaf).or_else(|| trimmed.strip_prefix(&format!("\"{leaf}\"")))
            && after.trim_start().starts_with('=')
        {
            return Some(line_col(text, span.start + pos + indent));
        }
        pos += line.len();
    }
    None
}

impl PipelineConfig {
    /// Reads and parses a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read the file: {e}"),
        })?;
        PipelineConfig::parse(&file, &text, &|k| std::env::var(k).ok())
    }

    /// Parses pipeline text; `env` resolves `${VAR}`.
    pub fn parse(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<PipelineConfig, ConfigError> {
        let text = substitute_env(file, text, env)?;
        let raw: RawPipeline = toml::from_str(&text).map_err(|e| toml_error(file, &text, &e))?;
        let mut sources = Vec::new();
        for (name, table) in raw.sources {
            sources.push(split_component(file, &text, "sources", &name, table, false)?);
        }
        let mut sinks = Vec::new();
        for (name, table) in raw.sinks {
            sinks.push(split_component(file, &text, "sinks", &name, table, true)?);
        }
        let mut cfg = PipelineConfig {
            file: file.to_owned(),
            text,
            data_dir: raw.data_dir,
            api: raw.api,
            embedded: raw.embedded,
            spool: raw.spool,
            sources,
            sinks,
        };
        cfg.route_failures()?;
        cfg.check_graph()?;
        Ok(cfg)
    }

    /// A handler's `destination_on_failure = "sink:NAME"` makes sink NAME read the handler's
    /// output (its on-failure records): the handler joins NAME's `inputs`.
    fn route_failures(&mut self) -> Result<(), ConfigError> {
        let routes: Vec<(usize, String)> = self
            .sinks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| failure_sink(c).map(|target| (i, target.to_owned())))
            .collect();
        for (i, target) in routes {
            let handler = self.sinks[i].name.clone();
            match self.sinks.iter().position(|c| c.name == target) {
                Some(t) if t != i => {
                    if !self.sinks[t].inputs.contains(&handler) {
                        self.sinks[t].inputs.push(handler);
                    }
                }
                _ => {
                    let known: Vec<&str> =
                        self.sinks.iter().filter(|c| c.name != handler).map(|c| c.name.as_str()).collect();
                    return Err(self.error_at(
                        &self.sinks[i],
                        "sinks",
                        Some("destination_on_failure"),
                        format!("\"sink:{target}\" names no other sink; sinks are {known:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// An error located at a component's field.
    pub fn error_at(&self, c: &ComponentConfig, section: &str, field: Option<&str>, message: String) -> ConfigError {
        let (line, column) = field
            .and_then(|f| locate_key(&self.text, &c.span, f))
            .unwrap_or_else(|| line_col(&self.text, c.span.start));
        ConfigError {
            file: self.file.clone(),
            line: Some(line),
            column: Some(column),
            field: Some(match field {
                Some(f) if !f.is_empty() => format!("{section}.{}.{f}", c.name),
                _ => format!("{section}.{}", c.name),
            }),
            message,
        }
    }

    fn check_graph(&self) -> Result<(), ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError {
                file: self.file.clone(),
                line: None,
                column: None,
                field: Some("sources".into()),
                message: "the pipeline has no [sources.NAME] table".into(),
            });
        }
        if self.sinks.is_empty() {
            return Err(ConfigError {
                file: self.file.clone(),
                line: None,
                column: None,
                field: Some("sinks".into()),
                message: "the pipeline has no [sinks.NAME] table".into(),
            });
        }
        for sink in &self.sinks {
            if sink.inputs.is_empty() {
                return Err(self.error_at(sink, "sinks", Some("inputs"), "needs at least one input".into()));
            }
            for input in &sink.inputs {
                if self.sources.iter().any(|s| &s.name == input) {
                    continue;
                }
                match self.sinks.iter().find(|s| &s.name == input) {
                    Some(other) if other.name == sink.name => {
                        return Err(self.error_at(
                            sink,
                            "sinks",
                            Some("inputs"),
                            "a sink cannot read its own output".into(),
                        ));
                    }
                    Some(other) if is_transform(other) || failure_sink(other) == Some(sink.name.as_str()) => {}
                    Some(other) => {
                        return Err(self.error_at(
                            sink,
                            "sinks",
                            Some("inputs"),
                            format!(
                                "input {input:?} is a sink that produces nothing; only a `handler` sink with \
                                 `transform = true` can feed other sinks (`{}`)",
                                other.kind
                            ),
                        ));
                    }
                    None => {
                        let known: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
                        return Err(self.error_at(
                            sink,
                            "sinks",
                            Some("inputs"),
                            format!("unknown input {input:?}; sources are {known:?}"),
                        ));
                    }
                }
            }
        }
        for sink in self.sinks.iter().filter(|s| is_transform(s)) {
            if self.sources.iter().any(|s| s.name == sink.name) {
                return Err(self.error_at(
                    sink,
                    "sinks",
                    None,
                    format!("a transforming sink needs a name no source has ({:?} is a source too)", sink.name),
                ));
            }
            if !self.sinks.iter().any(|r| r.inputs.contains(&sink.name)) {
                return Err(self.error_at(
                    sink,
                    "sinks",
                    Some("transform"),
                    format!("no sink reads its output: name {:?} in some sink's `inputs`", sink.name),
                ));
            }
        }
        // Producers (transforms, failure routes) feeding each other must not loop back.
        for sink in self.sinks.iter().filter(|s| is_transform(s) || failure_sink(s).is_some()) {
            let mut path = vec![sink.name.as_str()];
            let mut frontier = vec![sink.name.as_str()];
            while let Some(at) = frontier.pop() {
                for reader in self.sinks.iter().filter(|r| r.inputs.iter().any(|i| i == at)) {
                    if reader.name == sink.name {
                        return Err(self.error_at(
                            sink,
                            "sinks",
                            Some("inputs"),
                            format!("sinks feed each other in a loop through {:?}", sink.name),
                        ));
                    }
                    if !path.contains(&reader.name.as_str()) {
                        path.push(&reader.name);
                        frontier.push(&reader.name);
                    }
                }
            }
        }
        let spool_error = |key: &str, message: String| {
            let at = self.text.find(&format!("{key} ")).or_else(|| self.text.find(&format!("{key}=")));
            let (line, column) = at.map(|o| line_col(&self.text, o)).unzip();
            ConfigError { file: self.file.clone(), line, column, field: Some(format!("spool.{key}")), message }
        };
        if self.spool.retention_hours.is_some() {
            return Err(spool_error(
                "retention_hours",
                "was removed: the spool now keeps events until every sink has acknowledged them; \
                 set `max_age = \"7d\"` to also drop older ones"
                    .into(),
            ));
        }
        if self.spool.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(spool_error("segment_bytes", format!("must be at least {MIN_SEGMENT_BYTES}")));
        }
        for durability in [&self.embedded.durability, &self.spool.durability] {
            if durability != "fsync" && durability != "os" {
                return Err(ConfigError {
                    file: self.file.clone(),
                    line: None,
                    column: None,
                    field: Some("durability".into()),
                    message: format!("expected \"fsync\" or \"os\", found {durability:?}"),
                });
            }
        }
        Ok(())
    }

    /// Deserializes a component's options into its config type, locating any error.
    pub fn component_options<T: serde::de::DeserializeOwned>(
        &self,
        c: &ComponentConfig,
        section: &str,
    ) -> Result<T, ConfigError> {
        let value = toml::Value::Table(c.options.clone());
        serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde names unknown/missing fields in the message, not the path.
            let named = extract_backticked(&inner);
            let field = if path.is_empty() || path == "." { named.clone() } else { Some(path) };
            let first_line = inner.lines().next().unwrap_or("").trim().to_owned();
            self.error_at(c, section, field.as_deref(), first_line)
        })
    }
}

fn extract_backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "TOKEN").then(|| "s3cr\"et".to_owned())
    }

    const GOOD: &str = r#"
data_dir = "/tmp/x"

[sources.race]
type = "websocket"
url = "ws://127.0.0.1:1/ws"
headers = { Authorization = "Bearer ${TOKEN}" }

[sinks.out]
type = "stdout"
inputs = ["race"]
"#;

    #[test]
    fn parses_components_and_env() {
        let c = PipelineConfig::parse("p.toml", GOOD, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sources[0].kind, "websocket");
        assert_eq!(c.sinks[0].inputs, vec!["race".to_owned()]);
        let headers = c.sources[0].options.get("headers").and_then(|h| h.get("Authorization")).and_then(|v| v.as_str());
        assert_eq!(headers, Some("Bearer s3cr\"et"));
    }

    #[test]
    fn missing_env_names_line() {
        let e = PipelineConfig::parse("p.toml", GOOD, &|_| None).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("p.toml:7:37: environment variable TOKEN is not set"));
    }

    #[test]
    fn unknown_top_level_key_and_bad_input() {
        let e =
            PipelineConfig::parse("p.toml", "data_dri = 1\n", &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("p.toml:1:1: unknown field `data_dri`"), "{e}");
        let text = GOOD.replace("inputs = [\"race\"]", "inputs = [\"rcae\"]");
        let e = PipelineConfig::parse("p.toml", &text, &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("p.toml:11:1: sinks.out.inputs: unknown input \"rcae\""), "{e}");
    }

    #[test]
    fn sinks_read_transforming_handlers_only_without_loops() {
        let handler = |name: &str, inputs: &str, transform: bool| {
            format!(
                "\n[sinks.{name}]\ntype = \"handler\"\ninputs = {inputs}\ncommand = [\"x\"]\ntransform = {transform}\n"
            )
        };
        let ok = format!(
            "{}{}",
            GOOD.replace("inputs = [\"race\"]", "inputs = [\"enrich\"]"),
            handler("enrich", "[\"race\"]", true)
        );
        let c = PipelineConfig::parse("p.toml", &ok, &env).unwrap_or_else(|e| panic!("{e}\n{ok}"));
        let out = c.sinks.iter().find(|s| s.name == "out").map(|s| s.inputs.clone());
        assert_eq!(out, Some(vec!["enrich".to_owned()]));
        let cases = [
            (format!("{GOOD}{}", handler("enrich", "[\"race\"]", true)), "no sink reads its output"),
            (format!("{GOOD}{}", handler("enrich", "[\"out\"]", false)), "produces nothing"),
            (format!("{GOOD}{}", handler("enrich", "[\"enrich\"]", true)), "its own output"),
            (format!("{GOOD}{}{}", handler("a", "[\"b\"]", true), handler("b", "[\"a\"]", true)), "in a loop"),
        ];
        for (text, want) in cases {
            let e = PipelineConfig::parse("p.toml", &text, &env).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{want}: {e}\n{text}");
        }
        // `destination_on_failure = "sink:NAME"` makes NAME read the handler, inputs or not.
        let routed = format!(
            "{GOOD}\n[sinks.fn]\ntype = \"handler\"\ninputs = [\"race\"]\ncommand = [\"x\"]\n\
             destination_on_failure = \"sink:alerts\"\n\n[sinks.alerts]\ntype = \"stdout\"\n"
        );
        let c = PipelineConfig::parse("p.toml", &routed, &env).unwrap_or_else(|e| panic!("{e}\n{routed}"));
        let alerts = c.sinks.iter().find(|s| s.name == "alerts").map(|s| s.inputs.clone());
        assert_eq!(alerts, Some(vec!["fn".to_owned()]));
        let missing = routed.replace("sink:alerts", "sink:nope");
        let e = PipelineConfig::parse("p.toml", &missing, &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"sink:nope\" names no other sink"), "{e}");
    }

    #[test]
    fn spool_section_max_age_segment_bytes_and_the_removed_retention_hours() {
        let c = PipelineConfig::parse("p.toml", GOOD, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.spool.max_age, c.spool.segment_bytes), (None, 64 << 20), "kept until delivered by default");
        let text =
            format!("[spool]\nmax_age = \"7d\"\nsegment_bytes = 4096\n{GOOD}").replace("data_dir = \"/tmp/x\"", "");
        let c = PipelineConfig::parse("p.toml", &text, &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.spool.max_age, Some(std::time::Duration::from_secs(7 * 86_400)));
        assert_eq!(c.spool.segment_bytes, 4096);
        let old = format!("[spool]\nretention_hours = 24\n{GOOD}").replace("data_dir = \"/tmp/x\"", "");
        let e = PipelineConfig::parse("p.toml", &old, &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("p.toml:2:1: spool.retention_hours: was removed"), "{e}");
        let bad = format!("[spool]\nmax_age = \"soon\"\n{GOOD}").replace("data_dir = \"/tmp/x\"", "");
        let e = PipelineConfig::parse("p.toml", &bad, &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn embedded_and_spool_linger_are_durations_with_a_2ms_default() {
        let c = PipelineConfig::parse("p.toml", GOOD, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.embedded.linger, c.spool.linger), (crate::spool::DEFAULT_LINGER, crate::spool::DEFAULT_LINGER));
        assert_eq!(crate::spool::DEFAULT_LINGER, std::time::Duration::from_millis(2));
        let text = format!("[embedded]\nlinger = \"5ms\"\n[spool]\nlinger = \"0ms\"\n{GOOD}")
            .replace("data_dir = \"/tmp/x\"", "");
        let c = PipelineConfig::parse("p.toml", &text, &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.embedded.linger, std::time::Duration::from_millis(5));
        assert_eq!(c.spool.linger, std::time::Duration::ZERO);
        let bad = format!("[embedded]\nlinger = \"soon\"\n{GOOD}").replace("data_dir = \"/tmp/x\"", "");
        let e = PipelineConfig::parse("p.toml", &bad, &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Ws {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        max_message_bytes: Option<u64>,
    }

    #[test]
    fn component_errors_name_field_and_line() {
        let text = GOOD.replace("url = ", "max_message_bytes = \"big\"\nurl = ");
        let c = PipelineConfig::parse("p.toml", &text, &env).unwrap_or_else(|e| panic!("{e}"));
        let e = c.component_options::<Ws>(&c.sources[0], "sources").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("p.toml:6:1: sources.race.max_message_bytes: invalid type: string \"big\""), "{e}");
        let text = GOOD.replace("url = ", "urll = \"x\"\nurl = ");
        let c = PipelineConfig::parse("p.toml", &text, &env).unwrap_or_else(|e| panic!("{e}"));
        let e = c.component_options::<Ws>(&c.sources[0], "sources").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("p.toml:6:1: sources.race.urll: unknown field `urll`"), "{e}");
    }
}
