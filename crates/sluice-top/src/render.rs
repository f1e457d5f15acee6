//! Turning a [`View`] into tables of text, shared by the TUI and the plain-lines output.

use std::fmt::Write as _;

use crate::model::View;

/// A table of already formatted cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column headings; the first names the row kind (`SOURCE`, `SINK`, …).
    pub header: Vec<&'static str>,
    /// Rows of cells, as many as headings.
    pub rows: Vec<Vec<String>>,
    /// Per column: numbers are right-aligned, words left-aligned.
    pub right: Vec<bool>,
}

impl Table {
    /// The width of each column: the widest of its heading and cells.
    pub fn widths(&self) -> Vec<usize> {
        self.header
            .iter()
            .enumerate()
            .map(|(i, h)| {
                self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).fold(h.chars().count(), usize::max)
            })
            .collect()
    }
}

/// The tables of a view that have rows, in screen order.
pub fn tables(view: &View) -> Vec<Table> {
    let mut out = Vec::new();
    if !view.sources.is_empty() {
        out.push(Table {
            header: vec![
                "SOURCE",
                "CONN",
                "MSG/S",
                "CURSOR",
                "LAST MSG",
                "RECONNECTS",
                "DUPS",
                "GAPS",
                "MISSING",
                "BACKOFF",
                "ALARMS",
            ],
            rows: view
                .sources
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        count(s.connected),
                        rate(s.messages_per_sec),
                        count(s.cursor),
                        secs(s.last_message_age),
                        count(s.reconnects),
                        count(s.duplicates),
                        count(s.gaps),
                        count(s.missing),
                        secs(s.backoff),
                        if s.alarms.is_empty() { "-".to_owned() } else { s.alarms.join(", ") },
                    ]
                })
                .collect(),
            right: vec![false, true, true, true, true, true, true, true, true, true, false],
        });
    }
    if !view.sinks.is_empty() {
        out.push(Table {
            header: vec!["SINK", "REC/S", "DELIVERED", "IN-FLIGHT", "RETRIES", "THROTTLED", "DEAD-LETTERED", "LAG"],
            rows: view
                .sinks
                .iter()
                .map(|s| {
                    let lag = if s.lag.is_empty() {
                        "-".to_owned()
                    } else {
                        s.lag
                            .iter()
                            .map(|(input, lag)| format!("{input}={}", count(*lag)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    vec![
                        s.name.clone(),
                        rate(s.records_per_sec),
                        count(s.delivered),
                        count(s.in_flight),
                        count(s.retries),
                        count(s.throttled),
                        count(s.dead_lettered),
                        lag,
                    ]
                })
                .collect(),
            right: vec![false, true, true, true, true, true, true, false],
        });
    }
    if !view.operations.is_empty() {
        out.push(Table {
            header: vec!["OPERATION", "REQ/S", "TOTAL", "ERRORS", "AVG MS"],
            rows: view
                .operations
                .iter()
                .map(|o| {
                    vec![
                        o.operation.clone(),
                        rate(o.per_sec),
                        count(Some(o.total)),
                        count(Some(o.errors)),
                        o.avg_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}")),
                    ]
                })
                .collect(),
            right: vec![false, true, true, true, true],
        });
    }
    if !view.streams.is_empty() {
        out.push(Table {
            header: vec!["STREAM", "PUT REC/S", "PUT", "READ REC/S", "READ", "THROTTLED"],
            rows: view
                .streams
                .iter()
                .map(|s| {
                    vec![
                        s.stream.clone(),
                        rate(s.put_per_sec),
                        count(s.put),
                        rate(s.read_per_sec),
                        count(s.read),
                        count(s.throttled),
                    ]
                })
                .collect(),
            right: vec![false, true, true, true, true, true],
        });
    }
    if !view.shards.is_empty() {
        out.push(Table {
            header: vec!["READ SHARD", "STREAM", "REC/S", "READ", "BEHIND"],
            rows: view
                .shards
                .iter()
                .map(|s| {
                    vec![
                        s.shard.clone(),
                        s.stream.clone(),
                        rate(s.per_sec),
                        count(s.read),
                        s.behind_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms / 1000.0)),
                    ]
                })
                .collect(),
            right: vec![false, false, true, true, true],
        });
    }
    out
}

