//! The enhanced fan-out reader against a real Kinesis-compatible server: sluice's own, started
//! in-process on a free loopback port and reached over HTTP through the AWS SDK (RegisterStreamConsumer,
//! DescribeStreamConsumer, SubscribeToShard), as `sluice serve` would be.

mod kinesis_env;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_kinesis_api::ApiConfig;
use sluice_sources::kinesis::backend::{
    Consumer, Page, PageStream, Position, ReadError, ReadFuture, ShardDesc, StreamBackend,
};
use sluice_sources::kinesis::fanout::{ensure_consumer, subscribe_shard};
use sluice_sources::kinesis::reader::{Checkpoint, ReaderSettings, ReaderStop, ShardItem, ShardRecord, read_shard};
use sluice_sources::kinesis::sdk::{SdkOptions, SdkStream};
use tokio::sync::{mpsc, watch};

use kinesis_env::Env;

const SHARD0: &str = "shardId-000000000000";

async fn start(config: ApiConfig) -> Env {
    kinesis_env::start(config, false).await
}

async fn create(env: &Env, name: &str, shards: i32) {
    env.client.create_stream().stream_name(name).shard_count(shards).send().await.expect("create");
}

async fn put(env: &Env, name: &str, records: Vec<(String, Vec<u8>)>) {
    put_with(&env.client, name, records).await
}

async fn put_with(client: &aws_sdk_kinesis::Client, name: &str, records: Vec<(String, Vec<u8>)>) {
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
        let out = client.put_records().stream_name(name).set_records(Some(entries)).send().await.expect("put");
        assert_eq!(out.failed_record_count(), Some(0));
    }
}

fn plain(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    range.map(|i| (format!("k{}", i % 7), format!("{prefix}{i:05}").into_bytes())).collect()
}

async fn backend(env: &Env, name: &str) -> Arc<dyn StreamBackend> {
    let opts = SdkOptions { endpoint: env.url.clone(), region: None, timeout: Duration::from_secs(10) };
    Arc::new(SdkStream::connect(name, &opts).await)
}

fn fast() -> ReaderSettings {
    ReaderSettings {
        idle_between_reads: Duration::from_millis(20),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(400),
        ..ReaderSettings::default()
    }
}

/// A fan-out reader running in a task, and what it hands on.
struct Running {
    rx: mpsc::Receiver<ShardItem>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ReaderStop>>,
}

fn spawn_fanout(
    backend: Arc<dyn StreamBackend>,
    arn: &str,
    shard: &str,
    from: Checkpoint,
    settings: ReaderSettings,
) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let (stop, stop_rx) = watch::channel(false);
    let (arn, shard) = (arn.to_owned(), shard.to_owned());
    let task = tokio::spawn(async move { subscribe_shard(backend, &arn, &shard, from, &settings, tx, stop_rx).await });
    Running { rx, stop, task }
}

impl Running {
    /// Collects records until `want` are in (or the shard ends); fails after `within`.
    async fn take(&mut self, want: usize, within: Duration) -> (Vec<ShardRecord>, Option<Vec<String>>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < want {
            let item = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {want} records within {within:?}", got.len()))
                .expect("the reader stopped early");
            match item {
                ShardItem::Records { records, .. } => got.extend(records),
                ShardItem::CaughtUp => {}
                ShardItem::End { children } => return (got, Some(children)),
            }
        }
        (got, None)
    }

    /// Collects until the reader is caught up (or the shard ends).
    async fn until_caught_up(&mut self) -> (Vec<ShardRecord>, Option<Vec<String>>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        loop {
            let item = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .expect("the reader made no progress")
                .expect("the reader stopped early");
            match item {
                ShardItem::Records { records, .. } => got.extend(records),
                ShardItem::CaughtUp => return (got, None),
                ShardItem::End { children } => return (got, Some(children)),
            }
        }
    }

    async fn stop(self) -> Result<(), ReaderStop> {
        let _ = self.stop.send(true);
        drop(self.rx);
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the reader stops").expect("join")
    }
}

