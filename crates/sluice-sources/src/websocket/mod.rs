//! `type = "websocket"`: a WebSocket feed (text and binary frames become events as they are).
//!
//! Per connection: connect (with `headers`, permessage-deflate offered), send the `subscribe`
//! messages with `{cursor}` filled in, then read. Liveness: a protocol ping every
//! `ping_interval`, and the connection is dropped when nothing at all arrives within
//! `pong_timeout` after it (a half-dead TCP connection shows up this way), or when no message
//! arrives for `idle_timeout`. An optional application `heartbeat` message is sent on its own
//! interval. Everything else (reconnects, rotation, cursors) is the supervisor's.

pub(crate) mod client;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use sluice_flow::{FlowError, Source};
use tokio::time::Instant;
use url::Url;

use crate::config::{self, CommonConfig, Escape, HeaderTemplate, HeartbeatConfig, Messages, ResumePlan, Template};
use crate::supervisor::{Cause, ConnRequest, Link, Sent, SupervisedSource, Transport};
use client::{ReqwestConnector, WsConnection, WsConnector, WsIncoming, WsOutgoing, WsTarget};

/// The `websocket` options of `[sources.NAME]` (besides the [`CommonConfig`] ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Text messages sent after every (re)connect, in order, e.g. a subscription request.
    /// `{cursor}` is replaced by the cursor to resume after (JSON-string escaped), or by
    /// `resume.initial` when none is known yet.
    #[serde(default)]
    pub subscribe: Messages,
    /// Offer permessage-deflate compression (RFC 7692). Default true.
    #[serde(default = "default_true")]
    pub compression: bool,
    /// How often to send a WebSocket ping. `"0s"` turns pings off. Default `"15s"`.
    #[serde(default = "default_ping_interval", deserialize_with = "config::duration")]
    pub ping_interval: Duration,
    /// Reconnect when nothing (no pong, no message) arrives this long after a ping. Default `"10s"`.
    #[serde(default = "default_pong_timeout", deserialize_with = "config::duration")]
    pub pong_timeout: Duration,
    /// An application-level message sent on an interval: `{ message = "…", interval = "…" }`.
    #[serde(default)]
    pub heartbeat: Option<HeartbeatConfig>,
}

fn default_true() -> bool {
    true
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_pong_timeout() -> Duration {
    Duration::from_secs(10)
}

const SCHEMES: &[&str] = &["ws", "wss"];

/// Checks the options and returns the source.
pub fn build(name: &str, common: CommonConfig, config: WebSocketConfig) -> Result<Box<dyn Source>, FlowError> {
    let client = crate::http::client(name, common.connect_timeout)?;
    build_with(name, common, config, Arc::new(ReqwestConnector { client }))
}

pub(crate) fn build_with(
    name: &str,
    common: CommonConfig,
    config: WebSocketConfig,
    client: Arc<dyn WsConnector>,
) -> Result<Box<dyn Source>, FlowError> {
    let subscribe: Vec<&str> = config.subscribe.0.iter().map(String::as_str).collect();
    let common = common.check(name, SCHEMES, &subscribe)?;
    let ping_interval = config::nonzero(config.ping_interval);
    if ping_interval.is_some() && config.pong_timeout.is_zero() {
        return Err(config::config_error(name, "`pong_timeout` must be greater than zero"));
    }
    let heartbeat = match config.heartbeat {
        Some(h) if h.interval.is_zero() => {
            return Err(config::config_error(name, "`heartbeat.interval` must be greater than zero"));
        }
        Some(h) => Some((h.message, h.interval)),
        None => None,
    };
    let transport = WsTransport {
        client,
        endpoint: common.endpoint,
        url: common.url,
        headers: common.headers,
        subscribe: config.subscribe.0.iter().map(|s| Template::new(s)).collect(),
        resume: common.settings.resume.clone(),
        compression: config.compression,
        ping_interval,
        pong_timeout: config.pong_timeout,
        heartbeat,
        idle_timeout: common.idle_timeout,
        connect_timeout: common.connect_timeout,
        max_message_bytes: common.settings.max_message_bytes,
    };
    Ok(Box::new(SupervisedSource { transport: Arc::new(transport), settings: common.settings }))
}

struct WsTransport {
    client: Arc<dyn WsConnector>,
    url: Url,
    endpoint: String,
    headers: Vec<HeaderTemplate>,
    subscribe: Vec<Template>,
    resume: ResumePlan,
    compression: bool,
    ping_interval: Option<Duration>,
    pong_timeout: Duration,
    heartbeat: Option<(String, Duration)>,
    idle_timeout: Option<Duration>,
    connect_timeout: Duration,
    /// Larger messages are skipped as they stream and reported as oversized.
    max_message_bytes: usize,
}

impl Transport for WsTransport {
    fn kind(&self) -> &'static str {
        "websocket"
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn run_connection(self: Arc<Self>, req: ConnRequest) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let ConnRequest { cursor, link } = req;
            let (cause, detail) = match self.connect(cursor.as_deref(), &link).await {
                Ok(Some(mut conn)) => match self.read(conn.as_mut(), &link).await {
                    Some(end) => end,
                    None => {
                        // Closed by the supervisor: say goodbye, briefly.
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(WsOutgoing::Close)).await;
                        return;
                    }
                },
                Ok(None) => return,
                Err(detail) => (Cause::HandshakeFailed, detail),
            };
            link.ended(cause, detail).await;
        })
    }
}

