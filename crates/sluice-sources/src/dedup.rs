//! De-duplication across replicas, rotations, reconnects and restarts: `dedup = { key, window }`.
//!
//! Each event gets a 64-bit key: the values at the configured JSON pointers, or a hash of the
//! whole frame (`key = "content"`). An event whose key is in the window is dropped. The window
//! holds at most `window.events` keys (memory is bounded by that) and, with a duration, forgets
//! keys older than it. Keys are never persisted on their own: after a restart the window is
//! rebuilt from the newest spooled events (the same payloads give the same keys), so a restart
//! does not re-admit what was already spooled, and the spool stays the one source of truth.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use sluice_core::json_pointer::Found;
use sluice_flow::FlowError;

use crate::config::{DedupConfig, DedupKeyConfig, MAX_WINDOW_EVENTS, config_error};
use crate::cursor::Pointer;

/// How an event's key is made.
#[derive(Debug, Clone)]
pub(crate) enum DedupKey {
    /// A hash of the whole payload.
    Content,
    /// The values at these pointers.
    Fields(Vec<Pointer>),
}

/// `dedup`, checked.
#[derive(Debug, Clone)]
pub(crate) struct DedupPlan {
    pub key: DedupKey,
    pub events: usize,
    pub duration: Option<Duration>,
}

impl DedupPlan {
    pub(crate) fn check(name: &str, cfg: DedupConfig) -> Result<DedupPlan, FlowError> {
        let key = match cfg.key {
            DedupKeyConfig::Content => DedupKey::Content,
            DedupKeyConfig::Fields(fields) => {
                if fields.is_empty() {
                    return Err(config_error(name, "`dedup.key` needs at least one JSON pointer, or \"content\""));
                }
                let mut pointers = Vec::with_capacity(fields.len());
                for f in &fields {
                    pointers.push(Pointer::parse(f).map_err(|e| config_error(name, format!("`dedup.key`: {e}")))?);
                }
                DedupKey::Fields(pointers)
            }
        };
        let events = cfg.window.events;
        if events == 0 || events > MAX_WINDOW_EVENTS {
            return Err(config_error(name, format!("`dedup.window` must hold 1 to {MAX_WINDOW_EVENTS} events")));
        }
        if cfg.window.duration.is_some_and(|d| d.is_zero()) {
            return Err(config_error(name, "`dedup.window` duration must be greater than zero"));
        }
        Ok(DedupPlan { key, events, duration: cfg.window.duration })
    }
}

/// A fixed-key hasher: keys must be the same for the same payload in every process (the
/// window is rebuilt from the spool after a restart), which a randomly seeded one is not.
#[derive(Clone, Copy, Default)]
struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = std::collections::hash_map::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        std::collections::hash_map::DefaultHasher::new()
    }
}

impl DedupKey {
    /// The key of one payload; `None` when none of the fields is there (or the payload is
    /// not JSON): such an event cannot be de-duplicated.
    pub(crate) fn of(&self, payload: &[u8]) -> Option<u64> {
        let mut h = FixedState.build_hasher();
        match self {
            DedupKey::Content => {
                h.write(payload);
            }
            DedupKey::Fields(pointers) => {
                let mut any = false;
                for p in pointers {
                    match p.find_early(payload).ok().flatten() {
                        // Strings and numbers hash as different things ("1" vs 1).
                        Some(Found::Str(s)) => {
                            h.write_u8(1);
                            h.write(s.as_bytes());
                            any = true;
                        }
                        Some(Found::Number(n)) => {
                            h.write_u8(2);
                            h.write(n.as_bytes());
                            any = true;
                        }
                        Some(Found::Composite(c)) => {
                            h.write_u8(3);
                            h.write(c.as_bytes());
                            any = true;
                        }
                        Some(Found::Bool(b)) => {
                            h.write_u8(4);
                            h.write_u8(u8::from(b));
                            any = true;
                        }
                        Some(Found::Null) | None => h.write_u8(0),
                    }
                    h.write_u8(0xff);
                }
                if !any {
                    return None;
                }
            }
        }
        Some(h.finish())
    }
}

