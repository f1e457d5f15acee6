//! The SSE source against raw loopback servers: `id:` cursors and `Last-Event-ID` across cuts,
//! keep-alive comments and idle timeouts, event types, multi-line data, handshake failures.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_sequence, metrics_recorder, start};
use sluice_flow::Source;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(20);
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";

fn source(name: &str, toml_text: &str) -> Box<dyn Source> {
    common::build("sse", name, toml_text)
}

/// Writes `text` in two halves, so events straddle reads.
async fn write_split(stream: &mut TcpStream, text: &str) -> std::io::Result<()> {
    let (a, b) = text.as_bytes().split_at(text.len() / 2);
    stream.write_all(a).await?;
    stream.flush().await?;
    stream.write_all(b).await
}

#[tokio::test]
async fn ids_are_cursors_and_last_event_id_resumes_exactly_once() {
    let (m, _g) = metrics_recorder();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    let (port, _server) = common::serve(move |_, mut stream| {
        let log = log.clone();
        async move {
            let Some(req) = common::read_request(&mut stream).await else { return };
            let last = req.header("last-event-id").map(str::to_owned);
            let after: i64 = last.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            log.lock().unwrap().push(last);
            let _ = stream.write_all(HEAD).await;
            let _ = stream.write_all(b"retry: 10\n: keep-alive\n\n").await;
            let end = (after + 30).min(100);
            for i in after + 1..=end {
                if write_split(&mut stream, &format!("id: {i}\ndata: {{\"seq\":{i}}}\n\n")).await.is_err() {
                    return;
                }
            }
            if end == 100 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            // Otherwise: the end of the body (a clean close).
        }
    })
    .await;
    let config = format!("url = \"http://127.0.0.1:{port}/events\"\nbackoff_initial = \"10ms\"");
    let mut run = start("sse", source("sse", &config), None, 64);
    let events = run.take(100, WITHIN).await;
    assert_sequence(&events, 1, 100);
    assert!(events.iter().all(|e| e.cursor.as_deref() == Some(common::seq(e).to_string().as_str())));
    run.expect_nothing(Duration::from_millis(200)).await;
    let ids = seen.lock().unwrap().clone();
    assert_eq!(ids, [None, Some("30".into()), Some("60".into()), Some("90".into())]);
    assert_eq!(m.counter("sluice_source_reconnects_total", &[("source", "sse"), ("cause", "closed")]), 3);
    assert_eq!(m.total("sluice_source_duplicates_total", "sse"), 0);
    run.stop().await;
}

