//! The connection supervisor shared by every source: [`SupervisedSource`] runs any
//! [`Transport`] (WebSocket, SSE, NDJSON over HTTP).
//!
//! A transport knows how to open one connection and read it; each connection runs as its own
//! task and reports [`ConnEvent`]s (up, data, ended, gone) on one bounded channel. The
//! supervisor task owns everything else and is the only place state changes:
//!
//! * `replicas` connection **slots** (`Slot`), each with its own connection, reconnects and
//!   rotation. All slots connect at start; with rotation, slot *i* first rotates after
//!   `max_connection_age × (i + 1) / replicas`, so replicas stay spread out in time;
//! * reconnects forever: right away (within `backoff_initial`) after a connection that
//!   delivered data, with exponential backoff and full jitter only after failed attempts
//!   ([`backoff`]);
//! * rotation: at `max_connection_age` a slot opens its next connection while the old one
//!   keeps forwarding (make-before-break), and hands over where the two streams align
//!   ([`rotation`]);
//! * every message then passes through the [`admission::Admission`] shared by all slots
//!   (size limit, cursor, de-duplication across replicas, gaps) and is sent into the
//!   pipeline's events channel. That send may wait (the spool's back-pressure); while it
//!   waits, connection tasks block on the internal channel and stop reading their sockets,
//!   so nothing piles up in memory;
//! * alarms (silence, no connection) are checked on a tick ([`crate::alarm`]);
//! * shutdown cancels every connection (they send a close where the protocol has one) and
//!   waits for them briefly.
//!
//! Liveness (idle and pong timeouts) is the connection task's job, since only it sees the socket.

pub(crate) mod admission;
pub(crate) mod backoff;
pub(crate) mod rotation;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sluice_flow::{Event, FlowError, Source, SourceContext};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::alarm::AlarmWatch;
use crate::config::{Reconnect, Settings};
use crate::metrics::SourceMetrics;
use admission::{Admission, Message};
use backoff::Backoff;
use rotation::Rotation;

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
    /// A message over `max_message_bytes` that the transport read and discarded as it
    /// streamed; `size` is its real size and `prefix` what it kept of its beginning; `hint` as
    /// for `Data`.
    Oversized { id: ConnId, size: u64, prefix: Bytes, hint: Option<String> },
    /// The provider asked for this reconnect delay (SSE `retry:`).
    RetryHint { id: ConnId, delay: Duration },
    /// The connection is over (or never opened).
    Ended { id: ConnId, cause: Cause, detail: String },
    /// The connection's task has finished: nothing more will come from it.
    Gone { id: ConnId },
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

    pub(crate) async fn oversized(&self, size: u64, prefix: Bytes, hint: Option<String>) -> Sent {
        self.send(ConnEvent::Oversized { id: self.id, size, prefix, hint }).await
    }

    pub(crate) async fn retry_hint(&self, delay: Duration) {
        self.send(ConnEvent::RetryHint { id: self.id, delay }).await;
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

/// A source: one transport, supervised. Every kind is this with its own [`Transport`].
pub(crate) struct SupervisedSource<T> {
    pub transport: Arc<T>,
    pub settings: Settings,
}

impl<T: Transport> Source for SupervisedSource<T> {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), FlowError>> {
        let SupervisedSource { transport, settings } = *self;
        Box::pin(run(transport, settings, ctx))
    }
}

/// Internal channel capacity: bounds what is in flight between the sockets and the spool.
const CHANNEL_CAPACITY: usize = 1024;
/// How many channel events are handled per wake-up.
const BATCH: usize = 256;
/// How long shutdown waits for connections to send their close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often alarms, gap deadlines and gauges are checked.
const TICK: Duration = Duration::from_millis(250);
/// `cursor_stuck` is raised after this many connections in a row ended on unusable messages
/// without moving the cursor.
const STUCK_AFTER: u32 = 3;

impl Conn {
    /// Notes a message this connection sent: usable (it delivered) or dead-lettered.
    fn note(&mut self, usable: bool) {
        if usable {
            self.delivered = true;
        } else {
            self.unusable += 1;
        }
    }
}