/// Plain lines for a pipe or a log: a heading line, then each table with aligned columns
/// (two spaces apart), a blank line between tables, no escape codes.
pub fn plain(view: &View, heading: &str) -> String {
    let mut out = format!("{heading}\n");
    let tables = tables(view);
    if tables.is_empty() {
        out.push_str("  no sluice metrics on this page yet\n");
    }
    for (i, table) in tables.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let widths = table.widths();
        let header: Vec<String> = table.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&table.rows) {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let width = widths.get(c).copied().unwrap_or(0);
                if c > 0 {
                    line.push_str("  ");
                }
                if table.right.get(c).copied().unwrap_or(false) {
                    let _ = write!(line, "{cell:>width$}");
                } else {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// A per-second rate: one decimal below 100, whole numbers above.
pub fn rate(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.is_finite() && v.abs() < 100.0 => format!("{v:.1}"),
        Some(v) => number(v),
    }
}

/// A counter or gauge shown as a whole number (`NaN`/`+Inf` as written by Prometheus).
pub fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), number)
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".to_owned() } else { "-Inf".to_owned() }
    } else {
        format!("{v:.0}")
    }
}

/// Seconds, short: `0.3s`, `42s`, `5m03s`, `2h05m`.
pub fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => number(v),
        Some(v) if v < 10.0 => format!("{v:.1}s"),
        Some(v) if v < 120.0 => format!("{v:.0}s"),
        Some(v) if v < 7200.0 => {
            let s = v as u64;
            format!("{}m{:02}s", s / 60, s % 60)
        }
        Some(v) => {
            let m = v as u64 / 60;
            format!("{}h{:02}m", m / 60, m % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::Scrape;

    fn view(before: &str, after: &str) -> View {
        let t0 = Instant::now();
        View::new(Some(&Scrape::parse(before, t0)), &Scrape::parse(after, t0 + Duration::from_secs(1)))
    }

    #[test]
    fn plain_serve_output_is_aligned_and_escape_free() {
        let v = view(
            "sluice_requests_total{operation=\"PutRecords\",outcome=\"ok\"} 1\n",
            concat!(
                "sluice_requests_total{operation=\"PutRecords\",outcome=\"ok\"} 3\n",
                "sluice_requests_total{operation=\"CreateStream\",outcome=\"ok\"} 1\n",
                "sluice_requests_total{operation=\"DescribeStreamSummary\",outcome=\"ResourceNotFoundException\"} 1\n",
                "sluice_records_in_total{stream=\"s\"} 12\n",
            ),
        );
        let text = plain(&v, "2026-01-01T00:00:00Z http://127.0.0.1:4567/metrics");
        let expected = "\
2026-01-01T00:00:00Z http://127.0.0.1:4567/metrics
OPERATION              REQ/S  TOTAL  ERRORS  AVG MS
CreateStream             1.0      1       0       -
DescribeStreamSummary    1.0      1       1       -
PutRecords               2.0      3       0       -

STREAM  PUT REC/S  PUT  READ REC/S  READ  THROTTLED
s            12.0   12           -     -          -
";
        assert_eq!(text, expected);
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn plain_pipeline_output() {
        let v = view(
            "sluice_source_messages_total{source=\"race\"} 0\n",
            concat!(
                "sluice_source_connected{source=\"race\"} 1\n",
                "sluice_source_messages_total{source=\"race\"} 1500\n",
                "sluice_source_cursor{source=\"race\"} 98765\n",
                "sluice_source_last_message_age_seconds{source=\"race\"} 0.04\n",
                "sluice_source_silent{source=\"race\"} 1\n",
                "sluice_source_backoff_seconds{source=\"race\"} 0\n",
                "sluice_pipeline_delivered_total{sink=\"out\"} 7\n",
                "sluice_pipeline_watermark{sink=\"out\",input=\"race\"} 5\n",
            ),
        );
        let text = plain(&v, "now");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "SOURCE  CONN  MSG/S  CURSOR  LAST MSG  RECONNECTS  DUPS  GAPS  MISSING  BACKOFF  ALARMS");
        assert_eq!(lines[2], "race       1   1500   98765      0.0s           -     -     -        -        -  SILENT");
        assert_eq!(lines[4], "SINK  REC/S  DELIVERED  IN-FLIGHT  RETRIES  THROTTLED  DEAD-LETTERED  LAG");
        assert_eq!(lines[5], "out     7.0          7          -        -          -              -  race=-");
    }

    #[test]
    fn empty_view_says_so() {
        assert_eq!(plain(&View::default(), "h"), "h\n  no sluice metrics on this page yet\n");
    }

    #[test]
    fn number_formats() {
        assert_eq!((rate(None), rate(Some(2.345)), rate(Some(1234.6))), ("-".into(), "2.3".into(), "1235".into()));
        assert_eq!(
            (count(Some(f64::NAN)), count(Some(f64::INFINITY)), count(Some(3.0))),
            ("NaN".into(), "+Inf".into(), "3".into())
        );
        assert_eq!(secs(Some(0.25)), "0.2s");
        assert_eq!(secs(Some(42.4)), "42s");
        assert_eq!(secs(Some(303.0)), "5m03s");
        assert_eq!(secs(Some(7500.0)), "2h05m");
    }
}
