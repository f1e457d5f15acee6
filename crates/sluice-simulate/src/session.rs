//! One client connection, whatever its transport: where it starts (live, `?after=`, `Last-Event-ID`, or a
//! WebSocket subscribe message), replay from history, live delivery from the broadcast, and the faults
//! injected into it (cuts, stalls, garbage frames).
//!
//! Guarantee: the messages a session sends have strictly increasing, gap-free `seq` (garbage frames
//! aside), unless the resume cursor was older than the history kept, which is counted as a resume gap.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Instant, sleep_until};

use crate::config::{ConnOptions, CutMode};
use crate::feed::{Msg, stopped};
use crate::server::Shared;
use crate::transport::{CloseReason, Gone, Inbound, Transport};

/// Messages taken from history or the broadcast per write.
const BATCH: usize = 1024;

/// Drives one connection until it ends. `rx` must have been subscribed when the request arrived, so
/// "live" means from the moment of connecting.
pub(crate) async fn run(shared: Arc<Shared>, transport: Transport, opts: ConnOptions, rx: broadcast::Receiver<Msg>) {
    let counters = &shared.feed.counters;
    counters.client_connected();
    let _gone = ClientGuard(Arc::clone(&shared));
    let mut session = Session::new(shared.clone(), opts, rx);
    let ending = session.drive(transport).await;
    match ending {
        Ending::Cut(transport) => {
            let abort = match session.opts.cut_mode {
                CutMode::Close => false,
                CutMode::Abort => true,
                CutMode::Mixed => shared.mixed_cuts.fetch_add(1, Ordering::Relaxed) % 2 == 1,
            };
            if abort {
                counters.cut_abort();
                transport.abort();
            } else {
                counters.cut_close();
                transport.close(CloseReason::Cut).await;
            }
        }
        Ending::Close(transport, reason) => transport.close(reason).await,
        Ending::Gone => {}
    }
}

struct ClientGuard(Arc<Shared>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.feed.counters.client_gone();
    }
}

enum Ending {
    Cut(Transport),
    Close(Transport, CloseReason),
    Gone,
}

struct Session {
    shared: Arc<Shared>,
    opts: ConnOptions,
    rx: broadcast::Receiver<Msg>,
    /// The last seq sent (or the resume position); `None` until the first live message.
    cursor: Option<u64>,
    /// Still reading history: the broadcast is only used once history has been caught up with.
    replaying: bool,
    /// Whether the resume gap (if any) has been counted.
    gap_checked: bool,
    /// Frames written, for `garbage_every`.
    frames: u64,
    batch: Vec<Msg>,
}

impl Session {
    fn new(shared: Arc<Shared>, opts: ConnOptions, rx: broadcast::Receiver<Msg>) -> Session {
        Session {
            shared,
            cursor: opts.after,
            replaying: opts.after.is_some(),
            gap_checked: false,
            opts,
            rx,
            frames: 0,
            batch: Vec::with_capacity(BATCH),
        }
    }