/// One connection (attempt).
struct Conn {
    id: ConnId,
    _close_on_drop: DropGuard,
    join: JoinHandle<()>,
    opened: Instant,
    up_since: Option<Instant>,
    /// It delivered at least one usable message (so its end is no failure to back off from).
    delivered: bool,
    /// The cursor it resumed after.
    start_cursor: Option<String>,
    /// Messages it sent that were dead-lettered (oversized, bad cursor, not JSON).
    unusable: u64,
}

/// One replica: a connection kept alive, rotated, and reconnected on its own.
struct Replica {
    /// The connection being forwarded from (or being opened).
    primary: Option<Conn>,
    /// A rotation's next connection, until it takes over.
    standby: Option<Conn>,
    /// The connection replaced by the last rotation, while its last messages may arrive.
    retired: Option<ConnId>,
    backoff: Backoff,
    rotation_backoff: Backoff,
    rotation: Rotation<Message>,
    reconnect_at: Option<Instant>,
    rotate_at: Option<Instant>,
    /// The first rotation comes after this (replicas are spread over `max_connection_age`).
    first_age: Option<Duration>,
    /// During a rotation: switch to the standby at this time even if not aligned.
    switch_at: Option<Instant>,
    /// After a rotation's switch: stop reconciling the two connections at this time.
    overlap_done_at: Option<Instant>,
    retry_floor: Option<Duration>,
}

impl Replica {
    fn deadlines(&self) -> impl Iterator<Item = Instant> {
        [self.reconnect_at, self.rotate_at, self.switch_at, self.overlap_done_at].into_iter().flatten()
    }

    fn live(&self) -> usize {
        [&self.primary, &self.standby].into_iter().flatten().filter(|c| c.up_since.is_some()).count()
    }
}

/// What a connection is to its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Standby,
    Retired,
}

/// Runs a source until shutdown.
pub(crate) async fn run<T: Transport>(
    transport: Arc<T>,
    settings: Settings,
    ctx: SourceContext,
) -> Result<(), FlowError> {
    let SourceContext { name, resume_cursor, events, dead_letters, shutdown, alarms, history, .. } = ctx;
    if *shutdown.borrow() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut admission = Admission::new(&name, SourceMetrics::new(&name), dead_letters, &settings, resume_cursor);
    if let (Some((max, since_ms)), Some(history)) = (admission.history_wanted(), history) {
        let spooled = tokio::task::spawn_blocking(move || history.recent(max, since_ms)).await.unwrap_or_default();
        let n = admission.remember(&spooled);
        if n > 0 {
            tracing::info!(source = %name, events = n, "de-duplication window refilled from the spool");
        }
    }
    let reconnect = settings.reconnect.clone();
    let replicas = settings.replicas;
    let rotating = reconnect.max_connection_age.is_some();
    let mut sup = Supervisor {
        alarms: AlarmWatch::new(&name, &settings.alarm, alarms),
        slots: (0..replicas)
            .map(|index| Replica {
                primary: None,
                standby: None,
                retired: None,
                backoff: Backoff::new(reconnect.backoff_initial, reconnect.backoff_max),
                rotation_backoff: Backoff::new(reconnect.backoff_initial, reconnect.backoff_max),
                rotation: Rotation::new(rotating),
                reconnect_at: None,
                rotate_at: None,
                first_age: reconnect.max_connection_age.map(|age| age.mul_f64((index + 1) as f64 / replicas as f64)),
                switch_at: None,
                overlap_done_at: None,
                retry_floor: None,
            })
            .collect(),
        reconnect,
        name,
        transport,
        admission,
        tx,
        next_id: 1,
        retired: Vec::new(),
        batch: Vec::new(),
        stuck_runs: 0,
        stuck_at: None,
    };
    tracing::info!(
        source = %sup.name, kind = sup.transport.kind(), endpoint = sup.transport.endpoint(), replicas,
        "source starting"
    );
    for r in 0..replicas {
        sup.open_primary(r);
    }

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
    let mut tick = tokio::time::interval(TICK);
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
    // Connections still finishing must not wait for room in a channel nobody reads.
    drop(rx);
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
    admission: Admission,
    alarms: AlarmWatch,
    slots: Vec<Replica>,
    tx: mpsc::Sender<ConnEvent>,
    next_id: ConnId,
    /// Closed connections still finishing (awaited at shutdown).
    retired: Vec<JoinHandle<()>>,
    /// Messages a replica passed on, on their way to the admission (reused).
    batch: Vec<Message>,
    /// Connections in a row that ended with unusable messages and without moving the cursor.
    stuck_runs: u32,
    /// The cursor the `cursor_stuck` alarm is up for.
    stuck_at: Option<Option<String>>,
}

