//! What happens to one received message before it becomes an [`Event`]: the size limit, the
//! cursor (JSON pointer or the transport's own id), de-duplication and gap detection, and the
//! overlap of a rotation. Owned by the supervisor task alone, so there is no locking.
//!
//! # Rotation
//!
//! While a rotation's new connection is up next to the old one, the old one keeps forwarding
//! and the new one's messages are held back. The switch comes as soon as the two streams meet:
//! the new connection delivers something the old one already forwarded (it is at or behind the
//! old one), or the old connection delivers something the new one holds (it has caught up with
//! a new connection that is ahead), so whatever the old connection still has in flight is not
//! lost. (The switch also comes when the old connection ends, when `rotation_overlap` elapses,
//! or when too much is held.) From the switch on, each message forwarded from one connection
//! cancels one copy from the other: by cursor when there is one, otherwise by payload (a
//! hash), compared against the old connection's recent messages and the new one's since the
//! switch. `rotation_overlap` after the switch the comparison stops.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Instant;

use bytes::Bytes;
use sluice_flow::{DeadLetters, Event};

use super::{ConnId, Settings};
use crate::cursor::{CursorOrder, Pointer, Verdict, parse_int};
use crate::metrics::SourceMetrics;

/// At most this many messages (or bytes) of the new connection are held during an overlap.
const HELD_MESSAGES: usize = 100_000;
const HELD_BYTES: usize = 64 * 1024 * 1024;
/// How many recent payload hashes of cursor-less messages are kept per connection (only when
/// rotation is configured).
const RECENT_PAYLOADS: usize = 16_384;
/// A warning is logged after this many duplicates in a row (and every multiple of it).
const DUPLICATE_RUN_WARNING: u64 = 1000;

/// Where a message came from, as far as the supervisor knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The connection being forwarded from.
    Primary,
    /// A rotation's new connection, not switched to yet.
    Standby,
    /// A connection already replaced by a rotation, whose last messages are still arriving.
    Retired,
}

/// What a message is after the size and cursor checks.
#[derive(Debug, Clone)]
enum Checked {
    Usable(Option<String>),
    Unusable { reason: &'static str, detail: String },
}

/// How a message is recognised on the other connection of an overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// An integer cursor.
    Int(i128),
    /// The hash of another cursor.
    Cursor(u64),
    /// The hash of the payload of a message without a (usable) cursor.
    Payload(u64),
}

struct Held {
    payload: Bytes,
    checked: Checked,
    received_ms: u64,
    key: Key,
}

/// The last payload hashes of one connection, with counts (a payload may repeat).
#[derive(Default)]
struct RecentPayloads {
    order: VecDeque<u64>,
    counts: HashMap<u64, u32>,
}

impl RecentPayloads {
    fn record(&mut self, hash: u64) {
        if self.order.len() >= RECENT_PAYLOADS
            && let Some(old) = self.order.pop_front()
        {
            self.forget(old);
        }
        self.order.push_back(hash);
        *self.counts.entry(hash).or_insert(0) += 1;
    }

    fn contains(&self, hash: u64) -> bool {
        self.counts.contains_key(&hash)
    }

    /// Takes one occurrence out (it cancels a copy seen on the other connection).
    fn take(&mut self, hash: u64) -> bool {
        if self.contains(hash) {
            self.forget(hash);
            true
        } else {
            false
        }
    }

    fn forget(&mut self, hash: u64) {
        if let Some(n) = self.counts.get_mut(&hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&hash);
            }
        }
    }
}

struct Overlap {
    new_conn: ConnId,
    held: VecDeque<Held>,
    held_bytes: usize,
    held_min_int: Option<i128>,
    held_keys: HashSet<u64>,
    /// From the switch on: the old connection's recent payloads (new copies cancel them).
    old_payloads: Option<RecentPayloads>,
}

impl Overlap {
    fn switched(&self) -> bool {
        self.old_payloads.is_some()
    }

