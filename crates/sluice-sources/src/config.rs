//! Options every source kind takes ([`CommonConfig`]: the URL, headers, reconnects, rotation,
//! resume, replicas, de-duplication, gaps, alarms) and the checks that turn them into what a
//! running source needs ([`Settings`]).
//!
//! A `[sources.NAME]` table is split in two by key ([`COMMON_FIELDS`] here, the rest for the
//! kind's own struct), since serde cannot combine `flatten` with `deny_unknown_fields`; both
//! halves are checked strictly.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use sluice_flow::FlowError;
use url::Url;

use crate::cursor::Pointer;
use crate::dedup::DedupPlan;

/// The placeholder filled with the cursor to resume from.
pub const CURSOR_PLACEHOLDER: &str = "{cursor}";

/// HTTP headers sent with every (re)connect. Values may hold secrets: `Debug` shows only the
/// names, and they are never logged. A value may contain `{cursor}`; such a header is sent
/// only when a cursor is known.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Headers(pub BTreeMap<String, String>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "<redacted>"))).finish()
    }
}

/// Messages sent after every (re)connect. They may carry tokens: `Debug` shows only how many.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Messages(pub Vec<String>);

impl fmt::Debug for Messages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} message(s), redacted]", self.0.len())
    }
}

/// A URL as written in the config. It may carry a token in its query or credentials: `Debug`
/// shows neither.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Address(pub String);

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Url::parse(&self.0.replace(CURSOR_PLACEHOLDER, "0")) {
            Ok(url) => {
                let hidden = if url.query().is_some() { "?<redacted>" } else { "" };
                write!(f, "{:?}", format!("{}{hidden}", endpoint(&url)))
            }
            Err(_) => f.write_str("\"<unparsable URL, redacted>\""),
        }
    }
}

/// Text that may hold a secret (a request body): `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, redacted>", self.0.len())
    }
}

/// `resume = { cursor = "/seq", url = "…?after={cursor}" }`: where a message's cursor is and how
/// to ask the provider to continue after one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeConfig {
    /// JSON pointer (RFC 6901) to each message's cursor, e.g. `"/seq"`. Messages must then be
    /// JSON (others are dead-lettered as `invalid_json`); a message without the field is
    /// forwarded without a cursor. Integer cursors must increase: repeats are dropped as
    /// duplicates and jumps are reported as gaps. Other cursors are de-duplicated by exact
    /// match against the last 4096.
    #[serde(default)]
    pub cursor: Option<String>,
    /// URL template used instead of `url` whenever a cursor is known, e.g.
    /// `"wss://feed.example/ws?after={cursor}"` (the cursor is percent-encoded).
    #[serde(default)]
    pub url: Option<Address>,
    /// Value used for `{cursor}` when no cursor is known yet (no message seen and nothing in the
    /// spool). Required when `subscribe` (or `body`) contains `{cursor}`.
    #[serde(default)]
    pub initial: Option<String>,
    /// Integer cursors are consecutive sequence numbers: a jump of more than one is counted
    /// and logged as a gap. Set to false for cursors that increase with holes (timestamps,
    /// offsets). Default true.
    #[serde(default = "default_true")]
    pub check_gaps: bool,
    /// What a cursor must be: `"integer"` (an integer, as a JSON number or a string of
    /// digits; ordered, gaps watched) or `"string"` (any text, opaque: no order, no gaps).
    /// Default: inferred from the first cursor (the spool's after a restart) and then
    /// enforced. A message whose cursor does not match is dead-lettered (`bad_cursor`),
    /// counted and logged, and does not move the cursor.
    #[serde(default)]
    pub cursor_type: Option<CursorType>,
}

/// `resume.cursor_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CursorType {
    /// An integer (JSON number or string of digits, fits in 128 bits).
    Integer,
    /// Any text, compared only for equality.
    String,
}

impl CursorType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CursorType::Integer => "integer",
            CursorType::String => "string",
        }
    }

    /// The type a first cursor implies.
    pub(crate) fn infer(cursor: &str) -> CursorType {
        if crate::cursor::parse_int(cursor).is_some() { CursorType::Integer } else { CursorType::String }
    }
}

fn default_true() -> bool {
    true
}

/// `heartbeat = { message = "…", interval = "…" }`: an application-level text message sent
/// on an interval, for providers that expect one instead of (or besides) protocol pings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The text sent.
    pub message: String,
    /// How often (humantime, e.g. `"20s"`).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