impl<T: Transport> Supervisor<T> {
    fn open(&mut self) -> Conn {
        let id = self.next_id;
        self.next_id += 1;
        let cancel = CancellationToken::new();
        let link = Link { id, tx: self.tx.clone(), cancel: cancel.clone() };
        let start_cursor = self.admission.resume_cursor();
        let req = ConnRequest { cursor: start_cursor.clone(), link };
        let connection = std::panic::AssertUnwindSafe(self.transport.clone().run_connection(req));
        let (tx, token) = (self.tx.clone(), cancel.clone());
        let join = tokio::spawn(async move {
            // A panic is a bug, but it must not leave the supervisor waiting forever.
            if connection.catch_unwind().await.is_err() && !token.is_cancelled() {
                let detail = "the connection task panicked (a bug)".to_owned();
                let _ = tx.send(ConnEvent::Ended { id, cause: Cause::Error, detail }).await;
            }
            // After everything the connection sent: a rotation stops waiting for its copies.
            let _ = tx.send(ConnEvent::Gone { id }).await;
        });
        Conn {
            id,
            _close_on_drop: cancel.drop_guard(),
            join,
            opened: Instant::now(),
            up_since: None,
            delivered: false,
            start_cursor,
            unusable: 0,
        }
    }

    fn open_primary(&mut self, r: usize) {
        let conn = self.open();
        tracing::debug!(source = %self.name, replica = r, conn = conn.id, "connecting");
        let slot = &mut self.slots[r];
        slot.reconnect_at = None;
        slot.primary = Some(conn);
        self.update_backoff();
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().flat_map(Replica::deadlines).min()
    }

    fn update_connected(&mut self) {
        let live = self.slots.iter().map(Replica::live).sum::<usize>();
        self.admission.metrics().connected.set(live as f64);
        self.alarms.connections(live);
    }

