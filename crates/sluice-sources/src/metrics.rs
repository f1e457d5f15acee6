//! The metrics every source reports, all labelled `source = NAME`.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `sluice_source_connected` | gauge | live connections (one per replica; one more during a rotation's overlap; 0 while reconnecting) |
//! | `sluice_source_connects_total` | counter | connections established (handshake done) |
//! | `sluice_source_reconnects_total{cause}` | counter | connections that ended or failed to open, by cause |
//! | `sluice_source_reconnect_waits_total` | counter | reconnect waits started (each is logged with its length) |
//! | `sluice_source_backoff_seconds` | gauge | the longest pending reconnect wait (0 when every replica is connected) |
//! | `sluice_source_messages_total` | counter | events forwarded to the spool |
//! | `sluice_source_bytes_total` | counter | payload bytes forwarded to the spool |
//! | `sluice_source_dead_lettered_total` | counter | messages dead-lettered (oversized, bad cursor, invalid JSON) |
//! | `sluice_source_duplicates_total{reason}` | counter | messages dropped as already forwarded: `dedup` (key in the window), `cursor` (cursor not after the last one), `rotation` (a rotation's overlap) |
//! | `sluice_source_dedup_unkeyed_total` | counter | events without any `dedup.key` field (forwarded, not de-duplicated) |
//! | `sluice_source_rotation_unaligned_total` | counter | events of a rotation that could not be aligned (forwarded; may be duplicates) |
//! | `sluice_source_gaps_total` | counter | jumps in the integer sequence that no replica filled in time |
//! | `sluice_source_missing_total` | counter | values missing in those gaps |
//! | `sluice_source_gap_fills_total` | counter | missing values that arrived late (from another replica) |
//! | `sluice_source_last_message_age_seconds` | gauge | time since the last forwarded event |
//! | `sluice_source_cursor` | gauge | the resume cursor, when it is an integer |
//! | `sluice_source_silent`, `sluice_source_no_connection`, `sluice_source_cursor_stuck` | gauge | 1 while that alarm is up (see `alarm`) |
//!
//! Dead letters are also counted by reason (`oversized`, `bad_cursor`, `invalid_json`) in
//! `sluice_dead_letters_total{component, reason}` (see `sluice_flow::DeadLetters`).

use metrics::{Counter, Gauge};

use crate::supervisor::Cause;

/// Handles to one source's metrics (registered once, then cheap to update).
pub(crate) struct SourceMetrics {
    source: String,
    pub connected: Gauge,
    pub connects: Counter,
    pub reconnect_waits: Counter,
    pub messages: Counter,
    pub bytes: Counter,
    pub dead_lettered: Counter,
    pub duplicates_dedup: Counter,
    pub duplicates_cursor: Counter,
    pub duplicates_rotation: Counter,
    pub dedup_unkeyed: Counter,
    pub rotation_unaligned: Counter,
    pub gaps: Counter,
    pub missing: Counter,
    pub gap_fills: Counter,
    pub last_message_age: Gauge,
    pub cursor: Gauge,
    pub backoff: Gauge,
}

impl SourceMetrics {
    pub(crate) fn new(source: &str) -> SourceMetrics {
        describe();
        let s = source.to_owned();
        let duplicates = |reason: &'static str| metrics::counter!("sluice_source_duplicates_total", "source" => s.clone(), "reason" => reason);
        SourceMetrics {
            connected: metrics::gauge!("sluice_source_connected", "source" => s.clone()),
            connects: metrics::counter!("sluice_source_connects_total", "source" => s.clone()),
            reconnect_waits: metrics::counter!("sluice_source_reconnect_waits_total", "source" => s.clone()),
            messages: metrics::counter!("sluice_source_messages_total", "source" => s.clone()),
            bytes: metrics::counter!("sluice_source_bytes_total", "source" => s.clone()),
            dead_lettered: metrics::counter!("sluice_source_dead_lettered_total", "source" => s.clone()),
            duplicates_dedup: duplicates("dedup"),
            duplicates_cursor: duplicates("cursor"),
            duplicates_rotation: duplicates("rotation"),
            dedup_unkeyed: metrics::counter!("sluice_source_dedup_unkeyed_total", "source" => s.clone()),
            rotation_unaligned: metrics::counter!("sluice_source_rotation_unaligned_total", "source" => s.clone()),
            gaps: metrics::counter!("sluice_source_gaps_total", "source" => s.clone()),
            missing: metrics::counter!("sluice_source_missing_total", "source" => s.clone()),
            gap_fills: metrics::counter!("sluice_source_gap_fills_total", "source" => s.clone()),
            last_message_age: metrics::gauge!("sluice_source_last_message_age_seconds", "source" => s.clone()),
            cursor: metrics::gauge!("sluice_source_cursor", "source" => s.clone()),
            backoff: metrics::gauge!("sluice_source_backoff_seconds", "source" => s.clone()),
            source: s,
        }
    }

    pub(crate) fn reconnect(&self, cause: Cause) {
        metrics::counter!("sluice_source_reconnects_total", "source" => self.source.clone(), "cause" => cause.as_str())
            .increment(1);
    }
}

fn describe() {
    metrics::describe_gauge!("sluice_source_connected", "Live connections of the source.");
    metrics::describe_counter!("sluice_source_connects_total", "Connections established.");
    metrics::describe_counter!("sluice_source_reconnects_total", "Connections that ended or failed to open, by cause.");
    metrics::describe_counter!("sluice_source_reconnect_waits_total", "Reconnect waits started.");
    metrics::describe_counter!("sluice_source_messages_total", "Events forwarded to the spool.");
    metrics::describe_counter!("sluice_source_bytes_total", "Payload bytes forwarded to the spool.");
    metrics::describe_counter!("sluice_source_dead_lettered_total", "Messages dead-lettered by the source.");
    metrics::describe_counter!("sluice_source_duplicates_total", "Messages dropped as already forwarded, by reason.");
    metrics::describe_counter!("sluice_source_dedup_unkeyed_total", "Events without a dedup key (not de-duplicated).");
    metrics::describe_counter!(
        "sluice_source_rotation_unaligned_total",
        "Rotation events that could not be aligned (forwarded, may be duplicates)."
    );
    metrics::describe_counter!("sluice_source_gaps_total", "Jumps in the integer sequence that were never filled.");
    metrics::describe_counter!("sluice_source_missing_total", "Values missing in the sequence's gaps.");
    metrics::describe_counter!("sluice_source_gap_fills_total", "Missing values that arrived late.");
    metrics::describe_gauge!("sluice_source_last_message_age_seconds", "Seconds since the last forwarded event.");
    metrics::describe_gauge!("sluice_source_cursor", "The resume cursor, when it is an integer.");
    metrics::describe_gauge!("sluice_source_backoff_seconds", "Longest pending reconnect wait.");
}
