//! The WebSocket source against a Python `websockets` feed (tests/feed_server.py) and raw
//! loopback servers: resume across cuts, de-duplication, gaps, rotation, liveness, backoff,
//! subscribe, dead letters, compression, shutdown.

mod common;

use std::time::Duration;

use common::{PyServer, Run, assert_sequence, metrics_recorder, seq, start};
use sluice_flow::Source;

const WITHIN: Duration = Duration::from_secs(30);

fn source(name: &str, toml_text: &str) -> Box<dyn Source> {
    common::build("websocket", name, toml_text)
}

/// Options every test shares: fast reconnects, resume from `?after=`.
fn feed_config(server: &PyServer, extra: &str) -> String {
    format!(
        r#"
url = "{url}"
backoff_initial = "10ms"
backoff_max = "100ms"
resume = {{ cursor = "/seq", url = "{resume}" }}
{extra}
"#,
        url = server.url("/feed"),
        resume = server.url("/feed?after={cursor}"),
    )
}

fn count(m: &common::TestRecorder, name: &str, source: &str, extra: &[(&str, &str)]) -> u64 {
    let mut l = vec![("source", source)];
    l.extend_from_slice(extra);
    m.counter(name, &l)
}

async fn stop(run: &mut Run) {
    let took = run.stop().await;
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

/// Polls `check` every 10 ms until it holds (returns how long that took); panics after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Checks `check` every 10 ms for `period`; panics as soon as it does not hold.
async fn holds_for(period: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while started.elapsed() < period {
        assert!(check(), "{what}: stopped holding after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_event_exactly_once_across_cuts_with_and_without_close_frames() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "300", "--cut-every", "40", "--cut-mode", "alternate"]).await;
    let mut run = start("cuts", source("cuts", &feed_config(&server, "")), None, 64);
    let events = run.take(300, WITHIN).await;
    assert_sequence(&events, 1, 300);
    assert!(events.iter().all(|e| e.cursor.as_deref() == Some(seq(e).to_string().as_str())));
    assert!(events.iter().all(|e| e.received_ms > 0));
    run.expect_nothing(Duration::from_millis(300)).await;
    // Odd connections are closed with a close frame, even ones aborted.
    let cuts = server.events("cut");
    assert_eq!(cuts.len(), 7);
    let paths: Vec<String> =
        server.events("connect").iter().map(|c| c["path"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(paths[0], "/feed");
    assert_eq!(paths[1], "/feed?after=40");
    assert_eq!(paths.len(), 8, "{paths:?}");
    assert_eq!(count(&m, "sluice_source_connects_total", "cuts", &[]), 8);
    assert_eq!(count(&m, "sluice_source_reconnects_total", "cuts", &[("cause", "closed")]), 4, "{}", m.dump(""));
    assert_eq!(count(&m, "sluice_source_reconnects_total", "cuts", &[("cause", "error")]), 3, "{}", m.dump(""));
    assert_eq!(count(&m, "sluice_source_messages_total", "cuts", &[]), 300);
    assert_eq!(m.total("sluice_source_duplicates_total", "cuts"), 0);
    assert_eq!(count(&m, "sluice_source_gaps_total", "cuts", &[]), 0);
    assert_eq!(m.gauge("sluice_source_cursor", &[("source", "cuts")]), 300.0);
    assert_eq!(m.gauge("sluice_source_connected", &[("source", "cuts")]), 1.0);
    stop(&mut run).await;
    assert_eq!(m.gauge("sluice_source_connected", &[("source", "cuts")]), 0.0);
}

#[tokio::test]
async fn replayed_messages_are_dropped_as_duplicates() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "150", "--cut-every", "30", "--replay", "5"]).await;
    let mut run = start("replay", source("replay", &feed_config(&server, "")), None, 64);
    let events = run.take(150, WITHIN).await;
    assert_sequence(&events, 1, 150);
    run.expect_nothing(Duration::from_millis(300)).await;
    let connects = count(&m, "sluice_source_connects_total", "replay", &[]);
    assert!(connects >= 5, "{connects}");
    assert_eq!(count(&m, "sluice_source_duplicates_total", "replay", &[("reason", "cursor")]), 5 * (connects - 1));
    stop(&mut run).await;
}

#[tokio::test]
async fn a_resume_cursor_from_the_spool_is_honoured() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "80", "--replay", "3"]).await;
    let mut run = start("spool", source("spool", &feed_config(&server, "")), Some("50"), 64);
    let events = run.take(30, WITHIN).await;
    assert_sequence(&events, 51, 80);
    run.expect_nothing(Duration::from_millis(200)).await;
    assert_eq!(server.events("connect")[0]["path"], "/feed?after=50");
    assert_eq!(count(&m, "sluice_source_duplicates_total", "spool", &[("reason", "cursor")]), 3);
    // The age of the last message is reported every second.
    let age = || m.gauge("sluice_source_last_message_age_seconds", &[("source", "spool")]);
    eventually(Duration::from_secs(5), "last message age reported", || age() >= 0.5).await;
    assert!(age() < 30.0, "{}", age());
    stop(&mut run).await;
}

