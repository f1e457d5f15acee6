//! The metrics every source reports, all labelled `source = NAME`.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `sluice_source_connected` | gauge | live connections (1; 2 during a rotation's overlap; 0 while reconnecting) |
//! | `sluice_source_connects_total` | counter | connections established (handshake done) |
//! | `sluice_source_reconnects_total{cause}` | counter | connections that ended or failed to open, by cause |
//! | `sluice_source_messages_total` | counter | events forwarded to the spool |
//! | `sluice_source_bytes_total` | counter | payload bytes forwarded to the spool |
//! | `sluice_source_dead_lettered_total` | counter | messages dead-lettered (too large, invalid JSON) |
//! | `sluice_source_duplicates_total` | counter | messages dropped as already forwarded |
//! | `sluice_source_gaps_total` | counter | cursors missing between consecutive integer cursors |
//! | `sluice_source_last_message_age_seconds` | gauge | time since the last forwarded event (updated every second) |
//! | `sluice_source_cursor` | gauge | the latest forwarded cursor, when it is an integer |
//! | `sluice_source_backoff_seconds` | gauge | the delay before the pending reconnect (0 when connected) |

use metrics::{Counter, Gauge};

use crate::supervisor::Cause;

/// Handles to one source's metrics (registered once, then cheap to update).
pub(crate) struct SourceMetrics {
    source: String,
    pub connected: Gauge,
    pub connects: Counter,
    pub messages: Counter,
    pub bytes: Counter,
    pub dead_lettered: Counter,
    pub duplicates: Counter,
    pub gaps: Counter,
    pub last_message_age: Gauge,
    pub cursor: Gauge,
    pub backoff: Gauge,
}

impl SourceMetrics {
    pub(crate) fn new(source: &str) -> SourceMetrics {
        describe();
        let s = source.to_owned();
        SourceMetrics {
            connected: metrics::gauge!("sluice_source_connected", "source" => s.clone()),
            connects: metrics::counter!("sluice_source_connects_total", "source" => s.clone()),
            messages: metrics::counter!("sluice_source_messages_total", "source" => s.clone()),
            bytes: metrics::counter!("sluice_source_bytes_total", "source" => s.clone()),
            dead_lettered: metrics::counter!("sluice_source_dead_lettered_total", "source" => s.clone()),
            duplicates: metrics::counter!("sluice_source_duplicates_total", "source" => s.clone()),
            gaps: metrics::counter!("sluice_source_gaps_total", "source" => s.clone()),
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
    metrics::describe_counter!("sluice_source_messages_total", "Events forwarded to the spool.");
    metrics::describe_counter!("sluice_source_bytes_total", "Payload bytes forwarded to the spool.");
    metrics::describe_counter!("sluice_source_dead_lettered_total", "Messages dead-lettered by the source.");
    metrics::describe_counter!("sluice_source_duplicates_total", "Messages dropped as already forwarded.");
    metrics::describe_counter!("sluice_source_gaps_total", "Cursors missing between consecutive integer cursors.");
    metrics::describe_gauge!("sluice_source_last_message_age_seconds", "Seconds since the last forwarded event.");
    metrics::describe_gauge!("sluice_source_cursor", "The latest forwarded cursor, when it is an integer.");
    metrics::describe_gauge!("sluice_source_backoff_seconds", "Delay before the pending reconnect.");
}
