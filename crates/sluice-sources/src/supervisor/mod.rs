//! The connection supervisor shared by every source.
//!
//! A [`Transport`] knows how to open one connection and read it (WebSocket, SSE, NDJSON); each
//! connection runs as its own task and reports [`ConnEvent`]s (up, data, ended) on one bounded
//! channel. The supervisor task owns everything else and is the only place state changes:
//!
//! * reconnects forever, with exponential backoff and full jitter, reset after a healthy period;
//! * rotation: at `max_connection_age` it opens the next connection while the old one keeps
//!   forwarding (make-before-break), holds the new one's messages back, and switches as soon
//!   as the two streams meet (or after `rotation_overlap`, or when the old one ends);
//!   see [`processor`] for how the overlap is de-duplicated;
//! * every message passes through the [`processor::Processor`] (size limit, cursor,
//!   de-duplication, gaps, rotation overlap) and is then sent into the pipeline's events channel.
//!   That send may wait (the spool's back-pressure); while it waits, connection tasks block on
//!   the internal channel and stop reading their sockets, so nothing piles up in memory;
//! * shutdown cancels every connection (they send a close where the protocol has one) and
//!   waits for them briefly.
//!
//! Liveness (idle and pong timeouts) is the connection task's job, since only it sees the socket.

pub(crate) mod backoff;
pub(crate) mod processor;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sluice_flow::{Event, FlowError, SourceContext};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Reconnect, ResumePlan};
use crate::metrics::SourceMetrics;
use backoff::Backoff;
use processor::{Origin, Processor};

/// Identifies one connection attempt within a source.
pub(crate) type ConnId = u64;

/// Why a connection ended (the `cause` label of `sluice_source_reconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The provider closed it (close frame, end of the HTTP body).
    Closed,
    /// A read or write failed (reset, EOF without a close frame, protocol error).
    Error,
    /// No data for `idle_timeout`.
    IdleTimeout,
    /// Nothing came back within `pong_timeout` after a ping.
    PongTimeout,
    /// Replaced by a newer connection after `max_connection_age`.
    Rotation,
    /// Could not be opened (TCP, TLS, HTTP status, WebSocket upgrade, timeout).
    HandshakeFailed,
    /// A message too big to even buffer.
    TooLarge,
}

impl Cause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Closed => "closed",
            Cause::Error => "error",
            Cause::IdleTimeout => "idle_timeout",
            Cause::PongTimeout => "pong_timeout",
            Cause::Rotation => "rotation",
            Cause::HandshakeFailed => "handshake_failed",
            Cause::TooLarge => "too_large",
        }
    }
}

/// What a connection task reports.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// Connected (and subscribed); `detail` is for the log.
    Up { id: ConnId, detail: String },
    /// One message. `hint` is a transport-level cursor (the SSE `id:`), used when no JSON
    /// pointer is configured.
    Data { id: ConnId, payload: Bytes, hint: Option<String>, received_ms: u64 },
    /// A message the transport dropped as too large; `prefix` is what it kept of it.
    Oversized { size: usize, prefix: Bytes },
    /// The provider asked for this reconnect delay (SSE `retry:`).
    RetryHint { delay: Duration },
    /// The connection is over (or never opened).
    Ended { id: ConnId, cause: Cause, detail: String },
}

/// The result of handing a message to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Taken at once.
    Immediately,
    /// Taken after waiting for room (back-pressure): liveness clocks should restart.
    AfterWaiting,
    /// The connection is being closed or the source is stopping.
    Stop,
}

/// A connection task's line to the supervisor.
pub(crate) struct Link {
    id: ConnId,
    tx: mpsc::Sender<ConnEvent>,
    cancel: CancellationToken,
}

