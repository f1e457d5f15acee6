//! The `kinesis` source end to end against a real server (sluice's, in-process on a free
//! loopback port, answering Kinesis and DynamoDB on one port, reached over HTTP): two workers
//! of one application share the shards through KCL lease items, every record arrives, a
//! graceful stop checkpoints what was spooled and releases the leases, and a restarted worker
//! reads only what came after.

mod kinesis_env;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_flow::{Alarms, DeadLetters, Event, SourceContext};
use sluice_kinesis_api::ApiConfig;
use tokio::sync::{mpsc, watch};

use kinesis_env::Env;

async fn start() -> Env {
    kinesis_env::start(ApiConfig::default(), true).await
}

async fn put(env: &Env, from: usize, to: usize) {
    let all: Vec<usize> = (from..to).collect();
    for chunk in all.chunks(500) {
        let entries = chunk
            .iter()
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("pk{i}"))
                    .data(Blob::new(format!("r{i:05}").into_bytes()))
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = env.client.put_records().stream_name("s").set_records(Some(entries)).send().await.expect("put");
        assert_eq!(out.failed_record_count(), Some(0));
    }
}

/// One worker: the source plus a stand-in spool that counts what it took.
struct Worker {
    got: Arc<Mutex<Vec<String>>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), sluice_flow::FlowError>>,
    spool: tokio::task::JoinHandle<()>,
    report: sluice_flow::SourceReport,
}

fn worker(env: &Env, id: &str) -> Worker {
    let text = format!(
        "stream_name = \"s\"\nendpoint = \"{}\"\napplication = \"app\"\nworker_id = \"{id}\"\nstarting_position = \"trim_horizon\"\nfailover_time = \"3s\"\ncheckpoint_interval = \"100ms\"\nidle_between_reads = \"50ms\"\n",
        env.url
    );
    let table: toml::Table = toml::from_str(&text).expect("toml");
    let source = sluice_sources::build_from("in", "kinesis", &table).expect("build");
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let (spooled_tx, spooled_rx) = watch::channel(0u64);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let report = sluice_flow::SourceReport::default();
    let ctx = SourceContext {
        name: "in".into(),
        resume_cursor: None,
        events: tx,
        dead_letters: DeadLetters::new(env.dir.path(), id),
        shutdown: shutdown_rx,
        alarms: Alarms::default(),
        history: None,
        spooled: Some(spooled_rx),
        delivered: None,
        report: report.clone(),
    };
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let spool = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            sink.lock().expect("lock").push(String::from_utf8_lossy(&e.payload).into_owned());
            spooled_tx.send_modify(|n| *n += 1);
        }
    });
    let task = tokio::spawn(source.run(ctx));
    Worker { got, shutdown, task, spool, report }
}

impl Worker {
    fn records(&self) -> Vec<String> {
        self.got.lock().expect("lock").clone()
    }

    async fn stop(self) -> Vec<String> {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops in time")
            .expect("join")
            .expect("ok");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.spool).await;
        self.got.lock().expect("lock").clone()
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_shards_and_a_restart_reads_only_what_is_new() {
    let env = start().await;
    env.client.create_stream().stream_name("s").shard_count(4).send().await.expect("create");
    put(&env, 0, 2000).await;

    let a = worker(&env, "worker-a");
    let b = worker(&env, "worker-b");
    let distinct = |a: &Worker, b: &Worker| {
        let mut all: Vec<String> = a.records().into_iter().chain(b.records()).collect();
        all.sort();
        all.dedup();
        all.len()
    };
    wait_until("every record read by one of the workers", 60, || distinct(&a, &b) == 2000).await;
    // Both workers got a share (the leases were balanced; a stolen shard may have nothing left
    // to read: its victim handed it over at its end).
    let held = |w: &Worker| w.report.get().and_then(|r| r["leases_held"].as_u64()).unwrap_or(0);
    wait_until("2 + 2 leases", 30, || held(&a) == 2 && held(&b) == 2).await;
    put(&env, 2000, 2400).await;
    wait_until("new records read", 60, || distinct(&a, &b) == 2400).await;
    // Each reports the shards it holds, checkpointed at the last record it read.
    let shards = |w: &Worker| -> BTreeMap<String, serde_json::Value> {
        let r = w.report.get().unwrap_or_default();
        serde_json::from_value(r["shards"].clone()).unwrap_or_default()
    };
    wait_until("4 shards reported, each checkpointed at its last record", 30, || {
        let all: Vec<serde_json::Value> = shards(&a).into_values().chain(shards(&b).into_values()).collect();
        all.len() == 4
            && all.iter().all(|s| {
                s["last_sequence"].as_str().is_some_and(|seq| s["checkpoint"].as_str() == Some(&format!("{seq}:0")))
            })
    })
    .await;
    assert_eq!(held(&a) + held(&b), 4);
    assert_eq!(a.report.get().map(|r| r["worker"].clone()), Some(serde_json::json!("worker-a")));
    let got_a = a.stop().await;
    let got_b = b.stop().await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in got_a.iter().chain(got_b.iter()) {
        *counts.entry(r.clone()).or_default() += 1;
    }
    let dups: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("worker a read {}, worker b read {}, duplicates {dups}", got_a.len(), got_b.len());
    assert_eq!(counts.len(), 2400);
    // Leases stolen to balance are handed over at the victim's last spooled record.
    assert_eq!(dups, 0, "records read twice");

    // The leases hold the checkpoints of what was spooled: a new worker reads only new records.
    put(&env, 2400, 2500).await;
    let c = worker(&env, "worker-c");
    wait_until("the 100 new records", 60, || c.records().len() >= 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got_c = c.stop().await;
    got_c.sort();
    let want: Vec<String> = (2400..2500).map(|i| format!("r{i:05}")).collect();
    assert_eq!(got_c, want, "exactly the records after the checkpoints");
}