#[tokio::test]
async fn gaps_are_counted_and_the_stream_goes_on() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "100", "--skip", "50-54"]).await;
    let mut run = start("gaps", source("gaps", &feed_config(&server, "")), None, 64);
    let events = run.take(95, WITHIN).await;
    let seqs: Vec<i64> = events.iter().map(seq).collect();
    let expected: Vec<i64> = (1..=49).chain(55..=100).collect();
    assert_eq!(seqs, expected);
    // One jump, five values missing.
    assert_eq!(count(&m, "sluice_source_gaps_total", "gaps", &[]), 1);
    assert_eq!(count(&m, "sluice_source_missing_total", "gaps", &[]), 5);
    stop(&mut run).await;
}

#[tokio::test]
async fn rotation_is_make_before_break_and_deduplicates_the_overlap() {
    let (m, _g) = metrics_recorder();
    // A live feed (one message every 4 ms); a rotating connection resumes 20 messages early,
    // so every rotation overlaps the old connection by at least 20 duplicates.
    let server = PyServer::start(&["--total", "800", "--live", "--interval-ms", "4", "--replay", "20"]).await;
    let extra = r#"
max_connection_age = "1s"
rotation_overlap = "5s"
"#;
    let mut run = start("rotate", source("rotate", &feed_config(&server, extra)), None, 256);
    let events = run.collect(800, Duration::from_secs(10)).await;
    let seqs: Vec<i64> = events.iter().map(seq).collect();
    let missing: Vec<i64> = (1..=800).filter(|s| !seqs.contains(s)).collect();
    assert!(
        events.len() == 800 && missing.is_empty(),
        "{} events, missing {missing:?}\n{}\nserver: {:?}",
        events.len(),
        m.dump("sluice_source"),
        server.events("connect")
    );
    assert_sequence(&events, 1, 800);
    run.expect_nothing(Duration::from_millis(300)).await;
    let rotations = count(&m, "sluice_source_reconnects_total", "rotate", &[("cause", "rotation")]);
    assert!(rotations >= 2, "{}", m.dump("sluice_source"));
    assert!(m.total("sluice_source_duplicates_total", "rotate") >= 20 * rotations);
    // Nothing but rotations ended a connection.
    for cause in ["closed", "error", "idle_timeout", "pong_timeout", "handshake_failed"] {
        assert_eq!(count(&m, "sluice_source_reconnects_total", "rotate", &[("cause", cause)]), 0, "{cause}");
    }
    // Make-before-break: each rotation's new connection came up before the old one closed.
    let connects = server.events("connect");
    let closed = server.events("closed");
    for old in closed.iter().filter(|c| c["code"] == 1000) {
        let n = old["n"].as_i64().unwrap_or(0);
        let next = connects.iter().find(|c| c["n"].as_i64() == Some(n + 1)).expect("a next connection");
        assert!(next["t"].as_f64() < old["t"].as_f64(), "connection {n} closed before its successor connected");
    }
    stop(&mut run).await;
}