    async fn drive(&mut self, mut t: Transport) -> Ending {
        let started = Instant::now();
        let never = started + Duration::from_secs(100 * 365 * 24 * 3600);
        let cut_at = self.opts.cut_after.map_or(never, |d| started + d);
        let mut next_stall = self.opts.stall_every.map_or(never, |d| started + d);
        let mut stalled_until: Option<Instant> = None;
        let mut pending_pongs = 0u32;
        // A WebSocket client without ?after= may still say where to start, within the subscribe window.
        let mut subscribe_until =
            (t.is_websocket() && self.opts.after.is_none() && !self.opts.subscribe_wait.is_zero())
                .then(|| started + self.opts.subscribe_wait);
        let mut shutdown = self.shared.shutdown.clone();

        loop {
            let sending = stalled_until.is_none() && subscribe_until.is_none();
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return Ending::Close(t, CloseReason::Shutdown),
                _ = sleep_until(cut_at) => return Ending::Cut(t),
                _ = sleep_until(stalled_until.unwrap_or(never)), if stalled_until.is_some() => {
                    stalled_until = None;
                    for _ in 0..std::mem::take(&mut pending_pongs) {
                        if t.pong().await.is_err() {
                            return Ending::Gone;
                        }
                    }
                }
                _ = sleep_until(next_stall), if stalled_until.is_none() => {
                    let now = Instant::now();
                    let until = now + self.opts.stall_for;
                    stalled_until = Some(until);
                    next_stall = self.opts.stall_every.map_or(never, |every| until + every);
                    self.shared.feed.counters.stall();
                    // What was written before the stall should not sit in a buffer during it.
                    if t.flush().await.is_err() {
                        return Ending::Gone;
                    }
                }
                _ = sleep_until(subscribe_until.unwrap_or(never)), if subscribe_until.is_some() => {
                    subscribe_until = None;
                }
                inbound = t.inbound() => match inbound {
                    Inbound::Subscribe(after) if subscribe_until.is_some() => {
                        subscribe_until = None;
                        if after.is_some() {
                            self.cursor = after;
                            self.replaying = true;
                        }
                    }
                    Inbound::Ping if stalled_until.is_some() => pending_pongs += 1,
                    Inbound::Ping => {
                        if t.pong().await.is_err() {
                            return Ending::Gone;
                        }
                    }
                    Inbound::Closed => return Ending::Gone,
                    Inbound::Subscribe(_) | Inbound::Other => {}
                },
                _ = std::future::ready(()), if sending && self.replaying => {
                    self.read_history();
                    if let Err(ending) = self.send_batch(&mut t, cut_at).await {
                        return ending.into_ending(t);
                    }
                }
                received = self.rx.recv(), if sending && !self.replaying => {
                    let intact = match received {
                        Ok(msg) => self.take_live(msg),
                        Err(RecvError::Lagged(_)) => {
                            self.batch.clear();
                            false
                        }
                        Err(RecvError::Closed) => return Ending::Close(t, CloseReason::Shutdown),
                    };
                    if let Err(ending) = self.send_batch(&mut t, cut_at).await {
                        return ending.into_ending(t);
                    }
                    if !intact {
                        self.shared.feed.counters.lagged();
                        return Ending::Close(t, CloseReason::Lagged);
                    }
                }
            }
        }
    }

    /// Fills the batch from history after the cursor; switches to live once history is caught up with.
    fn read_history(&mut self) {
        self.batch.clear();
        let cursor = self.cursor.unwrap_or(0);
        let gap = self.shared.feed.history().read_after(cursor, BATCH, &mut self.batch);
        if !self.gap_checked {
            self.gap_checked = true;
            if gap {
                self.shared.feed.counters.resume_gap();
            }
        }
        if self.batch.len() < BATCH {
            // Anything newer than what was read reaches the receiver, which was subscribed before.
            self.replaying = false;
        }
        if let Some(last) = self.batch.last() {
            self.cursor = Some(last.seq);
        }
    }

    /// Fills the batch with `first` and whatever else the broadcast already holds, dropping what the
    /// history replay has sent already. Returns false if the receiver lagged: the messages in the batch
    /// are still contiguous, but the next ones are lost, so the client must be cut after this batch.
    fn take_live(&mut self, first: Msg) -> bool {
        self.batch.clear();
        let mut next = Some(first);
        while let Some(msg) = next {
            match self.cursor {
                Some(c) if msg.seq <= c => {}
                // Only a lag can skip messages; never send past a hole.
                Some(c) if msg.seq > c + 1 => return false,
                _ => {
                    self.cursor = Some(msg.seq);
                    self.batch.push(msg);
                }
            }
            if self.batch.len() >= BATCH {
                break;
            }
            next = match self.rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(TryRecvError::Lagged(_)) => return false,
                Err(TryRecvError::Empty | TryRecvError::Closed) => None,
            };
        }
        true
    }

    /// Writes the batch (with garbage frames interleaved) and flushes; gives up at the cut time so a
    /// client that stopped reading is still cut on schedule.
    async fn send_batch(&mut self, t: &mut Transport, cut_at: Instant) -> Result<(), Interrupted> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut shutdown = self.shared.shutdown.clone();
        let (batch, frames, garbage_every) = (&self.batch, &mut self.frames, self.opts.garbage_every);
        let write = async {
            let mut garbage = 0u64;
            for msg in batch {
                if let Some(every) = garbage_every
                    && (*frames + 1) % every == 0
                {
                    *frames += 1;
                    garbage += 1;
                    let text = format!("garbage frame {} after seq {}: this is not JSON {{", *frames, msg.seq - 1);
                    t.garbage(&text).await?;
                }
                t.message(msg).await?;
                *frames += 1;
            }
            t.flush().await?;
            Ok::<u64, Gone>(garbage)
        };
        let sent = self.batch.len() as u64;
        tokio::select! {
            biased;
            written = write => match written {
                Ok(garbage) => {
                    self.shared.feed.counters.add_sent(sent);
                    self.shared.feed.counters.add_garbage(garbage);
                    Ok(())
                }
                Err(Gone) => Err(Interrupted::Gone),
            },
            _ = sleep_until(cut_at) => Err(Interrupted::Cut),
            _ = stopped(&mut shutdown) => Err(Interrupted::Shutdown),
        }
    }
}

enum Interrupted {
    Gone,
    Cut,
    Shutdown,
}

impl Interrupted {
    fn into_ending(self, t: Transport) -> Ending {
        match self {
            Interrupted::Gone => Ending::Gone,
            Interrupted::Cut => Ending::Cut(t),
            Interrupted::Shutdown => Ending::Close(t, CloseReason::Shutdown),
        }
    }
}