    /// Holds a message of the new connection; true when too much is held.
    fn hold(&mut self, held: Held) -> bool {
        match held.key {
            Key::Int(n) => self.held_min_int = Some(self.held_min_int.map_or(n, |m| m.min(n))),
            Key::Cursor(h) | Key::Payload(h) => {
                self.held_keys.insert(h);
            }
        }
        self.held_bytes += held.payload.len();
        self.held.push_back(held);
        self.held.len() >= HELD_MESSAGES || self.held_bytes >= HELD_BYTES
    }

    /// Whether the old connection's message `key` is one the new connection already holds.
    fn holds(&self, key: Key) -> bool {
        match key {
            Key::Int(n) => self.held_min_int.is_some_and(|m| m <= n),
            Key::Cursor(h) | Key::Payload(h) => self.held_keys.contains(&h),
        }
    }
}

fn hash_of(tag: u8, bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    tag.hash(&mut hasher);
    bytes.hash(&mut hasher);
    hasher.finish()
}

pub(crate) struct Processor {
    name: String,
    metrics: SourceMetrics,
    dead_letters: DeadLetters,
    pointer: Option<Pointer>,
    order: CursorOrder,
    max_message_bytes: usize,
    resume_cursor: Option<String>,
    latest_cursor: Option<String>,
    overlap: Option<Overlap>,
    /// The current connection's recent cursor-less payloads (kept when rotation is on).
    recent: Option<RecentPayloads>,
    last_forward: Option<Instant>,
    started: Instant,
    /// Duplicates since the last forwarded event.
    duplicate_run: u64,
}

impl Processor {
    pub(crate) fn new(
        name: &str,
        metrics: SourceMetrics,
        dead_letters: DeadLetters,
        settings: &Settings,
        resume_cursor: Option<String>,
    ) -> Processor {
        Processor {
            name: name.to_owned(),
            metrics,
            dead_letters,
            pointer: settings.resume.pointer.clone(),
            order: CursorOrder::new(resume_cursor.as_deref(), settings.resume.check_gaps),
            max_message_bytes: settings.max_message_bytes,
            resume_cursor,
            latest_cursor: None,
            overlap: None,
            recent: settings.reconnect.max_connection_age.is_some().then(RecentPayloads::default),
            last_forward: None,
            started: Instant::now(),
            duplicate_run: 0,
        }
    }

    pub(crate) fn metrics(&self) -> &SourceMetrics {
        &self.metrics
    }

    /// The cursor a new connection resumes after: the latest forwarded, else the spool's.
    pub(crate) fn resume_cursor(&self) -> Option<String> {
        self.latest_cursor.clone().or_else(|| self.resume_cursor.clone())
    }

    /// The latest forwarded cursor (for logs).
    pub(crate) fn latest_cursor(&self) -> Option<&str> {
        self.latest_cursor.as_deref()
    }

    /// Seconds since the last forwarded event (or since the start).
    pub(crate) fn last_message_age(&self) -> f64 {
        self.last_forward.unwrap_or(self.started).elapsed().as_secs_f64()
    }

    /// A rotation's new connection `new_conn` is up: hold its messages back.
    pub(crate) fn begin_overlap(&mut self, new_conn: ConnId) {
        self.overlap = Some(Overlap {
            new_conn,
            held: VecDeque::new(),
            held_bytes: 0,
            held_min_int: None,
            held_keys: HashSet::new(),
            old_payloads: None,
        });
    }

    /// The rotation was abandoned (the new connection failed): what it held is dropped, the old
    /// connection delivers it.
    pub(crate) fn abandon_overlap(&mut self) {
        if self.overlap.as_ref().is_some_and(|o| !o.switched()) {
            self.overlap = None;
        }
    }

    /// The switch to the new connection: releases what it held into `out`.
    pub(crate) fn switch(&mut self, out: &mut Vec<Event>) {
        let Some(overlap) = self.overlap.as_mut() else {
            return;
        };
        if overlap.switched() {
            return;
        }
        // The old connection's recent payloads now stand against the new one's.
        overlap.old_payloads = Some(self.recent.take().unwrap_or_default());
        self.recent = Some(RecentPayloads::default());
        let held = std::mem::take(&mut overlap.held);
        overlap.held_bytes = 0;
        overlap.held_min_int = None;
        overlap.held_keys.clear();
        for h in held {
            self.on_new_after_switch(h.payload, h.checked, h.received_ms, h.key, out);
        }
    }