#[tokio::test]
async fn rotation_without_cursors_deduplicates_by_payload() {
    let (m, _g) = metrics_recorder();
    // No cursor: each connection joins the live feed where it is; the overlap is found by
    // comparing payloads.
    let server = PyServer::start(&["--total", "700", "--live", "--interval-ms", "4"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "10ms"
max_connection_age = "1s"
"#,
        server.url("/feed")
    );
    let mut run = start("rotate-plain", source("rotate-plain", &config), None, 256);
    // The first connection joins a few messages in.
    let first = run.take(1, WITHIN).await;
    let from = seq(&first[0]);
    let rest = run.take((700 - from) as usize, WITHIN).await;
    let all = [first, rest].concat();
    assert_sequence(&all, from, 700);
    assert!(all.iter().all(|e| e.cursor.is_none()));
    assert!(
        count(&m, "sluice_source_reconnects_total", "rotate-plain", &[("cause", "rotation")]) >= 2,
        "{}",
        m.dump("sluice_source")
    );
    stop(&mut run).await;
}

#[tokio::test]
async fn a_stalled_connection_is_dropped_after_idle_timeout() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "60", "--stall-after", "20"]).await;
    let mut run = start("idle", source("idle", &feed_config(&server, r#"idle_timeout = "400ms""#)), None, 64);
    let events = run.take(60, WITHIN).await;
    assert_sequence(&events, 1, 60);
    assert_eq!(
        count(&m, "sluice_source_reconnects_total", "idle", &[("cause", "idle_timeout")]),
        1,
        "{}",
        m.dump("sluice_source")
    );
    stop(&mut run).await;
}

#[tokio::test]
async fn a_half_dead_connection_is_found_by_ping() {
    let (m, _g) = metrics_recorder();
    // After 20 messages the server neither reads nor sends: pings go unanswered.
    let server = PyServer::start(&["--total", "60", "--half-dead-after", "20"]).await;
    let extra = r#"
ping_interval = "100ms"
pong_timeout = "300ms"
idle_timeout = "0s"
"#;
    let mut run = start("pong", source("pong", &feed_config(&server, extra)), None, 64);
    let events = run.take(60, WITHIN).await;
    assert_sequence(&events, 1, 60);
    assert_eq!(
        count(&m, "sluice_source_reconnects_total", "pong", &[("cause", "pong_timeout")]),
        1,
        "{}",
        m.dump("sluice_source")
    );
    // The healthy second connection answers pings and stays (600 ms: two pong timeouts).
    holds_for(Duration::from_millis(600), "one reconnect only", || {
        count(&m, "sluice_source_connects_total", "pong", &[]) == 2
    })
    .await;
    stop(&mut run).await;
}

#[tokio::test]
async fn unusable_frames_are_dead_lettered_and_counted() {
    let (m, _g) = metrics_recorder();
    // At seq 5, 15, 25: a text frame that is not JSON, a binary one, and a JSON one of 5 kB.
    let server = PyServer::start(&["--total", "30", "--garbage"]).await;
    let mut run = start("garbage", source("garbage", &feed_config(&server, "max_message_bytes = 4096")), None, 64);
    let events = run.take(30, WITHIN).await;
    assert_sequence(&events, 1, 30);
    run.expect_nothing(Duration::from_millis(200)).await;
    assert_eq!(count(&m, "sluice_source_dead_lettered_total", "garbage", &[]), 9);
    assert_eq!(m.counter("sluice_dead_letters_total", &[("component", "garbage"), ("reason", "invalid_json")]), 6);
    assert_eq!(m.counter("sluice_dead_letters_total", &[("component", "garbage"), ("reason", "oversized")]), 3);
    let letters = run.dead_letters();
    assert_eq!(letters.len(), 9);
    assert_eq!(letters[0]["reason"], "invalid_json");
    assert_eq!(letters[0]["payload_base64"], "dGhpcyBpcyBub3QganNvbg==");
    assert_eq!(letters[2]["reason"], "oversized");
    // One connection throughout: bad frames do not break it.
    assert_eq!(count(&m, "sluice_source_connects_total", "garbage", &[]), 1);
    stop(&mut run).await;
}

#[tokio::test]
async fn binary_and_text_frames_both_become_events_as_is() {
    let (_m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "20", "--binary"]).await;
    let config = format!("url = \"{}\"", server.url("/feed"));
    let mut run = start("binary", source("binary", &config), None, 64);
    let events = run.take(20, WITHIN).await;
    assert_sequence(&events, 1, 20);
    for e in &events {
        assert_eq!(e.cursor, None);
        let expected = format!("{{\"seq\": {}, \"data\": \"message {}\"}}", seq(e), seq(e));
        assert_eq!(e.payload, expected.as_bytes());
    }
    stop(&mut run).await;
}

#[tokio::test]
async fn subscribe_messages_are_resent_on_every_reconnect_with_the_cursor() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "100", "--cut-every", "25", "--subscribe"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "10ms"
subscribe = ['{{"op":"subscribe","after":{{cursor}}}}', '{{"op":"hello"}}']
resume = {{ cursor = "/seq", initial = "0" }}
"#,
        server.url("/feed")
    );
    let mut run = start("subscribe", source("subscribe", &config), None, 64);
    let events = run.take(100, WITHIN).await;
    assert_sequence(&events, 1, 100);
    let subs = server.wait_for("subscribe", 8, Duration::from_secs(5)).await;
    let mut per_connection: Vec<(i64, String)> =
        subs.iter().map(|s| (s["n"].as_i64().unwrap_or(0), s["msg"].as_str().unwrap_or("").to_owned())).collect();
    per_connection.sort_by_key(|(n, _)| *n);
    let expected: Vec<(i64, String)> = (0..4)
        .flat_map(|i| {
            [
                (i + 1, format!("{{\"op\":\"subscribe\",\"after\":{}}}", i * 25)),
                (i + 1, "{\"op\":\"hello\"}".to_owned()),
            ]
        })
        .collect();
    assert_eq!(per_connection, expected);
    assert_eq!(count(&m, "sluice_source_connects_total", "subscribe", &[]), 4);
    stop(&mut run).await;
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_with_python_websockets() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "50", "--pad", "4000"]).await;
    let mut run = start("deflate", source("deflate", &feed_config(&server, "")), None, 64);
    let events = run.take(50, WITHIN).await;
    assert_sequence(&events, 1, 50);
    assert!(events.iter().all(|e| e.payload.len() > 4000));
    assert_eq!(server.events("connect")[0]["ext"], serde_json::json!(["permessage-deflate"]));
    assert!(count(&m, "sluice_source_bytes_total", "deflate", &[]) > 50 * 4000);
    stop(&mut run).await;

    let plain = PyServer::start(&["--total", "5"]).await;
    let mut run = start("no-deflate", source("no-deflate", &feed_config(&plain, "compression = false")), None, 64);
    assert_sequence(&run.take(5, WITHIN).await, 1, 5);
    assert_eq!(plain.events("connect")[0]["ext"], serde_json::json!([]));
    stop(&mut run).await;
}

