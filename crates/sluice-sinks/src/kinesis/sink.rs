//! The running Kinesis sink: a preparing task (partition key, compression, size check) feeds
//! the [`Dispatcher`], whose batches are sent as concurrent PutRecords calls; answers come back
//! to the dispatcher, which acknowledges, dead-letters or retries.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use sluice_flow::{Ack, BoxFuture, DeadLetters, FlowError, Record, Sink, SinkContext};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backend::{KinesisBackend, ensure_stream};
use super::client::StreamClient;
use super::config::{Compression, KinesisConfig, MAX_RECORD_BYTES, Ordering};
use super::dispatch::{Batch, CallError, Dispatcher, EntryResult, Prepared, Report, Settings};
use super::partition_key::{Key, PartitionKeySpec};
use super::shard_map::ShardMap;
use super::stats::Stats;

/// How often the shard map is fetched again without a reason.
const MAP_REFRESH: Duration = Duration::from_secs(60);
/// How long a stopping sink waits for calls in flight (so their acks are not lost).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Most bytes of records the sink holds (the spool keeps the rest).
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;
/// Records handed from the preparing task to the dispatcher at once.
const PREPARE_CHUNK: usize = 512;

/// A configured Kinesis sink.
pub struct KinesisSink {
    name: String,
    config: KinesisConfig,
    spec: Arc<PartitionKeySpec>,
    backend: Option<Arc<dyn KinesisBackend>>,
}

impl KinesisSink {
    /// A sink from a config already validated; `backend` replaces the SDK client built from
    /// `endpoint` (the pipeline passes the embedded stream's in-process handle).
    pub(super) fn new(
        name: &str,
        config: KinesisConfig,
        spec: PartitionKeySpec,
        backend: Option<Arc<dyn KinesisBackend>>,
    ) -> KinesisSink {
        KinesisSink { name: name.to_owned(), config, spec: Arc::new(spec), backend }
    }
}

impl Sink for KinesisSink {
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
        Box::pin(run(*self, ctx))
    }
}

type Done = (Batch, Result<Vec<EntryResult>, CallError>, Duration);