impl WsTransport {
    /// Connects and subscribes. `Ok(None)`: cancelled meanwhile.
    async fn connect(&self, cursor: Option<&str>, link: &Link) -> Result<Option<Box<dyn WsConnection>>, String> {
        let url = self.resume.connect_url(&self.url, cursor)?;
        let target = WsTarget {
            url,
            headers: config::fill_headers(&self.headers, cursor),
            compression: self.compression,
            max_message_bytes: self.max_message_bytes,
        };
        let deadline = Instant::now() + self.connect_timeout;
        let connecting = tokio::time::timeout_at(deadline, self.client.connect(target));
        let mut conn = tokio::select! {
            biased;
            _ = link.cancelled() => return Ok(None),
            r = connecting => match r {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no connection within connect_timeout ({:?})", self.connect_timeout)),
            },
        };
        let fill = self.resume.message_cursor(cursor);
        for message in &self.subscribe {
            let text = message.fill(fill, Escape::Json);
            let sending = tokio::time::timeout_at(deadline, conn.send(WsOutgoing::Text(text)));
            match sending.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("sending a subscribe message failed: {e}")),
                Err(_) => return Err("sending the subscribe messages took longer than connect_timeout".into()),
            }
        }
        let detail = format!("{} subscribe message(s) sent", self.subscribe.len());
        if !link.up(detail).await {
            return Ok(None);
        }
        Ok(Some(conn))
    }

    /// Reads until the connection ends (`Some(cause, detail)`) or is cancelled (`None`).
    async fn read(&self, conn: &mut dyn WsConnection, link: &Link) -> Option<(Cause, String)> {
        let start = Instant::now();
        // The last message (text/binary): idle_timeout runs from here.
        let mut last_data = start;
        // The ping still waiting for any frame to come back.
        let mut ping_sent: Option<Instant> = None;
        let mut next_ping = self.ping_interval.map(|i| start + i);
        let mut next_heartbeat = self.heartbeat.as_ref().map(|(_, i)| start + *i);
        let far = start + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        // Created once: registering a fresh waiter per message would cost a lock each time.
        let cancelled = link.cancelled();
        tokio::pin!(cancelled);
        loop {
            let deadline = [
                self.idle_timeout.map(|t| last_data + t),
                ping_sent.map(|t| t + self.pong_timeout),
                next_ping,
                next_heartbeat,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far);
            // Deadlines mostly move later (every message pushes idle_timeout out): the timer is
            // only moved earlier, or re-armed after it fired, and conditions are checked when
            // it fires.
            if timer.is_elapsed() || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                () = &mut cancelled => return None,
                frame = conn.recv() => {
                    let now = Instant::now();
                    ping_sent = None;
                    // Text and binary alike become events, byte for byte.
                    let payload = match frame {
                        Ok(WsIncoming::Text(p) | WsIncoming::Binary(p)) => p,
                        Ok(WsIncoming::Pong) => continue,
                        Ok(WsIncoming::Ping(payload)) => {
                            if let Err(e) = self.send_bounded(conn, WsOutgoing::Pong(payload)).await {
                                return Some(e);
                            }
                            continue;
                        }
                        Ok(WsIncoming::Oversized { size, prefix }) => {
                            last_data = now;
                            match link.oversized(size, prefix, None).await {
                                Sent::Immediately => {}
                                Sent::AfterWaiting => last_data = Instant::now(),
                                Sent::Stop => return None,
                            }
                            continue;
                        }
                        Ok(WsIncoming::Close { code, reason }) => {
                            // Answer the close, as RFC 6455 asks (best effort, bounded).
                            let _ = self.send_bounded(conn, WsOutgoing::Close).await;
                            let code = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                            return Some((Cause::Closed, format!("close frame, code {code}, reason {reason:?}")));
                        }
                        Err(e) => return Some((Cause::Error, e.to_string())),
                    };
                    last_data = now;
                    match link.data(payload, None).await {
                        Sent::Immediately => {}
                        // The wait was the spool's, not the provider's: restart the clocks.
                        Sent::AfterWaiting => last_data = Instant::now(),
                        Sent::Stop => return None,
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if let Some(t) = self.idle_timeout
                        && now >= last_data + t
                    {
                        return Some((Cause::IdleTimeout, format!("no message for {t:?}")));
                    }
                    if let Some(sent) = ping_sent
                        && now >= sent + self.pong_timeout
                    {
                        return Some((Cause::PongTimeout, format!("nothing received for {:?} after a ping", self.pong_timeout)));
                    }
                    if let (Some(at), Some(interval)) = (next_ping, self.ping_interval)
                        && now >= at
                    {
                        next_ping = Some(now + interval);
                        if ping_sent.is_none() {
                            if let Err(e) = self.send_bounded(conn, WsOutgoing::Ping(bytes::Bytes::from_static(b"sluice"))).await {
                                return Some(e);
                            }
                            ping_sent = Some(now);
                        }
                    }
                    if let (Some(at), Some((message, interval))) = (next_heartbeat, self.heartbeat.as_ref())
                        && now >= at
                    {
                        next_heartbeat = Some(now + *interval);
                        if let Err(e) = self.send_bounded(conn, WsOutgoing::Text(message.clone())).await {
                            return Some(e);
                        }
                    }
                }
            }
            if link.is_cancelled() {
                return None;
            }
        }
    }

    /// Sends a control or heartbeat frame; a peer that does not take it within `pong_timeout`
    /// is as good as gone.
    async fn send_bounded(&self, conn: &mut dyn WsConnection, frame: WsOutgoing) -> Result<(), (Cause, String)> {
        let limit = if self.pong_timeout.is_zero() { Duration::from_secs(10) } else { self.pong_timeout };
        match tokio::time::timeout(limit, conn.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((Cause::Error, format!("send failed: {e}"))),
            Err(_) => Err((Cause::PongTimeout, format!("a ping or heartbeat could not be sent within {limit:?}"))),
        }
    }
}
