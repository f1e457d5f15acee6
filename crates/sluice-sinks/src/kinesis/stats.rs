//! The Kinesis sink's metrics, labelled with the sink's name.

use metrics::{Counter, Gauge, Histogram};

/// Metric handles of one sink (cheap to clone).
#[derive(Clone)]
pub struct Stats {
    /// `sluice_sink_records_put_total`: user records the stream accepted.
    pub put: Counter,
    /// `sluice_sink_records_retried_total`: user records sent again after a failed attempt.
    pub retried: Counter,
    /// `sluice_sink_records_throttled_total`: user records refused for throughput.
    pub throttled: Counter,
    /// `sluice_sink_records_failed_total`: user records in attempts that failed otherwise
    /// (per-entry `InternalFailure`, whole-call errors such as connection refused).
    pub failed: Counter,
    /// `sluice_sink_records_dead_lettered_total`: user records written to the dead-letter file.
    pub dead_lettered: Counter,
    /// `sluice_sink_partition_key_fallback_total`: records that got a random key because the
    /// configured one could not be taken from them.
    pub key_fallback: Counter,
    /// `sluice_sink_batch_seconds`: duration of PutRecords calls.
    pub batch_seconds: Histogram,
    /// `sluice_sink_end_to_end_seconds`: from the source receiving a record to its acceptance.
    pub end_to_end_seconds: Histogram,
    /// `sluice_sink_in_flight`: PutRecords calls under way.
    pub in_flight: Gauge,
}

impl Stats {
    /// The handles for sink `name`.
    pub fn new(name: &str) -> Stats {
        let sink = name.to_owned();
        Stats {
            put: metrics::counter!("sluice_sink_records_put_total", "sink" => sink.clone()),
            retried: metrics::counter!("sluice_sink_records_retried_total", "sink" => sink.clone()),
            throttled: metrics::counter!("sluice_sink_records_throttled_total", "sink" => sink.clone()),
            failed: metrics::counter!("sluice_sink_records_failed_total", "sink" => sink.clone()),
            dead_lettered: metrics::counter!("sluice_sink_records_dead_lettered_total", "sink" => sink.clone()),
            key_fallback: metrics::counter!("sluice_sink_partition_key_fallback_total", "sink" => sink.clone()),
            batch_seconds: metrics::histogram!("sluice_sink_batch_seconds", "sink" => sink.clone()),
            end_to_end_seconds: metrics::histogram!("sluice_sink_end_to_end_seconds", "sink" => sink.clone()),
            in_flight: metrics::gauge!("sluice_sink_in_flight", "sink" => sink),
        }
    }
}
