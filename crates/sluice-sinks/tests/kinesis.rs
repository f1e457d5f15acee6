//! The Kinesis sink against an in-process embedded Kinesis server on loopback.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use sluice_core::kpl;
use sluice_sinks::kinesis::{self, Compression, KinesisConfig, Ordering};

fn config(stream: &str, url: &str) -> KinesisConfig {
    let mut c = KinesisConfig::new(stream, url);
    c.partition_key = "/racer".into();
    c.linger = Duration::from_millis(20);
    c.shards = 3;
    c
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn racer(i: u64, keys: u64) -> String {
    format!("racer-{}", i % keys)
}

async fn run_records(name: &str, cfg: KinesisConfig, payloads: Vec<Vec<u8>>, limit: Duration) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = kinesis::build(name, cfg, &sluice_sinks::BuildEnv::new(dir.path())).expect("build");
    let mut h = Harness::start(name, sink, dir.path());
    let n = payloads.len();
    for (i, p) in payloads.into_iter().enumerate() {
        h.send(i as u64, p).await;
    }
    h.wait_acked(n, limit).await;
    h.finish(limit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_record_exactly_once_in_key_order() {
    let server = Embedded::start(false).await;
    let n = 3000u64;
    let payloads = (0..n).map(|i| telemetry(i, &racer(i, 20), i / 20).into_bytes()).collect();
    let out = run_records("plain", config("plain", &server.url), payloads, Duration::from_secs(60)).await;
    out.assert_all_acked_once(n);
    assert!(out.dead.is_empty());

    let (stored, _) = read_stream(&server.client(), "plain").await;
    let by_key = seqs_by_key(stored.iter().map(|s| (s.partition_key.clone(), s.data.clone())));
    assert_eq!(by_key.len(), 20);
    assert_exactly_once(&by_key, n);
    assert_key_order(&by_key);
    for s in &stored {
        let v: serde_json::Value = serde_json::from_slice(&s.data).expect("json");
        assert_eq!(v["racer"], s.partition_key.as_str(), "partition key taken from /racer");
    }
    let shards: std::collections::HashSet<&str> = stored.iter().map(|s| s.shard.as_str()).collect();
    assert_eq!(shards.len(), 3, "the sink created the stream with 3 shards and keys spread over them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_partial_failures_are_retried_and_key_order_holds() {
    install_metrics();
    let server = Embedded::start(true).await;
    let n = 6000u64;
    let mut cfg = config("throttled", &server.url);
    cfg.shards = 2;
    // No client-side pacing: the server must throttle, and the sink must cope.
    cfg.rate_limit = false;
    cfg.max_in_flight = 4;
    cfg.retry_backoff.base = Duration::from_millis(20);
    cfg.retry_backoff.max = Duration::from_millis(500);
    let payloads = (0..n).map(|i| telemetry(i, &racer(i, 16), i / 16).into_bytes()).collect();
    let started = Instant::now();
    let out = run_records("throttled", cfg, payloads, Duration::from_secs(90)).await;
    out.assert_all_acked_once(n);
    let throttled = counter("sluice_sink_records_throttled_total", "throttled");
    let put = counter("sluice_sink_records_put_total", "throttled");
    eprintln!("6000 records into 2 limited shards in {:?}; {throttled} throttled", started.elapsed());
    assert!(throttled > 0, "the server throttled some entries");
    assert_eq!(put, n);

    let (stored, _) = read_stream(&server.client(), "throttled").await;
    let by_key = seqs_by_key(stored.iter().map(|s| (s.partition_key.clone(), s.data.clone())));
    assert_exactly_once(&by_key, n);
    assert_key_order(&by_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_keeps_under_the_shard_limits() {
    install_metrics();
    let server = Embedded::start(true).await;
    let n = 3000u64;
    let mut cfg = config("paced", &server.url);
    cfg.shards = 2;
    cfg.ordering = Ordering::None;
    cfg.partition_key = "random".into();
    let payloads = (0..n).map(|i| telemetry(i, "x", 0).into_bytes()).collect();
    let started = Instant::now();
    let out = run_records("paced", cfg, payloads, Duration::from_secs(60)).await;
    out.assert_all_acked_once(n);
    let throttled = counter("sluice_sink_records_throttled_total", "paced");
    eprintln!("3000 records paced over 2 shards in {:?}; {throttled} throttled", started.elapsed());
    assert!(throttled < n / 20, "pacing avoids most throttling: {throttled} throttled");
    let (stored, _) = read_stream(&server.client(), "paced").await;
    let by_key = seqs_by_key(stored.iter().map(|s| ("all".to_owned(), s.data.clone())));
    assert_exactly_once(&by_key, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_decode_to_exactly_the_input() {
    let server = Embedded::start(true).await;
    let n = 5000u64;
    let mut cfg = config("agg", &server.url);
    cfg.shards = 4;
    cfg.aggregate = true;
    let payloads = (0..n).map(|i| telemetry(i, &racer(i, 40), i / 40).into_bytes()).collect();
    let out = run_records("agg", cfg, payloads, Duration::from_secs(60)).await;
    out.assert_all_acked_once(n);

    let (stored, ranges) = read_stream(&server.client(), "agg").await;
    let mut aggregates = 0;
    let mut user = Vec::new();
    for s in &stored {
        if kpl::is_aggregated(&s.data) {
            aggregates += 1;
            assert_eq!(s.partition_key, "a", "aggregates use partition key \"a\"");
            assert!(s.data.len() <= 51_200, "aggregate of {} bytes", s.data.len());
        }
        let (lo, hi) = ranges[&s.shard];
        for r in kpl::decode(&s.data, &s.partition_key).expect("decode") {
            let h = r.hash_key();
            assert!(lo <= h && h <= hi, "sub-record of {} outside shard {}", r.partition_key, s.shard);
            user.push((r.partition_key, r.data));
        }
    }
    assert!(
        aggregates > 0 && stored.len() < (n as usize) / 10,
        "{} Kinesis records, {aggregates} aggregates",
        stored.len()
    );
    let by_key = seqs_by_key(user);
    assert_eq!(by_key.len(), 40);
    assert_exactly_once(&by_key, n);
    assert_key_order(&by_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_is_not_aggregated() {
    let server = Embedded::start(false).await;
    let mut cfg = config("lone", &server.url);
    cfg.aggregate = true;
    let out = run_records("lone", cfg, vec![telemetry(0, "solo", 1).into_bytes()], Duration::from_secs(30)).await;
    out.assert_all_acked_once(1);
    let (stored, _) = read_stream(&server.client(), "lone").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].partition_key, "solo");
    assert_eq!(stored[0].data, telemetry(0, "solo", 1).into_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_round_trip() {
    let server = Embedded::start(false).await;
    for (name, compression) in [("gz", Compression::Gzip), ("zst", Compression::Zstd)] {
        for aggregate in [false, true] {
            let stream = format!("{name}-{aggregate}");
            let mut cfg = config(&stream, &server.url);
            cfg.compression = compression;
            cfg.aggregate = aggregate;
            let n = 500u64;
            let payloads = (0..n).map(|i| telemetry(i, &racer(i, 7), i).into_bytes()).collect();
            let out = run_records(&stream, cfg, payloads, Duration::from_secs(30)).await;
            out.assert_all_acked_once(n);
            let (stored, _) = read_stream(&server.client(), &stream).await;
            let mut user = Vec::new();
            for s in stored {
                for r in kpl::decode(&s.data, &s.partition_key).expect("decode") {
                    let plain = match compression {
                        Compression::Gzip => {
                            let mut out = Vec::new();
                            flate2::read::GzDecoder::new(&r.data[..]).read_to_end(&mut out).expect("gunzip");
                            out
                        }
                        Compression::Zstd => zstd::decode_all(&r.data[..]).expect("unzstd"),
                        Compression::None => r.data.clone(),
                    };
                    user.push((r.partition_key, plain));
                }
            }
            let by_key = seqs_by_key(user);
            assert_exactly_once(&by_key, n);
            assert_key_order(&by_key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_dead_lettered_and_acked_as_such() {
    install_metrics();
    let server = Embedded::start(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config("big", &server.url);
    cfg.partition_key = "random".into();
    let sink = kinesis::build("big", cfg, &sluice_sinks::BuildEnv::new(dir.path())).expect("build");
    let mut h = Harness::start("big", sink, dir.path());
    h.send(0, telemetry(0, "a", 0)).await;
    h.send(1, vec![b'x'; 1024 * 1024]).await; // data + 32-byte random key > 1 MiB
    h.send(2, telemetry(2, "a", 0)).await;
    h.send(3, vec![b'y'; 1024 * 1024 - 100]).await; // fits
    h.wait_acked(4, Duration::from_secs(30)).await;
    let out = h.finish(Duration::from_secs(30)).await;
    out.assert_all_acked_once(4);
    assert_eq!(out.dead, vec![1]);
    assert_eq!(counter("sluice_sink_records_dead_lettered_total", "big"), 1);
    let letters = std::fs::read_to_string(dir.path().join("big.ndjson")).expect("dead letter file");
    let line: serde_json::Value = serde_json::from_str(letters.lines().next().expect("a line")).expect("json");
    assert_eq!(line["reason"], "too_large");
    let (stored, _) = read_stream(&server.client(), "big").await;
    assert_eq!(stored.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_json_get_a_random_key_and_are_counted() {
    install_metrics();
    let server = Embedded::start(false).await;
    let payloads = vec![b"not json".to_vec(), br#"{"lap":1}"#.to_vec(), br#"{"racer":"ok"}"#.to_vec()];
    let out = run_records("fallback", config("fallback", &server.url), payloads, Duration::from_secs(30)).await;
    out.assert_all_acked_once(3);
    assert_eq!(counter("sluice_sink_partition_key_fallback_total", "fallback"), 2);
    let (stored, _) = read_stream(&server.client(), "fallback").await;
    let keys: Vec<usize> = stored.iter().map(|s| s.partition_key.len()).collect();
    assert_eq!(keys.iter().filter(|&&l| l == 32).count(), 2, "two random keys: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_then_up_delivers_everything() {
    install_metrics();
    let mut server = Embedded::start(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config("flaky", &server.url);
    cfg.retry_backoff.base = Duration::from_millis(20);
    cfg.retry_backoff.max = Duration::from_millis(200);
    cfg.request_timeout = Duration::from_secs(2);
    let sink = kinesis::build("flaky", cfg, &sluice_sinks::BuildEnv::new(dir.path())).expect("build");
    let mut h = Harness::start("flaky", sink, dir.path());
    for i in 0..500u64 {
        h.send(i, telemetry(i, &racer(i, 9), i)).await;
    }
    h.wait_acked(500, Duration::from_secs(30)).await;

    server.stop().await;
    let failed_before = counter("sluice_sink_records_failed_total", "flaky");
    for i in 500..1500u64 {
        h.send(i, telemetry(i, &racer(i, 9), i)).await;
    }
    // Two rounds of calls refused by the stopped endpoint (9 keys, one record each in flight).
    wait_until("the sink to try and fail twice while the endpoint is down", Duration::from_secs(30), || {
        counter("sluice_sink_records_failed_total", "flaky") >= failed_before + 18
    })
    .await;
    h.wait_acked(500, Duration::from_secs(1)).await;
    assert_eq!(h.outcome.delivered.len(), 500, "nothing is acked while the endpoint is down");

    server.restart().await;
    h.wait_acked(1500, Duration::from_secs(30)).await;
    let out = h.finish(Duration::from_secs(30)).await;
    out.assert_all_acked_once(1500);
    let (stored, _) = read_stream(&server.client(), "flaky").await;
    let by_key = seqs_by_key(stored.iter().map(|s| (s.partition_key.clone(), s.data.clone())));
    assert_exactly_once(&by_key, 1500);
    assert_key_order(&by_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_endpoint_is_down() {
    let mut server = Embedded::start(false).await;
    server.stop().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config("late", &server.url);
    cfg.retry_backoff.max = Duration::from_millis(200);
    let sink = kinesis::build("late", cfg, &sluice_sinks::BuildEnv::new(dir.path())).expect("build");
    let mut h = Harness::start("late", sink, dir.path());
    for i in 0..100u64 {
        h.send(i, telemetry(i, &racer(i, 3), i)).await;
    }
    // Not an assertion: the endpoint merely stays down a while before it comes up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().await;
    h.wait_acked(100, Duration::from_secs(30)).await;
    h.finish(Duration::from_secs(30)).await.assert_all_acked_once(100);
    let (stored, _) = read_stream(&server.client(), "late").await;
    assert_eq!(stored.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_acks_only_what_was_accepted() {
    install_metrics();
    let mut server = Embedded::start(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink =
        kinesis::build("stop", config("stop", &server.url), &sluice_sinks::BuildEnv::new(dir.path())).expect("build");
    let mut h = Harness::start("stop", sink, dir.path());
    h.send(0, telemetry(0, "a", 0)).await;
    h.wait_acked(1, Duration::from_secs(30)).await;
    server.stop().await;
    h.send(1, telemetry(1, "a", 0)).await;
    wait_until("record 1 to be refused by the stopped endpoint", Duration::from_secs(30), || {
        counter("sluice_sink_records_failed_total", "stop") >= 1
    })
    .await;
    h.stop.send(true).expect("stop");
    let result = tokio::time::timeout(Duration::from_secs(10), &mut h.task).await.expect("stops").expect("join");
    result.expect("clean stop");
    while let Ok(a) = h.acks.try_recv() {
        if let sluice_flow::Ack::Delivered(ids) = a {
            h.outcome.delivered.extend(ids);
        }
    }
    assert_eq!(h.outcome.delivered, vec![0], "record 1 never reached the stream, so it is not acked");
}

#[test]
fn build_refuses_bad_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table: toml::Table =
        toml::from_str("stream_name = \"s\"\nendpoint = \"http://127.0.0.1:1\"\nmax_batch_bytes = 6000000\n")
            .expect("toml");
    let err =
        sluice_sinks::build("kinesis", "k", table, &sluice_sinks::BuildEnv::new(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("max_batch_bytes"), "{err}");
    let table: toml::Table = toml::from_str("stream_name = \"s\"\nendpoint = \"aws\"\nbogus = 1\n").expect("toml");
    let err =
        sluice_sinks::build("kinesis", "k", table, &sluice_sinks::BuildEnv::new(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("bogus"), "{err}");
    let table: toml::Table = toml::from_str("").expect("toml");
    assert!(sluice_sinks::build("nope", "k", table, &sluice_sinks::BuildEnv::new(dir.path())).is_err());
    let ok: toml::Table = toml::from_str("stream_name = \"s\"\nendpoint = \"aws\"\n").expect("toml");
    assert!(sluice_sinks::build("kinesis", "k", ok, &sluice_sinks::BuildEnv::new(dir.path())).is_ok());
}

/// Throughput into the embedded server (no limits), 150-byte JSON records. Run with
/// `cargo test --release -p sluice-sinks --test kinesis throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput() {
    let server = Embedded::start(false).await;
    let n = 200_000u64;
    let sample = telemetry(123_456, "racer-42", 17);
    eprintln!("record size: {} bytes", sample.len());
    let variants: [(&str, Ordering, &str, bool); 4] = [
        ("none-random", Ordering::None, "random", false),
        ("perkey-random", Ordering::PerKey, "random", false),
        ("perkey-100keys", Ordering::PerKey, "/racer", false),
        ("aggregate-100keys", Ordering::PerKey, "/racer", true),
    ];
    for (name, ordering, key, aggregate) in variants {
        let mut cfg = config(name, &server.url);
        cfg.shards = 4;
        cfg.rate_limit = false;
        cfg.ordering = ordering;
        cfg.partition_key = key.into();
        cfg.aggregate = aggregate;
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| telemetry(i, &racer(i, 100), i / 100).into_bytes()).collect();
        let started = Instant::now();
        let out = run_records(name, cfg, payloads, Duration::from_secs(300)).await;
        let secs = started.elapsed().as_secs_f64();
        out.assert_all_acked_once(n);
        eprintln!("{name}: {n} records in {secs:.2}s = {:.0} records/s", n as f64 / secs);
    }
}
