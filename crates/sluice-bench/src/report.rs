//! Rendering a [`BenchReport`] as a markdown table or JSON.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::BenchReport;

/// Renders the report as a markdown table (plus a line per workload that had errors).
pub fn render_table(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice bench: {} stream={} shards={} duration={:.1}s per workload",
        report.endpoint, report.stream, report.shards, report.duration_secs
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| workload | clients | records/s | MB/s | requests/s | p50 ms | p99 ms | p99.9 ms | errors | failed records | server RSS MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in &report.workloads {
        let rss = w.server_rss_peak_mib.map_or_else(|| "-".to_string(), |m| format!("{m:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            w.workload,
            w.clients,
            w.records_per_sec,
            w.mb_per_sec,
            w.requests_per_sec,
            w.p50_ms,
            w.p99_ms,
            w.p999_ms,
            w.errors,
            w.failed_records,
            rss
        );
    }
    for w in &report.workloads {
        if let Some(e) = &w.first_error {
            let _ = writeln!(
                out,
                "\n{}: {} HTTP errors, {} transport errors, {} bad responses; first: {e}",
                w.workload, w.http_errors, w.transport_errors, w.bad_responses
            );
        }
    }
    out
}

/// Prints the report to stdout: a table, or pretty JSON when `json` is true.
pub fn print_report(report: &BenchReport, json: bool) -> anyhow::Result<()> {
    let text = if json {
        let mut s = serde_json::to_string_pretty(report)?;
        s.push('\n');
        s
    } else {
        render_table(report)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
