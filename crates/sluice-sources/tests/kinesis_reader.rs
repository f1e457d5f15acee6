//! The shard reader against a real Kinesis-compatible server: sluice's own, started in-process
//! on a free loopback port, reached over HTTP through the AWS SDK, as `sluice serve` would be.

mod kinesis_env;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_kinesis_api::ApiConfig;
use sluice_sources::kinesis::backend::{Page, Position, ReadError, ReadFuture, ShardDesc, StreamBackend};
use sluice_sources::kinesis::reader::{Checkpoint, ReaderSettings, ShardItem, ShardRecord, read_shard};
use sluice_sources::kinesis::sdk::{SdkOptions, SdkStream};
use tokio::sync::{mpsc, watch};

use kinesis_env::Env;

async fn start(enforce_limits: bool) -> Env {
    kinesis_env::start(ApiConfig { enforce_limits, ..ApiConfig::default() }, false).await
}

async fn create(env: &Env, name: &str, shards: i32) {
    env.client.create_stream().stream_name(name).shard_count(shards).send().await.expect("create");
}

async fn put(env: &Env, name: &str, records: Vec<(String, Vec<u8>)>) {
    for chunk in records.chunks(500) {
        let entries = chunk
            .iter()
            .map(|(pk, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(pk)
                    .data(Blob::new(data.clone()))
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = env.client.put_records().stream_name(name).set_records(Some(entries)).send().await.expect("put");
        assert_eq!(out.failed_record_count(), Some(0));
    }
}

async fn backend(env: &Env, name: &str) -> Arc<dyn StreamBackend> {
    let opts = SdkOptions { endpoint: env.url.clone(), region: None, timeout: Duration::from_secs(10) };
    Arc::new(SdkStream::connect(name, &opts).await)
}

/// Reads a shard until it is caught up (or ends); returns the records and whether it ended.
async fn drain(
    backend: Arc<dyn StreamBackend>,
    shard: &str,
    from: Checkpoint,
    settings: ReaderSettings,
) -> (Vec<ShardRecord>, Option<Vec<String>>) {
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let shard_owned = shard.to_owned();
    let task = tokio::spawn(async move { read_shard(backend, &shard_owned, from, &settings, tx, stop).await });
    let mut got = Vec::new();
    let mut end = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let item = tokio::time::timeout_at(deadline, rx.recv()).await.expect("reader made no progress").expect("item");
        match item {
            ShardItem::Records { records, .. } => got.extend(records),
            ShardItem::CaughtUp => break,
            ShardItem::End { children } => {
                end = Some(children);
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(rx);
    let _ = task.await;
    (got, end)
}

fn fast() -> ReaderSettings {
    ReaderSettings {
        idle_between_reads: Duration::from_millis(20),
        min_backoff: Duration::from_millis(20),
        ..ReaderSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_shard_in_order_and_splits_kpl_aggregates() {
    let env = start(false).await;
    create(&env, "s", 3).await;
    let mut records: Vec<(String, Vec<u8>)> =
        (0..3000).map(|i| (format!("pk{}", i % 97), format!("r{i}").into_bytes())).collect();
    // Two KPL aggregates of 5 user records each.
    for a in 0..2 {
        let users: Vec<_> = (0..5)
            .map(|i| sluice_core::kpl::UserRecord::new(format!("agg{a}-{i}"), format!("a{a}-{i}").into_bytes()))
            .collect();
        records.push((format!("agg{a}"), sluice_core::kpl::encode(&users)));
    }
    put(&env, "s", records).await;
    let b = backend(&env, "s").await;
    let shards = b.list_shards().await.expect("list");
    assert_eq!(shards.len(), 3);
    let mut all = Vec::new();
    for s in &shards {
        let (got, end) =
            drain(b.clone(), &s.id, Checkpoint::TrimHorizon, ReaderSettings { max_records: 137, ..fast() }).await;
        assert!(end.is_none());
        // In shard order: (sequence, sub-sequence) strictly increases.
        for w in got.windows(2) {
            let a = (w[0].sequence_number.len(), w[0].sequence_number.clone(), w[0].sub_sequence_number);
            let b = (w[1].sequence_number.len(), w[1].sequence_number.clone(), w[1].sub_sequence_number);
            assert!(a < b, "{a:?} then {b:?}");
        }
        all.extend(got);
    }
    assert_eq!(all.len(), 3000 + 10);
    let agg: Vec<&ShardRecord> = all.iter().filter(|r| r.aggregated).collect();
    assert_eq!(agg.len(), 10);
    assert!(
        agg.iter().any(|r| r.partition_key == "agg1-4" && r.data.as_ref() == b"a1-4" && r.sub_sequence_number == 4)
    );
    let mut plain: Vec<String> =
        all.iter().filter(|r| !r.aggregated).map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect();
    plain.sort();
    let mut want: Vec<String> = (0..3000).map(|i| format!("r{i}")).collect();
    want.sort();
    assert_eq!(plain, want, "every record once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_inside_an_aggregate_resumes_after_it() {
    let env = start(false).await;
    create(&env, "s", 1).await;
    let users: Vec<_> = (0..4).map(|i| sluice_core::kpl::UserRecord::new("k", format!("u{i}").into_bytes())).collect();
    put(
        &env,
        "s",
        vec![
            ("k".into(), b"before".to_vec()),
            ("k".into(), sluice_core::kpl::encode(&users)),
            ("k".into(), b"after".to_vec()),
        ],
    )
    .await;
    let b = backend(&env, "s").await;
    let (all, _) = drain(b.clone(), "shardId-000000000000", Checkpoint::TrimHorizon, fast()).await;
    assert_eq!(all.len(), 6);
    let cp = all[2].checkpoint(); // u1
    let (rest, _) = drain(b.clone(), "shardId-000000000000", cp, fast()).await;
    let data: Vec<&[u8]> = rest.iter().map(|r| r.data.as_ref()).collect();
    assert_eq!(data, vec![&b"u2"[..], b"u3", b"after"]);
    // LATEST sees only what comes later.
    let (none, _) = drain(b.clone(), "shardId-000000000000", Checkpoint::Latest, fast()).await;
    assert!(none.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_parent_ends_with_its_children() {
    let env = start(false).await;
    create(&env, "s", 1).await;
    put(&env, "s", (0..50).map(|i| (format!("k{i}"), format!("p{i}").into_bytes())).collect()).await;
    env.client
        .split_shard()
        .stream_name("s")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("split");
    let b = backend(&env, "s").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let shards: Vec<ShardDesc> = loop {
        let s = b.list_shards().await.expect("list");
        if s.len() == 3 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "split did not show");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let parent = shards.iter().find(|s| s.id == "shardId-000000000000").expect("parent");
    assert!(parent.closed);
    let children: Vec<&ShardDesc> =
        shards.iter().filter(|s| s.parent.as_deref() == Some("shardId-000000000000")).collect();
    assert_eq!(children.len(), 2);
    let (got, end) = drain(b.clone(), "shardId-000000000000", Checkpoint::TrimHorizon, fast()).await;
    assert_eq!(got.len(), 50);
    let mut kids = end.expect("the parent ends");
    kids.sort();
    assert_eq!(kids, vec!["shardId-000000000001".to_owned(), "shardId-000000000002".to_owned()]);
    // A parent checkpointed at SHARD_END ends at once.
    let (none, end) = drain(b, "shardId-000000000000", Checkpoint::ShardEnd, fast()).await;
    assert!(none.is_empty() && end.is_some());
}

/// A real backend that expires every third iterator it is asked to use.
struct Expiring {
    inner: Arc<dyn StreamBackend>,
    calls: AtomicUsize,
    expired: Arc<AtomicUsize>,
    throttled: Arc<AtomicUsize>,
}

impl StreamBackend for Expiring {
    fn stream_name(&self) -> &str {
        self.inner.stream_name()
    }
    fn list_shards(&self) -> ReadFuture<'_, Vec<ShardDesc>> {
        self.inner.list_shards()
    }
    fn shard_iterator<'a>(&'a self, shard: &'a str, at: &'a Position) -> ReadFuture<'a, String> {
        self.inner.shard_iterator(shard, at)
    }
    fn get_records<'a>(&'a self, iterator: &'a str, limit: u32) -> ReadFuture<'a, Page> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            self.expired.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(ReadError::ExpiredIterator("test".into())) });
        }
        let throttled = self.throttled.clone();
        let inner = self.inner.get_records(iterator, limit);
        Box::pin(async move {
            let r = inner.await;
            if matches!(r, Err(ReadError::Throttled(_))) {
                throttled.fetch_add(1, Ordering::SeqCst);
            }
            r
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterators_and_throttling_lose_and_repeat_nothing() {
    // Limits on: 5 GetRecords calls per second per shard, so fast reads are throttled.
    let env = start(true).await;
    create(&env, "s", 1).await;
    put(&env, "s", (0..900).map(|i| ("k".to_owned(), format!("{i:04}").into_bytes())).collect()).await;
    let (expired, throttled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let b: Arc<dyn StreamBackend> = Arc::new(Expiring {
        inner: backend(&env, "s").await,
        calls: AtomicUsize::new(0),
        expired: expired.clone(),
        throttled: throttled.clone(),
    });
    let settings = ReaderSettings {
        max_records: 25,
        idle_between_reads: Duration::from_millis(5),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        ..ReaderSettings::default()
    };
    let (got, _) = drain(b, "shardId-000000000000", Checkpoint::TrimHorizon, settings).await;
    let data: Vec<String> = got.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect();
    let want: Vec<String> = (0..900).map(|i| format!("{i:04}")).collect();
    assert_eq!(data, want, "every record once, in order");
    let (e, t) = (expired.load(Ordering::SeqCst), throttled.load(Ordering::SeqCst));
    assert!(e >= 5 && t >= 1, "the reader met {e} expired iterators and {t} throttled reads");
}