#[tokio::test]
async fn backoff_grows_while_handshakes_fail() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--reject-first", "100000"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "20ms"
backoff_max = "2s"
"#,
        server.url("/feed")
    );
    let mut run = start("backoff", source("backoff", &config), None, 8);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = server.events("rejected").len();
    // Without growth (20 ms ceilings, 10 ms on average) this would be ~150 attempts.
    assert!((3..=20).contains(&attempts), "{attempts} attempts in 1.5 s");
    let failed = count(&m, "sluice_source_reconnects_total", "backoff", &[("cause", "handshake_failed")]);
    assert!(failed as usize + 1 >= attempts && failed as usize <= attempts, "{failed} vs {attempts}");
    assert_eq!(m.gauge("sluice_source_connected", &[("source", "backoff")]), 0.0);
    assert!(m.gauge("sluice_source_backoff_seconds", &[("source", "backoff")]) <= 2.0);
    stop(&mut run).await;
}

/// The gaps between each connection's close and the next connection, in seconds.
fn reconnect_gaps(server: &PyServer, connects: &[serde_json::Value], range: std::ops::RangeInclusive<i64>) -> Vec<f64> {
    let closed = server.events("closed");
    range
        .map(|n| {
            let up = connects.iter().find(|c| c["n"] == n).and_then(|c| c["t"].as_f64()).expect("connect");
            let down = closed.iter().find(|c| c["n"] == n - 1).and_then(|c| c["t"].as_f64()).expect("closed");
            up - down
        })
        .collect()
}