/// The keys seen recently. Each key is in `order` at most once (a repeat is dropped, never
/// inserted), so removing the oldest entry from `seen` is exact.
pub(crate) struct DedupWindow {
    max_events: usize,
    max_age_ms: Option<u64>,
    order: VecDeque<(u64, u64)>,
    seen: HashSet<u64, FixedState>,
}

impl DedupWindow {
    pub(crate) fn new(plan: &DedupPlan) -> DedupWindow {
        DedupWindow {
            max_events: plan.events,
            max_age_ms: plan.duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            order: VecDeque::new(),
            seen: HashSet::with_hasher(FixedState),
        }
    }

    /// True if `key` is new (and now remembered as of `now_ms`); false if it is in the window.
    pub(crate) fn admit(&mut self, key: u64, now_ms: u64) -> bool {
        self.expire(now_ms);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((key, now_ms));
        while self.order.len() > self.max_events {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Forgets keys older than the duration.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        let Some(age) = self.max_age_ms else { return };
        let cutoff = now_ms.saturating_sub(age);
        while let Some(&(key, at)) = self.order.front() {
            if at >= cutoff {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }

    /// How many keys are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The oldest time a remembered key may have (what to ask the spool for on restart).
    pub(crate) fn horizon_ms(&self, now_ms: u64) -> u64 {
        self.max_age_ms.map_or(0, |age| now_ms.saturating_sub(age))
    }

    /// The most keys remembered.
    pub(crate) fn capacity(&self) -> usize {
        self.max_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowConfig;

    fn plan(key: DedupKeyConfig, events: usize, duration: Option<Duration>) -> DedupPlan {
        DedupPlan::check("t", DedupConfig { key, window: WindowConfig { events, duration } }).expect("plan")
    }

    #[test]
    fn field_keys_distinguish_types_and_combine_fields() {
        let p = plan(DedupKeyConfig::Fields(vec!["/racer".into(), "/ts".into()]), 10, None);
        let a = p.key.of(br#"{"racer":"r1","ts":5,"v":1}"#);
        let b = p.key.of(br#"{"ts":5,"v":2,"racer":"r1"}"#);
        let c = p.key.of(br#"{"racer":"r1","ts":"5"}"#);
        let d = p.key.of(br#"{"racer":"r2","ts":5}"#);
        assert!(a.is_some());
        assert_eq!(a, b, "same fields, other order and other payload");
        assert_ne!(a, c, "a string is not a number");
        assert_ne!(a, d);
        assert_eq!(p.key.of(br#"{"other":1}"#), None);
        assert_eq!(p.key.of(b"not json"), None);
        let content = plan(DedupKeyConfig::Content, 10, None);
        assert_ne!(content.key.of(b"x"), content.key.of(b"y"));
        assert_eq!(content.key.of(b"x"), content.key.of(b"x"));
    }

    #[test]
    fn the_window_is_bounded_by_count_and_age() {
        let p = plan(DedupKeyConfig::Content, 3, Some(Duration::from_millis(100)));
        let mut w = DedupWindow::new(&p);
        assert!(w.admit(1, 0));
        assert!(!w.admit(1, 10));
        assert!(w.admit(2, 20));
        assert!(w.admit(3, 30));
        assert!(w.admit(4, 40));
        assert_eq!(w.len(), 3);
        assert!(w.admit(1, 50), "key 1 fell out by count");
        assert!(!w.admit(4, 60));
        // Past the age, everything older than 100 ms is forgotten.
        assert!(w.admit(2, 200));
        assert!(w.admit(4, 200));
        assert_eq!(w.horizon_ms(1000), 900);
    }

    #[test]
    fn bad_plans_are_refused() {
        let bad = |key, events, duration| {
            DedupPlan::check("t", DedupConfig { key, window: WindowConfig { events, duration } }).is_err()
        };
        assert!(bad(DedupKeyConfig::Fields(vec![]), 10, None));
        assert!(bad(DedupKeyConfig::Fields(vec!["seq".into()]), 10, None));
        assert!(bad(DedupKeyConfig::Content, 0, None));
        assert!(bad(DedupKeyConfig::Content, MAX_WINDOW_EVENTS + 1, None));
        assert!(bad(DedupKeyConfig::Content, 10, Some(Duration::ZERO)));
    }
}
