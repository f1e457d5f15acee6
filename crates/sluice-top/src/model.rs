//! What `sluice top` shows: rows per source, sink, API operation and stream, built from two
//! scrapes so that counters become rates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::expo::{self, Page};

type Labels = Vec<(String, String)>;

/// One scrape of `/metrics`, indexed by metric name and (sorted) label set.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When the page was read; rates divide by the time between two scrapes.
    pub at: Instant,
    series: HashMap<String, BTreeMap<Labels, f64>>,
}

impl Scrape {
    /// Parses an exposition page read at `at`.
    pub fn parse(text: &str, at: Instant) -> Scrape {
        Scrape::from_page(expo::parse(text), at)
    }

    /// Indexes parsed samples; a series written twice keeps its last value.
    pub fn from_page(page: Page, at: Instant) -> Scrape {
        let mut series: HashMap<String, BTreeMap<Labels, f64>> = HashMap::new();
        for mut sample in page.samples {
            sample.labels.sort();
            series.entry(sample.name).or_default().insert(sample.labels, sample.value);
        }
        Scrape { at, series }
    }

    fn matching<'a>(
        &'a self,
        name: &str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.series
            .get(name)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |(labels, _)| matches(labels, filter))
            .map(|(labels, v)| (labels, *v))
    }

    /// The sum over every series of `name` whose labels include `filter`; `None` when there is
    /// no such series (the metric is not exported, or not yet).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let total = self.matching(name, filter).fold(0.0, |acc, (_, v)| {
            found = true;
            acc + v
        });
        found.then_some(total)
    }

    /// The values label `key` takes across the series of `name` (also with `filter`).
    pub fn label_values(&self, name: &str, key: &str, filter: &[(&str, &str)]) -> BTreeSet<String> {
        self.matching(name, filter).filter_map(|(labels, _)| label(labels, key).map(str::to_owned)).collect()
    }

    /// Every metric name present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }
}

fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn matches(labels: &Labels, filter: &[(&str, &str)]) -> bool {
    filter.iter().all(|(k, v)| label(labels, k) == Some(*v))
}

/// How much the counters `name` (matching `filter`) grew from `prev` to `cur`. A series that
/// went down was reset (the process restarted), so all of its current value is new; a series
/// that appeared since `prev` counts from zero.
fn increase(prev: &Scrape, cur: &Scrape, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    let before = prev.series.get(name);
    let mut found = false;
    let mut total = 0.0;
    for (labels, now) in cur.matching(name, filter) {
        found = true;
        let then = before.and_then(|m| m.get(labels)).copied().unwrap_or(0.0);
        total += if now >= then { now - then } else { now };
    }
    found.then_some(total)
}

/// Per-second growth of the counters `name` between two scrapes.
fn rate(prev: Option<&Scrape>, cur: &Scrape, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    let prev = prev?;
    let secs = cur.at.checked_duration_since(prev.at)?.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    increase(prev, cur, name, filter).map(|n| n / secs)
}

/// A gauge used as a flag: up when its value is 1 (any matching series).
fn flag(cur: &Scrape, name: &str, filter: &[(&str, &str)]) -> bool {
    cur.matching(name, filter).any(|(_, v)| v >= 1.0)
}

/// One row per source (`source` label).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// The source's name in the pipeline file.
    pub name: String,
    /// Live connections.
    pub connected: Option<f64>,
    /// Events forwarded per second.
    pub messages_per_sec: Option<f64>,
    /// Events forwarded in total.
    pub messages: Option<f64>,
    /// The resume cursor, when it is an integer.
    pub cursor: Option<f64>,
    /// Seconds since the last forwarded event.
    pub last_message_age: Option<f64>,
    /// Connections that ended or failed to open, over all causes.
    pub reconnects: Option<f64>,
    /// Messages dropped as already forwarded, over all reasons.
    pub duplicates: Option<f64>,
    /// Sequence jumps never filled.
    pub gaps: Option<f64>,
    /// Values missing in those gaps.
    pub missing: Option<f64>,
    /// The pending reconnect wait, only while there is one.
    pub backoff: Option<f64>,
    /// Alarms that are up, e.g. `SILENT`.
    pub alarms: Vec<&'static str>,
}

/// One row per sink (`sink` label).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRow {
    /// The sink's name in the pipeline file.
    pub name: String,
    /// Records delivered per second.
    pub records_per_sec: Option<f64>,
    /// Records delivered in total.
    pub delivered: Option<f64>,
    /// Records sent and not yet answered.
    pub in_flight: Option<f64>,
    /// Records retried.
    pub retries: Option<f64>,
    /// Records throttled by the stream.
    pub throttled: Option<f64>,
    /// Records dead-lettered by the pipeline.
    pub dead_lettered: Option<f64>,
    /// Per input: spooled but not yet delivered (`None` when a gauge is missing).
    pub lag: Vec<(String, Option<f64>)>,
}

