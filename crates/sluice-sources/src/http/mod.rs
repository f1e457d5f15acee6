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
use sluice_flow::{FlowError, Source};
use tokio::time::Instant;
use url::Url;

use crate::config::{self, CommonConfig, Escape, HeaderTemplate, Redacted, ResumePlan, Template};
use crate::supervisor::{Cause, ConnRequest, Link, Sent, SupervisedSource, Transport};
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

/// The `http` options of `[sources.NAME]` (besides the [`CommonConfig`] ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `"GET"` (default) or `"POST"`.
    #[serde(default)]
    pub method: Method,
    /// Request body (for POST), sent on every (re)connect. `{cursor}` is replaced by the cursor
    /// to resume after (JSON-string escaped), or `resume.initial` when none is known yet.
    #[serde(default)]
    pub body: Option<Redacted>,
}

const SCHEMES: &[&str] = &["http", "https"];

/// Checks the options and returns the source.
pub fn build(name: &str, common: CommonConfig, config: HttpConfig) -> Result<Box<dyn Source>, FlowError> {
    let bodies: Vec<&str> = config.body.iter().map(|b| b.0.as_str()).collect();
    let common = common.check(name, SCHEMES, &bodies)?;
    if config.body.is_some() && config.method == Method::Get {
        return Err(config::config_error(name, "`body` needs method = \"POST\""));
    }
    let transport = HttpTransport {
        client: client(name, common.connect_timeout)?,
        endpoint: common.endpoint,
        url: common.url,
        method: config.method,
        body: config.body.as_ref().map(|b| Template::new(&b.0)),
        headers: common.headers,
        resume: common.settings.resume.clone(),
        idle_timeout: common.idle_timeout,
        connect_timeout: common.connect_timeout,
        max_message_bytes: common.settings.max_message_bytes,
    };
    Ok(Box::new(SupervisedSource { transport: Arc::new(transport), settings: common.settings }))
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
    /// Longer lines are skipped as they stream and reported as oversized.
    max_message_bytes: usize,
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
        let mut splitter = LineSplitter::new(self.max_message_bytes);
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
                    Line::Oversized { size, prefix } => link.oversized(size as u64, prefix, None).await,
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
