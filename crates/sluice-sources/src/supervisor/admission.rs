//! What happens to a received message before it becomes an [`Event`], once the connection
//! slot has passed it on (see `rotation` for the overlap of a rotation): the size limit and the
//! cursor ([`Admission::check`], done first so a rotation can compare cursors), then
//! de-duplication, cursor order and gaps ([`Admission::admit`]). Shared by all replicas of a
//! source and owned by the supervisor task alone, so there is no locking.
//!
//! Duplicates are counted by why they were dropped (`sluice_source_duplicates_total{reason}`):
//! `dedup` (the key is in the `dedup` window), `cursor` (without `dedup`: an integer cursor
//! not after the last one, or a recent non-integer cursor again), `rotation` (the overlap of
//! a rotation).

use std::hash::{Hash, Hasher};
use std::time::Instant;

use bytes::Bytes;
use sluice_flow::{DeadLetters, Event};

use super::rotation::Counts;
use crate::config::{CursorType, Settings};
use crate::cursor::{CursorOrder, Pointer, Verdict, parse_int};
use crate::dedup::{DedupKey, DedupWindow};
use crate::gaps::{Gap, GapTracker, Seen};
use crate::metrics::SourceMetrics;

/// A warning is logged after this many duplicates in a row (and every multiple of it).
const DUPLICATE_RUN_WARNING: u64 = 1000;