/// What polling hands on from `from` until caught up: the reference fan-out must match.
async fn polled(backend: Arc<dyn StreamBackend>, shard: &str, from: Checkpoint) -> Vec<ShardRecord> {
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let shard = shard.to_owned();
    let settings = fast();
    let task = tokio::spawn(async move { read_shard(backend, &shard, from, &settings, tx, stop).await });
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("polling progress") {
        match item {
            ShardItem::Records { records, .. } => got.extend(records),
            ShardItem::CaughtUp | ShardItem::End { .. } => break,
        }
    }
    let _ = stop_tx.send(true);
    drop(rx);
    let _ = task.await;
    got
}

fn data(records: &[ShardRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect()
}

/// A real backend that counts subscriptions.
struct Counting {
    inner: Arc<dyn StreamBackend>,
    subscribes: Arc<AtomicUsize>,
}

impl StreamBackend for Counting {
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
        self.inner.get_records(iterator, limit)
    }
    fn register_consumer<'a>(&'a self, name: &'a str) -> ReadFuture<'a, Consumer> {
        self.inner.register_consumer(name)
    }
    fn describe_consumer<'a>(&'a self, name: &'a str) -> ReadFuture<'a, Consumer> {
        self.inner.describe_consumer(name)
    }
    fn subscribe<'a>(&'a self, consumer_arn: &'a str, shard: &'a str, at: &'a Position) -> ReadFuture<'a, PageStream> {
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        self.inner.subscribe(consumer_arn, shard, at)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reads_like_polling_from_trim_horizon_and_from_a_checkpoint_inside_an_aggregate() {
    // Consumers stay CREATING for 400 ms: the consumer must be waited for.
    let env = start(ApiConfig { transition_ms: 400, ..ApiConfig::default() }).await;
    create(&env, "s", 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // the stream's own CREATING
    let mut records = plain("r", 0..1500);
    for a in 0..3 {
        let users: Vec<_> = (0..4)
            .map(|i| sluice_core::kpl::UserRecord::new(format!("agg{a}-{i}"), format!("a{a}-{i}").into_bytes()))
            .collect();
        records.insert(500 * a + 250, (format!("agg{a}"), sluice_core::kpl::encode(&users)));
    }
    put(&env, "s", records).await;
    let b = backend(&env, "s").await;
    let arn = ensure_consumer(b.as_ref(), "app", Duration::from_secs(20)).await.expect("consumer");
    let status = env
        .client
        .describe_stream_consumer()
        .consumer_arn(&arn)
        .send()
        .await
        .expect("describe")
        .consumer_description
        .expect("description")
        .consumer_status;
    assert_eq!(status.as_str(), "ACTIVE", "ensure_consumer returns once the consumer is ACTIVE");
    // A second worker finds the same consumer (RegisterStreamConsumer: ResourceInUse).
    assert_eq!(ensure_consumer(b.as_ref(), "app", Duration::from_secs(20)).await.expect("again"), arn);

    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::TrimHorizon, fast());
    let (all, end) = r.take(1500 + 12, Duration::from_secs(30)).await;
    assert!(end.is_none());
    r.stop().await.expect_err("stopped, not ended");
    let reference = polled(b.clone(), SHARD0, Checkpoint::TrimHorizon).await;
    assert_eq!(reference.len(), 1512);
    assert_eq!(all, reference, "fan-out hands on exactly what polling does");
    assert_eq!(all.iter().filter(|r| r.aggregated).count(), 12);

    // From a checkpoint inside the second aggregate: what follows its sub-sequence 1.
    let i = all.iter().position(|r| r.partition_key == "agg1-1").expect("agg1-1");
    assert_eq!(all[i].sub_sequence_number, 1);
    let cp = all[i].checkpoint();
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, cp.clone(), fast());
    let (rest, _) = r.take(all.len() - i - 1, Duration::from_secs(30)).await;
    r.stop().await.expect_err("stopped");
    assert_eq!(rest, all[i + 1..].to_vec());
    assert_eq!(data(&rest[..2]), vec!["a1-2", "a1-3"]);
    assert!(!rest[2].aggregated && rest[2].sequence_number != rest[1].sequence_number);
    assert_eq!(rest, polled(b.clone(), SHARD0, cp).await);

    // LATEST: only what is written after the subscription.
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::Latest, fast());
    let (none, _) = r.until_caught_up().await;
    assert!(none.is_empty());
    put(&env, "s", plain("late", 0..3)).await;
    let (late, _) = r.take(3, Duration::from_secs(10)).await;
    assert_eq!(data(&late), vec!["late00000", "late00001", "late00002"]);
    r.stop().await.expect_err("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_gets_live_records_and_resubscribes_when_the_server_ends_a_subscription() {
    // The server ends every subscription after 1 s (Kinesis: 5 minutes).
    let env = start(ApiConfig { subscription_ms: 1_000, ..ApiConfig::default() }).await;
    create(&env, "s", 1).await;
    put(&env, "s", plain("r", 0..100)).await;
    let subscribes = Arc::new(AtomicUsize::new(0));
    let b: Arc<dyn StreamBackend> =
        Arc::new(Counting { inner: backend(&env, "s").await, subscribes: subscribes.clone() });
    let arn = ensure_consumer(b.as_ref(), "live", Duration::from_secs(20)).await.expect("consumer");
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::TrimHorizon, fast());
    let (first, _) = r.take(100, Duration::from_secs(20)).await;
    assert_eq!(data(&first), data_of(plain("r", 0..100)));

    // Written while subscribed: pushed, across several subscriptions.
    let writer = {
        let client = env.client.clone();
        tokio::spawn(async move {
            for batch in 0..20 {
                put_with(&client, "s", plain("r", 100 + batch * 20..120 + batch * 20)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (live, _) = r.take(400, Duration::from_secs(30)).await;
    writer.await.expect("writer");
    assert_eq!(data(&live), data_of(plain("r", 100..500)), "every live record once, in order");
    let n = subscribes.load(Ordering::SeqCst);
    assert!(n >= 3, "the server ended subscriptions every second, yet the reader subscribed only {n} times");

    // One record, timed: pushed well before any poll-like interval.
    let t = tokio::time::Instant::now();
    put(&env, "s", plain("one", 0..1)).await;
    let (one, _) = r.take(1, Duration::from_secs(5)).await;
    println!("a live record arrived {:?} after its put ({n} subscriptions so far)", t.elapsed());
    assert_eq!(data(&one), vec!["one00000"]);
    r.stop().await.expect_err("stopped");
}

fn data_of(records: Vec<(String, Vec<u8>)>) -> Vec<String> {
    records.into_iter().map(|(_, d)| String::from_utf8_lossy(&d).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_shard_resubscribed_before_its_first_record_loses_nothing() {
    // Subscriptions that end before any record carry a continuation from before the start;
    // resubscribing after it must not skip the shard's first record.
    let env = start(ApiConfig { subscription_ms: 700, ..ApiConfig::default() }).await;
    create(&env, "s", 1).await;
    let subscribes = Arc::new(AtomicUsize::new(0));
    let b: Arc<dyn StreamBackend> =
        Arc::new(Counting { inner: backend(&env, "s").await, subscribes: subscribes.clone() });
    let arn = ensure_consumer(b.as_ref(), "empty", Duration::from_secs(20)).await.expect("consumer");
    for from in [Checkpoint::TrimHorizon, Checkpoint::Latest] {
        let before = subscribes.load(Ordering::SeqCst);
        let mut r = spawn_fanout(b.clone(), &arn, SHARD0, from.clone(), fast());
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert!(subscribes.load(Ordering::SeqCst) - before >= 2, "{from:?}: resubscribed while empty");
        let first = if from == Checkpoint::TrimHorizon { 0 } else { 10 };
        put(&env, "s", plain("e", first..first + 10)).await;
        let (got, _) = r.take(10, Duration::from_secs(10)).await;
        assert_eq!(data(&got), data_of(plain("e", first..first + 10)), "{from:?}");
        r.stop().await.expect_err("stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_subscription_lifetime_renews_without_loss() {
    // The server would keep each subscription 5 minutes; the client renews every 1.2 s (and
    // meets "another active subscription" refusals right after, which it backs off from).
    let env = start(ApiConfig::default()).await;
    create(&env, "s", 1).await;
    let subscribes = Arc::new(AtomicUsize::new(0));
    let b: Arc<dyn StreamBackend> =
        Arc::new(Counting { inner: backend(&env, "s").await, subscribes: subscribes.clone() });
    let arn = ensure_consumer(b.as_ref(), "renew", Duration::from_secs(20)).await.expect("consumer");
    let settings = ReaderSettings { subscription_lifetime: Duration::from_millis(1_200), ..fast() };
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::TrimHorizon, settings);
    let writer = {
        let client = env.client.clone();
        tokio::spawn(async move {
            for batch in 0..16 {
                put_with(&client, "s", plain("w", batch * 25..(batch + 1) * 25)).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let (got, _) = r.take(400, Duration::from_secs(40)).await;
    writer.await.expect("writer");
    assert_eq!(data(&got), data_of(plain("w", 0..400)));
    let n = subscribes.load(Ordering::SeqCst);
    assert!(n >= 3, "only {n} subscriptions in ~4 s with a 1.2 s lifetime");
    r.stop().await.expect_err("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_ends_with_the_children_after_a_split() {
    let env = start(ApiConfig::default()).await;
    create(&env, "s", 1).await;
    put(&env, "s", plain("p", 0..50)).await;
    let b = backend(&env, "s").await;
    let arn = ensure_consumer(b.as_ref(), "split", Duration::from_secs(20)).await.expect("consumer");
    // Subscribed and caught up when the split happens: the live subscription ends with the
    // children.
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::TrimHorizon, fast());
    let (got, end) = r.take(50, Duration::from_secs(20)).await;
    assert!(end.is_none());
    assert_eq!(data(&got), data_of(plain("p", 0..50)));
    env.client
        .split_shard()
        .stream_name("s")
        .shard_to_split(SHARD0)
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("split");
    let (after, end) = r.until_caught_up_or_end().await;
    assert!(after.is_empty());
    let mut kids = end.expect("the parent ends");
    kids.sort();
    assert_eq!(kids, vec!["shardId-000000000001".to_owned(), "shardId-000000000002".to_owned()]);
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), r.task).await.expect("ends").expect("join"), Ok(()));

    // Read again from the start: the records, then the end with the children.
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::TrimHorizon, fast());
    let (again, end) = r.take(51, Duration::from_secs(20)).await;
    assert_eq!(data(&again), data_of(plain("p", 0..50)));
    assert_eq!(end.map(|k| k.len()), Some(2));
    // A parent checkpointed at SHARD_END ends at once, without subscribing.
    let mut r = spawn_fanout(b.clone(), &arn, SHARD0, Checkpoint::ShardEnd, fast());
    assert_eq!(r.until_caught_up_or_end().await, (Vec::new(), Some(Vec::new())));
    // The children are read through subscriptions too.
    put(&env, "s", plain("c", 0..40)).await;
    let mut total = 0;
    for child in ["shardId-000000000001", "shardId-000000000002"] {
        let mut r = spawn_fanout(b.clone(), &arn, child, Checkpoint::TrimHorizon, fast());
        let (got, end) = r.until_caught_up().await;
        assert!(end.is_none());
        total += got.len();
        r.stop().await.expect_err("stopped");
    }
    assert_eq!(total, 40);
}

impl Running {
    /// Collects until the reader hands on CaughtUp after some records, or ends.
    async fn until_caught_up_or_end(&mut self) -> (Vec<ShardRecord>, Option<Vec<String>>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        loop {
            let item = tokio::time::timeout_at(deadline, self.rx.recv()).await.expect("the reader made no progress");
            match item {
                Some(ShardItem::Records { records, .. }) => got.extend(records),
                Some(ShardItem::CaughtUp) => {}
                Some(ShardItem::End { children }) => return (got, Some(children)),
                None => return (got, None),
            }
        }
    }
}

/// A backend without enhanced fan-out.
struct PollingOnly(Arc<dyn StreamBackend>);

impl StreamBackend for PollingOnly {
    fn stream_name(&self) -> &str {
        self.0.stream_name()
    }
    fn list_shards(&self) -> ReadFuture<'_, Vec<ShardDesc>> {
        self.0.list_shards()
    }
    fn shard_iterator<'a>(&'a self, shard: &'a str, at: &'a Position) -> ReadFuture<'a, String> {
        self.0.shard_iterator(shard, at)
    }
    fn get_records<'a>(&'a self, iterator: &'a str, limit: u32) -> ReadFuture<'a, Page> {
        self.0.get_records(iterator, limit)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_fanout_says_so() {
    let env = start(ApiConfig::default()).await;
    create(&env, "s", 1).await;
    let b: Arc<dyn StreamBackend> = Arc::new(PollingOnly(backend(&env, "s").await));
    let e = ensure_consumer(b.as_ref(), "x", Duration::from_secs(5)).await.expect_err("unsupported");
    assert!(e.to_string().contains("not supported"), "{e}");
    let r = spawn_fanout(b, "arn", SHARD0, Checkpoint::TrimHorizon, fast());
    let out = tokio::time::timeout(Duration::from_secs(5), r.task).await.expect("returns").expect("join");
    assert!(matches!(out, Err(ReaderStop::Unsupported(_))), "{out:?}");
}

/// A real backend whose subscriptions break: every third SubscribeToShard call fails, and every
/// subscription breaks off with an error after its second event.
struct Flaky {
    inner: Arc<dyn StreamBackend>,
    calls: AtomicUsize,
}

impl StreamBackend for Flaky {
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
        self.inner.get_records(iterator, limit)
    }
    fn subscribe<'a>(&'a self, consumer_arn: &'a str, shard: &'a str, at: &'a Position) -> ReadFuture<'a, PageStream> {
        use futures_util::StreamExt;
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            return Box::pin(async { Err(ReadError::Other("test: refused".into())) });
        }
        let inner = self.inner.subscribe(consumer_arn, shard, at);
        Box::pin(async move {
            let events = inner.await?;
            let cut = futures_util::stream::once(async { Err(ReadError::Other("test: connection reset".into())) });
            Ok(events.take(2).chain(cut).boxed())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_subscriptions_resume_after_the_last_continuation_without_loss_or_repeats() {
    let env = start(ApiConfig::default()).await;
    create(&env, "s", 1).await;
    let real = backend(&env, "s").await;
    let arn = ensure_consumer(real.as_ref(), "flaky", Duration::from_secs(20)).await.expect("consumer");
    let flaky = Arc::new(Flaky { inner: real, calls: AtomicUsize::new(0) });
    let b: Arc<dyn StreamBackend> = flaky.clone();
    let mut r = spawn_fanout(b, &arn, SHARD0, Checkpoint::TrimHorizon, fast());
    let writer = {
        let client = env.client.clone();
        tokio::spawn(async move {
            for batch in 0..12 {
                put_with(&client, "s", plain("f", batch * 30..(batch + 1) * 30)).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let (got, _) = r.take(360, Duration::from_secs(60)).await;
    writer.await.expect("writer");
    assert_eq!(data(&got), data_of(plain("f", 0..360)), "every record once, in order");
    let calls = flaky.calls.load(Ordering::SeqCst);
    assert!(calls >= 4, "only {calls} subscriptions: the failures were not exercised");
    r.stop().await.expect_err("stopped");
}

/// A backend whose subscriptions are accepted and end at once, without an event.
struct EndsAtOnce {
    inner: Arc<dyn StreamBackend>,
    calls: Arc<AtomicUsize>,
}

impl StreamBackend for EndsAtOnce {
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
        self.inner.get_records(iterator, limit)
    }
    fn subscribe<'a>(&'a self, _: &'a str, _: &'a str, _: &'a Position) -> ReadFuture<'a, PageStream> {
        use futures_util::StreamExt;
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(futures_util::stream::empty().boxed()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_that_end_at_once_are_renewed_with_backoff_not_in_a_tight_loop() {
    let env = start(ApiConfig::default()).await;
    create(&env, "s", 1).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let b: Arc<dyn StreamBackend> = Arc::new(EndsAtOnce { inner: backend(&env, "s").await, calls: calls.clone() });
    let r = spawn_fanout(b, "arn", SHARD0, Checkpoint::TrimHorizon, fast());
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.stop().await.expect_err("stopped");
    // Backoff 20 ms doubling to 400 ms: about 6 subscriptions in a second.
    let n = calls.load(Ordering::SeqCst);
    assert!((3..=12).contains(&n), "{n} subscriptions in 1 s");
}
