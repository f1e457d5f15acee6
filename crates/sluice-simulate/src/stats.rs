//! Counters for `/stats`, the status line and tests. Relaxed atomics: each is an independent tally.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Default)]
pub(crate) struct Counters {
    generated: AtomicU64,
    clients: AtomicU64,
    connections: AtomicU64,
    messages_sent: AtomicU64,
    cuts_close: AtomicU64,
    cuts_abort: AtomicU64,
    stalls: AtomicU64,
    lagged: AtomicU64,
    resume_gaps: AtomicU64,
    garbage_frames: AtomicU64,
}

/// A snapshot of the simulator's counters, as served by `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Messages generated so far; also the newest `seq`.
    pub generated: u64,
    /// Oldest `seq` still kept for resume (0 while nothing is kept).
    pub oldest_kept: u64,
    /// Clients connected right now (all endpoints).
    pub clients: u64,
    /// Feed connections accepted since start.
    pub connections: u64,
    /// Feed messages written to clients (garbage frames not included).
    pub messages_sent: u64,
    /// Connections cut with a close frame / end of body.
    pub cuts_close: u64,
    /// Connections dropped without a close frame.
    pub cuts_abort: u64,
    /// Stalls started.
    pub stalls: u64,
    /// Clients cut because they fell a whole broadcast ring behind.
    pub lagged: u64,
    /// Resumes whose cursor was older than the history kept.
    pub resume_gaps: u64,
    /// Non-JSON frames sent.
    pub garbage_frames: u64,
}

impl SimStats {
    /// All cuts, whatever their mode.
    pub fn cuts(&self) -> u64 {
        self.cuts_close + self.cuts_abort
    }
}

impl Counters {
    pub(crate) fn add_generated(&self, n: u64) {
        self.generated.fetch_add(n, Relaxed);
    }
    pub(crate) fn generated(&self) -> u64 {
        self.generated.load(Relaxed)
    }
    pub(crate) fn client_connected(&self) {
        self.clients.fetch_add(1, Relaxed);
        self.connections.fetch_add(1, Relaxed);
    }
    pub(crate) fn client_gone(&self) {
        self.clients.fetch_sub(1, Relaxed);
    }
    pub(crate) fn clients(&self) -> u64 {
        self.clients.load(Relaxed)
    }
    pub(crate) fn add_sent(&self, n: u64) {
        self.messages_sent.fetch_add(n, Relaxed);
    }
    pub(crate) fn cut_close(&self) {
        self.cuts_close.fetch_add(1, Relaxed);
    }
    pub(crate) fn cut_abort(&self) {
        self.cuts_abort.fetch_add(1, Relaxed);
    }
    pub(crate) fn stall(&self) {
        self.stalls.fetch_add(1, Relaxed);
    }
    pub(crate) fn lagged(&self) {
        self.lagged.fetch_add(1, Relaxed);
    }
    pub(crate) fn resume_gap(&self) {
        self.resume_gaps.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_garbage(&self, n: u64) {
        self.garbage_frames.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self, oldest_kept: u64) -> SimStats {
        SimStats {
            generated: self.generated.load(Relaxed),
            oldest_kept,
            clients: self.clients.load(Relaxed),
            connections: self.connections.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            cuts_close: self.cuts_close.load(Relaxed),
            cuts_abort: self.cuts_abort.load(Relaxed),
            stalls: self.stalls.load(Relaxed),
            lagged: self.lagged.load(Relaxed),
            resume_gaps: self.resume_gaps.load(Relaxed),
            garbage_frames: self.garbage_frames.load(Relaxed),
        }
    }
}
