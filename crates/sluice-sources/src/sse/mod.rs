//! `type = "sse"`: a Server-Sent Events stream (`text/event-stream`); each event's `data`
//! becomes an event.
//!
//! Per connection: a GET with `Accept: text/event-stream` and, when a cursor is known,
//! `Last-Event-ID`. The SSE `id:` of an event is its cursor unless `resume.cursor` points into
//! the data. A `retry:` field raises the next reconnect delay (up to `backoff_max`). Any bytes
//! (events or `:` keep-alive comments) count as activity for `idle_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use sluice_flow::{FlowError, Source};
use tokio::time::Instant;
use url::Url;

use crate::config::{self, CommonConfig, HeaderTemplate, ResumePlan};
use crate::supervisor::{Cause, ConnRequest, Link, Sent, SupervisedSource, Transport};

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
        read_limit: common.read_limit,
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
    read_limit: usize,
}

/// Why the body stream stopped, as seen by the byte counter in front of the SSE parser.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("{0}")]
    Http(reqwest::Error),
    #[error("an event grew past {0} bytes")]
    TooLarge(usize),
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
        let start = Instant::now();
        // Shared with the byte counter in front of the parser: when bytes last arrived (µs
        // since `start`) and how many arrived since the last event.
        let activity = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let limit = self.read_limit;
        let bytes = {
            let activity = activity.clone();
            let pending = pending.clone();
            response.bytes_stream().map_err(BodyError::Http).and_then(move |chunk: Bytes| {
                activity.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                let total = pending.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
                std::future::ready(if total > limit { Err(BodyError::TooLarge(limit)) } else { Ok(chunk) })
            })
        };
        let mut events = sse_stream::SseByteStream::new(Box::pin(bytes));
        let far = start + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        // Created once: registering a fresh waiter per message would cost a lock each time.
        let cancelled = link.cancelled();
        tokio::pin!(cancelled);
        loop {
            let last_activity = start + Duration::from_micros(activity.load(Ordering::Relaxed));
            let deadline = self.idle_timeout.map(|t| last_activity + t).unwrap_or(far);
            // Deadlines mostly move later (every message pushes idle_timeout out): the timer is
            // only moved earlier, or re-armed after it fired, and conditions are checked when
            // it fires.
            if timer.is_elapsed() || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                () = &mut cancelled => return None,
                next = events.next() => match next {
                    None => return Some((Cause::Closed, "the server ended the stream".into())),
                    Some(Err(sse_stream::Error::Body(e))) => {
                        return Some(match e.downcast_ref::<BodyError>() {
                            Some(BodyError::TooLarge(_)) => (Cause::TooLarge, e.to_string()),
                            _ => (Cause::Error, e.to_string()),
                        });
                    }
                    Some(Err(e)) => return Some((Cause::Error, format!("invalid event stream: {e}"))),
                    Some(Ok(event)) => {
                        pending.store(0, Ordering::Relaxed);
                        match self.forward(event, link).await {
                            Sent::Stop => return None,
                            Sent::AfterWaiting => activity.store(start.elapsed().as_micros() as u64, Ordering::Relaxed),
                            Sent::Immediately => {}
                        }
                    }
                },
                () = &mut timer => {
                    let now = Instant::now();
                    let last_activity = start + Duration::from_micros(activity.load(Ordering::Relaxed));
                    if let Some(t) = self.idle_timeout
                        && now >= last_activity + t
                    {
                        return Some((Cause::IdleTimeout, format!("nothing received for {t:?}")));
                    }
                }
            }
        }
    }

    async fn forward(&self, event: sse_stream::Sse, link: &Link) -> Sent {
        if let Some(retry) = event.retry {
            link.retry_hint(Duration::from_millis(retry)).await;
        }
        let Some(data) = event.data else {
            return Sent::Immediately;
        };
        if !self.event_types.is_empty() {
            let kind = event.event.as_deref().filter(|e| !e.is_empty()).unwrap_or("message");
            if !self.event_types.iter().any(|t| t == kind) {
                return Sent::Immediately;
            }
        }
        // Only an explicit, non-empty id on this event is its cursor (an empty `id:` resets the
        // last event id; an id with NUL is ignored, as the SSE spec says).
        let id = event.id.filter(|id| !id.is_empty() && !id.contains('\0'));
        link.data(Bytes::from(data), id).await
    }
}