/// What a message is after the size and cursor checks.
#[derive(Debug, Clone)]
pub(crate) enum Checked {
    Usable(Option<String>),
    Unusable { reason: &'static str, detail: String },
}

/// How much of an oversized message is kept in the dead-letter file.
pub(crate) const KEPT_PREFIX: usize = 64 * 1024;

/// A received message, checked, on its way through the slot to [`Admission::admit`].
#[derive(Debug)]
pub(crate) struct Message {
    pub payload: Bytes,
    pub checked: Checked,
    pub received_ms: u64,
}

impl Message {
    pub(crate) fn is_usable(&self) -> bool {
        matches!(self.checked, Checked::Usable(_))
    }
}

pub(crate) struct Admission {
    name: String,
    metrics: SourceMetrics,
    dead_letters: DeadLetters,
    pointer: Option<Pointer>,
    max_message_bytes: usize,
    /// Fingerprints are only needed when a slot can rotate.
    fingerprints: bool,
    /// Without `dedup`: cursor order decides what is a duplicate.
    order: Option<CursorOrder>,
    dedup: Option<(DedupKey, DedupWindow)>,
    gaps: Option<(Option<Pointer>, GapTracker)>,
    due: Vec<Gap>,
    /// The spool's cursor at start.
    resume_cursor: Option<String>,
    /// The position to resume after: the highest integer cursor forwarded, or the latest
    /// other one.
    latest_cursor: Option<String>,
    latest_int: Option<i128>,
    last_forward: Option<Instant>,
    started: Instant,
    /// Duplicates since the last forwarded event.
    duplicate_run: u64,
    /// What cursors must be (`None` until the first one is seen, unless configured).
    cursor_type: Option<CursorType>,
    /// Where `cursor_type` came from (for the log and dead-letter details).
    cursor_type_from: String,
}

impl Admission {
    pub(crate) fn new(
        name: &str,
        metrics: SourceMetrics,
        dead_letters: DeadLetters,
        settings: &Settings,
        resume_cursor: Option<String>,
    ) -> Admission {
        let (cursor_type, cursor_type_from) = match (settings.resume.cursor_type, resume_cursor.as_deref()) {
            (Some(t), _) => (Some(t), "resume.cursor_type".to_owned()),
            (None, Some(c)) => (Some(CursorType::infer(c)), format!("inferred from the spool's cursor {c:?}")),
            (None, None) => (None, String::new()),
        };
        // A cursor the configured type refuses cannot be resumed from as such.
        if let Some(c) = resume_cursor.as_deref()
            && !type_fits(cursor_type, c)
        {
            tracing::warn!(
                source = name,
                cursor = c,
                "the spool's cursor is not an integer (resume.cursor_type); resuming from it as is"
            );
        }
        let integers = cursor_type != Some(CursorType::String);
        let dedup = settings.dedup.as_ref().map(|plan| (plan.key.clone(), DedupWindow::new(plan)));
        let order = dedup.is_none().then(|| CursorOrder::new(resume_cursor.as_deref(), integers));
        let gaps = settings.gaps.enabled.then(|| {
            // The spool's cursor is where a cursor-based sequence continues.
            let high = if settings.gaps.pointer.is_none() && integers {
                resume_cursor.as_deref().and_then(parse_int)
            } else {
                None
            };
            let wait_ms = u64::try_from(settings.gaps.wait.as_millis()).unwrap_or(u64::MAX);
            (settings.gaps.pointer.clone(), GapTracker::new(high, wait_ms))
        });
        Admission {
            name: name.to_owned(),
            metrics,
            dead_letters,
            pointer: settings.resume.pointer.clone(),
            max_message_bytes: settings.max_message_bytes,
            fingerprints: settings.reconnect.max_connection_age.is_some(),
            order,
            dedup,
            gaps,
            due: Vec::new(),
            latest_int: resume_cursor.as_deref().filter(|_| integers).and_then(parse_int),
            resume_cursor,
            latest_cursor: None,
            last_forward: None,
            started: Instant::now(),
            duplicate_run: 0,
            cursor_type,
            cursor_type_from,
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

    /// Time since the last forwarded event (or since the start).
    pub(crate) fn silent_for(&self) -> std::time::Duration {
        self.last_forward.unwrap_or(self.started).elapsed()
    }

    /// Refills the `dedup` window from events already spooled (oldest first), so that a
    /// restart does not admit them again.
    pub(crate) fn remember(&mut self, spooled: &[(u64, Bytes)]) -> usize {
        let Some((key, window)) = self.dedup.as_mut() else { return 0 };
        let mut n = 0;
        for (received_ms, payload) in spooled {
            if let Some(k) = key.of(payload) {
                window.admit(k, *received_ms);
                n += 1;
            }
        }
        n
    }

    /// How far back, and how many, spooled events [`Admission::remember`] wants.
    pub(crate) fn history_wanted(&self) -> Option<(usize, u64)> {
        self.dedup.as_ref().map(|(_, w)| (w.capacity(), w.horizon_ms(sluice_flow::now_ms())))
    }

    /// The size limit and the cursor; and the message's fingerprint for a rotation (its cursor
    /// when it has one, else its payload).
    pub(crate) fn check(&self, payload: Bytes, hint: Option<String>, received_ms: u64) -> (u64, Message) {
        let checked = self.check_payload(&payload, hint);
        let fp = if self.fingerprints {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            match &checked {
                Checked::Usable(Some(c)) => {
                    b'c'.hash(&mut h);
                    c.hash(&mut h);
                }
                _ => {
                    b'p'.hash(&mut h);
                    payload.hash(&mut h);
                }
            }
            h.finish()
        } else {
            0
        };
        (fp, Message { payload, checked, received_ms })
    }

    fn check_payload(&self, payload: &[u8], hint: Option<String>) -> Checked {
        if payload.len() > self.max_message_bytes {
            let detail = format!("{} bytes, more than max_message_bytes = {}", payload.len(), self.max_message_bytes);
            return Checked::Unusable { reason: "oversized", detail };
        }
        let cursor = match &self.pointer {
            Some(pointer) => match crate::cursor::extract(pointer, payload) {
                Ok(cursor) => cursor,
                Err(e) => {
                    return Checked::Unusable {
                        reason: "invalid_json",
                        detail: format!("not JSON, so no cursor can be read: {e}"),
                    };
                }
            },
            None => hint,
        };
        match cursor.as_deref().map(|c| self.bad_cursor(c)) {
            Some(Some(detail)) => Checked::Unusable { reason: "bad_cursor", detail },
            _ => Checked::Usable(cursor),
        }
    }

    /// Why `cursor` does not fit the cursor type (`None`: it fits, or no type is known yet).
    fn bad_cursor(&self, cursor: &str) -> Option<String> {
        if type_fits(self.cursor_type, cursor) {
            return None;
        }
        let at = self.pointer.as_ref().map(|p| format!(" at {:?}", p.as_str())).unwrap_or_default();
        let latest = self.resume_cursor();
        Some(format!(
            "cursor {cursor:?}{at} is not an integer (resume.cursor_type = \"integer\", {}); the cursor stays at {}",
            self.cursor_type_from,
            latest.as_deref().unwrap_or("(none yet)")
        ))
    }

    /// Learns the cursor type from the first cursor, when not configured.
    fn learn_type(&mut self, cursor: &str) {
        if self.cursor_type.is_none() {
            let t = CursorType::infer(cursor);
            self.cursor_type = Some(t);
            self.cursor_type_from = format!("inferred from the first cursor {cursor:?}");
            if t == CursorType::String {
                // Cursors are opaque from now on.
                if let Some(order) = self.order.as_mut() {
                    order.opaque();
                }
            }
            tracing::info!(source = %self.name, cursor_type = t.as_str(), first = cursor, "cursor type inferred from the first cursor; resume.cursor_type sets it explicitly");
        }
    }

    /// A cursor's integer value, unless cursors are strings.
    fn int_of(&self, cursor: &str) -> Option<i128> {
        if self.cursor_type == Some(CursorType::String) { None } else { parse_int(cursor) }
    }

    /// Counts what a rotation step dropped or could not align.
    pub(crate) fn rotation(&mut self, counts: Counts) {
        if counts.dropped > 0 {
            self.metrics.duplicates_rotation.increment(counts.dropped);
            self.duplicate_run += counts.dropped;
        }
        if counts.unaligned > 0 {
            self.metrics.rotation_unaligned.increment(counts.unaligned);
            tracing::warn!(
                source = %self.name, events = counts.unaligned,
                "rotation: events could not be aligned between the old and the new connection; forwarded as they came (some may be duplicates)"
            );
        }
    }

    /// Dead-letters an unusable message, drops a duplicate, forwards the rest into `out`.
    pub(crate) fn admit(&mut self, m: Message, out: &mut Vec<Event>) {
        let Message { payload, checked, received_ms } = m;
        let cursor = match checked {
            Checked::Unusable { reason, detail } => {
                self.dead_letter(reason, &detail, &payload);
                return;
            }
            Checked::Usable(cursor) => cursor,
        };
        if let Some(c) = cursor.as_deref() {
            // Checked again: held messages were checked before the type was learnt.
            if let Some(detail) = self.bad_cursor(c) {
                self.dead_letter("bad_cursor", &detail, &payload);
                return;
            }
            self.learn_type(c);
        }
        if let Some((key, window)) = self.dedup.as_mut() {
            match key.of(&payload) {
                Some(k) if !window.admit(k, received_ms) => {
                    self.metrics.duplicates_dedup.increment(1);
                    self.duplicate(cursor.as_deref());
                    return;
                }
                Some(_) => {}
                None => self.metrics.dedup_unkeyed.increment(1),
            }
        }
        if let (Some(order), Some(c)) = (self.order.as_mut(), cursor.as_deref())
            && order.check(c) == Verdict::Duplicate
        {
            self.metrics.duplicates_cursor.increment(1);
            self.duplicate(Some(c));
            return;
        }
        self.observe_gaps(&payload, cursor.as_deref(), received_ms);
        if let Some(c) = cursor {
            self.advance(c);
        }
        self.duplicate_run = 0;
        self.metrics.messages.increment(1);
        self.metrics.bytes.increment(payload.len() as u64);
        self.last_forward = Some(Instant::now());
        out.push(Event { payload, cursor: self.resume_cursor(), received_ms, origin: None });
    }

    /// Moves the resume position to `c` (an integer cursor only forwards).
    fn advance(&mut self, c: String) {
        match self.int_of(&c) {
            Some(n) if self.latest_int.is_some_and(|l| n <= l) => {}
            Some(n) => {
                self.latest_int = Some(n);
                self.metrics.cursor.set(n as f64);
                self.latest_cursor = Some(c);
            }
            None => self.latest_cursor = Some(c),
        }
    }

    fn observe_gaps(&mut self, payload: &[u8], cursor: Option<&str>, now_ms: u64) {
        let cursor_int = cursor.and_then(|c| self.int_of(c));
        let Some((pointer, tracker)) = self.gaps.as_mut() else { return };
        let value = match pointer {
            Some(p) => crate::cursor::extract(p, payload).ok().flatten().as_deref().and_then(parse_int),
            None => cursor_int,
        };
        if let Some(v) = value
            && tracker.observe(v, now_ms, &mut self.due) == Seen::Fill
        {
            self.metrics.gap_fills.increment(1);
        }
        self.report_gaps();
    }

    /// Counts gaps whose wait has passed (called on the supervisor's tick).
    pub(crate) fn expire_gaps(&mut self) {
        if let Some((_, tracker)) = self.gaps.as_mut() {
            tracker.expire(sluice_flow::now_ms(), &mut self.due);
            self.report_gaps();
        }
    }

    fn report_gaps(&mut self) {
        for gap in self.due.drain(..) {
            let missing = gap.missing();
            self.metrics.gaps.increment(1);
            self.metrics.missing.increment(missing);
            tracing::warn!(source = %self.name, first_missing = %gap.from, last_missing = %gap.to, missing, "gap in the sequence: events never arrived");
        }
    }

    fn duplicate(&mut self, cursor: Option<&str>) {
        self.duplicate_run += 1;
        if self.duplicate_run.is_multiple_of(DUPLICATE_RUN_WARNING) {
            tracing::warn!(
                source = %self.name, cursor = cursor.unwrap_or(""), latest = self.latest_cursor.as_deref().unwrap_or(""),
                in_a_row = self.duplicate_run,
                "only duplicates arrive: did the provider restart its sequence? (the spool's cursor decides what is new)"
            );
        }
    }

    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// A message over `max_message_bytes`, read and discarded by the transport (or too big
    /// here): dead-letters what was kept of its beginning, with its real size. When its cursor
    /// can be read from that beginning (or the transport's `hint`) and is new, the resume
    /// position moves past it, so a provider that replays from the cursor does not send it
    /// again. Returns whether it did.
    pub(crate) fn oversized(&mut self, size: u64, prefix: &[u8], hint: Option<String>) -> bool {
        let prefix = &prefix[..prefix.len().min(KEPT_PREFIX)];
        let cursor = match &self.pointer {
            Some(p) => cursor_in_prefix(p, prefix),
            None => hint,
        };
        let usable = cursor.filter(|c| type_fits(self.cursor_type, c));
        let new = usable.as_deref().is_some_and(|c| self.is_new(c));
        let what = match (&usable, new) {
            (Some(c), true) => format!("the cursor moves past it to {c}"),
            (Some(c), false) => format!("its cursor {c} is not after the current one; the cursor stays"),
            (None, _) => format!(
                "no usable cursor in its first {} bytes, so the cursor stays at {}",
                prefix.len(),
                self.resume_cursor().as_deref().unwrap_or("(none yet)")
            ),
        };
        let detail = format!(
            "{size} bytes, more than max_message_bytes = {}; only the first {} bytes are kept here; {what}",
            self.max_message_bytes,
            prefix.len()
        );
        self.dead_letter("oversized", &detail, prefix);
        match usable {
            Some(c) if new => {
                self.learn_type(&c);
                if let Some(order) = self.order.as_mut() {
                    order.check(&c);
                }
                let received_ms = sluice_flow::now_ms();
                self.observe_gaps(&[], Some(&c), received_ms);
                self.advance(c);
                true
            }
            _ => false,
        }
    }

    /// Whether `cursor` is after the resume position (a non-integer one: not a recent one).
    fn is_new(&self, cursor: &str) -> bool {
        match (self.int_of(cursor), self.latest_int) {
            (Some(n), Some(l)) => n > l,
            (Some(_), None) => true,
            (None, _) => self.latest_cursor.as_deref() != Some(cursor),
        }
    }

    fn dead_letter(&self, reason: &str, detail: &str, payload: &[u8]) {
        self.metrics.dead_lettered.increment(1);
        self.dead_letters.write(reason, detail, payload);
    }
}

/// Whether `cursor` fits `t` (anything fits before the type is known).
fn type_fits(t: Option<CursorType>, cursor: &str) -> bool {
    t != Some(CursorType::Integer) || parse_int(cursor).is_some()
}

/// The cursor in the kept beginning of an oversized message, when it lies wholly within it.
fn cursor_in_prefix(pointer: &Pointer, prefix: &[u8]) -> Option<String> {
    let found = pointer.find_early(prefix).ok()??;
    match found {
        sluice_core::json_pointer::Found::Str(s) => Some(s.into_owned()),
        sluice_core::json_pointer::Found::Number(n) => {
            // A number running to the end of the prefix may have been cut.
            let end = n.as_ptr() as usize + n.len();
            (end < prefix.as_ptr() as usize + prefix.len()).then(|| n.to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AlarmPlan, DedupConfig, DedupKeyConfig, GapPlan, Reconnect, ResumePlan, WindowConfig};
    use crate::dedup::DedupPlan;
    use std::time::Duration;

    struct Harness {
        a: Admission,
        dir: tempfile::TempDir,
    }

    fn settings(pointer: Option<&str>, dedup: Option<DedupKeyConfig>, gap_wait: Duration) -> Settings {
        Settings {
            reconnect: Reconnect {
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(1),
                max_connection_age: Some(Duration::from_secs(1)),
                rotation_overlap: Duration::from_secs(1),
            },
            resume: ResumePlan {
                pointer: pointer.map(|p| Pointer::parse(p).expect("pointer")),
                url: None,
                initial: None,
                check_gaps: true,
                cursor_type: None,
            },
            max_message_bytes: 64,
            replicas: 1,
            dedup: dedup.map(|key| {
                DedupPlan::check("t", DedupConfig { key, window: WindowConfig { events: 1000, duration: None } })
                    .expect("dedup")
            }),
            gaps: GapPlan { pointer: None, enabled: true, wait: gap_wait },
            alarm: AlarmPlan::default(),
        }
    }

    fn harness(s: Settings, resume: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = DeadLetters::new(dir.path(), "t");
        let a = Admission::new("t", SourceMetrics::new("t"), dl, &s, resume.map(str::to_owned));
        Harness { a, dir }
    }

    impl Harness {
        fn send(&mut self, text: &str) -> Vec<Event> {
            let (_, m) = self.a.check(Bytes::copy_from_slice(text.as_bytes()), None, sluice_flow::now_ms());
            let mut out = Vec::new();
            self.a.admit(m, &mut out);
            out
        }

        fn forwarded(&mut self, text: &str) -> Vec<String> {
            self.send(text).into_iter().map(|e| String::from_utf8_lossy(&e.payload).into_owned()).collect()
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

    fn seq(n: i64) -> String {
        format!("{{\"seq\":{n}}}")
    }

    #[test]
    fn cursors_are_read_deduplicated_and_resumed_from() {
        let mut h = harness(settings(Some("/seq"), None, Duration::ZERO), Some("2"));
        assert_eq!(h.a.resume_cursor().as_deref(), Some("2"));
        assert!(h.forwarded(&seq(2)).is_empty());
        let (_, m) = h.a.check(Bytes::from(seq(3)), None, 5);
        let mut out = Vec::new();
        h.a.admit(m, &mut out);
        assert_eq!(out[0].cursor.as_deref(), Some("3"));
        assert_eq!(out[0].received_ms, 5);
        assert_eq!(h.a.resume_cursor().as_deref(), Some("3"));
        // A message without the field keeps the resume position.
        let out = h.send(r#"{"type":"ack"}"#);
        assert_eq!(out[0].cursor.as_deref(), Some("3"));
    }

    #[test]
    fn unusable_messages_are_dead_lettered() {
        let mut h = harness(settings(Some("/seq"), None, Duration::ZERO), None);
        assert!(h.forwarded("not json").is_empty());
        assert!(h.forwarded(&format!("{{\"seq\":1,\"pad\":\"{}\"}}", "x".repeat(80))).is_empty());
        assert_eq!(h.forwarded(&seq(1)), [seq(1)]);
        assert_eq!(h.dead_letter_reasons(), ["invalid_json", "oversized"]);
    }

    #[test]
    fn without_dedup_integer_cursors_must_increase_and_jumps_count_at_once() {
        let mut h = harness(settings(Some("/seq"), None, Duration::ZERO), Some("10"));
        assert_eq!(h.forwarded(&seq(11)), [seq(11)]);
        assert_eq!(h.forwarded(&seq(15)), [seq(15)]);
        assert!(h.forwarded(&seq(13)).is_empty(), "below the last cursor: a duplicate");
        let g = h.a.gaps.as_ref().map(|(_, t)| t.high());
        assert_eq!(g, Some(Some(15)));
    }

    #[test]
    fn with_dedup_late_fills_are_admitted_and_repeats_dropped() {
        let mut h = harness(
            settings(Some("/seq"), Some(DedupKeyConfig::Fields(vec!["/seq".into()])), Duration::from_secs(60)),
            None,
        );
        for n in [1, 2, 5, 3, 4, 2, 5, 6] {
            h.forwarded(&seq(n));
        }
        // 1 2 5 3 4 6 forwarded; 2 and 5 again dropped.
        assert_eq!(h.a.resume_cursor().as_deref(), Some("6"), "the highest cursor, not the latest");
        let out = h.send(&seq(7));
        assert_eq!(out[0].cursor.as_deref(), Some("7"));
        assert!(h.forwarded(&seq(4)).is_empty());
        // A late fill does not move the resume cursor back.
        let out = h.send(&seq(9));
        assert_eq!(out[0].cursor.as_deref(), Some("9"));
        let out = h.send(&seq(8));
        assert_eq!(out[0].cursor.as_deref(), Some("9"));
    }

    #[test]
    fn the_window_is_refilled_from_the_spool() {
        let mut h = harness(settings(None, Some(DedupKeyConfig::Content), Duration::ZERO), None);
        let spooled = vec![(1, Bytes::from_static(b"a")), (2, Bytes::from_static(b"b"))];
        assert_eq!(h.a.remember(&spooled), 2);
        assert!(h.forwarded("a").is_empty());
        assert_eq!(h.forwarded("c"), ["c"]);
        assert_eq!(h.a.history_wanted().map(|(n, _)| n), Some(1000));
    }

    fn with_type(t: Option<CursorType>) -> Settings {
        let mut s = settings(Some("/seq"), None, Duration::ZERO);
        s.resume.cursor_type = t;
        s
    }

    #[test]
    fn a_cursor_of_another_type_is_dead_lettered_and_does_not_move_the_cursor() {
        let mut h = harness(with_type(None), None);
        assert_eq!(h.forwarded(&seq(1)), [seq(1)]);
        assert!(h.forwarded(r#"{"seq":"bin?"}"#).is_empty());
        assert_eq!(h.a.resume_cursor().as_deref(), Some("1"));
        assert_eq!(h.forwarded(&seq(2)), [seq(2)]);
        // A string of digits is an integer; a float is not.
        assert_eq!(h.forwarded(r#"{"seq":"3"}"#).len(), 1);
        assert!(h.forwarded(r#"{"seq":3.5}"#).is_empty());
        assert_eq!(h.a.resume_cursor().as_deref(), Some("3"));
        assert_eq!(h.dead_letter_reasons(), ["bad_cursor", "bad_cursor"]);
        // Messages without a cursor are not affected.
        assert_eq!(h.forwarded(r#"{"type":"ack"}"#).len(), 1);
    }

    #[test]
    fn the_type_is_inferred_from_the_spools_cursor_or_configured() {
        let mut h = harness(with_type(None), Some("41"));
        assert!(h.forwarded(r#"{"seq":"abc"}"#).is_empty());
        assert_eq!(h.forwarded(&seq(42)), [seq(42)]);
        // Explicit integer from the start.
        let mut h = harness(with_type(Some(CursorType::Integer)), None);
        assert!(h.forwarded(r#"{"seq":"abc"}"#).is_empty());
        assert_eq!(h.a.resume_cursor(), None);
        // Strings first: anything goes, and cursors are opaque (no integer order).
        let mut h = harness(with_type(None), None);
        assert_eq!(h.forwarded(r#"{"seq":"b"}"#).len(), 1);
        assert_eq!(h.forwarded(r#"{"seq":"9"}"#).len(), 1);
        assert_eq!(h.forwarded(r#"{"seq":"5"}"#).len(), 1, "not below 9: strings have no order");
        assert_eq!(h.a.resume_cursor().as_deref(), Some("5"));
        assert!(h.dead_letter_reasons().is_empty());
    }

    #[test]
    fn an_oversized_message_moves_the_cursor_when_its_beginning_holds_it() {
        let mut h = harness(settings(Some("/seq"), None, Duration::ZERO), None);
        assert_eq!(h.forwarded(&seq(1)), [seq(1)]);
        // The cursor in the kept beginning: the resume position moves past the message, and
        // no gap is counted for it.
        assert!(h.a.oversized(20_000_000, br#"{"seq":2,"pad":"xxxx"#, None));
        assert_eq!(h.a.resume_cursor().as_deref(), Some("2"));
        assert_eq!(h.a.gaps.as_ref().map(|(_, t)| t.high()), Some(Some(2)), "seen by the gap tracker");
        assert_eq!(h.forwarded(&seq(3)), [seq(3)]);
        // Not readable: cut inside the number, or after the kept bytes.
        assert!(!h.a.oversized(20_000_000, br#"{"seq":4"#, None));
        assert!(!h.a.oversized(20_000_000, br#"{"pad":"xxxx"#, None));
        // Not new, or not an integer.
        assert!(!h.a.oversized(20_000_000, br#"{"seq":2,"#, None));
        assert!(!h.a.oversized(20_000_000, br#"{"seq":"x","#, None));
        assert_eq!(h.a.resume_cursor().as_deref(), Some("3"));
        let text = std::fs::read_to_string(h.dir.path().join("t.ndjson")).unwrap_or_default();
        let letters: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(letters.len(), 5);
        assert!(letters.iter().all(|l| l["reason"] == "oversized"));
        let detail = letters[0]["detail"].as_str().unwrap_or("");
        assert!(detail.starts_with("20000000 bytes, more than max_message_bytes = 64;"), "{detail}");
        assert!(detail.contains("the cursor moves past it to 2"), "{detail}");
        assert!(letters[1]["detail"].as_str().unwrap_or("").contains("the cursor stays at 3"));
    }
}