async fn run(sink: KinesisSink, ctx: SinkContext) -> Result<(), FlowError> {
    let KinesisSink { name, config, spec, backend } = sink;
    let SinkContext { records, acks, dead_letters, shutdown, .. } = ctx;
    let stats = Stats::new(&name);
    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);

    let client: Arc<dyn KinesisBackend> = match backend {
        Some(b) => b,
        None => Arc::new(StreamClient::connect(&config).await),
    };
    let map = tokio::select! {
        m = setup(&name, client.as_ref(), &config) => m?,
        _ = &mut stop => return Ok(()),
    };
    tracing::info!(sink = %name, stream = %config.stream_name, shards = map.open_shards().len(), "kinesis sink ready");

    let settings = Settings {
        max_batch_records: config.max_batch_records,
        max_batch_bytes: config.max_batch_bytes,
        linger: config.linger,
        max_in_flight: config.max_in_flight,
        per_key: config.ordering == Ordering::PerKey,
        aggregate: config.aggregate,
        max_aggregate_bytes: sluice_core::kpl::DEFAULT_MAX_AGGREGATE_BYTES,
        max_retries: config.max_retries,
        backoff: config.retry_backoff,
        rate_limit: config.rate_limit,
    };
    let max_held =
        if config.aggregate { 200_000 } else { 20_000.max(config.max_batch_records * config.max_in_flight * 4) };
    let mut d = Dispatcher::new(settings, stats.clone());
    let mut out = Outbox { acks, dead_letters, stats: stats.clone(), pending: Vec::new() };
    out.handle(d.install_map(map, Instant::now().into_std()));

    let (prep_tx, mut prep_rx) = mpsc::channel::<Vec<Prepared>>(8);
    let preparer = tokio::spawn(prepare(
        records,
        prep_tx,
        Preparer { spec, compression: config.compression, stats: stats.clone(), keys: FxHashMap::default() },
        out.acks.clone(),
        out.dead_letters.clone(),
    ));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let (map_tx, mut map_rx) = mpsc::unbounded_channel::<Result<ShardMap, CallError>>();

    let mut input_open = true;
    let mut refreshing = false;
    let mut refresh_wanted = false;
    let mut stream_missing = false;
    let mut refresh_failures = 0u32;
    let mut next_refresh = Instant::now() + MAP_REFRESH;
    let mut call_log = CallErrorLog::default();

    loop {
        let now = Instant::now();
        if !refreshing && (refresh_wanted || now >= next_refresh) {
            refreshing = true;
            refresh_wanted = false;
            let (client, tx, ensure) = (client.clone(), map_tx.clone(), std::mem::take(&mut stream_missing));
            let (create, shards) = (config.create_stream, config.shards);
            tokio::spawn(async move {
                let result = async {
                    if ensure {
                        ensure_stream(client.as_ref(), create, shards).await?;
                    }
                    client.shard_map().await
                }
                .await;
                let _ = tx.send(result);
            });
        }
        while let Some(batch) = d.next_batch(now.into_std(), !input_open) {
            let (client, tx) = (client.clone(), done_tx.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client.put_records(&batch.entries).await;
                let _ = tx.send((batch, result, started.elapsed()));
            });
        }
        if !input_open && d.held() == 0 && d.in_flight() == 0 {
            break;
        }
        let wake = d.wakeup(now.into_std(), !input_open).map(Instant::from_std);
        let can_take = input_open && d.held() < max_held && d.held_bytes() < MAX_HELD_BYTES;
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some((batch, result, elapsed)) = done_rx.recv() => {
                out.stats.batch_seconds.record(elapsed.as_secs_f64());
                let report = d.complete(batch, result, Instant::now().into_std());
                if let Some(e) = &report.call_error {
                    call_log.failed(&name, &config.stream_name, e);
                } else {
                    call_log.succeeded(&name);
                }
                refresh_wanted |= report.refresh_map;
                stream_missing |= report.stream_missing;
                out.handle(report);
            }
            Some(result) = map_rx.recv() => {
                refreshing = false;
                match result {
                    Ok(map) => {
                        refresh_failures = 0;
                        next_refresh = Instant::now() + MAP_REFRESH;
                        tracing::debug!(sink = %name, shards = map.open_shards().len(), "shard map refreshed");
                        out.handle(d.install_map(map, Instant::now().into_std()));
                    }
                    Err(e) => {
                        refresh_failures += 1;
                        stream_missing |= matches!(e, CallError::NotFound(_));
                        let wait = Duration::from_millis(200 * u64::from(refresh_failures.min(25)));
                        next_refresh = Instant::now() + wait;
                        tracing::warn!(sink = %name, error = ?e, retry_in = ?wait, "could not refresh the shard map");
                    }
                }
            }
            got = prep_rx.recv(), if can_take => match got {
                Some(batch) => batch.into_iter().for_each(|p| d.push(p)),
                None => input_open = false,
            },
            _ = sleep_until(wake), if wake.is_some() => {}
            _ = tokio::time::sleep_until(next_refresh), if !refreshing => {}
        }
    }

    // Stopping: let calls in flight finish so what they delivered is acknowledged.
    let deadline = Instant::now() + STOP_GRACE;
    while d.in_flight() > 0 {
        tokio::select! {
            Some((batch, result, _)) = done_rx.recv() => out.handle(d.complete(batch, result, Instant::now().into_std())),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    preparer.abort();
    out.finish().await;
    tracing::info!(sink = %name, unacknowledged = d.held(), "kinesis sink stopped");
    Ok(())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the pipeline stops (never, if the pipeline dropped its side).
async fn stopped(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Makes sure the stream exists and learns its shards, retrying transient failures forever.
async fn setup(name: &str, client: &dyn KinesisBackend, config: &KinesisConfig) -> Result<ShardMap, FlowError> {
    let mut attempt = 0u32;
    loop {
        let result = async {
            ensure_stream(client, config.create_stream, config.shards).await?;
            client.shard_map().await
        }
        .await;
        let err = match result {
            Ok(map) => return Ok(map),
            Err(CallError::Rejected(msg)) => {
                return Err(FlowError::Fatal {
                    component: name.to_owned(),
                    message: format!("stream {} cannot be used: {msg}", config.stream_name),
                });
            }
            Err(e) => e,
        };
        attempt += 1;
        let base = config.retry_backoff.base.as_secs_f64();
        let wait = Duration::from_secs_f64(
            (base * 2f64.powi(attempt.min(20) as i32)).min(config.retry_backoff.max.as_secs_f64()),
        );
        tracing::warn!(sink = %name, stream = %config.stream_name, attempt, error = ?err, retry_in = ?wait, "kinesis is not reachable yet");
        tokio::time::sleep(wait).await;
    }
}

/// Logs whole-call failures without flooding: the first one, then at most every 10 s.
#[derive(Default)]
struct CallErrorLog {
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl CallErrorLog {
    fn failed(&mut self, sink: &str, stream: &str, error: &str) {
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        if self.last_logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            tracing::warn!(
                sink,
                stream,
                error,
                suppressed = self.suppressed,
                "PutRecords failed; retrying (records stay in the spool)"
            );
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    fn succeeded(&mut self, sink: &str) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(sink, after = ?since.elapsed(), "PutRecords works again");
            self.last_logged = None;
            self.suppressed = 0;
        }
    }
}

/// Where settled records go: acks, dead letters, latency metrics.
struct Outbox {
    acks: mpsc::UnboundedSender<Ack>,
    dead_letters: DeadLetters,
    stats: Stats,
    pending: Vec<JoinHandle<()>>,
}

impl Outbox {
    fn handle(&mut self, report: Report) {
        if !report.delivered.is_empty() {
            let now_ms = sluice_flow::now_ms();
            let mut ids = Vec::with_capacity(report.delivered.len());
            for p in &report.delivered {
                self.stats.end_to_end_seconds.record(now_ms.saturating_sub(p.received_ms) as f64 / 1000.0);
                ids.push(p.id);
            }
            let _ = self.acks.send(Ack::Delivered(ids));
        }
        if !report.dead.is_empty() {
            let dead = report.dead.into_iter().map(|(p, reason, detail)| (p.id, p.payload, reason, detail)).collect();
            self.pending.retain(|h| !h.is_finished());
            self.pending.push(dead_letter(self.dead_letters.clone(), self.acks.clone(), dead));
        }
    }

    async fn finish(self) {
        for h in self.pending {
            let _ = h.await;
        }
    }
}

/// Writes dead letters (fsynced, so off the async threads), then acks them.
fn dead_letter(
    dl: DeadLetters,
    acks: mpsc::UnboundedSender<Ack>,
    dead: Vec<(u64, Bytes, &'static str, String)>,
) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut ids = Vec::with_capacity(dead.len());
        for (id, payload, reason, detail) in dead {
            dl.write(reason, &detail, &payload);
            ids.push(id);
        }
        let _ = acks.send(Ack::DeadLettered(ids));
    })
}

/// Turns records into [`Prepared`] ones.
struct Preparer {
    spec: Arc<PartitionKeySpec>,
    compression: Compression,
    stats: Stats,
    /// Recent keys with their MD5 hashes: a feed has a working set of keys (racers, symbols,
    /// devices), so most records reuse one instead of allocating and hashing it again.
    keys: FxHashMap<Arc<str>, u128>,
}

/// Most keys the preparer remembers before starting over.
const KEY_CACHE: usize = 65_536;

impl Preparer {
    fn prepare(&mut self, r: Record, arrived: std::time::Instant) -> Result<Prepared, (Record, &'static str, String)> {
        let random = matches!(self.spec.as_ref(), PartitionKeySpec::Random);
        let (key, hash) = match self.spec.key_for(&r.payload) {
            Key::Chosen(k) if random => {
                let hash = sluice_core::partition_key_hash(&k);
                (Arc::from(k.as_ref()), hash)
            }
            Key::Chosen(k) => match self.keys.get_key_value(k.as_ref()) {
                Some((key, hash)) => (key.clone(), *hash),
                None => {
                    let key: Arc<str> = Arc::from(k.as_ref());
                    let hash = sluice_core::partition_key_hash(&key);
                    if self.keys.len() >= KEY_CACHE {
                        self.keys.clear();
                    }
                    self.keys.insert(key.clone(), hash);
                    (key, hash)
                }
            },
            Key::Fallback(k) => {
                self.stats.key_fallback.increment(1);
                let hash = sluice_core::partition_key_hash(&k);
                (Arc::from(k), hash)
            }
        };
        let data = match compress(self.compression, &r.payload) {
            Ok(d) => d,
            Err(e) => return Err((r, "compression_failed", e.to_string())),
        };
        if data.len() + key.len() > MAX_RECORD_BYTES {
            let detail = format!(
                "{} bytes of data and partition key (after compression), over the {MAX_RECORD_BYTES}-byte record limit",
                data.len() + key.len()
            );
            return Err((r, "too_large", detail));
        }
        Ok(Prepared { id: r.id, received_ms: r.received_ms, arrived, key, hash, data, payload: r.payload })
    }
}

async fn prepare(
    mut records: mpsc::Receiver<Record>,
    out: mpsc::Sender<Vec<Prepared>>,
    mut preparer: Preparer,
    acks: mpsc::UnboundedSender<Ack>,
    dead_letters: DeadLetters,
) {
    let mut buf = Vec::with_capacity(PREPARE_CHUNK);
    loop {
        if records.recv_many(&mut buf, PREPARE_CHUNK).await == 0 {
            return;
        }
        let arrived = std::time::Instant::now();
        let mut ready = Vec::with_capacity(buf.len());
        let mut dead = Vec::new();
        for r in buf.drain(..) {
            match preparer.prepare(r, arrived) {
                Ok(p) => ready.push(p),
                Err((r, reason, detail)) => dead.push((r.id, r.payload, reason, detail)),
            }
        }
        if !dead.is_empty() {
            preparer.stats.dead_lettered.increment(dead.len() as u64);
            // Awaited so the dead letter is durable before later records are acknowledged.
            let _ = dead_letter(dead_letters.clone(), acks.clone(), dead).await;
        }
        if !ready.is_empty() && out.send(ready).await.is_err() {
            return;
        }
    }
}

/// Compresses one payload as configured.
pub fn compress(compression: Compression, payload: &Bytes) -> std::io::Result<Bytes> {
    match compression {
        Compression::None => Ok(payload.clone()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(payload.len() / 2 + 32),
                flate2::Compression::default(),
            );
            enc.write_all(payload)?;
            Ok(Bytes::from(enc.finish()?))
        }
        Compression::Zstd => Ok(Bytes::from(zstd::bulk::compress(payload, 3)?)),
    }
}