/// One row per Kinesis API operation (`sluice serve`, or a pipeline's embedded stream).
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    /// The operation, e.g. `PutRecords`.
    pub operation: String,
    /// Requests per second.
    pub per_sec: Option<f64>,
    /// Requests in total.
    pub total: f64,
    /// Requests answered with an error, in total.
    pub errors: f64,
    /// Mean latency in milliseconds over the last interval (`None` when idle).
    pub avg_ms: Option<f64>,
}

/// One row per stream served by the embedded Kinesis API.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    /// The stream name.
    pub stream: String,
    /// Records put per second.
    pub put_per_sec: Option<f64>,
    /// Records put in total.
    pub put: Option<f64>,
    /// Records read (GetRecords and SubscribeToShard) per second.
    pub read_per_sec: Option<f64>,
    /// Records read in total.
    pub read: Option<f64>,
    /// Throttled puts (records) and reads (calls), in total.
    pub throttled: Option<f64>,
}

/// One row per shard a `kinesis` source reads (`stream` and `shard` labels).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    /// The stream read.
    pub stream: String,
    /// The shard.
    pub shard: String,
    /// User records read per second.
    pub per_sec: Option<f64>,
    /// User records read in total.
    pub read: Option<f64>,
    /// `MillisBehindLatest` of the newest read.
    pub behind_ms: Option<f64>,
}

/// Everything one screen shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Sources, by name.
    pub sources: Vec<SourceRow>,
    /// Sinks, by name.
    pub sinks: Vec<SinkRow>,
    /// API operations, by name.
    pub operations: Vec<OperationRow>,
    /// Streams, by name.
    pub streams: Vec<StreamRow>,
    /// Shards read by `kinesis` sources, by stream and shard.
    pub shards: Vec<ShardRow>,
}

impl View {
    /// Builds the rows of `cur`; rates need `prev` (the scrape one interval earlier).
    pub fn new(prev: Option<&Scrape>, cur: &Scrape) -> View {
        View {
            sources: sources(prev, cur),
            sinks: sinks(prev, cur),
            operations: operations(prev, cur),
            streams: streams(prev, cur),
            shards: shards(prev, cur),
        }
    }

    /// True when the page had nothing `sluice top` knows.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
            && self.sinks.is_empty()
            && self.operations.is_empty()
            && self.streams.is_empty()
            && self.shards.is_empty()
    }
}

const SPOOL_BLOCKED: &str = "sluice_pipeline_spool_blocked";
const SPOOL_LAST_ORDINAL: &str = "sluice_pipeline_spool_last_ordinal";
const WATERMARK: &str = "sluice_pipeline_watermark";
const DELIVERED: &str = "sluice_pipeline_delivered_total";
const DEAD_LETTERED: &str = "sluice_pipeline_dead_lettered_total";
const REQUESTS: &str = "sluice_requests_total";
const REQUEST_SECONDS: &str = "sluice_request_duration_seconds";

/// The label values of `key` over every metric whose name passes `wanted`.
fn names_with(cur: &Scrape, key: &str, wanted: impl Fn(&str) -> bool) -> BTreeSet<String> {
    cur.names().filter(|n| wanted(n)).flat_map(|n| cur.label_values(n, key, &[])).collect()
}

fn sources(prev: Option<&Scrape>, cur: &Scrape) -> Vec<SourceRow> {
    let names = names_with(cur, "source", |n| n.starts_with("sluice_source_") || n == SPOOL_BLOCKED);
    names
        .into_iter()
        .map(|name| {
            let f = [("source", name.as_str())];
            let mut alarms = Vec::new();
            if flag(cur, "sluice_source_no_connection", &f) {
                alarms.push("NO CONNECTION");
            }
            if flag(cur, "sluice_source_silent", &f) {
                alarms.push("SILENT");
            }
            if flag(cur, SPOOL_BLOCKED, &f) {
                alarms.push("SPOOL BLOCKED");
            }
            SourceRow {
                connected: cur.sum("sluice_source_connected", &f),
                messages_per_sec: rate(prev, cur, "sluice_source_messages_total", &f),
                messages: cur.sum("sluice_source_messages_total", &f),
                cursor: cur.sum("sluice_source_cursor", &f),
                last_message_age: cur.sum("sluice_source_last_message_age_seconds", &f),
                reconnects: cur.sum("sluice_source_reconnects_total", &f),
                duplicates: cur.sum("sluice_source_duplicates_total", &f),
                gaps: cur.sum("sluice_source_gaps_total", &f),
                missing: cur.sum("sluice_source_missing_total", &f),
                backoff: cur.sum("sluice_source_backoff_seconds", &f).filter(|b| *b > 0.0),
                alarms,
                name,
            }
        })
        .collect()
}

