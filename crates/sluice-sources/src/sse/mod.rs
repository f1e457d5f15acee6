//! `type = "sse"`: a Server-Sent Events stream (`text/event-stream`); each event's `data`
//! becomes an event.
//!
//! Per connection: a GET with `Accept: text/event-stream` and, when a cursor is known,
//! `Last-Event-ID`. The SSE `id:` of an event is its cursor unless `resume.cursor` points into
//! the data. A `retry:` field raises the next reconnect delay (up to `backoff_max`). Any bytes
//! (events or `:` keep-alive comments) count as activity for `idle_timeout`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use sluice_flow::{FlowError, Source};
use tokio::time::Instant;
use url::Url;

use crate::config::{self, CommonConfig, HeaderTemplate, ResumePlan};
use crate::supervisor::{Cause, ConnRequest, Link, Sent, SupervisedSource, Transport};
use parser::{Item, Parser};

mod parser;

/// The `sse` options of `[sources.NAME]` (besides the [`CommonConfig`] ones). Without
/// `resume.cursor`, the SSE `id:` is the cursor; the cursor is always sent back as
/// `Last-Event-ID`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// Forward only events of these types (`event:` field; events without one are
    /// `"message"`). Default: all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

const SCHEMES: &[&str] = &["http", "https"];

/// Checks the options and returns the source.
pub fn build(name: &str, common: CommonConfig, config: SseConfig) -> Result<Box<dyn Source>, FlowError> {
    let common = common.check(name, SCHEMES, &[])?;
    let client = crate::http::client(name, common.connect_timeout)?;
    let transport = SseTransport {
        client,
        endpoint: common.endpoint,
        url: common.url,
        headers: common.headers,
        resume: common.settings.resume.clone(),
        event_types: config.event_types,
        idle_timeout: common.idle_timeout,
        connect_timeout: common.connect_timeout,
        max_message_bytes: common.settings.max_message_bytes,
    };
    Ok(Box::new(SupervisedSource { transport: Arc::new(transport), settings: common.settings }))
}

struct SseTransport {
    client: reqwest::Client,
    url: Url,
    endpoint: String,
    headers: Vec<HeaderTemplate>,
    resume: ResumePlan,
    event_types: Vec<String>,
    idle_timeout: Option<Duration>,
    connect_timeout: Duration,
    /// Events with more data are skipped as they stream and reported as oversized.
    max_message_bytes: usize,
}

impl Transport for SseTransport {
    fn kind(&self) -> &'static str {
        "sse"
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

impl SseTransport {
    async fn open(&self, cursor: Option<&str>, link: &Link) -> Result<Option<reqwest::Response>, String> {
        let url = self.resume.connect_url(&self.url, cursor)?;
        let mut request = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "text/event-stream")
            .header(http::header::CACHE_CONTROL, "no-cache");
        if let Some(c) = cursor {
            match http::HeaderValue::from_str(c) {
                Ok(value) => request = request.header("last-event-id", value),
                Err(_) => tracing::warn!(endpoint = %self.endpoint, "the cursor cannot be sent as Last-Event-ID"),
            }
        }
        for (name, value) in config::fill_headers(&self.headers, cursor) {
            request = request.header(name, value);
        }
        let response = tokio::select! {
            biased;
            _ = link.cancelled() => return Ok(None),
            r = tokio::time::timeout(self.connect_timeout, request.send()) => match r {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(crate::http::describe(e)),
                Err(_) => return Err(format!("no response within connect_timeout ({:?})", self.connect_timeout)),
            },
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let content_type =
            response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream") {
            return Err(format!("HTTP {status} with Content-Type {content_type:?}, not text/event-stream"));
        }
        if !link.up(format!("HTTP {status}")).await {
            return Ok(None);
        }
        Ok(Some(response))
    }

    async fn read(&self, response: reqwest::Response, link: &Link) -> Option<(Cause, String)> {
        let mut body = response.bytes_stream();
        let mut parser = Parser::new(self.max_message_bytes);
        let mut items = Vec::new();
        let mut last_activity = Instant::now();
        let far = last_activity + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        // Created once: registering a fresh waiter per message would cost a lock each time.
        let cancelled = link.cancelled();
        tokio::pin!(cancelled);
        loop {
            let deadline = self.idle_timeout.map(|t| last_activity + t).unwrap_or(far);
            // Deadlines mostly move later (every chunk pushes idle_timeout out): the timer is
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
                        parser.push(&chunk, &mut items);
                        None
                    }
                    Some(Err(e)) => Some((Cause::Error, crate::http::describe(e))),
                    None => Some((Cause::Closed, "the server ended the stream".to_owned())),
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
            for item in items.drain(..) {
                match self.forward(item, link).await {
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

    fn wanted(&self, event: Option<&str>) -> bool {
        let kind = event.unwrap_or("message");
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == kind)
    }

    async fn forward(&self, item: Item, link: &Link) -> Sent {
        match item {
            Item::Retry(ms) => {
                link.retry_hint(Duration::from_millis(ms)).await;
                Sent::Immediately
            }
            // Only an explicit, non-empty id on this event is its cursor (an empty `id:` resets
            // the last event id; an id with NUL is ignored, as the SSE spec says).
            Item::Event { data, id, event } if self.wanted(event.as_deref()) => link.data(data, id).await,
            Item::Oversized { size, prefix, id, event } if self.wanted(event.as_deref()) => {
                link.oversized(size, prefix, id).await
            }
            Item::Event { .. } | Item::Oversized { .. } => Sent::Immediately,
        }
    }
}