    /// The overlap is over: no more comparisons between the two connections.
    pub(crate) fn finish_overlap(&mut self) {
        if self.overlap.as_ref().is_some_and(Overlap::switched) {
            self.overlap = None;
        }
    }

    /// Decides about one message: forwards it into `out`, dead-letters it, drops it as a
    /// duplicate or holds it (a rotation's new connection). Returns true when the rotation
    /// should switch to the new connection now.
    pub(crate) fn accept(
        &mut self,
        conn: ConnId,
        origin: Origin,
        payload: Bytes,
        hint: Option<String>,
        received_ms: u64,
        out: &mut Vec<Event>,
    ) -> bool {
        let checked = self.check(&payload, hint);
        let key = match &checked {
            Checked::Usable(Some(c)) => match parse_int(c) {
                Some(n) => Key::Int(n),
                None => Key::Cursor(hash_of(b'c', c.as_bytes())),
            },
            // Hashing costs, so only when a rotation may need it.
            _ if self.recent.is_some() || self.overlap.is_some() => Key::Payload(hash_of(b'p', &payload)),
            _ => Key::Payload(0),
        };
        let Some(overlap) = self.overlap.as_ref() else {
            self.on_current(payload, checked, received_ms, key, out);
            return false;
        };
        if conn == overlap.new_conn {
            if overlap.switched() {
                self.on_new_after_switch(payload, checked, received_ms, key, out);
                return false;
            }
            // The streams meet when the new connection delivers what was already forwarded.
            let meets = match (&checked, key) {
                (_, Key::Int(n)) => self.order.last_int().is_some_and(|last| n <= last),
                (Checked::Usable(Some(c)), Key::Cursor(_)) => self.order.is_recent(c),
                (_, Key::Payload(h)) => self.recent.as_ref().is_some_and(|r| r.contains(h)),
                _ => false,
            };
            let too_much = self.overlap.as_mut().is_some_and(|o| o.hold(Held { payload, checked, received_ms, key }));
            return meets || too_much;
        }
        if origin == Origin::Retired && overlap.switched() {
            // The old connection's last messages: a copy the new one already forwarded cancels.
            if let Key::Payload(h) = key {
                if self.recent.as_mut().is_some_and(|r| r.take(h)) {
                    self.duplicate();
                    return false;
                }
                if let Some(old) = self.overlap.as_mut().and_then(|o| o.old_payloads.as_mut()) {
                    old.record(h);
                }
            }
            self.deliver(payload, checked, received_ms, out);
            return false;
        }
        // The old connection before the switch: it has caught up when it delivers what the new
        // one holds.
        let caught_up = origin == Origin::Primary && overlap.holds(key);
        self.on_current(payload, checked, received_ms, key, out);
        caught_up
    }

    /// A message of the connection being forwarded from (outside any comparison).
    fn on_current(&mut self, payload: Bytes, checked: Checked, received_ms: u64, key: Key, out: &mut Vec<Event>) {
        if let (Key::Payload(h), Some(recent)) = (key, self.recent.as_mut()) {
            recent.record(h);
        }
        self.deliver(payload, checked, received_ms, out);
    }

    /// A message of the new connection once switched to: a copy the old one forwarded cancels.
    fn on_new_after_switch(
        &mut self,
        payload: Bytes,
        checked: Checked,
        received_ms: u64,
        key: Key,
        out: &mut Vec<Event>,
    ) {
        if let Key::Payload(h) = key
            && self.overlap.as_mut().and_then(|o| o.old_payloads.as_mut()).is_some_and(|old| old.take(h))
        {
            self.duplicate();
            return;
        }
        self.on_current(payload, checked, received_ms, key, out);
    }

