//! Tumbling-window state of one shard. Pure (the caller passes times in), so the rules are
//! unit-tested here.
//!
//! Windows are fixed slices of `size` of the records' arrival time, aligned to the epoch. A
//! shard has at most one open window: its state starts as `{}`, and each successful invocation's
//! answer replaces it. The window closes with one final invocation (no records, its last state,
//! `isFinalInvokeForWindow = true`) when a record of a later window comes, when the input ends,
//! or when nothing arrived for `grace` after its end (the lane also waits `grace` after its
//! last record, see `sink`). A state over 1 MB ends the window early:
//! a final invocation with `isWindowTerminatedEarly = true`, and the same window goes on with a
//! fresh state.

use serde_json::{Value, json};

use super::event::WindowFields;

/// Largest state carried between invocations (Lambda: 1 MB per shard).
pub const MAX_STATE_BYTES: usize = 1024 * 1024;

/// The open window of one shard.
#[derive(Debug, Clone)]
pub struct ShardWindow {
    size_ms: u64,
    open: Option<(u64, Value)>,
}

impl ShardWindow {
    /// Windows of `size_ms` (> 0).
    pub fn new(size_ms: u64) -> ShardWindow {
        ShardWindow { size_ms: size_ms.max(1), open: None }
    }

    /// Start of the window holding `arrival_ms`.
    pub fn start_of(&self, arrival_ms: u64) -> u64 {
        arrival_ms - arrival_ms % self.size_ms
    }

    /// The window a record arriving at `arrival_ms` belongs to: its own, or the open one if
    /// that is later. A stream's arrival times only grow per shard, but the pseudo-shard's
    /// receive times of two inputs may interleave a little; a straggler joins the open window
    /// rather than reopening a closed one.
    pub fn place(&self, arrival_ms: u64) -> u64 {
        let own = self.start_of(arrival_ms);
        self.open.as_ref().map_or(own, |(open, _)| own.max(*open))
    }

    /// Makes the window starting at `start` the open one; returns the final invocation of the
    /// window it replaces, if another was open.
    pub fn enter(&mut self, start: u64) -> Option<WindowFields> {
        if self.open.as_ref().is_some_and(|(s, _)| *s == start) {
            return None;
        }
        let closed = self.close();
        self.open = Some((start, json!({})));
        closed
    }

    /// The fields of a regular (not final) invocation of the open window.
    pub fn fields(&self) -> Option<WindowFields> {
        self.open.as_ref().map(|(start, state)| WindowFields {
            start_ms: *start,
            end_ms: start + self.size_ms,
            state: state.clone(),
            is_final: false,
            terminated_early: false,
        })
    }

    /// Keeps the state an invocation returned; returns an early final invocation if it is over
    /// [`MAX_STATE_BYTES`] (the window then goes on with `{}`).
    pub fn update(&mut self, state: Value) -> Option<WindowFields> {
        let (start, slot) = self.open.as_mut()?;
        let too_big = serde_json::to_vec(&state).map_or(true, |b| b.len() > MAX_STATE_BYTES);
        if !too_big {
            *slot = state;
            return None;
        }
        *slot = json!({});
        Some(WindowFields {
            start_ms: *start,
            end_ms: *start + self.size_ms,
            state,
            is_final: true,
            terminated_early: true,
        })
    }

    /// When the open window should be closed for lack of records: `grace` after its end.
    pub fn due_ms(&self, grace_ms: u64) -> Option<u64> {
        self.open.as_ref().map(|(start, _)| start + self.size_ms + grace_ms)
    }

    /// Closes the open window; returns its final invocation.
    pub fn close(&mut self) -> Option<WindowFields> {
        let (start, state) = self.open.take()?;
        Some(WindowFields {
            start_ms: start,
            end_ms: start + self.size_ms,
            state,
            is_final: true,
            terminated_early: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_carries_within_a_window_and_resets_after() {
        let mut w = ShardWindow::new(10_000);
        assert_eq!(w.start_of(12_345), 10_000);
        assert_eq!(w.enter(10_000), None);
        assert_eq!(w.fields().map(|f| f.state), Some(json!({})));
        assert_eq!(w.update(json!({"sum": 5})), None);
        assert_eq!(w.enter(10_000), None, "same window: nothing closes");
        assert_eq!(w.fields().map(|f| (f.state, f.is_final)), Some((json!({"sum": 5}), false)));
        let fin = w.enter(20_000).expect("the earlier window closes");
        assert_eq!(
            (fin.start_ms, fin.end_ms, fin.state, fin.is_final, fin.terminated_early),
            (10_000, 20_000, json!({"sum": 5}), true, false)
        );
        assert_eq!(w.fields().map(|f| (f.start_ms, f.state)), Some((20_000, json!({}))));
        assert_eq!(w.due_ms(1_000), Some(31_000));
        assert!(w.close().is_some_and(|f| f.is_final));
        assert_eq!((w.close(), w.due_ms(0)), (None, None));
    }

    #[test]
    fn a_straggler_joins_the_open_window() {
        let mut w = ShardWindow::new(1_000);
        assert_eq!(w.place(2_500), 2_000);
        w.enter(2_000);
        assert_eq!((w.place(1_999), w.place(2_999), w.place(3_000)), (2_000, 2_000, 3_000));
    }

    #[test]
    fn an_oversized_state_ends_the_window_early() {
        let mut w = ShardWindow::new(1_000);
        w.enter(0);
        let big = json!({"blob": "x".repeat(MAX_STATE_BYTES)});
        let fin = w.update(big.clone()).expect("ended early");
        assert!(fin.is_final && fin.terminated_early && fin.state == big);
        assert_eq!(w.fields().map(|f| (f.start_ms, f.state)), Some((0, json!({}))), "same window, fresh state");
    }
}
