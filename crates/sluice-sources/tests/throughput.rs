//! Throughput from a fast local WebSocket server (raw frames over loopback) into the events
//! channel. Prints messages per second and CPU per message, and asserts that every message
//! arrived exactly once, in order, byte for byte (checked after the clock stops), on one
//! connection.
//!
//! A benchmark, so not part of `cargo test`:
//! `cargo test -p sluice-sources --test throughput -- --ignored --nocapture` shows the numbers
//! (a release build: add `--release`).

mod common;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

const MESSAGES: u64 = 300_000;

/// CPU seconds this process has used (user + system), from /proc (Linux); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / 100.0
}

/// Message `i` as the server sends it.
fn payload(i: u64) -> String {
    format!("{{\"seq\":{i},\"sym\":\"ABCD\",\"px\":101.25,\"qty\":300,\"side\":\"buy\"}}")
}

/// Messages per second (wall clock) and CPU microseconds per message (server and source).
async fn run_once(m: &common::TestRecorder, pointer: bool) -> (f64, f64) {
    let (port, server) = common::serve(|_, mut stream| async move {
        if common::accept_websocket(&mut stream).await.is_none() {
            return;
        }
        let mut buf = Vec::with_capacity(128 * 1024);
        for i in 1..=MESSAGES {
            buf.extend_from_slice(&common::ws_frame(1, payload(i).as_bytes()));
            if buf.len() >= 64 * 1024 {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        }
        let _ = stream.write_all(&buf).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let mut text = format!("url = \"ws://127.0.0.1:{port}/\"\nping_interval = \"0s\"");
    if pointer {
        text.push_str("\nresume = { cursor = \"/seq\" }");
    }
    let name = if pointer { "tp-cursor" } else { "tp-plain" };
    let mut run = common::start(name, common::build("websocket", name, &text), None, 4096);
    let first = run.take(1, Duration::from_secs(10)).await;
    let started = Instant::now();
    let cpu_start = cpu_seconds();
    assert_eq!(common::seq(&first[0]), 1, "the first message is seq 1");
    // Kept for the checks after the clock stops (parsing here would be measured too).
    let mut received = Vec::with_capacity(MESSAGES as usize - 1);
    let events = &mut run.events;
    let receive_all = async {
        while received.len() < MESSAGES as usize - 1 {
            received.push(events.recv().await.expect("source running"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), receive_all).await.expect("all messages within 120 s");
    let rate = (MESSAGES - 1) as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu_start) * 1e6 / (MESSAGES - 1) as f64;
    // Exactly once, in order, as sent; with the pointer, each event carries its seq as cursor.
    for (event, expected) in received.iter().zip(2..) {
        assert_eq!(event.payload, payload(expected).as_bytes(), "message {expected}");
        if pointer {
            assert_eq!(event.cursor.as_deref(), Some(expected.to_string().as_str()), "cursor of {expected}");
        }
    }
    // Nothing more (a reconnect would replay from seq 1), and no reconnect happened.
    run.expect_nothing(Duration::from_millis(200)).await;
    assert_eq!(m.counter("sluice_source_connects_total", &[("source", name)]), 1, "{}", m.dump("sluice_source"));
    run.stop().await;
    server.abort();
    assert!(rate.is_finite() && rate > 0.0, "{rate}");
    (rate, cpu_us)
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn websocket_messages_per_second_into_the_events_channel() {
    let (m, _g) = common::metrics_recorder();
    let (plain, plain_cpu) = run_once(&m, false).await;
    let (cursor, cursor_cpu) = run_once(&m, true).await;
    eprintln!(
        "throughput: {plain:.0} msg/s ({plain_cpu:.2} µs CPU/msg) without a cursor pointer, \
         {cursor:.0} msg/s ({cursor_cpu:.2} µs CPU/msg) with resume.cursor = \"/seq\" (CPU includes the test server)"
    );
}