fn sinks(prev: Option<&Scrape>, cur: &Scrape) -> Vec<SinkRow> {
    let names = names_with(cur, "sink", |n| {
        n.starts_with("sluice_sink_") || n == DELIVERED || n == DEAD_LETTERED || n == WATERMARK
    });
    names
        .into_iter()
        .map(|name| {
            let f = [("sink", name.as_str())];
            let lag = cur
                .label_values(WATERMARK, "input", &f)
                .into_iter()
                .map(|input| {
                    let done = cur.sum(WATERMARK, &[("sink", name.as_str()), ("input", input.as_str())]);
                    let last = cur.sum(SPOOL_LAST_ORDINAL, &[("source", input.as_str())]);
                    let lag = last.zip(done).map(|(last, done)| (last - done).max(0.0));
                    (input, lag)
                })
                .collect();
            SinkRow {
                records_per_sec: rate(prev, cur, DELIVERED, &f),
                delivered: cur.sum(DELIVERED, &f),
                in_flight: cur.sum("sluice_sink_in_flight", &f),
                retries: cur.sum("sluice_sink_records_retried_total", &f),
                throttled: cur.sum("sluice_sink_records_throttled_total", &f),
                dead_lettered: cur.sum(DEAD_LETTERED, &f),
                lag,
                name,
            }
        })
        .collect()
}

fn operations(prev: Option<&Scrape>, cur: &Scrape) -> Vec<OperationRow> {
    let count = format!("{REQUEST_SECONDS}_count");
    let sum = format!("{REQUEST_SECONDS}_sum");
    cur.label_values(REQUESTS, "operation", &[])
        .into_iter()
        .map(|operation| {
            let f = [("operation", operation.as_str())];
            let total = cur.sum(REQUESTS, &f).unwrap_or(0.0);
            let ok = cur.sum(REQUESTS, &[("operation", operation.as_str()), ("outcome", "ok")]).unwrap_or(0.0);
            let avg_ms = prev.and_then(|prev| {
                let calls = increase(prev, cur, &count, &f)?;
                let secs = increase(prev, cur, &sum, &f)?;
                (calls > 0.0).then(|| secs / calls * 1000.0)
            });
            OperationRow { per_sec: rate(prev, cur, REQUESTS, &f), total, errors: total - ok, avg_ms, operation }
        })
        .collect()
}

fn streams(prev: Option<&Scrape>, cur: &Scrape) -> Vec<StreamRow> {
    const IN: &str = "sluice_records_in_total";
    const OUT: &str = "sluice_records_out_total";
    const THROTTLED: [&str; 2] = ["sluice_records_throttled_total", "sluice_reads_throttled_total"];
    let names = names_with(cur, "stream", |n| n == IN || n == OUT || THROTTLED.contains(&n));
    names
        .into_iter()
        .map(|stream| {
            let f = [("stream", stream.as_str())];
            let throttled = THROTTLED.iter().filter_map(|n| cur.sum(n, &f)).reduce(|a, b| a + b);
            StreamRow {
                put_per_sec: rate(prev, cur, IN, &f),
                put: cur.sum(IN, &f),
                read_per_sec: rate(prev, cur, OUT, &f),
                read: cur.sum(OUT, &f),
                throttled,
                stream,
            }
        })
        .collect()
}

