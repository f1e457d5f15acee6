//! Option types shared by the sources (headers, resume, heartbeat, durations) and the checks
//! that turn a user's table into what a running source needs.
//!
//! Every source config is its own struct with `deny_unknown_fields` (serde cannot combine that
//! with `flatten`), so the shared fields are repeated there and gathered here by
//! `Reconnect` and `ResumePlan`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use sluice_flow::FlowError;
use url::Url;

use crate::cursor::Pointer;

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

/// Deserializes a humantime string (`"30s"`, `"1m 30s"`, `"250ms"`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration {text:?} ({e}); write e.g. \"30s\" or \"250ms\""))
    })
}

/// Like [`duration`], for optional fields.
pub(crate) fn opt_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

pub(crate) fn config_error(component: &str, message: impl Into<String>) -> FlowError {
    FlowError::Config { component: component.to_owned(), message: message.into() }
}

/// Reconnect and rotation timing shared by all sources.
#[derive(Debug, Clone)]
pub(crate) struct Reconnect {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_reset_after: Duration,
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
            return Ok(ResumePlan { pointer: None, url: None, initial: None, check_gaps: true });
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
        Ok(ResumePlan { pointer, url, initial: resume.initial.clone(), check_gaps: resume.check_gaps })
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
pub(crate) fn default_backoff_reset_after() -> Duration {
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

/// The largest message read off the wire at all: messages above `max_message_bytes` but below
/// this are dead-lettered whole; a bigger one breaks the connection (it cannot be buffered).
pub(crate) fn hard_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(4).max(16 * 1024 * 1024)
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
        let r = ResumeConfig { cursor: Some("/seq".into()), url: None, initial: None, check_gaps: true };
        assert!(ResumePlan::from_config("s", Some(&r), &["ws"], &["{\"from\":{cursor}}"]).is_err());
        assert!(ResumePlan::from_config("s", None, &["ws"], &["{\"from\":{cursor}}"]).is_err());
        assert!(ResumePlan::from_config("s", Some(&r), &["ws"], &["plain"]).is_ok());
        let bad_url = ResumeConfig { url: Some(Address("ws://h/x".into())), ..r.clone() };
        assert!(ResumePlan::from_config("s", Some(&bad_url), &["ws"], &[]).is_err());
        let bad_ptr = ResumeConfig { cursor: Some("seq".into()), ..r };
        assert!(ResumePlan::from_config("s", Some(&bad_ptr), &["ws"], &[]).is_err());
    }
}
