//! Make-before-break rotation of one connection slot, de-duplicated by **position**.
//!
//! Both connections of a rotation carry the same provider stream, so the new one's messages
//! are a stretch of the old one's, shifted. Every message has a fingerprint (its cursor, or a
//! hash of the payload when there is none). The slot keeps the fingerprints of its recent
//! forwarded messages (`tail`). While the new connection is up next to the old one:
//!
//! 1. the old one keeps forwarding; the new one's messages are held;
//! 2. the hand-over point is where the held messages sit in the old stream: every position of
//!    the tail holding the first held fingerprint is a candidate, and a candidate survives
//!    only while every overlapping pair agrees (held\[k\] = tail\[c + k\]), as both streams go
//!    on. When exactly one candidate is left and it agrees over at least [`MIN_ALIGN`]
//!    messages, the streams are aligned and the slot switches: held messages the old
//!    connection already forwarded are dropped (counted as `rotation` duplicates), the rest
//!    are forwarded;
//! 3. after the switch, copies still in flight on either side are reconciled in order (the
//!    side behind owes the other's messages, one for one) until `rotation_overlap` passes.
//!
//! Payloads that legitimately repeat are therefore never taken for copies unless they sit at
//! the aligned position. When no unique alignment is found in time (or the old connection
//! drops first without one), nothing is guessed: everything held is forwarded and counted as
//! unaligned (`sluice_source_rotation_unaligned_total`), so an event may be duplicated but
//! is never lost.

use std::collections::VecDeque;

/// Fingerprints of recent forwarded messages kept per slot (only with rotation on).
const TAIL: usize = 16_384;
/// Agreeing messages needed to accept a unique alignment before the overlap time is up.
pub(crate) const MIN_ALIGN: usize = 16;
/// Most messages held from the new connection (or owed by one side) during a rotation.
const HELD_MAX: usize = 100_000;
/// Most candidate positions followed at once (a stream of identical messages has one per
/// message; beyond this the alignment is ambiguous anyway).
const CANDIDATES_MAX: usize = 4096;

/// Counts of what a step did besides forwarding.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Copies dropped (the other connection forwarded them).
    pub dropped: u64,
    /// Messages forwarded without a known alignment (may be copies).
    pub unaligned: u64,
}

enum Phase<T> {
    Steady,
    /// The new connection is up; its messages are held.
    Overlap {
        held: VecDeque<(u64, T)>,
        candidates: Vec<u64>,
    },
    /// Switched: copies each side still owes the other, in order.
    Handover {
        owed_by_new: VecDeque<u64>,
        owed_by_old: VecDeque<u64>,
        old_alive: bool,
        reconcile: bool,
    },
}

/// The rotation state of one connection slot. `T` is a message as the caller forwards it.
pub(crate) struct Rotation<T> {
    enabled: bool,
    tail: VecDeque<u64>,
    /// Absolute position of `tail[0]`.
    tail_start: u64,
    phase: Phase<T>,
    counts: Counts,
}

impl<T> Rotation<T> {
    /// `enabled`: rotation is configured (otherwise nothing is recorded).
    pub(crate) fn new(enabled: bool) -> Rotation<T> {
        Rotation { enabled, tail: VecDeque::new(), tail_start: 0, phase: Phase::Steady, counts: Counts::default() }
    }

