//! The NDJSON-over-HTTP source against raw chunked loopback servers: lines across chunks, cuts
//! in the middle of a line, resume by URL, POST body and header templates, garbage and
//! oversized lines, idle timeouts, rotation.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Request, assert_sequence, metrics_recorder, start, write_chunk};
use sluice_flow::Source;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(20);
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";

fn source(name: &str, toml_text: &str) -> Box<dyn Source> {
    common::build("http", name, toml_text)
}

/// Sends `text` as 7-byte chunks (lines straddle chunks).
async fn send_in_small_chunks(stream: &mut TcpStream, text: &str) -> std::io::Result<()> {
    for piece in text.as_bytes().chunks(7) {
        write_chunk(stream, piece).await?;
    }
    Ok(())
}

fn after(req: &Request) -> i64 {
    req.query("after").and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn lines_resume_exactly_once_across_cuts_in_the_middle_of_a_line() {
    let (m, _g) = metrics_recorder();
    let (port, _server) = common::serve(|_, mut stream| async move {
        let Some(req) = common::read_request(&mut stream).await else { return };
        let from = after(&req);
        let _ = stream.write_all(HEAD).await;
        let end = (from + 25).min(100);
        let mut text = String::new();
        for i in from + 1..=end {
            // Mixed line endings and blank lines.
            text.push_str(&format!("{{\"seq\":{i}}}{}", if i % 3 == 0 { "\r\n\n" } else { "\n" }));
        }
        if send_in_small_chunks(&mut stream, &text).await.is_err() {
            return;
        }
        if end < 100 {
            // Half a line, then the socket goes away without ending the body.
            let _ = write_chunk(&mut stream, format!("{{\"seq\":{}", end + 1).as_bytes()).await;
            return;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!(
        "url = \"http://127.0.0.1:{port}/stream\"\nbackoff_initial = \"10ms\"\nresume = {{ cursor = \"/seq\", url = \"http://127.0.0.1:{port}/stream?after={{cursor}}\" }}"
    );
    let mut run = start("ndjson", source("ndjson", &config), None, 64);
    let events = run.take(100, WITHIN).await;
    assert_sequence(&events, 1, 100);
    run.expect_nothing(Duration::from_millis(200)).await;
    assert_eq!(m.counter("sluice_source_reconnects_total", &[("source", "ndjson"), ("cause", "error")]), 3);
    assert_eq!(m.counter("sluice_source_dead_lettered_total", &[("source", "ndjson")]), 0);
    run.stop().await;
}

#[tokio::test]
async fn garbage_and_oversized_lines_are_dead_lettered_and_the_stream_goes_on() {
    let (m, _g) = metrics_recorder();
    let (port, _server) = common::serve(|_, mut stream| async move {
        if common::read_request(&mut stream).await.is_none() {
            return;
        }
        let _ = stream.write_all(HEAD).await;
        let _ = write_chunk(&mut stream, b"{\"seq\":1}\nnot json\n{\"seq\":2}\n").await;
        let _ = write_chunk(&mut stream, format!("{{\"seq\":-1,\"pad\":\"{}\"}}\n", "p".repeat(5000)).as_bytes()).await;
        let _ = write_chunk(&mut stream, b"{\"seq\":3}\n").await;
        // 17 MiB in one line: more than is ever buffered.
        let block = vec![b'z'; 64 * 1024];
        for _ in 0..17 * 16 {
            if write_chunk(&mut stream, &block).await.is_err() {
                return;
            }
        }
        let _ = write_chunk(&mut stream, b"\n{\"seq\":4}\n").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config =
        format!("url = \"http://127.0.0.1:{port}/\"\nmax_message_bytes = 1000\nresume = {{ cursor = \"/seq\" }}");
    let mut run = start("ndjson-bad", source("ndjson-bad", &config), None, 64);
    let events = run.take(4, WITHIN).await;
    assert_sequence(&events, 1, 4);
    assert_eq!(m.counter("sluice_source_dead_lettered_total", &[("source", "ndjson-bad")]), 3);
    assert_eq!(m.counter("sluice_source_connects_total", &[("source", "ndjson-bad")]), 1);
    let letters = run.dead_letters();
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap_or("")).collect();
    assert_eq!(reasons, ["invalid_json", "oversized", "oversized"]);
    assert!(letters[2]["detail"].as_str().unwrap_or("").starts_with(&format!("{} bytes", 17 * 1024 * 1024)));
    run.stop().await;
}

#[tokio::test]
async fn post_body_and_headers_carry_the_cursor() {
    let (_m, _g) = metrics_recorder();
    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let log = requests.clone();
    let (port, _server) = common::serve(move |n, mut stream| {
        let log = log.clone();
        async move {
            let Some(req) = common::read_request(&mut stream).await else { return };
            log.lock().unwrap().push(req.clone());
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let from = body["after"].as_i64().unwrap_or(-1);
            let _ = stream.write_all(HEAD).await;
            for i in from + 1..=from + 10 {
                let _ = write_chunk(&mut stream, format!("{{\"seq\":{i}}}\n").as_bytes()).await;
            }
            if n == 1 {
                // A clean end of the response.
                let _ = stream.write_all(b"0\r\n\r\n").await;
            } else {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    })
    .await;
    let config = format!(
        r#"
url = "http://127.0.0.1:{port}/query"
method = "POST"
body = '{{"after":{{cursor}}}}'
headers = {{ X-After = "{{cursor}}", Content-Type = "application/json" }}
backoff_initial = "10ms"
resume = {{ cursor = "/seq", initial = "0" }}
"#
    );
    let mut run = start("post", source("post", &config), None, 64);
    let events = run.take(20, WITHIN).await;
    assert_sequence(&events, 1, 20);
    let reqs = requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].body, b"{\"after\":0}");
    assert_eq!(reqs[0].header("x-after"), None);
    assert_eq!(reqs[1].body, b"{\"after\":10}");
    assert_eq!(reqs[1].header("x-after"), Some("10"));
    assert_eq!(reqs[1].header("content-type"), Some("application/json"));
    run.stop().await;
}

#[tokio::test]
async fn a_stalled_response_is_dropped_after_idle_timeout() {
    let (m, _g) = metrics_recorder();
    let (port, _server) = common::serve(|n, mut stream| async move {
        let Some(req) = common::read_request(&mut stream).await else { return };
        let from = after(&req);
        let _ = stream.write_all(HEAD).await;
        let count = if n == 1 { 5 } else { 20 - from };
        for i in from + 1..=from + count {
            let _ = write_chunk(&mut stream, format!("{{\"seq\":{i}}}\n").as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!(
        "url = \"http://127.0.0.1:{port}/\"\nidle_timeout = \"300ms\"\nbackoff_initial = \"10ms\"\nresume = {{ cursor = \"/seq\", url = \"http://127.0.0.1:{port}/?after={{cursor}}\" }}"
    );
    let mut run = start("ndjson-idle", source("ndjson-idle", &config), None, 64);
    let events = run.take(20, WITHIN).await;
    assert_sequence(&events, 1, 20);
    assert_eq!(m.counter("sluice_source_reconnects_total", &[("source", "ndjson-idle"), ("cause", "idle_timeout")]), 1);
    run.stop().await;
}

#[tokio::test]
async fn rotation_overlaps_and_deduplicates() {
    let (m, _g) = metrics_recorder();
    // Each response starts 3 lines before the requested cursor and sends one line every 5 ms.
    let (port, _server) = common::serve(|_, mut stream| async move {
        let Some(req) = common::read_request(&mut stream).await else { return };
        let from = (after(&req) - 3).max(0);
        let _ = stream.write_all(HEAD).await;
        for i in from + 1..=400 {
            if write_chunk(&mut stream, format!("{{\"seq\":{i}}}\n").as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!(
        "url = \"http://127.0.0.1:{port}/\"\nmax_connection_age = \"1s\"\nresume = {{ cursor = \"/seq\", url = \"http://127.0.0.1:{port}/?after={{cursor}}\" }}"
    );
    let mut run = start("ndjson-rotate", source("ndjson-rotate", &config), None, 64);
    let events = run.take(400, WITHIN).await;
    assert_sequence(&events, 1, 400);
    let rotations = m.counter("sluice_source_reconnects_total", &[("source", "ndjson-rotate"), ("cause", "rotation")]);
    assert!(rotations >= 1, "{}", m.dump("sluice_source"));
    assert!(
        m.counter("sluice_source_duplicates_total", &[("source", "ndjson-rotate"), ("reason", "rotation")])
            >= 3 * rotations
    );
    run.stop().await;
}

#[tokio::test]
async fn error_statuses_are_handshake_failures() {
    let (m, _g) = metrics_recorder();
    let (port, _server) = common::serve(|n, mut stream| async move {
        if common::read_request(&mut stream).await.is_none() {
            return;
        }
        if n <= 2 {
            let _ = stream.write_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n").await;
            return;
        }
        let _ = stream.write_all(HEAD).await;
        let _ = write_chunk(&mut stream, b"{\"seq\":1}\n").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!("url = \"http://127.0.0.1:{port}/\"\nbackoff_initial = \"10ms\"");
    let mut run = start("ndjson-429", source("ndjson-429", &config), None, 8);
    assert_sequence(&run.take(1, WITHIN).await, 1, 1);
    assert_eq!(
        m.counter("sluice_source_reconnects_total", &[("source", "ndjson-429"), ("cause", "handshake_failed")]),
        2
    );
    run.stop().await;
}
