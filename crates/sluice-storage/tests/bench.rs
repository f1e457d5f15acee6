//! Micro benchmark (ignored by default). Run with
//! `cargo test -p sluice-storage --release --test bench -- --ignored --nocapture`.
//! Knobs: SLUICE_BENCH_RECORDS (default 2_000_000), SLUICE_BENCH_TASKS (64),
//! SLUICE_BENCH_SHARDS (4), SLUICE_BENCH_DURABILITY (fsync|os).

mod common;

use std::time::Instant;

use common::*;
use sluice_storage::{AppendRecord, Durability};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
#[ignore = "benchmark; run explicitly in release mode"]
fn append_and_read_throughput() {
    let total = env("SLUICE_BENCH_RECORDS", 2_000_000);
    let tasks = env("SLUICE_BENCH_TASKS", 64);
    let shards = env("SLUICE_BENCH_SHARDS", 4) as u32;
    let durability = match std::env::var("SLUICE_BENCH_DURABILITY").as_deref() {
        Ok("os") => Durability::Os,
        _ => Durability::Fsync,
    };
    const BATCH: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64 << 20, durability);
    create_stream(&store, STREAM, TAG, shards);
    let calls_per_task = total / BATCH / tasks;
    // Build the requests up front so the clock measures the store, not the test.
    let mut work: Vec<Vec<Vec<AppendRecord>>> = (0..tasks)
        .map(|t| {
            (0..calls_per_task)
                .map(|c| {
                    (0..BATCH)
                        .map(|i| AppendRecord {
                            shard: ((t + c + i) as u32) % shards,
                            partition_key: format!("pk-{t}-{i}"),
                            data: vec![(i % 251) as u8; 100].into(),
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let n = tasks * calls_per_task * BATCH;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t0 = Instant::now();
    rt.block_on(async {
        let mut hs = Vec::new();
        for calls in work.drain(..) {
            let s = store.clone();
            hs.push(tokio::spawn(async move {
                for recs in calls {
                    s.append(STREAM, TAG, recs).await.unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
    });
    let el = t0.elapsed().as_secs_f64();
    println!(
        "append ({durability:?}, {tasks} tasks, {shards} shards, {BATCH}/call, 100 B): {n} records in {el:.2}s = {:.0} records/s",
        n as f64 / el
    );

    for (label, max_records) in [("10000/call", 10_000usize), ("1000/call", 1000)] {
        let t0 = Instant::now();
        let mut read = 0usize;
        for shard in 0..shards {
            let mut from = 0;
            loop {
                let b = store.read(STREAM, TAG, shard, from, max_records, 10 << 20).unwrap();
                if b.records.is_empty() {
                    break;
                }
                read += b.records.len();
                from = b.next_ordinal;
            }
        }
        let el = t0.elapsed().as_secs_f64();
        assert_eq!(read, n);
        println!("read ({label}, one thread): {read} records in {el:.2}s = {:.0} records/s", read as f64 / el);
    }
    let t0 = Instant::now();
    let mut seeks = 0;
    for shard in 0..shards {
        let pos = store.shard_position(STREAM, TAG, shard).unwrap();
        for k in 0..10_000u64 {
            let from = pos.first_ordinal + (k * 7919) % (pos.next_ordinal - pos.first_ordinal);
            let b = store.read(STREAM, TAG, shard, from, 1, usize::MAX).unwrap();
            assert_eq!(b.records[0].ordinal, from);
            seeks += 1;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!("random point reads: {seeks} in {el:.2}s = {:.0}/s", seeks as f64 / el);
    drop(store);
    let t0 = Instant::now();
    let store = open(dir.path(), 64 << 20, durability);
    println!("reopen (recovery of {n} records): {:.3}s", t0.elapsed().as_secs_f64());
    drop(store);
}