    fn tail_end(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    fn at(&self, pos: u64) -> Option<u64> {
        pos.checked_sub(self.tail_start).and_then(|i| self.tail.get(i as usize)).copied()
    }

    fn record(&mut self, fp: u64) {
        if !self.enabled {
            return;
        }
        self.tail.push_back(fp);
        if self.tail.len() > TAIL {
            self.tail.pop_front();
            self.tail_start += 1;
            let start = self.tail_start;
            if let Phase::Overlap { candidates, .. } = &mut self.phase {
                candidates.retain(|&c| c >= start);
            }
        }
    }

    /// Takes the counts gathered since the last call.
    pub(crate) fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Whether a rotation's new connection is being held.
    pub(crate) fn overlapping(&self) -> bool {
        matches!(self.phase, Phase::Overlap { .. })
    }

    /// A message of the connection being forwarded from. During an overlap this is the old
    /// connection; returns true when the streams are now aligned (switch now).
    pub(crate) fn on_current(&mut self, fp: u64, item: T, out: &mut Vec<T>) -> bool {
        match &mut self.phase {
            Phase::Steady => {
                self.record(fp);
                out.push(item);
                false
            }
            Phase::Overlap { .. } => {
                let pos = self.tail_end();
                out.push(item);
                self.record(fp);
                if let Phase::Overlap { held, candidates } = &mut self.phase {
                    candidates.retain(|&c| {
                        let k = (pos - c) as usize;
                        k >= held.len() || held[k].0 == fp
                    });
                    if held.front().is_some_and(|(f, _)| *f == fp) && candidates.len() < CANDIDATES_MAX {
                        candidates.push(pos);
                    }
                }
                self.aligned(false).is_some()
            }
            Phase::Handover { owed_by_new, reconcile, .. } => {
                // The new connection, switched to.
                if *reconcile && let Some(&front) = owed_by_new.front() {
                    if front == fp {
                        owed_by_new.pop_front();
                        self.counts.dropped += 1;
                        return false;
                    }
                    // The streams disagree: stop reconciling, forward.
                    owed_by_new.clear();
                    *reconcile = false;
                    self.counts.unaligned += 1;
                }
                let Phase::Handover { owed_by_old, old_alive, reconcile, .. } = &mut self.phase else {
                    return false;
                };
                if *reconcile && *old_alive && owed_by_old.len() < HELD_MAX {
                    owed_by_old.push_back(fp);
                }
                self.record(fp);
                out.push(item);
                false
            }
        }
    }

    /// The new connection is up: hold its messages from now on.
    pub(crate) fn begin(&mut self) {
        self.phase = Phase::Overlap { held: VecDeque::new(), candidates: Vec::new() };
    }

    /// A message of a rotation's new connection before the switch; returns true when the
    /// slot should switch now (aligned, or too much held).
    pub(crate) fn on_new(&mut self, fp: u64, item: T) -> bool {
        let first_positions: Option<Vec<u64>> = match &self.phase {
            Phase::Overlap { held, .. } if held.is_empty() => Some(
                self.tail
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| **f == fp)
                    .map(|(i, _)| self.tail_start + i as u64)
                    .take(CANDIDATES_MAX)
                    .collect(),
            ),
            _ => None,
        };
        let end = self.tail_end();
        let start = self.tail_start;
        let tail = &self.tail;
        let Phase::Overlap { held, candidates } = &mut self.phase else {
            return false;
        };
        let k = held.len() as u64;
        held.push_back((fp, item));
        match first_positions {
            Some(found) => *candidates = found,
            None => candidates.retain(|&c| c + k >= end || tail[(c + k - start) as usize] == fp),
        }
        held.len() >= HELD_MAX || self.aligned(false).is_some()
    }

    /// The hand-over position: the unique surviving candidate, once it agrees over
    /// [`MIN_ALIGN`] messages (or over any when `at_deadline`).
    fn aligned(&self, at_deadline: bool) -> Option<u64> {
        let Phase::Overlap { held, candidates } = &self.phase else { return None };
        let [c] = candidates.as_slice() else { return None };
        let overlap = (held.len() as u64).min(self.tail_end() - c) as usize;
        let needed = if at_deadline { 1 } else { MIN_ALIGN };
        (overlap >= needed).then_some(*c)
    }

    /// Switches to the new connection: forwards into `out` what it held that the old one did
    /// not forward. `old_alive`: the old connection may still deliver messages in flight.
    pub(crate) fn switch(&mut self, old_alive: bool, out: &mut Vec<T>) {
        let aligned = self.aligned(true);
        let Phase::Overlap { held, .. } = std::mem::replace(&mut self.phase, Phase::Steady) else {
            return;
        };
        let mut owed_by_new = VecDeque::new();
        let mut owed_by_old = VecDeque::new();
        let reconcile = aligned.is_some();
        match aligned {
            Some(c) => {
                let n = held.len() as u64;
                let m = self.tail_end() - c;
                if n <= m {
                    self.counts.dropped += n;
                    owed_by_new = (c + n..self.tail_end()).filter_map(|p| self.at(p)).collect();
                    // `held` is dropped: all copies.
                } else {
                    self.counts.dropped += m;
                    for (fp, item) in held.into_iter().skip(m as usize) {
                        self.record(fp);
                        if old_alive {
                            owed_by_old.push_back(fp);
                        }
                        out.push(item);
                    }
                }
            }
            None => {
                self.counts.unaligned += held.len() as u64;
                for (fp, item) in held {
                    self.record(fp);
                    out.push(item);
                }
            }
        }
        self.phase = Phase::Handover { owed_by_new, owed_by_old, old_alive, reconcile };
    }