    /// The size limit and the cursor.
    fn check(&self, payload: &[u8], hint: Option<String>) -> Checked {
        if payload.len() > self.max_message_bytes {
            let detail = format!("{} bytes, more than max_message_bytes = {}", payload.len(), self.max_message_bytes);
            return Checked::Unusable { reason: "too_large", detail };
        }
        match &self.pointer {
            Some(pointer) => match crate::cursor::extract(pointer, payload) {
                Ok(cursor) => Checked::Usable(cursor),
                Err(e) => Checked::Unusable {
                    reason: "invalid_json",
                    detail: format!("not JSON, so no cursor can be read: {e}"),
                },
            },
            None => Checked::Usable(hint),
        }
    }

    /// Dead-letters an unusable message, drops a duplicate cursor, forwards the rest.
    fn deliver(&mut self, payload: Bytes, checked: Checked, received_ms: u64, out: &mut Vec<Event>) {
        let cursor = match checked {
            Checked::Unusable { reason, detail } => {
                self.dead_letter(reason, &detail, &payload);
                return;
            }
            Checked::Usable(cursor) => cursor,
        };
        if let Some(c) = &cursor {
            match self.order.check(c) {
                Verdict::Duplicate => {
                    self.duplicate();
                    if self.duplicate_run.is_multiple_of(DUPLICATE_RUN_WARNING) {
                        tracing::warn!(
                            source = %self.name, cursor = %c, latest = self.latest_cursor.as_deref().unwrap_or(""),
                            in_a_row = self.duplicate_run,
                            "only duplicates arrive: did the provider restart its sequence? (the spool's cursor decides what is new)"
                        );
                    }
                    return;
                }
                Verdict::Gap { from, to, missing } => {
                    self.metrics.gaps.increment(missing);
                    tracing::warn!(source = %self.name, from = %from, to = %to, missing, "gap in the cursor sequence");
                }
                Verdict::New => {}
            }
            if let Some(n) = parse_int(c) {
                self.metrics.cursor.set(n as f64);
            }
            self.latest_cursor = Some(c.clone());
        }
        self.duplicate_run = 0;
        self.metrics.messages.increment(1);
        self.metrics.bytes.increment(payload.len() as u64);
        self.last_forward = Some(Instant::now());
        out.push(Event { payload, cursor, received_ms });
    }

    fn duplicate(&mut self) {
        self.metrics.duplicates.increment(1);
        self.duplicate_run += 1;
    }

    /// A message the transport could not keep (an NDJSON line over the limit): dead-letter
    /// what was kept of it.
    pub(crate) fn oversized(&mut self, size: usize, prefix: &[u8]) {
        let detail = format!(
            "{size} bytes, more than max_message_bytes = {}; only the first {} bytes are kept here",
            self.max_message_bytes,
            prefix.len()
        );
        self.dead_letter("too_large", &detail, prefix);
    }