/// Parses a duration (`"30s"`, `"1m 30s"`, `"250ms"`): the one grammar of every sluice option.
pub(crate) use sluice_core::duration::parse as parse_duration;

/// Deserializes a duration string.
pub(crate) use sluice_core::duration::deserialize as duration;

/// Like [`duration`], for optional fields.
pub(crate) use sluice_core::duration::deserialize_opt as opt_duration;

pub(crate) fn config_error(component: &str, message: impl Into<String>) -> FlowError {
    FlowError::Config { component: component.to_owned(), message: message.into() }
}

/// Reconnect and rotation timing shared by all sources.
#[derive(Debug, Clone)]
pub(crate) struct Reconnect {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_connection_age: Option<Duration>,
    pub rotation_overlap: Duration,
}

impl Reconnect {
    pub(crate) fn check(&self, name: &str) -> Result<(), FlowError> {
        if self.backoff_initial.is_zero() {
            return Err(config_error(name, "`backoff_initial` must be greater than zero"));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(config_error(name, "`backoff_max` must be at least `backoff_initial`"));
        }
        if let Some(age) = self.max_connection_age
            && age < Duration::from_secs(1)
        {
            return Err(config_error(name, "`max_connection_age` must be at least 1s"));
        }
        Ok(())
    }
}

/// A string with `{cursor}` placeholders.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Template {
    text: String,
}

/// How a cursor is escaped when put into a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Percent-encoded (every byte but `A-Z a-z 0-9 - . _ ~`).
    Url,
    /// Escaped for the inside of a JSON string (`"`, `\`, control characters).
    Json,
    /// As is.
    Raw,
}

impl Template {
    pub(crate) fn new(text: &str) -> Template {
        Template { text: text.to_owned() }
    }

    pub(crate) fn has_cursor(&self) -> bool {
        self.text.contains(CURSOR_PLACEHOLDER)
    }