    /// A message of the old connection after the switch (in flight when it was closed).
    pub(crate) fn on_old(&mut self, fp: u64, item: T, out: &mut Vec<T>) {
        let Phase::Handover { owed_by_new, owed_by_old, reconcile, .. } = &mut self.phase else {
            // Not reconciling any more: forward it.
            self.record(fp);
            out.push(item);
            return;
        };
        if *reconcile {
            match owed_by_old.front() {
                Some(&front) if front == fp => {
                    owed_by_old.pop_front();
                    self.counts.dropped += 1;
                    return;
                }
                Some(_) => {
                    owed_by_old.clear();
                    owed_by_new.clear();
                    *reconcile = false;
                    self.counts.unaligned += 1;
                }
                None => {
                    // The old connection is ahead: the new one owes this message.
                    if owed_by_new.len() < HELD_MAX {
                        owed_by_new.push_back(fp);
                    }
                }
            }
        }
        self.record(fp);
        out.push(item);
    }

    /// The old connection is gone: it owes nothing any more.
    pub(crate) fn old_ended(&mut self) {
        if let Phase::Handover { owed_by_old, old_alive, .. } = &mut self.phase {
            owed_by_old.clear();
            *old_alive = false;
        }
    }

    /// The rotation was abandoned before the switch (the new connection failed): what it held
    /// is dropped, the old connection delivers it.
    pub(crate) fn abandon(&mut self) {
        if self.overlapping() {
            self.phase = Phase::Steady;
        }
    }

    /// `rotation_overlap` after the switch: stop reconciling.
    pub(crate) fn finish(&mut self) {
        if matches!(self.phase, Phase::Handover { .. }) {
            self.phase = Phase::Steady;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broadcast stream where values repeat a lot (a small alphabet).
    fn stream(len: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) % 5
            })
            .collect()
    }

    /// Plays a rotation: the old connection has forwarded `s[..old_before]`; the new one
    /// starts at `s[new_start]`; then both go on, interleaved with the new one `lag` messages
    /// behind (negative: ahead). Returns what was forwarded, in order.
    fn play(s: &[u64], old_before: usize, new_start: usize, lag: isize) -> (Vec<u64>, Counts) {
        let mut r: Rotation<u64> = Rotation::new(true);
        let mut out = Vec::new();
        for &v in &s[..old_before] {
            r.on_current(v, v, &mut out);
        }
        r.begin();
        let (mut old, mut new) = (old_before, new_start);
        let mut switched = false;
        // Before the switch: feed both sides so that new - old stays around -lag.
        while !switched && old < s.len() && new < s.len() {
            if (new as isize - old as isize) < -lag {
                switched = r.on_new(s[new], s[new]);
                new += 1;
            } else {
                switched = r.on_current(s[old], s[old], &mut out);
                old += 1;
            }
        }
        assert!(switched, "never aligned");
        r.switch(true, &mut out);
        // The old connection delivers a few more in flight, then the new one goes on.
        for &v in s.iter().take(old + 3).skip(old) {
            r.on_old(v, v, &mut out);
        }
        r.old_ended();
        for &v in &s[new..] {
            r.on_current(v, v, &mut out);
        }
        (out, r.take_counts())
    }

    #[test]
    fn repeating_payloads_are_handed_over_without_loss_or_copies() {
        for seed in 0..20 {
            let s = stream(3000, seed);
            for (new_start, lag) in [(500, 0), (480, 20), (500, 5), (520, -20), (300, 200)] {
                let (out, counts) = play(&s, 500, new_start, lag);
                assert_eq!(out, s, "seed {seed} new_start {new_start} lag {lag}: {counts:?}");
                assert_eq!(counts.unaligned, 0);
            }
        }
    }

    #[test]
    fn without_an_alignment_everything_held_is_forwarded_and_counted() {
        let mut r: Rotation<u64> = Rotation::new(true);
        let mut out = Vec::new();
        for v in 0..100 {
            r.on_current(v, v, &mut out);
        }
        r.begin();
        for v in 1000..1005 {
            assert!(!r.on_new(v, v));
        }
        r.switch(false, &mut out);
        assert_eq!(out.len(), 105);
        assert_eq!(r.take_counts(), Counts { dropped: 0, unaligned: 5 });
    }

    #[test]
    fn an_ambiguous_periodic_stream_is_not_guessed() {
        let mut r: Rotation<u64> = Rotation::new(true);
        let mut out = Vec::new();
        for i in 0..200 {
            r.on_current(i % 4, i, &mut out);
        }
        r.begin();
        for i in 0..40 {
            assert!(!r.on_new(i % 4, 1000 + i), "aligned on a periodic stream at {i}");
        }
        r.switch(true, &mut out);
        assert_eq!(r.take_counts().unaligned, 40);
    }

    #[test]
    fn an_abandoned_rotation_drops_what_was_held() {
        let mut r: Rotation<u64> = Rotation::new(true);
        let mut out = Vec::new();
        r.on_current(1, 1, &mut out);
        r.begin();
        r.on_new(2, 2);
        r.abandon();
        r.on_current(2, 2, &mut out);
        assert_eq!(out, [1, 2]);
        assert!(!r.overlapping());
    }
}
