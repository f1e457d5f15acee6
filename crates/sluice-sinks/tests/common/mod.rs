//! Shared test helpers: an in-process embedded Kinesis server, a harness that runs a sink over
//! a list of records and collects its acks, reading a stream back, and metric counters.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sluice_flow::{Ack, DeadLetters, Record, Sink, SinkContext};
use sluice_kinesis_api::{ApiConfig, Server};
use sluice_storage::{Durability, Store, StoreConfig};
use tokio::sync::{mpsc, watch};

/// An embedded Kinesis server on a loopback port, over a store in a temp dir.
pub struct Embedded {
    pub server: Option<Server>,
    pub store: Store,
    pub addr: SocketAddr,
    pub url: String,
    pub enforce_limits: bool,
    _dir: tempfile::TempDir,
}

impl Embedded {
    pub async fn start(enforce_limits: bool) -> Embedded {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StoreConfig::new(dir.path());
        config.durability = Durability::Os;
        let store = tokio::task::spawn_blocking(move || Store::open(config)).await.expect("join").expect("open store");
        let server =
            Server::start(store.clone(), api_config(enforce_limits), "127.0.0.1:0".parse().expect("addr"), None)
                .await
                .expect("start server");
        let addr = server.local_addr;
        Embedded { server: Some(server), store, addr, url: format!("http://{addr}"), enforce_limits, _dir: dir }
    }

    /// Stops serving (the port closes); the store stays.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("shutdown");
        }
    }

    /// Serves the same store on the same port again.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        loop {
            match Server::start(self.store.clone(), api_config(self.enforce_limits), self.addr, None).await {
                Ok(s) => {
                    self.server = Some(s);
                    return;
                }
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("could not rebind {}: {e}", self.addr),
            }
        }
    }

    pub fn client(&self) -> aws_sdk_kinesis::Client {
        let creds = aws_sdk_kinesis::config::Credentials::new("AKIDTEST", "secret", None, None, "test");
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(&self.url)
            .build();
        aws_sdk_kinesis::Client::from_conf(conf)
    }
}

fn api_config(enforce_limits: bool) -> ApiConfig {
    ApiConfig { enforce_limits, ..ApiConfig::default() }
}

