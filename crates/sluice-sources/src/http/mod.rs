//! `type = "http"`: a streaming HTTP response of newline-delimited messages (NDJSON, JSON
//! lines); each non-empty line becomes an event (without its `\n` or `\r\n`).
//!
//! Per connection: one request (GET, or POST with `body`), then the body is read as it
//! arrives. Any bytes count as activity for `idle_timeout`. The end of the body is a normal
//! close (the supervisor reconnects, resuming via `resume.url`, headers or `body`).

mod lines;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use sluice_flow::{FlowError, Source, SourceContext};
use tokio::time::Instant;
use url::Url;

use crate::config::{
    self, Address, Escape, HeaderTemplate, Headers, Reconnect, Redacted, ResumeConfig, ResumePlan, Template,
};
use crate::supervisor::{self, Cause, ConnRequest, Link, Sent, Settings, Transport};
use lines::{Line, LineSplitter};

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET` (the default).
    #[default]
    Get,
    /// `POST`, with `body`.
    Post,
}

/// `[sources.NAME]` with `type = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `http://` or `https://` URL of the stream.
    pub url: Address,
    /// `"GET"` (default) or `"POST"`.
    #[serde(default)]
    pub method: Method,
    /// Request body (for POST), sent on every (re)connect. `{cursor}` is replaced by the cursor
    /// to resume after (JSON-string escaped), or `resume.initial` when none is known yet.
    #[serde(default)]
    pub body: Option<Redacted>,
    /// Extra HTTP request headers (e.g. `Authorization`). Values are secret: never logged. A
    /// value containing `{cursor}` is sent only when a cursor is known.
    #[serde(default)]
    pub headers: Headers,
    /// Reconnect when no bytes arrive for this long. `"0s"` turns it off. Default `"60s"`.
    #[serde(default = "config::default_idle_timeout", deserialize_with = "config::duration")]
    pub idle_timeout: Duration,
    /// Limit for connecting and receiving the response headers. Default `"10s"`.
    #[serde(default = "config::default_connect_timeout", deserialize_with = "config::duration")]
    pub connect_timeout: Duration,
    /// First reconnect delay ceiling; each failed attempt doubles it (full jitter). Default `"250ms"`.
    #[serde(default = "config::default_backoff_initial", deserialize_with = "config::duration")]
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Default `"30s"`.
    #[serde(default = "config::default_backoff_max", deserialize_with = "config::duration")]
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff. Default `"30s"`.
    #[serde(default = "config::default_backoff_reset_after", deserialize_with = "config::duration")]
    pub backoff_reset_after: Duration,
    /// Rotate connections older than this: the next connection is opened first, and the old
    /// one is closed as soon as the two streams meet (make-before-break; the overlap is
    /// de-duplicated by cursor, or by payload without one). At least `"1s"`. Default: none.
    #[serde(default, deserialize_with = "config::opt_duration")]
    pub max_connection_age: Option<Duration>,
    /// During a rotation, the longest the old connection stays in use after the new one is up
    /// (the switch normally comes as soon as the two streams meet), and how long after the
    /// switch the two connections' messages are still compared. Default `"10s"`.
    #[serde(default = "config::default_rotation_overlap", deserialize_with = "config::duration")]
    pub rotation_overlap: Duration,
    /// Cursor and resume: `{ cursor = "/seq", url = "…{cursor}", initial = "0" }`.
    #[serde(default)]
    pub resume: Option<ResumeConfig>,
    /// Longer lines are dead-lettered (`too_large`) and counted; the stream goes on. Default
    /// 1048576 (1 MiB).
    #[serde(default = "config::default_max_message_bytes")]
    pub max_message_bytes: usize,
}

const SCHEMES: &[&str] = &["http", "https"];

/// Checks `config` and returns the source.
pub fn build(name: &str, config: HttpConfig) -> Result<Box<dyn Source>, FlowError> {
    let url = config::parse_url(name, "url", &config.url.0, SCHEMES)?;
    config::check_positive(name, "connect_timeout", config.connect_timeout)?;
    let headers = config::parse_headers(name, &config.headers)?;
    let bodies: Vec<&str> = config.body.iter().map(|b| b.0.as_str()).collect();
    let resume = ResumePlan::from_config(name, config.resume.as_ref(), SCHEMES, &bodies)?;
    if config.body.is_some() && config.method == Method::Get {
        return Err(config::config_error(name, "`body` needs method = \"POST\""));
    }
    let reconnect = Reconnect {
        backoff_initial: config.backoff_initial,
        backoff_max: config.backoff_max,
        backoff_reset_after: config.backoff_reset_after,
        max_connection_age: config.max_connection_age,
        rotation_overlap: config.rotation_overlap,
    };
    reconnect.check(name)?;
    if config.max_message_bytes == 0 {
        return Err(config::config_error(name, "`max_message_bytes` must be greater than zero"));
    }
    let transport = HttpTransport {
        client: client(name, config.connect_timeout)?,
        endpoint: config::endpoint(&url),
        url,
        method: config.method,
        body: config.body.as_ref().map(|b| Template::new(&b.0)),
        headers,
        resume: resume.clone(),
        idle_timeout: config::nonzero(config.idle_timeout),
        connect_timeout: config.connect_timeout,
        read_limit: config::hard_limit(config.max_message_bytes),
    };
    Ok(Box::new(HttpSource {
        transport: Arc::new(transport),
        settings: Some(Settings { reconnect, resume, max_message_bytes: config.max_message_bytes }),
    }))
}