fn shards(prev: Option<&Scrape>, cur: &Scrape) -> Vec<ShardRow> {
    const READ: &str = "sluice_kinesis_records_read_total";
    const BEHIND: &str = "sluice_kinesis_millis_behind_latest";
    let mut rows = Vec::new();
    for stream in names_with(cur, "stream", |n| n == READ || n == BEHIND) {
        let f = [("stream", stream.as_str())];
        let shards: BTreeSet<String> = [READ, BEHIND].iter().flat_map(|n| cur.label_values(n, "shard", &f)).collect();
        for shard in shards {
            let f = [("stream", stream.as_str()), ("shard", shard.as_str())];
            rows.push(ShardRow {
                per_sec: rate(prev, cur, READ, &f),
                read: cur.sum(READ, &f),
                behind_ms: cur.sum(BEHIND, &f),
                stream: stream.clone(),
                shard,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pair(before: &str, after: &str, secs: u64) -> (Scrape, Scrape) {
        let t0 = Instant::now();
        (Scrape::parse(before, t0), Scrape::parse(after, t0 + Duration::from_secs(secs)))
    }

    const PIPELINE_0: &str = r#"
sluice_source_connected{source="race"} 1
sluice_source_messages_total{source="race"} 100
sluice_source_reconnects_total{source="race",cause="idle_timeout"} 2
sluice_pipeline_delivered_total{sink="stream"} 50
"#;

    const PIPELINE_1: &str = r#"
# TYPE sluice_source_connected gauge
sluice_source_connected{source="race"} 2
sluice_source_messages_total{source="race"} 300
sluice_source_cursor{source="race"} 12345
sluice_source_last_message_age_seconds{source="race"} 0.25
sluice_source_reconnects_total{source="race",cause="idle_timeout"} 2
sluice_source_reconnects_total{source="race",cause="closed"} 3
sluice_source_duplicates_total{source="race",reason="replay"} 4
sluice_source_duplicates_total{source="race",reason="rotate"} 1
sluice_source_gaps_total{source="race"} 1
sluice_source_missing_total{source="race"} 7
sluice_source_backoff_seconds{source="race"} 0
sluice_source_silent{source="race"} 0
sluice_source_no_connection{source="race"} 0
sluice_source_connected{source="book"} 0
sluice_source_no_connection{source="book"} 1
sluice_source_silent{source="book"} 1
sluice_source_backoff_seconds{source="book"} 3.5
sluice_source_duplicates_total{source="book"} 9
sluice_pipeline_spool_blocked{source="book"} 1
sluice_pipeline_spool_last_ordinal{source="race"} 1000
sluice_pipeline_delivered_total{sink="stream"} 250
sluice_pipeline_dead_lettered_total{sink="stream"} 1
sluice_pipeline_watermark{sink="stream",input="race"} 960
sluice_pipeline_watermark{sink="stream",input="book"} 10
sluice_sink_in_flight{sink="stream"} 40
sluice_sink_records_retried_total{sink="stream"} 6
sluice_sink_records_throttled_total{sink="stream"} 5
"#;

    #[test]
    fn sources_have_rates_sums_and_alarms() {
        let (a, b) = pair(PIPELINE_0, PIPELINE_1, 2);
        let view = View::new(Some(&a), &b);
        let names: Vec<_> = view.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["book", "race"]);
        let race = &view.sources[1];
        assert_eq!(race.connected, Some(2.0));
        assert_eq!(race.messages_per_sec, Some(100.0));
        assert_eq!(race.messages, Some(300.0));
        assert_eq!(race.cursor, Some(12345.0));
        assert_eq!(race.last_message_age, Some(0.25));
        assert_eq!(race.reconnects, Some(5.0));
        assert_eq!(race.duplicates, Some(5.0));
        assert_eq!((race.gaps, race.missing), (Some(1.0), Some(7.0)));
        assert_eq!(race.backoff, None, "a zero backoff is no backoff");
        assert!(race.alarms.is_empty());
        let book = &view.sources[0];
        assert_eq!(book.alarms, ["NO CONNECTION", "SILENT", "SPOOL BLOCKED"]);
        assert_eq!(book.backoff, Some(3.5));
        assert_eq!(book.duplicates, Some(9.0), "no reason label (older builds) still counts");
        assert_eq!(book.messages_per_sec, None, "no counter, no rate");
        assert_eq!(book.cursor, None);
    }

    #[test]
    fn sinks_have_rate_and_lag_per_input() {
        let (a, b) = pair(PIPELINE_0, PIPELINE_1, 2);
        let view = View::new(Some(&a), &b);
        assert_eq!(view.sinks.len(), 1);
        let sink = &view.sinks[0];
        assert_eq!(sink.name, "stream");
        assert_eq!(sink.records_per_sec, Some(100.0));
        assert_eq!(sink.delivered, Some(250.0));
        assert_eq!(sink.in_flight, Some(40.0));
        assert_eq!((sink.retries, sink.throttled, sink.dead_lettered), (Some(6.0), Some(5.0), Some(1.0)));
        // `book` has a watermark but no spool gauge: its lag is unknown, not zero.
        assert_eq!(sink.lag, [("book".to_owned(), None), ("race".to_owned(), Some(40.0))]);
    }

    #[test]
    fn first_scrape_has_no_rates() {
        let b = Scrape::parse(PIPELINE_1, Instant::now());
        let view = View::new(None, &b);
        assert_eq!(view.sources[1].messages_per_sec, None);
        assert_eq!(view.sources[1].messages, Some(300.0));
        assert_eq!(view.sinks[0].records_per_sec, None);
    }

    #[test]
    fn reset_and_new_series_count_from_zero() {
        let (a, b) = pair(
            "sluice_source_messages_total{source=\"s\",x=\"1\"} 500\n",
            "sluice_source_messages_total{source=\"s\",x=\"1\"} 20\nsluice_source_messages_total{source=\"s\",x=\"2\"} 10\n",
            1,
        );
        let view = View::new(Some(&a), &b);
        assert_eq!(view.sources[0].messages_per_sec, Some(30.0));
    }

    #[test]
    fn label_order_does_not_split_a_series() {
        let (a, b) = pair(
            "sluice_requests_total{operation=\"PutRecords\",outcome=\"ok\"} 4\n",
            "sluice_requests_total{outcome=\"ok\",operation=\"PutRecords\"} 10\n",
            2,
        );
        assert_eq!(View::new(Some(&a), &b).operations[0].per_sec, Some(3.0));
    }

    const SERVE_0: &str = r#"
sluice_requests_total{operation="PutRecords",outcome="ok"} 2
sluice_request_duration_seconds_bucket{operation="PutRecords",le="+Inf"} 2
sluice_request_duration_seconds_sum{operation="PutRecords"} 0.004
sluice_request_duration_seconds_count{operation="PutRecords"} 2
sluice_records_in_total{stream="race"} 20
"#;

    const SERVE_1: &str = r#"
sluice_requests_total{operation="PutRecords",outcome="ok"} 6
sluice_requests_total{operation="PutRecords",outcome="ResourceNotFoundException"} 1
sluice_requests_total{operation="CreateStream",outcome="ok"} 1
sluice_request_duration_seconds_bucket{operation="PutRecords",le="+Inf"} 7
sluice_request_duration_seconds_sum{operation="PutRecords"} 0.019
sluice_request_duration_seconds_count{operation="PutRecords"} 7
sluice_records_in_total{stream="race"} 60
sluice_records_out_total{stream="race"} 30
sluice_records_throttled_total{stream="race"} 2
sluice_reads_throttled_total{stream="race"} 1
sluice_open_iterators NaN
"#;

    #[test]
    fn serve_operations_and_streams() {
        let (a, b) = pair(SERVE_0, SERVE_1, 1);
        let view = View::new(Some(&a), &b);
        assert!(view.sources.is_empty() && view.sinks.is_empty());
        let ops: Vec<_> = view.operations.iter().map(|o| o.operation.as_str()).collect();
        assert_eq!(ops, ["CreateStream", "PutRecords"]);
        let put = &view.operations[1];
        assert_eq!((put.per_sec, put.total, put.errors), (Some(5.0), 7.0, 1.0));
        let avg = put.avg_ms.expect("latency");
        assert!((avg - 3.0).abs() < 1e-9, "{avg}");
        assert_eq!(view.operations[0].avg_ms, None, "no histogram, no latency");
        let race = &view.streams[0];
        assert_eq!((race.put_per_sec, race.put), (Some(40.0), Some(60.0)));
        assert_eq!((race.read_per_sec, race.read), (Some(30.0), Some(30.0)));
        assert_eq!(race.throttled, Some(3.0));
    }

    #[test]
    fn shards_read_by_a_kinesis_source() {
        let (a, b) = pair(
            "sluice_kinesis_records_read_total{stream=\"race\",shard=\"shardId-000000000000\"} 100\n",
            "sluice_kinesis_records_read_total{stream=\"race\",shard=\"shardId-000000000000\"} 300\n\
             sluice_kinesis_millis_behind_latest{stream=\"race\",shard=\"shardId-000000000000\"} 0\n\
             sluice_kinesis_millis_behind_latest{stream=\"race\",shard=\"shardId-000000000001\"} 1500\n",
            2,
        );
        let view = View::new(Some(&a), &b);
        assert!(!view.is_empty());
        assert_eq!(view.shards.len(), 2);
        let s0 = &view.shards[0];
        assert_eq!(
            (s0.shard.as_str(), s0.per_sec, s0.read, s0.behind_ms),
            ("shardId-000000000000", Some(100.0), Some(300.0), Some(0.0))
        );
        let s1 = &view.shards[1];
        assert_eq!((s1.stream.as_str(), s1.read, s1.behind_ms), ("race", None, Some(1500.0)));
    }

    #[test]
    fn unknown_or_empty_pages_give_an_empty_view() {
        let now = Instant::now();
        assert!(View::new(None, &Scrape::parse("", now)).is_empty());
        assert!(View::new(None, &Scrape::parse("process_cpu_seconds_total 3\nnot a line\n", now)).is_empty());
    }
}