#[tokio::test]
async fn a_connection_that_delivered_is_reconnected_at_once_however_often() {
    let (m, _g) = metrics_recorder();
    // Seven failures push the ceiling to backoff_max (1 s); then every connection delivers one
    // message and is closed by the server 100 ms later, again and again.
    let server = PyServer::start(&["--reject-first", "7", "--healthy-ms", "100"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "20ms"
backoff_max = "1s"
"#,
        server.url("/feed")
    );
    let mut run = start("reset", source("reset", &config), None, 64);
    let connects = server.wait_for("connect", 8, Duration::from_secs(20)).await;
    // Within backoff_initial (20 ms, plus scheduling) every time, never growing.
    for (i, gap) in reconnect_gaps(&server, &connects, 2..=8).into_iter().enumerate() {
        assert!(gap < 0.15, "reconnect {} came {gap:.3} s after the close", i + 2);
    }
    assert!(run.take(7, WITHIN).await.len() == 7);
    assert!(count(&m, "sluice_source_reconnect_waits_total", "reset", &[]) >= 7);
    stop(&mut run).await;
}

#[tokio::test]
async fn a_connection_closed_before_any_message_is_a_failure_to_back_off_from() {
    let (_m, _g) = metrics_recorder();
    // Every connection is accepted and closed 50 ms later without a message.
    let server = PyServer::start(&["--empty-ms", "50"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "20ms"
backoff_max = "5s"
"#,
        server.url("/feed")
    );
    let mut run = start("empty", source("empty", &config), None, 8);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let attempts = server.events("connect").len();
    // Without growth (20 ms ceilings, 50 ms up each time) this would be ~40 attempts.
    assert!((3..=15).contains(&attempts), "{attempts} attempts in 2.5 s");
    stop(&mut run).await;
}

#[tokio::test]
async fn shutdown_closes_the_connection_promptly_with_a_close_frame() {
    let (_m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "1000000", "--interval-ms", "1"]).await;
    let mut run = start("shutdown", source("shutdown", &feed_config(&server, "")), None, 4);
    run.take(20, WITHIN).await;
    let took = run.stop().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let closed = server.wait_for("closed", 1, Duration::from_secs(5)).await;
    assert_eq!(closed[0]["code"], 1000);
}

#[tokio::test]
async fn a_message_over_the_limit_is_skipped_as_it_streams_and_the_connection_goes_on() {
    use tokio::io::AsyncWriteExt;
    let (m, _g) = metrics_recorder();
    // One connection: a 17 MiB frame (cursor 2 at its start), then a normal message.
    let (port, _server) = common::serve(|_, mut stream| async move {
        if common::accept_websocket(&mut stream).await.is_none() {
            return;
        }
        let mut big = br#"{"seq":2,"pad":""#.to_vec();
        big.resize(17 * 1024 * 1024, b'x');
        big.extend_from_slice(br#""}"#);
        for frame in
            [common::ws_frame(1, br#"{"seq":1}"#), common::ws_frame(1, &big), common::ws_frame(1, br#"{"seq":3}"#)]
        {
            let _ = stream.write_all(&frame).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config =
        format!("url = \"ws://127.0.0.1:{port}/\"\nbackoff_initial = \"10ms\"\nresume = {{ cursor = \"/seq\" }}");
    let mut run = start("huge", source("huge", &config), None, 8);
    let events = run.take(2, WITHIN).await;
    assert_eq!(events[0].payload, br#"{"seq":1}"#.as_slice());
    assert_eq!(events[1].payload, br#"{"seq":3}"#.as_slice());
    assert_eq!(count(&m, "sluice_source_connects_total", "huge", &[]), 1);
    assert_eq!(m.counter("sluice_dead_letters_total", &[("component", "huge"), ("reason", "oversized")]), 1);
    let letters = run.dead_letters();
    let detail = letters[0]["detail"].as_str().unwrap_or("");
    assert!(detail.starts_with(&format!("{} bytes", 17 * 1024 * 1024 + 2)), "{detail}");
    assert!(detail.contains("the cursor moves past it to 2"), "{detail}");
    stop(&mut run).await;
}

#[test]
fn configs_are_checked() {
    fn err(text: &str) -> String {
        common::try_build("websocket", "bad", text).err().unwrap_or_default()
    }
    assert!(err("url = \"http://x/\"").contains("scheme"));
    assert!(err("url = \"ws://x/\"\nurll = 1").contains("unknown field"));
    assert!(err("url = \"ws://x/\"\nping_interval = \"soon\"").contains("invalid duration"));
    assert!(err("url = \"ws://x/\"\nresume = { cursor = \"seq\" }").contains("resume.cursor"));
    assert!(err("url = \"ws://x/\"\nsubscribe = ['{\"after\":{cursor}}']").contains("resume.initial"));
    assert!(err("url = \"ws://x/\"\nresume = { url = \"ws://x/?a=1\" }").contains("{cursor}"));
    assert!(err("url = \"ws://x/\"\nbackoff_initial = \"5s\"\nbackoff_max = \"1s\"").contains("backoff_max"));
    assert!(err("url = \"ws://x/\"\nheaders = { \"Bad Header\" = \"v\" }").contains("header name"));
    assert!(err("url = \"ws://x/\"\nheartbeat = { message = \"ping\" }").contains("interval"));
    assert_eq!(
        err("url = \"wss://x/\"\nheartbeat = { message = \"ping\", interval = \"5s\" }\nmax_connection_age = \"1h\""),
        ""
    );
    let e = err("url = \"ws://x/\"\nnope = 1");
    assert!(e.contains("unknown field `nope`") && e.contains("replicas"), "{e}");
    assert!(err("url = \"ws://x/\"").is_empty());
    assert!(common::try_build("kafka", "ok", "url = \"ws://x/\"").is_err());
    // Redundant connections need de-duplication, and the options are checked.
    let e = err("url = \"ws://x/\"\nreplicas = 2");
    assert!(e.contains("replicas") && e.contains("dedup"), "{e}");
    assert!(err("url = \"ws://x/\"\nreplicas = 2\ndedup = { key = [\"/seq\"] }").is_empty());
    assert!(err("url = \"ws://x/\"\nreplicas = 2\ndedup = { key = \"content\", window = \"10m\" }").is_empty());
    assert!(err("url = \"ws://x/\"\ndedup = { key = \"contents\" }").contains("content"));
    assert!(
        err("url = \"ws://x/\"\ndedup = { key = [\"/seq\"], window = { events = 5, duration = \"1m\" } }").is_empty()
    );
    assert!(err("url = \"ws://x/\"\ndedup = { key = [\"/seq\"], window = { events = 0 } }").contains("dedup.window"));
    assert!(err("url = \"ws://x/\"\nalarm = { command = [\"true\"] }").contains("alarm.command"));
    assert!(err("url = \"ws://x/\"\nalarm = { silence = \"soon\" }").contains("invalid duration"));
    assert!(err("url = \"ws://x/\"\ngaps = { field = \"seq\" }").contains("gaps.field"));
}

#[tokio::test]
async fn heartbeat_messages_are_sent_on_their_interval() {
    let (_m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "1", "--subscribe"]).await;
    let config = format!(
        r#"
url = "{}"
subscribe = ['{{"op":"subscribe","after":0}}']
heartbeat = {{ message = '{{"op":"ping"}}', interval = "100ms" }}
"#,
        server.url("/feed")
    );
    let mut run = start("heartbeat", source("heartbeat", &config), None, 8);
    run.take(1, WITHIN).await;
    let subs = server.wait_for("subscribe", 5, Duration::from_secs(5)).await;
    assert!(subs[1..].iter().all(|s| s["msg"] == "{\"op\":\"ping\"}"), "{subs:?}");
    stop(&mut run).await;
}

#[tokio::test]
async fn back_pressure_from_the_spool_is_not_mistaken_for_a_dead_connection() {
    let (m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "3000"]).await;
    let extra = r#"
idle_timeout = "300ms"
ping_interval = "100ms"
pong_timeout = "200ms"
"#;
    // A one-slot events channel that is not read for 1.5 s: the source must wait, not reconnect.
    let mut run = start("pressure", source("pressure", &feed_config(&server, extra)), None, 1);
    let first = run.take(1, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = run.take(2999, WITHIN).await;
    assert_sequence(&[first, rest].concat(), 1, 3000);
    assert_eq!(count(&m, "sluice_source_connects_total", "pressure", &[]), 1, "{}", m.dump("sluice_source"));
    stop(&mut run).await;
}

#[tokio::test]
async fn shutdown_is_prompt_while_the_spool_is_full() {
    let (_m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "3000"]).await;
    let mut run = start("full", source("full", &feed_config(&server, "")), None, 1);
    run.take(1, WITHIN).await;
    // The one-slot channel fills again: the source is then blocked on the next event.
    let events = &run.events;
    eventually(Duration::from_secs(5), "the events channel full", || events.len() == 1).await;
    let took = run.stop().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn rotation_with_cursors_but_no_resume_loses_nothing_in_flight() {
    let (m, _g) = metrics_recorder();
    // Cursors are read but the provider cannot resume: a new connection joins the live feed,
    // possibly ahead of what the old one still has in flight.
    let server = PyServer::start(&["--total", "700", "--live", "--interval-ms", "4"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "10ms"
max_connection_age = "1s"
resume = {{ cursor = "/seq" }}
"#,
        server.url("/feed")
    );
    let mut run = start("rotate-live", source("rotate-live", &config), None, 256);
    let first = run.take(1, WITHIN).await;
    let from = seq(&first[0]);
    let rest = run.take((700 - from) as usize, WITHIN).await;
    assert_sequence(&[first, rest].concat(), from, 700);
    assert!(count(&m, "sluice_source_reconnects_total", "rotate-live", &[("cause", "rotation")]) >= 2);
    assert_eq!(count(&m, "sluice_source_gaps_total", "rotate-live", &[]), 0);
    stop(&mut run).await;
}

#[tokio::test]
async fn a_handshake_that_never_completes_times_out() {
    let (m, _g) = metrics_recorder();
    // Accepts TCP and reads the upgrade request, but never answers it.
    let (port, _server) = common::serve(|_, mut stream| async move {
        let _ = common::read_request(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = format!("url = \"ws://127.0.0.1:{port}/\"\nconnect_timeout = \"200ms\"\nbackoff_initial = \"10ms\"");
    let mut run = start("hang", source("hang", &config), None, 8);
    let failed = || count(&m, "sluice_source_reconnects_total", "hang", &[("cause", "handshake_failed")]);
    let took = eventually(Duration::from_secs(5), "two handshake timeouts", || failed() >= 2).await;
    // Each attempt waited for connect_timeout (200 ms) before failing.
    assert!(took >= Duration::from_millis(350), "two failures after {took:?}");
    // Shutdown does not wait for a pending handshake either.
    let took = run.stop().await;
    assert!(took < Duration::from_millis(500), "{took:?}");
}
