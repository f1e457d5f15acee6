//! Gaps in an integer sequence (the cursor, or `gaps.field`).
//!
//! The highest value seen is tracked; a jump past it opens a range of missing values. A range
//! counts as a gap (`sluice_source_gaps_total`, and its size in `sluice_source_missing_total`)
//! once `wait` has passed without another replica filling it; values that arrive meanwhile
//! shrink or split it. With one connection `wait` is zero: a jump is counted at once.

use std::collections::BTreeMap;

/// Most open ranges kept; beyond that the oldest is counted at once (bounded memory).
const MAX_OPEN: usize = 10_000;

/// What one value was, relative to what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The next value (or the first one).
    Next,
    /// A jump: values in between are missing (for now).
    Jump,
    /// A value that was missing: it fills (part of) an open range.
    Fill,
    /// At or below the highest value and not missing: a repeat.
    Old,
}

/// A counted gap: values `from..=to` never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    pub from: i128,
    pub to: i128,
}

impl Gap {
    pub(crate) fn missing(&self) -> u64 {
        u64::try_from(self.to.saturating_sub(self.from).saturating_add(1)).unwrap_or(u64::MAX)
    }
}

/// Open ranges by their first value: `(last value, deadline ms)`.
#[derive(Debug)]
pub(crate) struct GapTracker {
    high: Option<i128>,
    open: BTreeMap<i128, (i128, u64)>,
    wait_ms: u64,
}

impl GapTracker {
    /// Starts after `high` (e.g. the spool's last cursor), if known.
    pub(crate) fn new(high: Option<i128>, wait_ms: u64) -> GapTracker {
        GapTracker { high, open: BTreeMap::new(), wait_ms }
    }

    /// The highest value seen.
    #[cfg(test)]
    pub(crate) fn high(&self) -> Option<i128> {
        self.high
    }

    /// Records `value`; gaps that are due (with zero `wait`, the jump itself) go to `due`.
    pub(crate) fn observe(&mut self, value: i128, now_ms: u64, due: &mut Vec<Gap>) -> Seen {
        let seen = match self.high {
            None => {
                self.high = Some(value);
                Seen::Next
            }
            Some(high) if value == high.saturating_add(1) => {
                self.high = Some(value);
                Seen::Next
            }
            Some(high) if value > high => {
                self.open.insert(high + 1, (value - 1, now_ms.saturating_add(self.wait_ms)));
                self.high = Some(value);
                Seen::Jump
            }
            Some(_) => self.fill(value),
        };
        while self.open.len() > MAX_OPEN {
            if let Some((from, (to, _))) = self.open.pop_first() {
                due.push(Gap { from, to });
            }
        }
        self.expire(now_ms, due);
        seen
    }

    fn fill(&mut self, value: i128) -> Seen {
        let Some((&from, &(to, deadline))) = self.open.range(..=value).next_back() else {
            return Seen::Old;
        };
        if value > to {
            return Seen::Old;
        }
        self.open.remove(&from);
        if from < value {
            self.open.insert(from, (value - 1, deadline));
        }
        if value < to {
            self.open.insert(value + 1, (to, deadline));
        }
        Seen::Fill
    }

    /// Moves ranges whose deadline has passed to `due`, oldest first.
    pub(crate) fn expire(&mut self, now_ms: u64, due: &mut Vec<Gap>) {
        if self.open.is_empty() {
            return;
        }
        let expired: Vec<i128> =
            self.open.iter().filter(|(_, (_, deadline))| *deadline <= now_ms).map(|(from, _)| *from).collect();
        for from in expired {
            if let Some((to, _)) = self.open.remove(&from) {
                due.push(Gap { from, to });
            }
        }
    }

    /// Whether `value` is currently missing.
    #[cfg(test)]
    fn is_open(&self, value: i128) -> bool {
        self.open.range(..=value).next_back().is_some_and(|(_, (to, _))| value <= *to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_wait_a_jump_is_a_gap_at_once() {
        let mut g = GapTracker::new(Some(10), 0);
        let mut due = Vec::new();
        assert_eq!(g.observe(11, 0, &mut due), Seen::Next);
        assert_eq!(g.observe(15, 0, &mut due), Seen::Jump);
        assert_eq!(due, [Gap { from: 12, to: 14 }]);
        assert_eq!(due[0].missing(), 3);
        assert_eq!(g.observe(13, 0, &mut due), Seen::Old, "already counted");
        assert_eq!(g.observe(15, 0, &mut due), Seen::Old);
        assert_eq!(g.high(), Some(15));
    }

    #[test]
    fn fills_within_the_wait_shrink_or_cancel_the_gap() {
        let mut g = GapTracker::new(None, 100);
        let mut due = Vec::new();
        g.observe(1, 0, &mut due);
        assert_eq!(g.observe(10, 0, &mut due), Seen::Jump);
        assert!(due.is_empty());
        for v in [2, 3, 9, 5] {
            assert_eq!(g.observe(v, 10, &mut due), Seen::Fill, "{v}");
        }
        assert!(g.is_open(4) && g.is_open(6) && g.is_open(8) && !g.is_open(5));
        assert_eq!(g.observe(5, 20, &mut due), Seen::Old);
        g.expire(99, &mut due);
        assert!(due.is_empty());
        g.expire(100, &mut due);
        assert_eq!(due, [Gap { from: 4, to: 4 }, Gap { from: 6, to: 8 }]);
        // A fully filled jump counts nothing.
        due.clear();
        g.observe(12, 200, &mut due);
        g.observe(11, 210, &mut due);
        g.expire(1000, &mut due);
        assert!(due.is_empty());
    }

    #[test]
    fn open_ranges_are_bounded() {
        let mut g = GapTracker::new(Some(0), 1_000_000);
        let mut due = Vec::new();
        for i in 0..(MAX_OPEN as i128 + 5) {
            g.observe(i * 2 + 2, 0, &mut due);
        }
        assert_eq!(due.len(), 5);
        assert_eq!(due[0], Gap { from: 1, to: 1 });
    }
}