#[tokio::test]
async fn comments_keep_a_connection_alive_and_silence_ends_it() {
    let (m, _g) = metrics_recorder();
    let opened: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = opened.clone();
    let (port, _server) = common::serve(move |n, mut stream| {
        let log = log.clone();
        async move {
            let Some(req) = common::read_request(&mut stream).await else { return };
            log.lock().unwrap().push(Instant::now());
            let after: i64 = req.header("last-event-id").and_then(|v| v.parse().ok()).unwrap_or(0);
            let _ = stream.write_all(HEAD).await;
            for i in after + 1..=after + 10 {
                let _ = stream.write_all(format!("id: {i}\ndata: {{\"seq\":{i}}}\n\n").as_bytes()).await;
            }
            if n == 1 {
                // 800 ms of comments only (each well within idle_timeout), then silence.
                for _ in 0..8 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = stream.write_all(b": ping\n\n").await;
                }
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let config = format!("url = \"http://127.0.0.1:{port}/\"\nidle_timeout = \"300ms\"\nbackoff_initial = \"10ms\"");
    let mut run = start("sse-idle", source("sse-idle", &config), None, 64);
    let events = run.take(20, WITHIN).await;
    assert_sequence(&events, 1, 20);
    let times = opened.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    let lived = times[1] - times[0];
    assert!(lived >= Duration::from_millis(1000), "the first connection lived only {lived:?}");
    assert_eq!(m.counter("sluice_source_reconnects_total", &[("source", "sse-idle"), ("cause", "idle_timeout")]), 1);
    run.stop().await;
}

#[tokio::test]
async fn event_types_filter_and_multi_line_data_with_a_pointer_cursor() {
    let (_m, _g) = metrics_recorder();
    let (port, _server) = common::serve(|_, mut stream| async move {
        if common::read_request(&mut stream).await.is_none() {
            return;
        }
        let _ = stream.write_all(HEAD).await;
        for i in 1..=20 {
            let text =
                format!("event: trade\ndata: {{\"seq\":{i},\ndata: \"x\":1}}\n\nevent: heartbeat\ndata: {{}}\n\n");
            let _ = stream.write_all(text.as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config =
        format!("url = \"http://127.0.0.1:{port}/\"\nevent_types = [\"trade\"]\nresume = {{ cursor = \"/seq\" }}");
    let mut run = start("sse-types", source("sse-types", &config), None, 64);
    let events = run.take(20, WITHIN).await;
    assert_sequence(&events, 1, 20);
    assert_eq!(events[0].payload, b"{\"seq\":1,\n\"x\":1}".as_slice());
    assert_eq!(events[0].cursor.as_deref(), Some("1"));
    run.expect_nothing(Duration::from_millis(200)).await;
    run.stop().await;
}

#[tokio::test]
async fn bad_responses_are_handshake_failures_and_retried() {
    let (m, _g) = metrics_recorder();
    let (port, _server) = common::serve(|n, mut stream| async move {
        if common::read_request(&mut stream).await.is_none() {
            return;
        }
        let _ = match n {
            1 => stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await,
            2 => stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi").await,
            _ => stream.write_all(HEAD).await.and(stream.write_all(b"id: 1\ndata: {\"seq\":1}\n\n").await),
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!("url = \"http://127.0.0.1:{port}/\"\nbackoff_initial = \"10ms\"");
    let mut run = start("sse-bad", source("sse-bad", &config), None, 8);
    let events = run.take(1, WITHIN).await;
    assert_sequence(&events, 1, 1);
    assert_eq!(m.counter("sluice_source_reconnects_total", &[("source", "sse-bad"), ("cause", "handshake_failed")]), 2);
    assert_eq!(m.counter("sluice_source_connects_total", &[("source", "sse-bad")]), 1);
    run.stop().await;
}

#[tokio::test]
async fn replicas_merge_into_one_stream_with_gaps_filled_by_the_other_connection() {
    let (m, _g) = metrics_recorder();
    // Connection 1 misses 20..=29, connection 2 misses 60..=69; every other event comes on
    // both. No resume: each connection starts from 1.
    let (port, _server) = common::serve(move |n, mut stream| async move {
        if common::read_request(&mut stream).await.is_none() {
            return;
        }
        let _ = stream.write_all(HEAD).await;
        let hole = if n == 1 { 20..=29 } else { 60..=69 };
        for i in 1..=100 {
            if hole.contains(&i) {
                continue;
            }
            if write_split(&mut stream, &format!("data: {{\"seq\":{i}}}\n\n")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!(
        "url = \"http://127.0.0.1:{port}/events\"\nreplicas = 2\ndedup = {{ key = [\"/seq\"] }}\ngaps = {{ field = \"/seq\", wait = \"5s\" }}"
    );
    let mut run = start("sse-replicas", source("sse-replicas", &config), None, 256);
    let events = run.take(100, WITHIN).await;
    let mut seqs: Vec<i64> = events.iter().map(common::seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "every event exactly once");
    run.expect_nothing(Duration::from_millis(300)).await;
    let labels = |reason| [("source", "sse-replicas"), ("reason", reason)];
    assert_eq!(m.counter("sluice_source_duplicates_total", &labels("dedup")), 80);
    assert_eq!(m.gauge("sluice_source_connected", &[("source", "sse-replicas")]), 2.0);
    // Each hole opened in one connection was filled by the other within gaps.wait.
    assert_eq!(m.counter("sluice_source_gaps_total", &[("source", "sse-replicas")]), 0);
    assert_eq!(m.counter("sluice_source_missing_total", &[("source", "sse-replicas")]), 0);
    assert!(m.counter("sluice_source_gap_fills_total", &[("source", "sse-replicas")]) >= 10);
    run.stop().await;
}