    pub(crate) fn fill(&self, cursor: &str, escape: Escape) -> String {
        if !self.has_cursor() {
            return self.text.clone();
        }
        let value = match escape {
            Escape::Url => percent_encode(cursor),
            Escape::Json => json_escape(cursor),
            Escape::Raw => cursor.to_owned(),
        };
        self.text.replace(CURSOR_PLACEHOLDER, &value)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_escape(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// The URL with its query, fragment and credentials removed: safe to log.
pub(crate) fn endpoint(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// Parses and checks a URL against the allowed schemes.
pub(crate) fn parse_url(name: &str, field: &str, text: &str, schemes: &[&str]) -> Result<Url, FlowError> {
    let url = Url::parse(text).map_err(|e| config_error(name, format!("`{field}`: invalid URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(config_error(
            name,
            format!("`{field}`: the scheme must be one of {schemes:?}, found {:?}", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(name, format!("`{field}`: the URL has no host")));
    }
    Ok(url)
}

/// One configured header, ready to send.
#[derive(Clone)]
pub(crate) struct HeaderTemplate {
    pub name: HeaderName,
    pub value: Template,
}

/// Checks header names and values now, so a connect never fails on them later.
pub(crate) fn parse_headers(name: &str, headers: &Headers) -> Result<Vec<HeaderTemplate>, FlowError> {
    let mut out = Vec::new();
    for (key, value) in &headers.0 {
        let header = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| config_error(name, format!("`headers`: {key:?} is not a valid header name")))?;
        if HeaderValue::from_str(&value.replace(CURSOR_PLACEHOLDER, "0")).is_err() {
            // The value itself is not shown: it may be a secret.
            return Err(config_error(name, format!("`headers`: the value of {key:?} is not a valid header value")));
        }
        out.push(HeaderTemplate { name: header, value: Template::new(value) });
    }
    Ok(out)
}

/// Resolves header templates for one connection: headers that need a cursor are left out when
/// none is known (or when the cursor cannot be a header value). Values are marked sensitive.
pub(crate) fn fill_headers(headers: &[HeaderTemplate], cursor: Option<&str>) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(headers.len());
    for h in headers {
        let text = if h.value.has_cursor() {
            match cursor {
                Some(c) => h.value.fill(c, Escape::Raw),
                None => continue,
            }
        } else {
            h.value.as_str().to_owned()
        };
        match HeaderValue::from_str(&text) {
            Ok(mut value) => {
                value.set_sensitive(true);
                out.push((h.name.clone(), value));
            }
            Err(_) => tracing::warn!(header = %h.name, "the cursor cannot be sent in this header; header left out"),
        }
    }
    out
}

/// How a source resumes: the cursor pointer, the URL template, and what fills `{cursor}`.
#[derive(Clone)]
pub(crate) struct ResumePlan {
    pub pointer: Option<Pointer>,
    pub url: Option<Template>,
    pub initial: Option<String>,
    pub check_gaps: bool,
    /// `None`: inferred from the first cursor.
    pub cursor_type: Option<CursorType>,
}

impl ResumePlan {
    pub(crate) fn from_config(
        name: &str,
        resume: Option<&ResumeConfig>,
        schemes: &[&str],
        templates_needing_cursor: &[&str],
    ) -> Result<ResumePlan, FlowError> {
        let Some(resume) = resume else {
            if templates_needing_cursor.iter().any(|t| t.contains(CURSOR_PLACEHOLDER)) {
                return Err(config_error(
                    name,
                    "`resume.initial` is needed: a message uses {cursor} (set it to the value to send before any cursor is known)",
                ));
            }
            return Ok(ResumePlan { pointer: None, url: None, initial: None, check_gaps: true, cursor_type: None });
        };
        let pointer = match &resume.cursor {
            Some(p) => Some(Pointer::parse(p).map_err(|e| config_error(name, format!("`resume.cursor`: {e}")))?),
            None => None,
        };
        let url = match &resume.url {
            Some(Address(text)) => {
                let template = Template::new(text);
                if !template.has_cursor() {
                    return Err(config_error(name, "`resume.url` must contain {cursor}"));
                }
                parse_url(name, "resume.url", &template.fill("0", Escape::Url), schemes)?;
                Some(template)
            }
            None => None,
        };
        if resume.initial.is_none() && templates_needing_cursor.iter().any(|t| t.contains(CURSOR_PLACEHOLDER)) {
            return Err(config_error(
                name,
                "`resume.initial` is needed: a message uses {cursor} (set it to the value to send before any cursor is known)",
            ));
        }
        Ok(ResumePlan {
            pointer,
            url,
            initial: resume.initial.clone(),
            check_gaps: resume.check_gaps,
            cursor_type: resume.cursor_type,
        })
    }

    /// The URL for a connection that resumes from `cursor` (`url` when none is known).
    pub(crate) fn connect_url(&self, base: &Url, cursor: Option<&str>) -> Result<Url, String> {
        match (&self.url, cursor) {
            (Some(template), Some(c)) => Url::parse(&template.fill(c, Escape::Url))
                .map_err(|e| format!("resume.url with the cursor filled in: {e}")),
            _ => Ok(base.clone()),
        }
    }

    /// What fills `{cursor}` in messages: the cursor or `initial`.
    pub(crate) fn message_cursor<'a>(&'a self, cursor: Option<&'a str>) -> &'a str {
        cursor.or(self.initial.as_deref()).unwrap_or("")
    }
}

pub(crate) fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}
pub(crate) fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
pub(crate) fn default_rotation_overlap() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_max_message_bytes() -> usize {
    1024 * 1024
}

/// The keys of [`CommonConfig`]: every other key of a source's table belongs to its kind.
pub const COMMON_FIELDS: &[&str] = &[
    "url",
    "headers",
    "idle_timeout",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
    "max_connection_age",
    "rotation_overlap",
    "resume",
    "max_message_bytes",
    "replicas",
    "dedup",
    "gaps",
    "alarm",
];

/// The options every source kind takes (`[sources.NAME]` minus `type` and the kind's own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonConfig {
    /// The feed's URL (`ws://`/`wss://` for `websocket`, `http://`/`https://` otherwise). It
    /// may hold a token: it is never logged with its query.
    pub url: Address,
    /// Extra HTTP headers for every (re)connect (e.g. `Authorization`). Values are secret:
    /// never logged. A value containing `{cursor}` is sent only when a cursor is known.
    #[serde(default)]
    pub headers: Headers,
    /// Reconnect when nothing arrives for this long (for `websocket`: no message; for `sse` and
    /// `http`: no bytes at all, keep-alive comments included). `"0s"` turns it off. Default `"60s"`.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Limit for connecting (TCP, TLS, the upgrade or response headers, `subscribe`).
    /// Default `"10s"`.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Reconnect delay. A connection that delivered at least one message and then dropped is
    /// reconnected after a random delay of at most this; consecutive *failed* attempts
    /// (refused, handshake failed, closed before any message) double the ceiling each time,
    /// up to `backoff_max` (full jitter). Default `"250ms"`.
    #[serde(default = "default_backoff_initial", deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// Largest reconnect delay after repeated failures. Default `"30s"`.
    #[serde(default = "default_backoff_max", deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Rotate connections older than this: the next connection is opened first, the two
    /// streams are aligned by position and the old one is closed at the hand-over point
    /// (make-before-break; only the overlap is dropped). At least `"1s"`. Default: none.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_connection_age: Option<Duration>,
    /// During a rotation, the longest the old connection stays in use after the new one is up
    /// (the hand-over normally comes as soon as the streams are aligned), and how long after
    /// it the two connections' copies are still reconciled. Default `"10s"`.
    #[serde(default = "default_rotation_overlap", deserialize_with = "duration")]
    pub rotation_overlap: Duration,
    /// Cursor extraction and resume: `{ cursor = "/seq", url = "…{cursor}", initial = "0" }`.
    #[serde(default)]
    pub resume: Option<ResumeConfig>,
    /// Larger messages are read and discarded as they stream (never buffered whole),
    /// dead-lettered (`oversized`, the first 64 KiB kept, the real size in `detail`), counted
    /// and logged; the connection goes on. When the cursor can be read from the kept
    /// beginning, the cursor moves past the message. Default 1048576 (1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Redundant connections to the same provider, each reconnecting and rotating on its own;
    /// their messages are merged and de-duplicated (`dedup` is then required). Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Drop events already seen: `{ key = ["/seq"], window = 100000 }`.
    #[serde(default)]
    pub dedup: Option<DedupConfig>,
    /// Watch an integer sequence for gaps: `{ field = "/seq", wait = "10s" }`.
    #[serde(default)]
    pub gaps: Option<GapsConfig>,
    /// Alarms: `{ silence = "30s", no_connection = "10s", command = ["notify", "…"] }`.
    #[serde(default)]
    pub alarm: Option<AlarmConfig>,
}

fn default_replicas() -> usize {
    1
}

/// `dedup = { key = …, window = … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// What identifies an event: a list of JSON pointers whose values together are the key
    /// (e.g. `["/seq"]` or `["/racer", "/ts"]`), or `"content"` (a hash of the whole frame).
    /// An event without any of the fields is forwarded and counted as unkeyed.
    pub key: DedupKeyConfig,
    /// How far back keys are remembered: a number of events (`100000`), a duration
    /// (`"10m"`), or both (`{ events = 100000, duration = "10m" }`: whichever is reached
    /// first). Memory is bounded by the event count, which defaults to 100000 and is at most
    /// 10000000. The window is rebuilt from the spool after a restart.
    #[serde(default)]
    pub window: WindowConfig,
}

/// `dedup.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKeyConfig {
    /// `"content"`.
    Content,
    /// JSON pointers.
    Fields(Vec<String>),
}

