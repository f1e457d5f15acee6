//! Throughput from a fast local WebSocket server (raw frames over loopback) into the events
//! channel. Prints messages per second; asserts only that every message arrives in order.
//!
//! `cargo test -p sluice-sources --test throughput -- --nocapture` shows the numbers (a
//! release build: add `--release`).

mod common;

use std::time::{Duration, Instant};

use sluice_sources::websocket::{WebSocketConfig, build};
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

/// Messages per second (wall clock) and CPU microseconds per message (server and source).
async fn run_once(pointer: bool) -> (f64, f64) {
    let (port, server) = common::serve(|_, mut stream| async move {
        if common::accept_websocket(&mut stream).await.is_none() {
            return;
        }
        let mut buf = Vec::with_capacity(128 * 1024);
        for i in 1..=MESSAGES {
            let payload = format!("{{\"seq\":{i},\"sym\":\"ABCD\",\"px\":101.25,\"qty\":300,\"side\":\"buy\"}}");
            buf.extend_from_slice(&common::ws_frame(1, payload.as_bytes()));
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
    let config: WebSocketConfig = toml::from_str(&text).expect("config");
    let name = if pointer { "tp-cursor" } else { "tp-plain" };
    let mut run = common::start(name, build(name, config).expect("build"), None, 4096);
    let first = run.take(1, Duration::from_secs(10)).await;
    let started = Instant::now();
    let cpu_start = cpu_seconds();
    let mut expected = common::seq(&first[0]) + 1;
    let events = &mut run.events;
    let receive_all = async {
        while expected <= MESSAGES as i64 {
            let event = events.recv().await.expect("source running");
            if pointer {
                assert_eq!(event.cursor.as_deref().and_then(|c| c.parse::<i64>().ok()), Some(expected));
            }
            expected += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), receive_all).await.expect("all messages within 120 s");
    let rate = (MESSAGES - 1) as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu_start) * 1e6 / (MESSAGES - 1) as f64;
    run.stop().await;
    server.abort();
    (rate, cpu_us)
}

#[tokio::test]
async fn websocket_messages_per_second_into_the_events_channel() {
    let (plain, plain_cpu) = run_once(false).await;
    let (cursor, cursor_cpu) = run_once(true).await;
    eprintln!(
        "throughput: {plain:.0} msg/s ({plain_cpu:.2} µs CPU/msg) without a cursor pointer, \
         {cursor:.0} msg/s ({cursor_cpu:.2} µs CPU/msg) with resume.cursor = \"/seq\" (CPU includes the test server)"
    );
}