/// One Kinesis record as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub shard: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Every record of the stream, shard by shard in sequence order, plus each shard's range.
pub async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> (Vec<Stored>, HashMap<String, (u128, u128)>) {
    let shards = client.list_shards().stream_name(stream).send().await.expect("list shards");
    let mut out = Vec::new();
    let mut ranges = HashMap::new();
    for s in shards.shards() {
        let range = s.hash_key_range().expect("range");
        ranges.insert(
            s.shard_id().to_owned(),
            (
                range.starting_hash_key().parse::<u128>().expect("start"),
                range.ending_hash_key().parse::<u128>().expect("end"),
            ),
        );
        let mut it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("iterator value");
        loop {
            let page = match client.get_records().shard_iterator(&it).limit(10_000).send().await {
                Ok(p) => p,
                Err(e) => {
                    // Reads are rate-limited too with enforce_limits.
                    let text = format!("{e:?}");
                    assert!(text.contains("ProvisionedThroughputExceeded"), "get records: {text}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            let n = page.records().len();
            for r in page.records() {
                out.push(Stored {
                    shard: s.shard_id().to_owned(),
                    partition_key: r.partition_key().unwrap_or_default().to_owned(),
                    data: r.data().as_ref().to_vec(),
                });
            }
            match page.next_shard_iterator {
                Some(next) if n > 0 => it = next,
                _ => break,
            }
        }
    }
    (out, ranges)
}

/// What a sink did with the records it was given.
#[derive(Debug, Default)]
pub struct Outcome {
    pub delivered: Vec<u64>,
    pub dead: Vec<u64>,
}

impl Outcome {
    /// Every id acked exactly once, in one of the two ways.
    pub fn assert_all_acked_once(&self, n: u64) {
        let mut all: Vec<u64> = self.delivered.iter().chain(&self.dead).copied().collect();
        all.sort_unstable();
        let want: Vec<u64> = (0..n).collect();
        assert_eq!(
            all.len(),
            want.len(),
            "acks: {} delivered + {} dead for {n} records",
            self.delivered.len(),
            self.dead.len()
        );
        assert_eq!(all, want, "every record acked exactly once");
    }
}

/// A running sink fed through a channel.
pub struct Harness {
    pub records: Option<mpsc::Sender<Record>>,
    pub acks: mpsc::UnboundedReceiver<Ack>,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), sluice_flow::FlowError>>,
    pub outcome: Outcome,
}

impl Harness {
    pub fn start(name: &str, sink: Box<dyn Sink>, dead_dir: &Path) -> Harness {
        let (tx, rx) = mpsc::channel(1024);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = SinkContext {
            name: name.to_owned(),
            records: rx,
            acks: ack_tx,
            dead_letters: DeadLetters::new(dead_dir, name),
            shutdown: stop_rx,
            output: None,
        };
        let task = tokio::spawn(sink.run(ctx));
        Harness { records: Some(tx), acks: ack_rx, stop: stop_tx, task, outcome: Outcome::default() }
    }

    pub async fn send(&self, id: u64, payload: impl Into<Bytes>) {
        let r = Record { id, payload: payload.into(), received_ms: sluice_flow::now_ms(), origin: None };
        self.records.as_ref().expect("open").send(r).await.expect("sink is running");
    }

    fn drain_acks(&mut self) {
        while let Ok(a) = self.acks.try_recv() {
            match a {
                Ack::Delivered(ids) => self.outcome.delivered.extend(ids),
                Ack::DeadLettered(ids) => self.outcome.dead.extend(ids),
            }
        }
    }

    /// Waits until `n` records are acked (or panics after `limit`).
    pub async fn wait_acked(&mut self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.drain_acks();
            if self.outcome.delivered.len() + self.outcome.dead.len() >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} acked in time",
                self.outcome.delivered.len() + self.outcome.dead.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the input and waits for the sink to finish everything.
    pub async fn finish(mut self, limit: Duration) -> Outcome {
        self.records.take();
        let result = tokio::time::timeout(limit, &mut self.task).await.expect("sink finished in time").expect("join");
        result.expect("sink run");
        self.drain_acks();
        self.outcome
    }
}

/// A 150-byte-ish JSON telemetry record.
pub fn telemetry(i: u64, racer: &str, lap: u64) -> String {
    let s = format!(
        r#"{{"racer":"{racer}","lap":{lap},"seq":{i},"speed_kph":{}.{},"rpm":{},"gear":{},"throttle":0.{},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
        180 + i % 150,
        i % 10,
        9000 + i % 3000,
        1 + i % 8,
        i % 100
    );
    s
}

/// Per key, the `seq` values in stream order, from JSON payloads.
pub fn seqs_by_key(payloads: impl IntoIterator<Item = (String, Vec<u8>)>) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, data) in payloads {
        let v: serde_json::Value = serde_json::from_slice(&data).expect("json payload");
        out.entry(key).or_default().push(v["seq"].as_u64().expect("seq"));
    }
    out
}

/// Asserts that every input seq appears exactly once overall.
pub fn assert_exactly_once(by_key: &BTreeMap<String, Vec<u64>>, n: u64) {
    let mut all: Vec<u64> = by_key.values().flatten().copied().collect();
    all.sort_unstable();
    let dupes: HashSet<u64> = all.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert!(dupes.is_empty(), "duplicates on the stream: {dupes:?}");
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "every record on the stream exactly once");
}

/// Asserts each key's seqs are increasing (input order).
pub fn assert_key_order(by_key: &BTreeMap<String, Vec<u64>>) {
    for (k, seqs) in by_key {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key {k} out of order: {seqs:?}");
    }
}

struct Metrics {
    snapshotter: Snapshotter,
    totals: Mutex<HashMap<(String, String), u64>>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder).expect("install recorder");
        Metrics { snapshotter, totals: Mutex::new(HashMap::new()) }
    })
}

/// Installs the test recorder (call before starting a sink whose metrics you read).
pub fn install_metrics() {
    metrics();
}

/// A counter's value for one sink (snapshots reset counters, so totals are kept here).
pub fn counter(name: &str, sink: &str) -> u64 {
    let m = metrics();
    let mut totals = m.totals.lock().expect("lock");
    for (key, _, _, value) in m.snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(v) = value {
            let label =
                key.key().labels().find(|l| l.key() == "sink").map(|l| l.value().to_owned()).unwrap_or_default();
            *totals.entry((key.key().name().to_owned(), label)).or_default() += v;
        }
    }
    totals.get(&(name.to_owned(), sink.to_owned())).copied().unwrap_or(0)
}