impl<'de> Deserialize<'de> for DedupKeyConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DedupKeyConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"content\" or a list of JSON pointers such as [\"/seq\"]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "content" {
                    Ok(DedupKeyConfig::Content)
                } else {
                    Err(E::custom(format!(
                        "expected \"content\" or a list of JSON pointers such as [\"/seq\"], found {v:?}"
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    out.push(p);
                }
                Ok(DedupKeyConfig::Fields(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `dedup.window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Most keys remembered.
    pub events: usize,
    /// Keys older than this are forgotten.
    pub duration: Option<Duration>,
}

/// Default and largest `dedup.window` event counts.
pub const DEFAULT_WINDOW_EVENTS: usize = 100_000;
pub const MAX_WINDOW_EVENTS: usize = 10_000_000;

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { events: DEFAULT_WINDOW_EVENTS, duration: None }
    }
}

impl<'de> Deserialize<'de> for WindowConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Both {
            #[serde(default)]
            events: Option<usize>,
            #[serde(default, deserialize_with = "opt_duration")]
            duration: Option<Duration>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WindowConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of events (100000), a duration (\"10m\") or { events = …, duration = … }")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let events = usize::try_from(v).map_err(|_| E::custom("the event count must be positive"))?;
                Ok(WindowConfig { events, duration: None })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let d = parse_duration(v).map_err(E::custom)?;
                Ok(WindowConfig { events: DEFAULT_WINDOW_EVENTS, duration: Some(d) })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let both = Both::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(WindowConfig { events: both.events.unwrap_or(DEFAULT_WINDOW_EVENTS), duration: both.duration })
            }
        }
        d.deserialize_any(V)
    }
}

/// `gaps = { field = "/seq", wait = "10s" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapsConfig {
    /// JSON pointer to an integer that increases by one per event. Default: the resume cursor,
    /// when it is an integer.
    #[serde(default)]
    pub field: Option<String>,
    /// How long a missing value may still arrive (from another replica) before the gap is
    /// counted. Default: `"0s"` with one connection, `"10s"` with `replicas` > 1.
    #[serde(default, deserialize_with = "opt_duration")]
    pub wait: Option<Duration>,
}

/// `alarm = { silence = "30s", no_connection = "10s", command = [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Raise `silence` when no event was forwarded for this long.
    #[serde(default, deserialize_with = "opt_duration")]
    pub silence: Option<Duration>,
    /// Raise `no_connection` when no connection was live for this long.
    #[serde(default, deserialize_with = "opt_duration")]
    pub no_connection: Option<Duration>,
    /// Run on every raise and clear: argv (no shell), with `SLUICE_SOURCE`, `SLUICE_ALARM`
    /// (`silence` | `no_connection`), `SLUICE_ALARM_STATE` (`raised` | `cleared`) and
    /// `SLUICE_ALARM_DETAIL` in its environment.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

/// Integer-sequence gap detection, checked.
#[derive(Debug, Clone)]
pub(crate) struct GapPlan {
    /// Where the integer is (`None`: the cursor).
    pub pointer: Option<Pointer>,
    /// Whether gaps are watched at all.
    pub enabled: bool,
    /// How long a missing value may still arrive.
    pub wait: Duration,
}

/// Alarms, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlarmPlan {
    pub silence: Option<Duration>,
    pub no_connection: Option<Duration>,
    pub command: Option<Vec<String>>,
}

/// The timing and message rules every source shares, checked.
pub(crate) struct Settings {
    pub reconnect: Reconnect,
    pub resume: ResumePlan,
    pub max_message_bytes: usize,
    pub replicas: usize,
    pub dedup: Option<DedupPlan>,
    pub gaps: GapPlan,
    pub alarm: AlarmPlan,
}

/// The common options, checked, with what a transport needs from them.
pub(crate) struct Common {
    pub url: Url,
    pub endpoint: String,
    pub headers: Vec<HeaderTemplate>,
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub settings: Settings,
}

/// Most replicas of one source.
const MAX_REPLICAS: usize = 16;

impl CommonConfig {
    /// Checks everything; `schemes` are the kind's URL schemes and `templates` the kind's
    /// messages that may use `{cursor}` (subscribe messages, a request body).
    pub(crate) fn check(self, name: &str, schemes: &[&str], templates: &[&str]) -> Result<Common, FlowError> {
        let url = parse_url(name, "url", &self.url.0, schemes)?;
        check_positive(name, "connect_timeout", self.connect_timeout)?;
        let headers = parse_headers(name, &self.headers)?;
        let resume = ResumePlan::from_config(name, self.resume.as_ref(), schemes, templates)?;
        let reconnect = Reconnect {
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_connection_age: self.max_connection_age,
            rotation_overlap: self.rotation_overlap,
        };
        reconnect.check(name)?;
        if self.max_message_bytes == 0 {
            return Err(config_error(name, "`max_message_bytes` must be greater than zero"));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(config_error(name, format!("`replicas` must be between 1 and {MAX_REPLICAS}")));
        }
        let dedup = match self.dedup {
            Some(d) => Some(DedupPlan::check(name, d)?),
            None if self.replicas > 1 => {
                return Err(config_error(
                    name,
                    "`replicas` > 1 needs `dedup` (e.g. dedup = { key = [\"/seq\"] } or { key = \"content\" }): \
                     every replica delivers the same events, and only de-duplication merges them",
                ));
            }
            None => None,
        };
        let gaps_cfg = self.gaps.unwrap_or_default();
        let gap_pointer = match &gaps_cfg.field {
            Some(p) => Some(Pointer::parse(p).map_err(|e| config_error(name, format!("`gaps.field`: {e}")))?),
            None => None,
        };
        let gaps = GapPlan {
            enabled: gap_pointer.is_some() || resume.check_gaps,
            pointer: gap_pointer,
            wait: gaps_cfg.wait.unwrap_or(if self.replicas > 1 { Duration::from_secs(10) } else { Duration::ZERO }),
        };
        let alarm_cfg = self.alarm.unwrap_or_default();
        if let Some(cmd) = &alarm_cfg.command {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err(config_error(name, "`alarm.command` must name a program: [\"program\", \"arg\", …]"));
            }
            if alarm_cfg.silence.is_none() && alarm_cfg.no_connection.is_none() {
                return Err(config_error(name, "`alarm.command` needs `alarm.silence` or `alarm.no_connection`"));
            }
        }
        for (field, d) in [("alarm.silence", alarm_cfg.silence), ("alarm.no_connection", alarm_cfg.no_connection)] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(config_error(name, format!("`{field}` must be greater than zero")));
            }
        }
        let alarm = AlarmPlan {
            silence: alarm_cfg.silence,
            no_connection: alarm_cfg.no_connection,
            command: alarm_cfg.command,
        };
        Ok(Common {
            endpoint: endpoint(&url),
            url,
            headers,
            idle_timeout: nonzero(self.idle_timeout),
            connect_timeout: self.connect_timeout,
            settings: Settings {
                reconnect,
                resume,
                max_message_bytes: self.max_message_bytes,
                replicas: self.replicas,
                dedup,
                gaps,
                alarm,
            },
        })
    }
}

/// Rejects a zero duration where zero cannot work.
pub(crate) fn check_positive(name: &str, field: &str, value: Duration) -> Result<(), FlowError> {
    if value.is_zero() {
        return Err(config_error(name, format!("`{field}` must be greater than zero")));
    }
    Ok(())
}

/// A duration of zero means "off".
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_escape_the_cursor() {
        let t = Template::new("ws://h/x?after={cursor}&a=1");
        assert_eq!(t.fill("a b/c", Escape::Url), "ws://h/x?after=a%20b%2Fc&a=1");
        let m = Template::new(r#"{"op":"sub","from":"{cursor}"}"#);
        assert_eq!(m.fill(r#"x"y\"#, Escape::Json), r#"{"op":"sub","from":"x\"y\\"}"#);
        assert_eq!(Template::new("plain").fill("1", Escape::Json), "plain");
    }

    #[test]
    fn headers_are_redacted_in_debug() {
        let mut map = BTreeMap::new();
        map.insert("Authorization".to_owned(), "Bearer hunter2".to_owned());
        let shown = format!("{:?}", Headers(map));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Authorization"));
        let shown = format!("{:?}", Messages(vec!["{\"key\":\"hunter2\"}".into()]));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn addresses_and_bodies_are_redacted_in_debug() {
        let shown = format!("{:?}", Address("wss://u:pw@h:1/p?token=hunter2&after={cursor}".into()));
        assert_eq!(shown, "\"wss://h:1/p?<redacted>\"");
        assert_eq!(format!("{:?}", Address("wss://h/p".into())), "\"wss://h/p\"");
        assert_eq!(format!("{:?}", Redacted("{\"key\":\"hunter2\"}".into())), "<17 bytes, redacted>");
    }

    #[test]
    fn endpoint_drops_query_and_credentials() {
        let url = Url::parse("wss://user:pw@feed.example:8443/v1/ws?token=secret#x").unwrap();
        assert_eq!(endpoint(&url), "wss://feed.example:8443/v1/ws");
    }

    #[test]
    fn header_templates_need_a_cursor() {
        let mut map = BTreeMap::new();
        map.insert("X-After".to_owned(), "{cursor}".to_owned());
        map.insert("X-Key".to_owned(), "k".to_owned());
        let parsed = parse_headers("s", &Headers(map)).unwrap();
        let none = fill_headers(&parsed, None);
        assert_eq!(none.len(), 1);
        let some = fill_headers(&parsed, Some("42"));
        assert_eq!(some.len(), 2);
        assert!(some.iter().all(|(_, v)| v.is_sensitive()));
        let bad = fill_headers(&parsed, Some("a\nb"));
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn resume_requires_initial_when_messages_use_the_cursor() {
        let r =
            ResumeConfig { cursor: Some("/seq".into()), url: None, initial: None, check_gaps: true, cursor_type: None };
        assert!(ResumePlan::from_config("s", Some(&r), &["ws"], &["{\"from\":{cursor}}"]).is_err());
        assert!(ResumePlan::from_config("s", None, &["ws"], &["{\"from\":{cursor}}"]).is_err());
        assert!(ResumePlan::from_config("s", Some(&r), &["ws"], &["plain"]).is_ok());
        let bad_url = ResumeConfig { url: Some(Address("ws://h/x".into())), ..r.clone() };
        assert!(ResumePlan::from_config("s", Some(&bad_url), &["ws"], &[]).is_err());
        let bad_ptr = ResumeConfig { cursor: Some("seq".into()), ..r };
        assert!(ResumePlan::from_config("s", Some(&bad_ptr), &["ws"], &[]).is_err());
    }
}
