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
use crate::config::Settings;
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

/// A received message, checked, on its way through the slot to [`Admission::admit`].
#[derive(Debug)]
pub(crate) struct Message {
    pub payload: Bytes,
    pub checked: Checked,
    pub received_ms: u64,
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
}

impl Admission {
    pub(crate) fn new(
        name: &str,
        metrics: SourceMetrics,
        dead_letters: DeadLetters,
        settings: &Settings,
        resume_cursor: Option<String>,
    ) -> Admission {
        let dedup = settings.dedup.as_ref().map(|plan| (plan.key.clone(), DedupWindow::new(plan)));
        let order = dedup.is_none().then(|| CursorOrder::new(resume_cursor.as_deref()));
        let gaps = settings.gaps.enabled.then(|| {
            // The spool's cursor is where a cursor-based sequence continues.
            let high =
                if settings.gaps.pointer.is_none() { resume_cursor.as_deref().and_then(parse_int) } else { None };
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
            latest_int: resume_cursor.as_deref().and_then(parse_int),
            resume_cursor,
            latest_cursor: None,
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
            match parse_int(&c) {
                Some(n) if self.latest_int.is_some_and(|l| n <= l) => {}
                Some(n) => {
                    self.latest_int = Some(n);
                    self.metrics.cursor.set(n as f64);
                    self.latest_cursor = Some(c);
                }
                None => self.latest_cursor = Some(c),
            }
        }
        self.duplicate_run = 0;
        self.metrics.messages.increment(1);
        self.metrics.bytes.increment(payload.len() as u64);
        self.last_forward = Some(Instant::now());
        out.push(Event { payload, cursor: self.resume_cursor(), received_ms });
    }

    fn observe_gaps(&mut self, payload: &[u8], cursor: Option<&str>, now_ms: u64) {
        let Some((pointer, tracker)) = self.gaps.as_mut() else { return };
        let value = match pointer {
            Some(p) => crate::cursor::extract(p, payload).ok().flatten().as_deref().and_then(parse_int),
            None => cursor.and_then(parse_int),
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
        assert_eq!(h.dead_letter_reasons(), ["invalid_json", "too_large"]);
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
}