impl Link {
    /// Resolves when the supervisor closes this connection (rotation, shutdown).
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    async fn send(&self, event: ConnEvent) -> Sent {
        match self.tx.try_send(event) {
            Ok(()) => Sent::Immediately,
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Stop,
            Err(mpsc::error::TrySendError::Full(event)) => {
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => Sent::Stop,
                    r = self.tx.send(event) => if r.is_ok() { Sent::AfterWaiting } else { Sent::Stop },
                }
            }
        }
    }

    pub(crate) async fn up(&self, detail: String) -> bool {
        self.send(ConnEvent::Up { id: self.id, detail }).await != Sent::Stop
    }

    pub(crate) async fn data(&self, payload: Bytes, hint: Option<String>) -> Sent {
        let received_ms = sluice_flow::now_ms();
        self.send(ConnEvent::Data { id: self.id, payload, hint, received_ms }).await
    }

    pub(crate) async fn oversized(&self, size: usize, prefix: Bytes) -> Sent {
        self.send(ConnEvent::Oversized { size, prefix }).await
    }

    pub(crate) async fn retry_hint(&self, delay: Duration) {
        self.send(ConnEvent::RetryHint { delay }).await;
    }

    /// Reports the end (not needed when the supervisor itself closed the connection).
    pub(crate) async fn ended(&self, cause: Cause, detail: String) {
        if !self.cancel.is_cancelled() {
            self.send(ConnEvent::Ended { id: self.id, cause, detail }).await;
        }
    }
}

/// What a connection task is given.
pub(crate) struct ConnRequest {
    /// The cursor to resume after (latest forwarded, else the spool's), if any.
    pub cursor: Option<String>,
    pub link: Link,
}

/// One kind of connection (WebSocket, SSE, NDJSON over HTTP).
pub(crate) trait Transport: Send + Sync + 'static {
    /// `websocket`, `sse`, `http` (for logs).
    fn kind(&self) -> &'static str;
    /// Where it connects, without query or credentials (for logs).
    fn endpoint(&self) -> &str;
    /// Opens one connection and reads it until it ends or `req.link` is cancelled. Reports
    /// `Up` once connected, `Data` per message, and `Ended` unless cancelled.
    fn run_connection(self: Arc<Self>, req: ConnRequest) -> BoxFuture<'static, ()>;
}

/// The timing and message rules every source shares.
pub(crate) struct Settings {
    pub reconnect: Reconnect,
    pub resume: ResumePlan,
    pub max_message_bytes: usize,
}

/// Internal channel capacity: bounds what is in flight between the sockets and the spool.
const CHANNEL_CAPACITY: usize = 1024;
/// How many channel events are handled per wake-up.
const BATCH: usize = 256;
/// How long shutdown waits for connections to send their close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct Slot {
    id: ConnId,
    _close_on_drop: DropGuard,
    join: JoinHandle<()>,
    opened: Instant,
    up_since: Option<Instant>,
}

/// Runs a source until shutdown.
pub(crate) async fn run<T: Transport>(
    transport: Arc<T>,
    settings: Settings,
    ctx: SourceContext,
) -> Result<(), FlowError> {
    let SourceContext { name, resume_cursor, events, dead_letters, shutdown, .. } = ctx;
    if *shutdown.borrow() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let processor = Processor::new(&name, SourceMetrics::new(&name), dead_letters, &settings, resume_cursor);
    let reconnect = settings.reconnect;
    let mut sup = Supervisor {
        backoff: Backoff::new(reconnect.backoff_initial, reconnect.backoff_max, reconnect.backoff_reset_after),
        rotation_backoff: Backoff::new(reconnect.backoff_initial, reconnect.backoff_max, reconnect.backoff_reset_after),
        reconnect,
        name,
        transport,
        processor,
        tx,
        next_id: 1,
        primary: None,
        standby: None,
        retired: Vec::new(),
        reconnect_at: None,
        rotate_at: None,
        switch_at: None,
        overlap_done_at: None,
        retry_floor: None,
    };
    tracing::info!(source = %sup.name, kind = sup.transport.kind(), endpoint = sup.transport.endpoint(), "source starting");
    sup.open_primary();

    // Shutdown as one reusable future (a `watch::changed()` per loop would register a waiter
    // each time). A dropped sender counts as shutdown.
    let stop = CancellationToken::new();
    let watcher = {
        let stop = stop.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
            stop.cancel();
        })
    };
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let timer = tokio::time::sleep_until(far);
    tokio::pin!(timer);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    let mut out: Vec<Event> = Vec::new();
    let result = 'run: loop {
        let deadline = sup.next_deadline().unwrap_or(far);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            () = &mut stopped => break 'run Ok(()),
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break 'run Ok(());
                }
                for event in batch.drain(..) {
                    sup.handle(event, &mut out);
                }
            }
            () = &mut timer => sup.on_timer(&mut out),
            _ = tick.tick() => sup.on_tick(),
        }
        for event in out.drain(..) {
            // Fast path: room in the channel. Otherwise wait for the spool, but not past
            // shutdown.
            let event = match events.try_send(event) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => break 'run closed_result(&shutdown, &sup.name),
                Err(mpsc::error::TrySendError::Full(event)) => event,
            };
            let permit = tokio::select! {
                biased;
                () = &mut stopped => break 'run Ok(()),
                permit = events.reserve() => permit,
            };
            match permit {
                Ok(permit) => permit.send(event),
                Err(_) => break 'run closed_result(&shutdown, &sup.name),
            }
        }
    };
    watcher.abort();
    sup.shut_down().await;
    result
}