    fn dead_letter(&self, reason: &str, detail: &str, payload: &[u8]) {
        self.metrics.dead_lettered.increment(1);
        self.dead_letters.write(reason, detail, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        p: Processor,
        dir: tempfile::TempDir,
    }

    fn harness(pointer: Option<&str>, resume: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = DeadLetters::new(dir.path(), "t");
        let settings = Settings {
            reconnect: crate::config::Reconnect {
                backoff_initial: std::time::Duration::from_millis(1),
                backoff_max: std::time::Duration::from_millis(1),
                backoff_reset_after: std::time::Duration::from_millis(1),
                max_connection_age: Some(std::time::Duration::from_secs(1)),
                rotation_overlap: std::time::Duration::from_secs(1),
            },
            resume: crate::config::ResumePlan {
                pointer: pointer.map(|p| Pointer::parse(p).expect("pointer")),
                url: None,
                initial: None,
                check_gaps: true,
            },
            max_message_bytes: 64,
        };
        let p = Processor::new("t", SourceMetrics::new("t"), dl, &settings, resume.map(str::to_owned));
        Harness { p, dir }
    }

    fn texts(out: Vec<Event>) -> Vec<String> {
        out.into_iter().map(|e| String::from_utf8_lossy(&e.payload).into_owned()).collect()
    }

    impl Harness {
        /// Forwarded payloads, and whether to switch.
        fn send(&mut self, conn: ConnId, origin: Origin, text: &str) -> (Vec<String>, bool) {
            let mut out = Vec::new();
            let switch = self.p.accept(conn, origin, Bytes::copy_from_slice(text.as_bytes()), None, 0, &mut out);
            (texts(out), switch)
        }

        fn forwarded(&mut self, conn: ConnId, origin: Origin, text: &str) -> Vec<String> {
            self.send(conn, origin, text).0
        }

        fn switch(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            self.p.switch(&mut out);
            texts(out)
        }

        fn dead_letter_reasons(&self) -> Vec<String> {
            let text = std::fs::read_to_string(self.dir.path().join("t.ndjson")).unwrap_or_default();
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json");
                    v["reason"].as_str().unwrap_or("").to_owned()
                })
                .collect()
        }
    }

    #[test]
    fn cursors_are_read_deduplicated_and_resumed_from() {
        let mut h = harness(Some("/seq"), Some("2"));
        assert_eq!(h.p.resume_cursor().as_deref(), Some("2"));
        assert!(h.forwarded(1, Origin::Primary, r#"{"seq":2}"#).is_empty());
        let mut out = Vec::new();
        h.p.accept(1, Origin::Primary, Bytes::from_static(br#"{"seq":3}"#), None, 5, &mut out);
        assert_eq!(out[0].cursor.as_deref(), Some("3"));
        assert_eq!(out[0].received_ms, 5);
        assert_eq!(h.p.resume_cursor().as_deref(), Some("3"));
        // A message without the field is forwarded without a cursor.
        let mut out = Vec::new();
        h.p.accept(1, Origin::Primary, Bytes::from_static(br#"{"type":"ack"}"#), None, 0, &mut out);
        assert_eq!(out[0].cursor, None);
    }

    #[test]
    fn unusable_messages_are_dead_lettered() {
        let mut h = harness(Some("/seq"), None);
        assert!(h.forwarded(1, Origin::Primary, "garbage").is_empty());
        assert!(h.forwarded(1, Origin::Primary, &format!("{{\"seq\":1,\"x\":\"{}\"}}", "a".repeat(100))).is_empty());
        assert_eq!(h.forwarded(1, Origin::Primary, r#"{"seq":1}"#).len(), 1);
        assert_eq!(h.dead_letter_reasons(), ["invalid_json", "too_large"]);
    }

    #[test]
    fn transport_ids_are_cursors_without_a_pointer() {
        let mut h = harness(None, None);
        let mut out = Vec::new();
        h.p.accept(1, Origin::Primary, Bytes::from_static(b"x"), Some("7".into()), 0, &mut out);
        h.p.accept(1, Origin::Primary, Bytes::from_static(b"x"), Some("7".into()), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cursor.as_deref(), Some("7"));
    }

    #[test]
    fn rotation_without_cursors_switches_when_the_old_connection_catches_up() {
        let mut h = harness(None, None);
        assert_eq!(h.forwarded(1, Origin::Primary, "a"), ["a"]);
        h.p.begin_overlap(2);
        // The new connection joins at "c" while the old one still has "b" in flight.
        assert_eq!(h.send(2, Origin::Standby, "c"), (vec![], false));
        assert_eq!(h.send(2, Origin::Standby, "d"), (vec![], false));
        assert_eq!(h.send(1, Origin::Primary, "b"), (vec!["b".to_owned()], false));
        assert_eq!(h.send(1, Origin::Primary, "c"), (vec!["c".to_owned()], true));
        assert_eq!(h.switch(), ["d"]);
        // The old connection's last messages: repeats of the new one's are dropped.
        assert!(h.forwarded(1, Origin::Retired, "d").is_empty());
        assert_eq!(h.forwarded(1, Origin::Retired, "e"), ["e"]);
        assert!(h.forwarded(2, Origin::Primary, "e").is_empty());
        assert_eq!(h.forwarded(2, Origin::Primary, "f"), ["f"]);
        h.p.finish_overlap();
        // After the overlap, equal payloads are ordinary messages.
        assert_eq!(h.forwarded(2, Origin::Primary, "f"), ["f"]);
    }

    #[test]
    fn rotation_with_cursors_forwards_what_the_old_connection_had_in_flight() {
        let mut h = harness(Some("/seq"), None);
        let m = |n: i32| format!("{{\"seq\":{n}}}");
        assert_eq!(h.forwarded(1, Origin::Primary, &m(97)).len(), 1);
        h.p.begin_overlap(2);
        // No resume: the new connection joins live at 100.
        assert!(h.forwarded(2, Origin::Standby, &m(100)).is_empty());
        assert!(h.forwarded(2, Origin::Standby, &m(101)).is_empty());
        assert_eq!(h.send(1, Origin::Primary, &m(98)), (vec![m(98)], false));
        assert_eq!(h.send(1, Origin::Primary, &m(99)), (vec![m(99)], false));
        assert_eq!(h.send(1, Origin::Primary, &m(100)), (vec![m(100)], true));
        assert_eq!(h.switch(), [m(101)]);
        assert!(h.forwarded(1, Origin::Retired, &m(101)).is_empty());
        assert_eq!(h.forwarded(1, Origin::Retired, &m(102)), [m(102)]);
        assert!(h.forwarded(2, Origin::Primary, &m(102)).is_empty());
        assert_eq!(h.forwarded(2, Origin::Primary, &m(103)), [m(103)]);
    }

    #[test]
    fn rotation_without_cursors_switches_when_a_lagging_new_connection_repeats_the_old_one() {
        let mut h = harness(None, None);
        // The old connection forwarded 1..=5 before the new one was seen up.
        for m in ["1", "2", "3", "4", "5"] {
            assert_eq!(h.forwarded(1, Origin::Primary, m), [m]);
        }
        h.p.begin_overlap(2);
        // The new connection starts at 3: already forwarded, so the streams meet now.
        assert_eq!(h.send(2, Origin::Standby, "3"), (vec![], true));
        assert!(h.switch().is_empty());
        // The old connection still had 6 in flight; the new one repeats 4..=6, then goes on.
        assert_eq!(h.forwarded(1, Origin::Retired, "6"), ["6"]);
        for m in ["4", "5", "6"] {
            assert!(h.forwarded(2, Origin::Primary, m).is_empty(), "{m}");
        }
        assert_eq!(h.forwarded(2, Origin::Primary, "7"), ["7"]);
        assert!(h.forwarded(1, Origin::Retired, "7").is_empty());
    }

    #[test]
    fn rotation_with_cursors_switches_when_a_resuming_new_connection_replays() {
        let mut h = harness(Some("/seq"), None);
        let m = |n: i32| format!("{{\"seq\":{n}}}");
        for n in 1..=10 {
            h.forwarded(1, Origin::Primary, &m(n));
        }
        h.p.begin_overlap(2);
        // Resumed a little early: the first message is a repeat, so switch at once.
        assert_eq!(h.send(2, Origin::Standby, &m(8)), (vec![], true));
        assert!(h.switch().is_empty());
        assert_eq!(h.forwarded(1, Origin::Retired, &m(11)), [m(11)]);
        assert!(h.forwarded(2, Origin::Primary, &m(9)).is_empty());
        assert!(h.forwarded(2, Origin::Primary, &m(11)).is_empty());
        assert_eq!(h.forwarded(2, Origin::Primary, &m(12)), [m(12)]);
    }

    #[test]
    fn an_abandoned_rotation_drops_what_the_new_connection_held() {
        let mut h = harness(None, None);
        h.p.begin_overlap(2);
        assert!(h.forwarded(2, Origin::Standby, "x").is_empty());
        h.p.abandon_overlap();
        assert_eq!(h.forwarded(1, Origin::Primary, "x"), ["x"]);
    }

    #[test]
    fn garbage_repeated_by_the_new_connection_is_dead_lettered_once() {
        let mut h = harness(Some("/seq"), None);
        h.p.begin_overlap(2);
        assert!(h.forwarded(2, Origin::Standby, "junk").is_empty());
        assert!(h.forwarded(2, Origin::Standby, r#"{"seq":5}"#).is_empty());
        assert_eq!(h.send(1, Origin::Primary, "junk"), (vec![], true));
        assert_eq!(h.switch(), [r#"{"seq":5}"#]);
        assert_eq!(h.dead_letter_reasons(), ["invalid_json"]);
    }
}