/// The HTTP client of one source (TLS with the platform's roots). Every (re)connect opens a
/// fresh HTTP/1.1 connection: a pooled one may be the half-dead connection just given up on,
/// and a rotation must not share the old connection's socket.
pub(crate) fn client(name: &str, connect_timeout: Duration) -> Result<reqwest::Client, FlowError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(0)
        .http1_only()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| FlowError::Fatal {
            component: name.to_owned(),
            message: format!("cannot set up the HTTP client: {e}"),
        })
}

/// A request error without its URL (the query may hold a token).
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct HttpSource {
    transport: Arc<HttpTransport>,
    settings: Option<Settings>,
}

impl Source for HttpSource {
    fn run(mut self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), FlowError>> {
        let settings = self.settings.take();
        let transport = self.transport.clone();
        Box::pin(async move {
            let Some(settings) = settings else {
                return Err(FlowError::Fatal { component: ctx.name, message: "source already ran".into() });
            };
            supervisor::run(transport, settings, ctx).await
        })
    }
}

struct HttpTransport {
    client: reqwest::Client,
    url: Url,
    endpoint: String,
    method: Method,
    body: Option<Template>,
    headers: Vec<HeaderTemplate>,
    resume: ResumePlan,
    idle_timeout: Option<Duration>,
    connect_timeout: Duration,
    read_limit: usize,
}

impl Transport for HttpTransport {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn run_connection(self: Arc<Self>, req: ConnRequest) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let ConnRequest { cursor, link } = req;
            let response = match self.open(cursor.as_deref(), &link).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(detail) => return link.ended(Cause::HandshakeFailed, detail).await,
            };
            if let Some((cause, detail)) = self.read(response, &link).await {
                link.ended(cause, detail).await;
            }
        })
    }
}

impl HttpTransport {
    async fn open(&self, cursor: Option<&str>, link: &Link) -> Result<Option<reqwest::Response>, String> {
        let url = self.resume.connect_url(&self.url, cursor)?;
        let mut request = match self.method {
            Method::Get => self.client.get(url),
            Method::Post => self.client.post(url),
        };
        for (name, value) in config::fill_headers(&self.headers, cursor) {
            request = request.header(name, value);
        }
        if let Some(body) = &self.body {
            request = request.body(body.fill(self.resume.message_cursor(cursor), Escape::Json));
        }
        let response = tokio::select! {
            biased;
            _ = link.cancelled() => return Ok(None),
            r = tokio::time::timeout(self.connect_timeout, request.send()) => match r {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(describe(e)),
                Err(_) => return Err(format!("no response within connect_timeout ({:?})", self.connect_timeout)),
            },
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        if !link.up(format!("HTTP {status}")).await {
            return Ok(None);
        }
        Ok(Some(response))
    }

    async fn read(&self, response: reqwest::Response, link: &Link) -> Option<(Cause, String)> {
        let mut body = response.bytes_stream();
        let mut splitter = LineSplitter::new(self.read_limit);
        let mut lines = Vec::new();
        let mut last_activity = Instant::now();
        let far = last_activity + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        // Created once: registering a fresh waiter per message would cost a lock each time.
        let cancelled = link.cancelled();
        tokio::pin!(cancelled);
        loop {
            let deadline = self.idle_timeout.map(|t| last_activity + t).unwrap_or(far);
            // Deadlines mostly move later (every message pushes idle_timeout out): the timer is
            // only moved earlier, or re-armed after it fired, and conditions are checked when
            // it fires.
            if timer.is_elapsed() || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            let end = tokio::select! {
                biased;
                () = &mut cancelled => return None,
                chunk = body.next() => match chunk {
                    Some(Ok(chunk)) => {
                        last_activity = Instant::now();
                        splitter.push(chunk, &mut lines);
                        None
                    }
                    Some(Err(e)) => Some((Cause::Error, describe(e))),
                    None => {
                        splitter.finish(&mut lines);
                        Some((Cause::Closed, "the server ended the response".to_owned()))
                    }
                },
                () = &mut timer => {
                    match self.idle_timeout {
                        Some(t) if Instant::now() >= last_activity + t => {
                            return Some((Cause::IdleTimeout, format!("nothing received for {t:?}")));
                        }
                        _ => None,
                    }
                }
            };
            for line in lines.drain(..) {
                let sent = match line {
                    Line::Data(payload) => link.data(payload, None).await,
                    Line::Oversized { size, prefix } => link.oversized(size, prefix).await,
                };
                match sent {
                    Sent::Stop => return None,
                    Sent::AfterWaiting => last_activity = Instant::now(),
                    Sent::Immediately => {}
                }
            }
            if end.is_some() {
                return end;
            }
        }
    }
}