/// The events channel closed: normal during shutdown, fatal otherwise.
fn closed_result(shutdown: &tokio::sync::watch::Receiver<bool>, name: &str) -> Result<(), FlowError> {
    if *shutdown.borrow() {
        Ok(())
    } else {
        Err(FlowError::Fatal { component: name.to_owned(), message: "the pipeline's events channel closed".into() })
    }
}

struct Supervisor<T> {
    name: String,
    transport: Arc<T>,
    reconnect: Reconnect,
    processor: Processor,
    backoff: Backoff,
    rotation_backoff: Backoff,
    tx: mpsc::Sender<ConnEvent>,
    next_id: ConnId,
    /// The connection being forwarded from (or being opened).
    primary: Option<Slot>,
    /// A rotation's next connection, until it takes over.
    standby: Option<Slot>,
    /// Closed connections still finishing (awaited at shutdown).
    retired: Vec<JoinHandle<()>>,
    reconnect_at: Option<Instant>,
    rotate_at: Option<Instant>,
    /// During a rotation: switch to the standby at this time even if it has sent nothing.
    switch_at: Option<Instant>,
    /// After a rotation's switch: stop comparing the two connections' messages at this time.
    overlap_done_at: Option<Instant>,
    retry_floor: Option<Duration>,
}

impl<T: Transport> Supervisor<T> {
    fn open(&mut self) -> Slot {
        let id = self.next_id;
        self.next_id += 1;
        let cancel = CancellationToken::new();
        let link = Link { id, tx: self.tx.clone(), cancel: cancel.clone() };
        let req = ConnRequest { cursor: self.processor.resume_cursor(), link };
        let connection = std::panic::AssertUnwindSafe(self.transport.clone().run_connection(req));
        let (tx, token) = (self.tx.clone(), cancel.clone());
        let join = tokio::spawn(async move {
            // A panic is a bug, but it must not leave the supervisor waiting forever.
            if connection.catch_unwind().await.is_err() && !token.is_cancelled() {
                let detail = "the connection task panicked (a bug)".to_owned();
                let _ = tx.send(ConnEvent::Ended { id, cause: Cause::Error, detail }).await;
            }
        });
        Slot { id, _close_on_drop: cancel.drop_guard(), join, opened: Instant::now(), up_since: None }
    }