    /// The gauge shows the longest pending reconnect wait.
    fn update_backoff(&self) {
        let now = Instant::now();
        let longest = self
            .slots
            .iter()
            .filter_map(|s| s.reconnect_at)
            .map(|t| t.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        self.admission.metrics().backoff.set(longest.as_secs_f64());
    }

    fn retire(&mut self, conn: Conn) {
        self.retired.retain(|j| !j.is_finished());
        // Dropping the guard cancels the connection; its task sends the close.
        let Conn { join, .. } = conn;
        self.retired.push(join);
    }

    fn find(&self, id: ConnId) -> Option<(usize, Role)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            if s.primary.as_ref().is_some_and(|c| c.id == id) {
                Some((i, Role::Primary))
            } else if s.standby.as_ref().is_some_and(|c| c.id == id) {
                Some((i, Role::Standby))
            } else if s.retired == Some(id) {
                Some((i, Role::Retired))
            } else {
                None
            }
        })
    }

    /// Handles one event; events to forward into the pipeline go to `out`.
    fn handle(&mut self, event: ConnEvent, out: &mut Vec<Event>) {
        match event {
            ConnEvent::Up { id, detail } => self.on_up(id, &detail),
            ConnEvent::Data { id, payload, hint, received_ms: _ }
                if payload.len() > self.admission.max_message_bytes() =>
            {
                // A transport that could not skip it as it streamed: the same as if it had.
                let size = payload.len() as u64;
                let prefix = payload.slice(..payload.len().min(admission::KEPT_PREFIX));
                self.handle(ConnEvent::Oversized { id, size, prefix, hint }, out);
            }
            ConnEvent::Data { id, payload, hint, received_ms } => {
                let (fp, message) = self.admission.check(payload, hint, received_ms);
                let usable = message.is_usable();
                let mut passed = std::mem::take(&mut self.batch);
                let switch = match self.find(id) {
                    Some((r, role)) => {
                        let slot = &mut self.slots[r];
                        let switch = match role {
                            Role::Primary => {
                                if let Some(c) = slot.primary.as_mut() {
                                    c.note(usable);
                                }
                                slot.rotation.on_current(fp, message, &mut passed)
                            }
                            Role::Standby => {
                                if let Some(c) = slot.standby.as_mut() {
                                    c.note(usable);
                                }
                                slot.rotation.on_new(fp, message)
                            }
                            Role::Retired => {
                                slot.rotation.on_old(fp, message, &mut passed);
                                false
                            }
                        };
                        let counts = slot.rotation.take_counts();
                        self.admission.rotation(counts);
                        switch.then_some((r, role))
                    }
                    // A connection no longer followed (its replica reconnected): the admission
                    // still drops what is a duplicate.
                    None => {
                        passed.push(message);
                        None
                    }
                };
                for m in passed.drain(..) {
                    self.admission.admit(m, out);
                }
                self.batch = passed;
                if let Some((r, role)) = switch {
                    let why = if role == Role::Standby {
                        "the streams are aligned (or the new connection holds too much)"
                    } else {
                        "the streams are aligned"
                    };
                    self.switch_to_standby(r, why, out);
                }
            }
            ConnEvent::Oversized { id, size, prefix, hint } => {
                self.admission.oversized(size, &prefix, hint);
                if let Some((r, role)) = self.find(id) {
                    let slot = &mut self.slots[r];
                    let conn = if role == Role::Standby { slot.standby.as_mut() } else { slot.primary.as_mut() };
                    if let Some(c) = conn.filter(|c| c.id == id) {
                        c.note(false);
                    }
                }
            }
            ConnEvent::RetryHint { id, delay } => {
                // SSE `retry:` sets the next delay of the replica whose connection sent it.
                if let Some((r, _)) = self.find(id) {
                    self.slots[r].retry_floor = Some(delay);
                }
            }
            ConnEvent::Ended { id, cause, detail } => self.on_ended(id, cause, &detail, out),
            ConnEvent::Gone { id } => {
                if let Some((r, Role::Retired)) = self.find(id) {
                    let slot = &mut self.slots[r];
                    slot.retired = None;
                    slot.rotation.old_ended();
                }
            }
        }
    }

    fn on_up(&mut self, id: ConnId, detail: &str) {
        let now = Instant::now();
        let Some((r, role)) = self.find(id) else { return };
        let resume_after = self.admission.resume_cursor();
        let slot = &mut self.slots[r];
        match role {
            Role::Primary => {
                let Some(conn) = slot.primary.as_mut() else { return };
                conn.up_since = Some(now);
                let took_ms = now.duration_since(conn.opened).as_millis() as u64;
                let age = slot.first_age.take().or(self.reconnect.max_connection_age);
                slot.rotate_at = age.map(|age| now + age);
                self.admission.metrics().connects.increment(1);
                tracing::info!(
                    source = %self.name, replica = r, conn = id, endpoint = self.transport.endpoint(), took_ms,
                    resume_after = resume_after.as_deref().unwrap_or(""), detail, "connected"
                );
            }
            Role::Standby => {
                let Some(conn) = slot.standby.as_mut() else { return };
                conn.up_since = Some(now);
                slot.rotation.begin();
                slot.switch_at = Some(now + self.reconnect.rotation_overlap);
                self.admission.metrics().connects.increment(1);
                tracing::info!(
                    source = %self.name, replica = r, conn = id, endpoint = self.transport.endpoint(), detail,
                    "rotation: new connection up, aligning"
                );
            }
            Role::Retired => {}
        }
        self.update_connected();
    }

    /// Makes replica `r`'s standby its primary, forwards what it held beyond the old
    /// connection, and closes the old one.
    fn switch_to_standby(&mut self, r: usize, why: &str, out: &mut Vec<Event>) {
        let now = Instant::now();
        let mut passed = std::mem::take(&mut self.batch);
        let slot = &mut self.slots[r];
        let Some(mut standby) = slot.standby.take() else {
            self.batch = passed;
            return;
        };
        slot.switch_at = None;
        slot.rotation.switch(slot.primary.is_some(), &mut passed);
        slot.overlap_done_at = Some(now + self.reconnect.rotation_overlap);
        slot.rotation_backoff.reset();
        let up_since = *standby.up_since.get_or_insert(now);
        slot.rotate_at = self.reconnect.max_connection_age.map(|age| up_since + age);
        let new_id = standby.id;
        let old = slot.primary.replace(standby);
        slot.retired = old.as_ref().map(|c| c.id);
        let counts = slot.rotation.take_counts();
        self.admission.rotation(counts);
        for m in passed.drain(..) {
            self.admission.admit(m, out);
        }
        self.batch = passed;
        if let Some(old) = old {
            let up_for = old.up_since.map(|t| now.duration_since(t));
            tracing::info!(
                source = %self.name, replica = r, old_conn = old.id, conn = new_id, cause = Cause::Rotation.as_str(),
                up_for_ms = up_for.map(|d| d.as_millis() as u64).unwrap_or(0),
                last_cursor = self.admission.latest_cursor().unwrap_or(""), why, "disconnected (rotated)"
            );
            self.admission.metrics().reconnect(Cause::Rotation);
            self.retire(old);
        }
        self.update_connected();
    }

    fn on_ended(&mut self, id: ConnId, cause: Cause, detail: &str, out: &mut Vec<Event>) {
        let now = Instant::now();
        let Some((r, role)) = self.find(id) else { return };
        match role {
            Role::Primary => {
                let Some(conn) = self.slots[r].primary.take() else { return };
                let up_for = conn.up_since.map(|t| now.duration_since(t));
                let delivered = conn.delivered;
                self.watch_stuck(&conn);
                self.admission.metrics().reconnect(cause);
                self.retire(conn);
                let standby_up = self.slots[r].standby.as_ref().map(|s| s.up_since.is_some());
                if let Some(standby_up) = standby_up {
                    tracing::warn!(
                        source = %self.name, replica = r, conn = id, cause = cause.as_str(), detail,
                        last_cursor = self.admission.latest_cursor().unwrap_or(""),
                        "disconnected during a rotation; the new connection takes over"
                    );
                    if standby_up {
                        self.switch_to_standby(r, "the old connection ended", out);
                    } else {
                        // Not up yet: it becomes the connection being opened.
                        let slot = &mut self.slots[r];
                        slot.primary = slot.standby.take();
                        slot.switch_at = None;
                        slot.rotate_at = None;
                    }
                } else {
                    self.schedule_reconnect(r, id, cause, detail, up_for, delivered);
                }
            }
            Role::Standby => {
                let slot = &mut self.slots[r];
                let Some(conn) = slot.standby.take() else { return };
                slot.rotation.abandon();
                slot.switch_at = None;
                let delay = slot.rotation_backoff.after(false).max(Duration::from_millis(10));
                slot.rotate_at = Some(now + delay);
                self.retire(conn);
                self.admission.metrics().reconnect(cause);
                tracing::warn!(
                    source = %self.name, replica = r, conn = id, cause = cause.as_str(), detail,
                    retry_in_ms = delay.as_millis() as u64, "rotation: the new connection failed; keeping the current one"
                );
            }
            Role::Retired => {}
        }
        self.update_connected();
    }

    fn schedule_reconnect(
        &mut self,
        r: usize,
        id: ConnId,
        cause: Cause,
        detail: &str,
        up_for: Option<Duration>,
        delivered: bool,
    ) {
        let slot = &mut self.slots[r];
        let mut delay = slot.backoff.after(delivered);
        if let Some(floor) = slot.retry_floor {
            delay = delay.max(floor).min(self.reconnect.backoff_max);
        }
        slot.reconnect_at = Some(Instant::now() + delay);
        slot.rotate_at = None;
        let failures = slot.backoff.attempt();
        self.admission.metrics().reconnect_waits.increment(1);
        self.update_backoff();
        let reconnect_in_ms = delay.as_millis() as u64;
        let last_cursor = self.admission.latest_cursor().unwrap_or("");
        if up_for.is_some() || failures <= 1 {
            tracing::warn!(
                source = %self.name, replica = r, conn = id, cause = cause.as_str(), detail,
                up_for_ms = up_for.map(|d| d.as_millis() as u64).unwrap_or(0), delivered, last_cursor,
                reconnect_in_ms, failures, "disconnected"
            );
        } else {
            tracing::info!(
                source = %self.name, replica = r, conn = id, cause = cause.as_str(), detail, reconnect_in_ms, failures,
                "connect failed"
            );
        }
    }

    fn on_timer(&mut self, out: &mut Vec<Event>) {
        let now = Instant::now();
        for r in 0..self.slots.len() {
            if self.slots[r].reconnect_at.is_some_and(|t| t <= now) {
                self.slots[r].retry_floor = None;
                self.open_primary(r);
            }
            if self.slots[r].rotate_at.is_some_and(|t| t <= now) {
                self.slots[r].rotate_at = None;
                let primary_up = self.slots[r].primary.as_ref().is_some_and(|c| c.up_since.is_some());
                if primary_up && self.slots[r].standby.is_none() {
                    let conn = self.open();
                    tracing::info!(
                        source = %self.name, replica = r, conn = conn.id,
                        "rotation: max_connection_age reached, opening the next connection"
                    );
                    self.slots[r].standby = Some(conn);
                }
            }
            if self.slots[r].switch_at.is_some_and(|t| t <= now) {
                self.slots[r].switch_at = None;
                if self.slots[r].standby.as_ref().is_some_and(|c| c.up_since.is_some()) {
                    self.switch_to_standby(r, "rotation_overlap elapsed", out);
                }
            }
            if self.slots[r].overlap_done_at.is_some_and(|t| t <= now) {
                let slot = &mut self.slots[r];
                slot.overlap_done_at = None;
                slot.rotation.finish();
            }
        }
    }

    /// Counts connections that ended on unusable messages without moving the cursor; after
    /// `STUCK_AFTER` in a row, raises `cursor_stuck` (their reconnects already back off, as
    /// they delivered nothing usable).
    fn watch_stuck(&mut self, conn: &Conn) {
        let cursor = self.admission.resume_cursor();
        if cursor != conn.start_cursor {
            self.stuck_runs = 0;
            return;
        }
        if conn.unusable == 0 {
            return;
        }
        self.stuck_runs += 1;
        if self.stuck_runs >= STUCK_AFTER {
            let shown = cursor.as_deref().unwrap_or("(none yet)");
            let detail = format!(
                "{} connections in a row ended after unusable messages without moving the cursor past {shown} \
                 (an oversized message whose cursor is not in its first bytes, replayed on every resume?); \
                 see the dead-letter file",
                self.stuck_runs
            );
            self.alarms.cursor_stuck(true, detail);
            self.stuck_at = Some(cursor);
        }
    }

    fn on_tick(&mut self) {
        if let Some(at) = &self.stuck_at
            && self.admission.resume_cursor() != *at
        {
            self.stuck_at = None;
            self.stuck_runs = 0;
            self.alarms.cursor_stuck(false, String::new());
        }
        let silent_for = self.admission.silent_for();
        self.admission.metrics().last_message_age.set(silent_for.as_secs_f64());
        self.admission.expire_gaps();
        self.alarms.check(silent_for);
        self.update_backoff();
    }

    async fn shut_down(mut self) {
        let mut joins = std::mem::take(&mut self.retired);
        for slot in &mut self.slots {
            for conn in [slot.primary.take(), slot.standby.take()].into_iter().flatten() {
                joins.push(conn.join);
            }
        }
        self.admission.metrics().connected.set(0.0);
        self.alarms.stop();
        let abort: Vec<_> = joins.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(SHUTDOWN_GRACE, futures_util::future::join_all(joins)).await.is_err() {
            for handle in abort {
                handle.abort();
            }
        }
        tracing::info!(source = %self.name, last_cursor = self.admission.latest_cursor().unwrap_or(""), "source stopped");
    }
}