    fn open_primary(&mut self) {
        self.reconnect_at = None;
        self.processor.metrics().backoff.set(0.0);
        let slot = self.open();
        tracing::debug!(source = %self.name, conn = slot.id, "connecting");
        self.primary = Some(slot);
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.reconnect_at, self.rotate_at, self.switch_at, self.overlap_done_at].into_iter().flatten().min()
    }

    fn live_connections(&self) -> usize {
        [&self.primary, &self.standby].into_iter().flatten().filter(|s| s.up_since.is_some()).count()
    }

    fn update_connected(&self) {
        self.processor.metrics().connected.set(self.live_connections() as f64);
    }

    fn retire(&mut self, slot: Slot) {
        self.retired.retain(|j| !j.is_finished());
        // Dropping the slot's guard cancels the connection; its task sends the close.
        let Slot { join, .. } = slot;
        self.retired.push(join);
    }

    /// Handles one event; events to forward into the pipeline go to `out`.
    fn handle(&mut self, event: ConnEvent, out: &mut Vec<Event>) {
        match event {
            ConnEvent::Up { id, detail } => self.on_up(id, &detail),
            ConnEvent::Data { id, payload, hint, received_ms } => {
                let origin = if self.primary.as_ref().is_some_and(|s| s.id == id) {
                    Origin::Primary
                } else if self.standby.as_ref().is_some_and(|s| s.id == id) {
                    Origin::Standby
                } else {
                    Origin::Retired
                };
                if self.processor.accept(id, origin, payload, hint, received_ms, out) {
                    let why = if origin == Origin::Standby {
                        "the new connection reached what was already forwarded (or holds too much)"
                    } else {
                        "the old connection caught up with the new one"
                    };
                    self.switch_to_standby(why, out);
                }
            }
            ConnEvent::Oversized { size, prefix } => self.processor.oversized(size, &prefix),
            ConnEvent::RetryHint { delay } => self.retry_floor = Some(delay),
            ConnEvent::Ended { id, cause, detail } => self.on_ended(id, cause, &detail, out),
        }
    }

    fn on_up(&mut self, id: ConnId, detail: &str) {
        let now = Instant::now();
        if let Some(slot) = self.primary.as_mut().filter(|s| s.id == id) {
            slot.up_since = Some(now);
            let took_ms = now.duration_since(slot.opened).as_millis() as u64;
            self.processor.metrics().connects.increment(1);
            self.rotate_at = self.reconnect.max_connection_age.map(|age| now + age);
            tracing::info!(
                source = %self.name, conn = id, endpoint = self.transport.endpoint(), took_ms,
                resume_after = self.processor.resume_cursor().as_deref().unwrap_or(""), detail, "connected"
            );
        } else if let Some(slot) = self.standby.as_mut().filter(|s| s.id == id) {
            slot.up_since = Some(now);
            self.processor.metrics().connects.increment(1);
            self.processor.begin_overlap(id);
            self.switch_at = Some(now + self.reconnect.rotation_overlap);
            tracing::info!(source = %self.name, conn = id, endpoint = self.transport.endpoint(), detail, "rotation: new connection up, overlapping");
        }
        self.update_connected();
    }

    /// Makes the standby the primary, releases what it held, and closes the old primary.
    fn switch_to_standby(&mut self, why: &str, out: &mut Vec<Event>) {
        let Some(mut standby) = self.standby.take() else {
            return;
        };
        self.switch_at = None;
        self.processor.switch(out);
        self.overlap_done_at = Some(Instant::now() + self.reconnect.rotation_overlap);
        self.rotation_backoff.reset();
        let now = Instant::now();
        let up_since = *standby.up_since.get_or_insert(now);
        self.rotate_at = self.reconnect.max_connection_age.map(|age| up_since + age);
        let new_id = standby.id;
        if let Some(old) = self.primary.replace(standby) {
            let up_for = old.up_since.map(|t| now.duration_since(t));
            tracing::info!(
                source = %self.name, old_conn = old.id, conn = new_id, cause = Cause::Rotation.as_str(),
                up_for_ms = up_for.map(|d| d.as_millis() as u64).unwrap_or(0),
                last_cursor = self.processor.latest_cursor().unwrap_or(""), why, "disconnected (rotated)"
            );
            self.processor.metrics().reconnect(Cause::Rotation);
            self.retire(old);
        }
        self.update_connected();
    }

    fn on_ended(&mut self, id: ConnId, cause: Cause, detail: &str, out: &mut Vec<Event>) {
        let now = Instant::now();
        if self.primary.as_ref().is_some_and(|s| s.id == id) {
            let Some(slot) = self.primary.take() else { return };
            let up_for = slot.up_since.map(|t| now.duration_since(t));
            self.processor.metrics().reconnect(cause);
            self.backoff.connection_ended(up_for);
            self.retire(slot);
            if self.standby.is_some() {
                tracing::warn!(
                    source = %self.name, conn = id, cause = cause.as_str(), detail,
                    last_cursor = self.processor.latest_cursor().unwrap_or(""), "disconnected during a rotation; the new connection takes over"
                );
                if let Some(s) = self.standby.take() {
                    self.switch_at = None;
                    if s.up_since.is_some() {
                        // Release what the new connection held (de-duplicated against the old).
                        self.processor.switch(out);
                        self.overlap_done_at = Some(now + self.reconnect.rotation_overlap);
                    }
                    self.rotate_at = s.up_since.and_then(|t| self.reconnect.max_connection_age.map(|age| t + age));
                    self.primary = Some(s);
                }
            } else {
                let mut delay = self.backoff.next_delay();
                if let Some(floor) = self.retry_floor {
                    delay = delay.max(floor).min(self.reconnect.backoff_max);
                }
                self.reconnect_at = Some(now + delay);
                self.rotate_at = None;
                self.processor.metrics().backoff.set(delay.as_secs_f64());
                let level_warn = cause != Cause::HandshakeFailed || self.backoff.attempt() <= 1;
                if up_for.is_some() || level_warn {
                    tracing::warn!(
                        source = %self.name, conn = id, cause = cause.as_str(), detail,
                        up_for_ms = up_for.map(|d| d.as_millis() as u64).unwrap_or(0),
                        last_cursor = self.processor.latest_cursor().unwrap_or(""),
                        reconnect_in_ms = delay.as_millis() as u64, attempt = self.backoff.attempt(), "disconnected"
                    );
                } else {
                    tracing::info!(
                        source = %self.name, conn = id, cause = cause.as_str(), detail,
                        reconnect_in_ms = delay.as_millis() as u64, attempt = self.backoff.attempt(), "connect failed"
                    );
                }
            }
        } else if self.standby.as_ref().is_some_and(|s| s.id == id) {
            if let Some(slot) = self.standby.take() {
                self.retire(slot);
            }
            self.processor.metrics().reconnect(cause);
            self.processor.abandon_overlap();
            self.switch_at = None;
            let delay = self.rotation_backoff.next_delay().max(Duration::from_millis(10));
            self.rotate_at = Some(now + delay);
            tracing::warn!(
                source = %self.name, conn = id, cause = cause.as_str(), detail,
                retry_in_ms = delay.as_millis() as u64, "rotation: the new connection failed; keeping the current one"
            );
        }
        self.update_connected();
    }

    fn on_timer(&mut self, out: &mut Vec<Event>) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.retry_floor = None;
            self.open_primary();
        }
        if self.rotate_at.is_some_and(|t| t <= now) {
            self.rotate_at = None;
            let primary_up = self.primary.as_ref().is_some_and(|s| s.up_since.is_some());
            if primary_up && self.standby.is_none() {
                let slot = self.open();
                tracing::info!(source = %self.name, conn = slot.id, "rotation: max_connection_age reached, opening the next connection");
                self.standby = Some(slot);
            }
        }
        if self.switch_at.is_some_and(|t| t <= now) {
            self.switch_at = None;
            if self.standby.as_ref().is_some_and(|s| s.up_since.is_some()) {
                self.switch_to_standby("rotation_overlap elapsed", out);
            }
        }
        if self.overlap_done_at.is_some_and(|t| t <= now) {
            self.overlap_done_at = None;
            self.processor.finish_overlap();
        }
    }

    fn on_tick(&mut self) {
        let age = self.processor.last_message_age();
        self.processor.metrics().last_message_age.set(age);
    }

    async fn shut_down(mut self) {
        let mut joins = std::mem::take(&mut self.retired);
        for slot in [self.primary.take(), self.standby.take()].into_iter().flatten() {
            joins.push(slot.join);
        }
        self.processor.metrics().connected.set(0.0);
        let abort: Vec<_> = joins.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(SHUTDOWN_GRACE, futures_util::future::join_all(joins)).await.is_err() {
            for handle in abort {
                handle.abort();
            }
        }
        tracing::info!(source = %self.name, last_cursor = self.processor.latest_cursor().unwrap_or(""), "source stopped");
    }
}
