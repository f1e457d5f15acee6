//! The `kinesis` source: reads a stream with KCL-compatible leases shared by every worker of
//! the same `application`, and checkpoints only what the spool has durably taken.
//!
//! One task per held shard reads it ([`super::reader`]) from its lease's checkpoint, once its
//! parents are done, and sends each user record on as an event. Sends from all shards go
//! through one ledger, which remembers after how many sent events each shard reached which
//! position; as the pipeline reports events durably spooled, the newest position of each shard
//! at or below that count is checkpointed (every `checkpoint_interval`, at the shard's end and
//! at shutdown). So a `kill -9` loses nothing: whoever takes a shard next re-reads it from a
//! checkpoint that only covers spooled events, and duplicates are bounded by what was read but
//! not yet checkpointed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use sluice_flow::{BoxFuture, DeadLetters, Event, FlowError, Origin, Source, SourceContext};
use tokio::sync::{Mutex, mpsc, watch};

use super::backend::StreamBackend;
use super::fanout::{ensure_consumer, subscribe_shard};
use super::leases::{
    Checkpoint as LeaseCheckpoint, DynamoConfig, DynamoLeaseTable, InitialPosition, LeaseConfig, LeaseCoordinator,
    LeaseError, LeaseEvent, ShardInfo, default_worker_id,
};
use super::reader::{Checkpoint, ReaderSettings, ShardItem, ShardRecord, read_shard};
use super::sdk::{SdkOptions, SdkStream};

/// The alarm raised while the stream or the lease table cannot be reached at start.
const UNAVAILABLE: &str = "stream_unavailable";

/// `starting_position`: where an application with no checkpoints starts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StartingPosition {
    /// `"trim_horizon"` or `"latest"`.
    Named(String),
    /// `{ at_timestamp = "2026-12-01T00:00:00Z" }`.
    At {
        /// RFC 3339.
        at_timestamp: String,
    },
}

fn default_position() -> StartingPosition {
    StartingPosition::Named("latest".into())
}
fn default_read() -> String {
    "polling".into()
}
fn default_max_records() -> u32 {
    10_000
}
fn default_idle() -> Duration {
    Duration::from_millis(250)
}
fn default_failover() -> Duration {
    Duration::from_secs(10)
}
fn default_checkpoint_after() -> String {
    "delivered".into()
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

/// A `kinesis` source's options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// The stream to read (or `stream_arn`).
    #[serde(default)]
    pub stream_name: String,
    /// The stream's ARN, instead of `stream_name` (its region is used when `region` is not
    /// set). Records carry it to the sinks (`eventSourceARN`).
    #[serde(default)]
    pub stream_arn: Option<String>,
    /// `"aws"` (Amazon Kinesis, the default credential chain) or the URL of a
    /// Kinesis-compatible endpoint (`sluice serve`, a pipeline's embedded stream, moto).
    pub endpoint: String,
    /// Region (default: the chain's, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// The consumer group: names the lease table; workers with the same application share
    /// the shards.
    pub application: String,
    /// Where the lease table lives: `"aws"` or a DynamoDB-compatible URL (default: `endpoint`,
    /// since `sluice serve` answers both APIs on one port).
    #[serde(default)]
    pub leases_endpoint: Option<String>,
    /// This worker's id in the lease table (default: host, pid and a random suffix).
    #[serde(default)]
    pub worker_id: Option<String>,
    /// `"trim_horizon"`, `"latest"` (default, as the KCL) or `{ at_timestamp = "RFC 3339" }`.
    #[serde(default = "default_position")]
    pub starting_position: StartingPosition,
    /// `"polling"` (GetRecords) or `"fanout"` (enhanced fan-out: a registered stream consumer
    /// with SubscribeToShard, which has its own 2 MB/s per shard).
    #[serde(default = "default_read")]
    pub read: String,
    /// The enhanced fan-out consumer's name with `read = "fanout"` (default: `application`).
    #[serde(default)]
    pub consumer_name: Option<String>,
    /// GetRecords `Limit`.
    #[serde(default = "default_max_records")]
    pub max_records: u32,
    /// Pause after a read that found nothing new.
    #[serde(default = "default_idle", deserialize_with = "sluice_core::duration::deserialize")]
    pub idle_between_reads: Duration,
    /// How long a lease lives without renewal (the KCL's `failoverTimeMillis`).
    #[serde(default = "default_failover", deserialize_with = "sluice_core::duration::deserialize")]
    pub failover_time: Duration,
    /// How often the lease table is scanned for leases to take (default: `failover_time / 4`,
    /// faster than the KCL's `2 × failover_time`, so a crashed worker's shards move on within
    /// about `failover_time + take_interval` and a released one within `take_interval`).
    #[serde(default, deserialize_with = "sluice_core::duration::deserialize_opt")]
    pub take_interval: Option<Duration>,
    /// How often spooled progress is checkpointed.
    #[serde(default = "default_checkpoint_interval", deserialize_with = "sluice_core::duration::deserialize")]
    pub checkpoint_interval: Duration,
    /// What a checkpoint may cover: `"delivered"` (default: records every sink of the pipeline
    /// acknowledged, so a worker that dies for good loses nothing; the KCL's "checkpoint after
    /// processing") or `"spooled"` (records the spool durably took: checkpoints move sooner and
    /// a graceful stop re-reads less, but what a dead worker's spool still holds reaches the
    /// sinks only when that worker comes back with its data directory).
    #[serde(default = "default_checkpoint_after")]
    pub checkpoint_after: String,
    /// Undo the kinesis sink's `compression`: records that are a gzip member or a zstd frame
    /// (told by their magic numbers) are decompressed, others passed on as they are. One that
    /// does not decompress is dead-lettered (`decompress_failed`). Default false.
    #[serde(default)]
    pub decompress: bool,
}

/// `(region, stream name)` of `arn:<partition>:kinesis:<region>:<account>:stream/<name>`.
fn parse_stream_arn(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts[..] {
        ["arn", _, "kinesis", region, _, resource] if !region.is_empty() => {
            let name = resource.strip_prefix("stream/")?;
            (!name.is_empty() && !name.contains('/')).then_some((region, name))
        }
        _ => None,
    }
}

/// Largest record `decompress` produces (the spool's record limit); a larger one is
/// dead-lettered rather than allowed to exhaust memory.
const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Decompresses a gzip member (or several) or a zstd frame; anything else is returned as is.
fn decompress(data: Bytes) -> Result<Bytes, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(data.len() * 4);
    let limit = MAX_DECOMPRESSED as u64 + 1;
    let read = if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&data[..]).take(limit).read_to_end(&mut out)
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(&data[..]).and_then(|d| d.take(limit).read_to_end(&mut out))
    } else {
        return Ok(data);
    };
    match read {
        Ok(n) if n > MAX_DECOMPRESSED => Err(format!("decompresses to more than {MAX_DECOMPRESSED} bytes")),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(e.to_string()),
    }
}

/// What the sinks learn of a record's place in the stream.
fn origin_of(stream: &str, stream_arn: Option<&str>, r: &ShardRecord) -> Origin {
    Origin {
        stream: stream.to_owned(),
        stream_arn: stream_arn.map(str::to_owned),
        // `str::to_owned`, not `to_string`, which goes through `Display` for an `Arc<str>`.
        shard_id: (*r.shard_id).to_owned(),
        sequence_number: (*r.sequence_number).to_owned(),
        sub_sequence_number: r.sub_sequence_number,
        aggregated: r.aggregated,
        partition_key: r.partition_key.clone(),
        explicit_hash_key: r.explicit_hash_key.clone(),
        arrival_ms: r.arrival_ms,
    }
}

/// Builds a `kinesis` source.
pub fn build(name: &str, cfg: KinesisSourceConfig) -> Result<Box<dyn Source>, FlowError> {
    Ok(Box::new(checked(name, cfg)?))
}

fn checked(name: &str, cfg: KinesisSourceConfig) -> Result<KinesisSource, FlowError> {
    let bad = |message: String| FlowError::Config { component: name.to_owned(), message };
    let mut cfg = cfg;
    match (cfg.stream_name.is_empty(), cfg.stream_arn.as_deref()) {
        (true, None) => return Err(bad("`stream_name` or `stream_arn` is required".into())),
        (false, Some(_)) => return Err(bad("give `stream_name` or `stream_arn`, not both".into())),
        (_, Some(arn)) => {
            let (region, name) = parse_stream_arn(arn).ok_or_else(|| {
                bad(format!("`stream_arn` = {arn:?} is not arn:<partition>:kinesis:<region>:<account>:stream/<name>"))
            })?;
            cfg.stream_name = name.to_owned();
            cfg.region = cfg.region.or_else(|| Some(region.to_owned()));
        }
        (false, None) => {}
    }
    if cfg.application.is_empty() {
        return Err(bad("`application` must not be empty".into()));
    }
    if cfg.read != "polling" && cfg.read != "fanout" {
        return Err(bad(format!("`read` = {:?}: expected \"polling\" or \"fanout\"", cfg.read)));
    }
    if cfg.consumer_name.is_some() && cfg.read != "fanout" {
        return Err(bad("`consumer_name` is only used with `read = \"fanout\"`".into()));
    }
    if cfg.read == "fanout" {
        // Kinesis's ConsumerName pattern, checked here rather than at the first subscription.
        let c = cfg.consumer_name.as_deref().unwrap_or(&cfg.application);
        let ok = !c.is_empty()
            && c.len() <= 128
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(bad(format!(
                "`consumer_name` (default: `application`) = {c:?}: 1 to 128 of a-z, A-Z, 0-9, `_`, `.`, `-`"
            )));
        }
    }
    if !matches!(cfg.checkpoint_after.as_str(), "delivered" | "spooled") {
        return Err(bad(format!(
            "`checkpoint_after` = {:?}: expected \"delivered\" or \"spooled\"",
            cfg.checkpoint_after
        )));
    }
    if !(1..=10_000).contains(&cfg.max_records) {
        return Err(bad(format!("`max_records` must be 1..=10000, not {}", cfg.max_records)));
    }
    if cfg.failover_time < Duration::from_millis(300) {
        return Err(bad("`failover_time` must be at least 300ms".into()));
    }
    if cfg.take_interval.is_some_and(|t| t < Duration::from_millis(50)) {
        return Err(bad("`take_interval` must be at least 50ms".into()));
    }
    let (initial, at_ms) = match &cfg.starting_position {
        StartingPosition::Named(n) if n == "trim_horizon" => (InitialPosition::TrimHorizon, None),
        StartingPosition::Named(n) if n == "latest" => (InitialPosition::Latest, None),
        StartingPosition::Named(n) => {
            return Err(bad(format!(
                "`starting_position` = {n:?}: expected \"trim_horizon\", \"latest\" or {{ at_timestamp = \"RFC 3339\" }}"
            )));
        }
        StartingPosition::At { at_timestamp } => {
            let t = humantime::parse_rfc3339_weak(at_timestamp)
                .map_err(|e| bad(format!("`starting_position.at_timestamp` = {at_timestamp:?}: {e}")))?;
            let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            (InitialPosition::AtTimestamp, Some(ms))
        }
    };
    for (field, url) in [("endpoint", Some(&cfg.endpoint)), ("leases_endpoint", cfg.leases_endpoint.as_ref())] {
        if let Some(u) = url
            && u != "aws"
            && url::Url::parse(u).is_err()
        {
            return Err(bad(format!("`{field}` = {u:?} is neither \"aws\" nor a URL")));
        }
    }
    Ok(KinesisSource { name: name.to_owned(), cfg, initial, at_ms, in_process: None })
}

/// Builds a `kinesis` source that polls through `backend` (the embedded stream in this
/// process) instead of the SDK; `read = "fanout"` still subscribes through the SDK at
/// `endpoint`.
pub fn build_in_process(
    name: &str,
    cfg: KinesisSourceConfig,
    backend: Arc<dyn StreamBackend>,
) -> Result<Box<dyn Source>, FlowError> {
    let mut source = checked(name, cfg)?;
    source.in_process = Some(backend);
    Ok(Box::new(source))
}

struct KinesisSource {
    name: String,
    cfg: KinesisSourceConfig,
    initial: InitialPosition,
    at_ms: Option<u64>,
    /// The embedded stream in this process, read without HTTP (polling only).
    in_process: Option<Arc<dyn StreamBackend>>,
}

/// Which positions the events sent so far reached, per shard, in send order.
#[derive(Default)]
struct Ledger {
    /// Events sent since start.
    sent: u64,
    /// (events sent when the shard reached the position, shard, position).
    marks: VecDeque<(u64, Arc<str>, LeaseCheckpoint)>,
}

impl Ledger {
    /// The newest position of each shard whose events are all within the first `spooled`.
    fn take_done(&mut self, spooled: u64) -> BTreeMap<Arc<str>, LeaseCheckpoint> {
        let mut done = BTreeMap::new();
        while let Some((at, _, _)) = self.marks.front() {
            if *at > spooled {
                break;
            }
            if let Some((_, shard, cp)) = self.marks.pop_front() {
                done.insert(shard, cp);
            }
        }
        done
    }
}

struct Shared {
    name: String,
    leases: LeaseCoordinator,
    backend: Arc<dyn StreamBackend>,
    events: mpsc::Sender<Event>,
    dead_letters: DeadLetters,
    decompress: bool,
    stream_arn: Option<String>,
    ledger: Mutex<Ledger>,
    settings: ReaderSettings,
    at_ms: Option<u64>,
    /// With `read = "fanout"`: the stream consumer's ARN (readers subscribe instead of polling).
    consumer_arn: Option<String>,
    /// Shards whose end was spooled and checkpointed: a re-sync creates their children.
    resync: tokio::sync::Notify,
    /// What each shard being read has done, for `/health`.
    shards: std::sync::Mutex<BTreeMap<String, ShardProgress>>,
    /// Shards being handed over to a worker that stole them, with the newest spooled position
    /// to hand over (kept here rather than checkpointed: the lease is the new owner's).
    handing_off: std::sync::Mutex<HashMap<Arc<str>, Option<LeaseCheckpoint>>>,
}

/// One shard being read, as `/health` shows it.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct ShardProgress {
    /// User records sent on since this worker took the shard.
    read: u64,
    /// Sequence number of the newest one.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_sequence: Option<String>,
    /// `MillisBehindLatest` of the newest read.
    #[serde(skip_serializing_if = "Option::is_none")]
    millis_behind: Option<i64>,
    /// The newest checkpoint written (`SHARD_END` or `sequence:sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<String>,
    /// Waiting for a parent shard's end before reading.
    waiting_for_parent: bool,
    /// Read to its end.
    ended: bool,
}

impl Shared {
    fn progress(&self, shard: &str, f: impl FnOnce(&mut ShardProgress)) {
        let mut shards = lock_sync(&self.shards);
        f(shards.entry(shard.to_owned()).or_default());
    }

    /// The source's report for `/health`: who this worker is and the shards it holds.
    fn report(&self, stream: &str, application: &str) -> serde_json::Value {
        let held = self.leases.held();
        let mut shards = lock_sync(&self.shards);
        shards.retain(|s, _| held.contains(s));
        serde_json::json!({
            "stream": stream,
            "application": application,
            "worker": self.leases.config().worker_id,
            "leases_held": held.len(),
            "shards": &*shards,
        })
    }
}

fn to_reader(cp: &LeaseCheckpoint, at_ms: Option<u64>) -> Checkpoint {
    match cp {
        LeaseCheckpoint::TrimHorizon => Checkpoint::TrimHorizon,
        LeaseCheckpoint::Latest => Checkpoint::Latest,
        LeaseCheckpoint::AtTimestamp => at_ms.map_or(Checkpoint::TrimHorizon, Checkpoint::AtTimestamp),
        LeaseCheckpoint::ShardEnd => Checkpoint::ShardEnd,
        LeaseCheckpoint::Sequence { sequence, sub } => {
            Checkpoint::Sequence { sequence_number: sequence.clone(), sub_sequence_number: *sub }
        }
    }
}

impl Source for KinesisSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<Result<(), FlowError>> {
        Box::pin(self.run_inner(ctx))
    }
}

impl KinesisSource {
    async fn run_inner(self, ctx: SourceContext) -> Result<(), FlowError> {
        let cfg = self.cfg;
        let mut shutdown = ctx.shutdown.clone();
        let opts =
            SdkOptions { endpoint: cfg.endpoint.clone(), region: cfg.region.clone(), timeout: Duration::from_secs(10) };
        let backend: Arc<dyn StreamBackend> = match self.in_process.clone() {
            Some(local) if cfg.read == "polling" => local,
            _ => Arc::new(SdkStream::connect(&cfg.stream_name, &opts).await),
        };
        let mut dynamo =
            DynamoConfig::new(cfg.leases_endpoint.clone().unwrap_or_else(|| cfg.endpoint.clone()), &cfg.application);
        dynamo.region = cfg.region.clone();
        let table = Arc::new(DynamoLeaseTable::connect(&dynamo).await);
        let worker = cfg.worker_id.clone().unwrap_or_else(default_worker_id);
        let mut lease_cfg = LeaseConfig::new(&cfg.application, &worker).with_failover_time(cfg.failover_time);
        lease_cfg.take_interval = cfg.take_interval.unwrap_or(cfg.failover_time / 4);
        let (leases, mut lease_events) = LeaseCoordinator::new(table, lease_cfg);
        tracing::info!(source = %self.name, stream = %cfg.stream_name, application = %cfg.application, worker = %worker, "kinesis source starting");

        // Table, first shard sync and (fan-out) an ACTIVE consumer, retried until they work or
        // the pipeline stops.
        let fanout = cfg.read == "fanout";
        let consumer = cfg.consumer_name.clone().unwrap_or_else(|| cfg.application.clone());
        let mut backoff = Duration::from_millis(200);
        let consumer_arn = loop {
            let attempt = async {
                leases.initialize().await.map_err(|e| e.to_string())?;
                sync(&backend, &leases, self.initial).await?;
                if !fanout {
                    return Ok(None);
                }
                let arn = ensure_consumer(backend.as_ref(), &consumer, Duration::from_secs(120))
                    .await
                    .map_err(|e| format!("stream consumer {consumer}: {e}"))?;
                tracing::info!(source = %self.name, consumer = %arn, "enhanced fan-out consumer ACTIVE");
                Ok::<_, String>(Some(arn))
            };
            // Waiting for a consumer to become ACTIVE can take a while: a stop ends it.
            let r = tokio::select! {
                r = attempt => r,
                () = stopped(&mut shutdown) => return Ok(()),
            };
            match r {
                Ok(arn) => {
                    if ctx.alarms.clear(UNAVAILABLE) {
                        tracing::info!(source = %self.name, "stream and lease table reachable again");
                    }
                    break arn;
                }
                Err(e) => {
                    // /health answers 503 with this while the source cannot start reading.
                    if ctx.alarms.raise(UNAVAILABLE, format!("cannot start reading: {e}")) {
                        metrics::counter!("sluice_kinesis_start_failures_total", "source" => self.name.clone())
                            .increment(1);
                    }
                    tracing::warn!(source = %self.name, error = %e, "cannot reach the stream or the lease table yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stopped(&mut shutdown) => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let lease_task = leases.spawn();
        let shared = Arc::new(Shared {
            name: self.name.clone(),
            leases: leases.clone(),
            backend: backend.clone(),
            events: ctx.events.clone(),
            dead_letters: ctx.dead_letters.clone(),
            decompress: cfg.decompress,
            stream_arn: match &cfg.stream_arn {
                Some(arn) => Some(arn.clone()),
                // Named by name: ask once, for the records' origin (`eventSourceARN`).
                None => match backend.stream_arn().await {
                    Ok(arn) => Some(arn),
                    Err(e) => {
                        tracing::warn!(source = %self.name, error = %e, "stream ARN unknown: records carry none");
                        None
                    }
                },
            },
            ledger: Mutex::new(Ledger::default()),
            settings: ReaderSettings {
                max_records: cfg.max_records,
                idle_between_reads: cfg.idle_between_reads,
                ..ReaderSettings::default()
            },
            at_ms: self.at_ms,
            consumer_arn,
            resync: tokio::sync::Notify::new(),
            shards: std::sync::Mutex::new(BTreeMap::new()),
            handing_off: std::sync::Mutex::new(HashMap::new()),
        });
        let mut handoffs = tokio::task::JoinSet::new();
        let report = ctx.report.clone();
        // How many sent events are safe to checkpoint (named `spooled` below for either kind).
        let delivered_mode = cfg.checkpoint_after == "delivered";
        let spooled = if delivered_mode { ctx.delivered.clone().or(ctx.spooled.clone()) } else { ctx.spooled.clone() };
        let mut readers: HashMap<String, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut checkpoint_tick = tokio::time::interval(cfg.checkpoint_interval);
        let mut sync_tick = tokio::time::interval(Duration::from_secs(60));
        sync_tick.tick().await;
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => break,
                event = lease_events.recv() => match event {
                    Some(LeaseEvent::Acquired { shard, checkpoint }) => {
                        let (stop_tx, stop_rx) = watch::channel(false);
                        let task = tokio::spawn(read_one(shared.clone(), shard.clone(), checkpoint, stop_rx));
                        if let Some((old, _)) = readers.insert(shard, (stop_tx, task)) {
                            let _ = old.send(true);
                        }
                    }
                    Some(LeaseEvent::Lost { shard }) => {
                        if let Some((stop, _)) = readers.remove(&shard) {
                            let _ = stop.send(true);
                            tracing::warn!(source = %self.name, shard = %shard, "lease lost: stopped reading the shard");
                        }
                    }
                    Some(LeaseEvent::HandOff { shard }) => {
                        let reader = readers.remove(&shard).map(|(stop, task)| {
                            let _ = stop.send(true);
                            task
                        });
                        lock_sync(&shared.handing_off).entry(Arc::from(shard.as_str())).or_insert(None);
                        let wait = cfg.failover_time / 2;
                        handoffs.spawn(hand_off(shared.clone(), shard, reader, spooled.clone(), wait));
                    }
                    None => break,
                },
                _ = checkpoint_tick.tick() => {
                    checkpoint_spooled(&shared, spooled.as_ref()).await;
                    readers.retain(|_, (_, task)| !task.is_finished());
                    report.set(shared.report(&cfg.stream_name, &cfg.application));
                }
                () = shared.resync.notified() => {
                    if let Err(e) = sync(&backend, &leases, self.initial).await {
                        tracing::warn!(source = %self.name, error = %e, "shard sync failed");
                    }
                }
                _ = sync_tick.tick() => {
                    if let Err(e) = sync(&backend, &leases, self.initial).await {
                        tracing::warn!(source = %self.name, error = %e, "shard sync failed");
                    }
                }
            }
        }

        // Graceful stop: handoffs in progress and readers first, then the last spooled
        // positions, then release.
        let _ = tokio::time::timeout(cfg.failover_time, async { while handoffs.join_next().await.is_some() {} }).await;
        for (stop, _) in readers.values() {
            let _ = stop.send(true);
        }
        for (_, (_, task)) in readers.drain() {
            let _ = task.await;
        }
        if let Some(rx) = &spooled {
            let sent = shared.ledger.lock().await.sent;
            let mut rx = rx.clone();
            // The sinks stop with the pipeline, so what they have not acknowledged by now is
            // re-read by the next owner (and delivered by this worker's spool when it comes
            // back): duplicates, never a loss. The spool takes what was sent within moments.
            let wait = if delivered_mode { Duration::from_millis(200) } else { Duration::from_secs(5) };
            let _ = tokio::time::timeout(wait, rx.wait_for(|n| *n >= sent)).await;
        }
        let done = {
            let upto = spooled.as_ref().map_or(u64::MAX, |rx| *rx.borrow());
            shared.ledger.lock().await.take_done(upto)
        };
        let finals: Vec<(String, LeaseCheckpoint)> = done.into_iter().map(|(s, c)| (s.to_string(), c)).collect();
        let report = leases.shutdown(&finals).await;
        lease_task.abort();
        tracing::info!(source = %self.name, checkpointed = report.checkpointed.len(), released = report.released.len(),
            failed = report.failed.len(), "kinesis source stopped; leases released");
        Ok(())
    }
}

/// Resolves once `rx` says stop (or its sender is gone), holding no borrow afterwards.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Lists the shards and creates leases for new ones.
async fn sync(
    backend: &Arc<dyn StreamBackend>,
    leases: &LeaseCoordinator,
    initial: InitialPosition,
) -> Result<(), String> {
    let shards = backend.list_shards().await.map_err(|e| e.to_string())?;
    let infos: Vec<ShardInfo> = shards
        .iter()
        .map(|s| ShardInfo {
            id: s.id.clone(),
            parents: s.parents(),
            hash_range: match (
                sluice_core::hash::parse_hash_key(&s.starting_hash_key),
                sluice_core::hash::parse_hash_key(&s.ending_hash_key),
            ) {
                (Ok(start), Ok(end)) => Some(sluice_core::HashKeyRange { start, end }),
                _ => None,
            },
            closed: s.closed,
        })
        .collect();
    leases.sync_shards(&infos, initial).await.map(|_| ()).map_err(|e| e.to_string())
}

fn lock_sync<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands a stolen shard over: once its reader stopped and what it sent is spooled (or `wait`
/// passed), the newest spooled position goes to the lease with the handoff write, so the new
/// owner starts exactly after it.
async fn hand_off(
    shared: Arc<Shared>,
    shard: String,
    reader: Option<tokio::task::JoinHandle<()>>,
    spooled: Option<watch::Receiver<u64>>,
    wait: Duration,
) {
    if let Some(reader) = reader {
        let _ = reader.await;
    }
    let sent = shared.ledger.lock().await.sent;
    if let Some(rx) = &spooled {
        let mut rx = rx.clone();
        if tokio::time::timeout(wait, rx.wait_for(|n| *n >= sent)).await.is_err() {
            tracing::warn!(source = %shared.name, shard = %shard, "spool slow: handing over the last position it took");
        }
    }
    checkpoint_spooled(&shared, spooled.as_ref()).await;
    let last = lock_sync(&shared.handing_off).remove(shard.as_str()).flatten();
    match shared.leases.hand_off(&shard, last).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(source = %shared.name, shard = %shard,
            "the new owner stopped waiting for the handoff: it reads again from the previous checkpoint"),
        Err(e) => tracing::warn!(source = %shared.name, shard = %shard, error = %e, "handoff failed"),
    }
    lock_sync(&shared.shards).remove(&shard);
}

/// Checkpoints, per shard, the newest position whose events are all spooled.
async fn checkpoint_spooled(shared: &Shared, spooled: Option<&watch::Receiver<u64>>) {
    let upto = spooled.map_or(u64::MAX, |rx| *rx.borrow());
    let done = shared.ledger.lock().await.take_done(upto);
    for (shard, cp) in done {
        if let Some(last) = lock_sync(&shared.handing_off).get_mut(&shard) {
            *last = Some(cp);
            continue;
        }
        let r = match &cp {
            LeaseCheckpoint::ShardEnd => {
                let r = shared.leases.checkpoint_shard_end(&shard).await;
                shared.resync.notify_one();
                r
            }
            LeaseCheckpoint::Sequence { sequence, sub } => shared.leases.checkpoint(&shard, sequence, *sub).await,
            _ => Ok(()),
        };
        match r {
            Ok(()) => shared.progress(&shard, |p| {
                p.checkpoint = Some(match &cp {
                    LeaseCheckpoint::Sequence { sequence, sub } => format!("{sequence}:{sub}"),
                    other => other.as_str().to_owned(),
                })
            }),
            Err(LeaseError::HandingOff { .. }) => {
                // The handoff (which the coordinator's event starts) writes it.
                lock_sync(&shared.handing_off).insert(shard.clone(), Some(cp));
            }
            Err(LeaseError::Lost { .. } | LeaseError::NotHeld { .. }) => {
                tracing::info!(source = %shared.name, shard = %shard, "not checkpointed: the lease moved on");
            }
            Err(e) => {
                tracing::warn!(source = %shared.name, shard = %shard, error = %e, "checkpoint failed; retried with the next one")
            }
        }
    }
}

/// Reads one held shard and sends its records on, until its end, a lost lease or a stop.
async fn read_one(shared: Arc<Shared>, shard: String, from: LeaseCheckpoint, mut stop: watch::Receiver<bool>) {
    // Children wait for every parent's SHARD_END.
    shared.progress(&shard, |p| *p = ShardProgress::default());
    loop {
        match shared.leases.parent_done(&shard).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(shard = %shard, error = %e, "parent check failed"),
        }
        shared.progress(&shard, |p| p.waiting_for_parent = true);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = stopped(&mut stop) => return,
        }
    }
    let (tx, mut rx) = mpsc::channel::<ShardItem>(4);
    let start = to_reader(&from, shared.at_ms);
    let reader = tokio::spawn({
        let backend = shared.backend.clone();
        let settings = shared.settings.clone();
        let shard = shard.clone();
        let stop = stop.clone();
        let consumer_arn = shared.consumer_arn.clone();
        async move {
            match consumer_arn {
                Some(arn) => subscribe_shard(backend, &arn, &shard, start, &settings, tx, stop).await,
                None => read_shard(backend, &shard, start, &settings, tx, stop).await,
            }
        }
    });
    let shard_id: Arc<str> = Arc::from(shard.as_str());
    while let Some(item) = rx.recv().await {
        if *stop.borrow() || !shared.leases.holds(&shard) {
            break;
        }
        match item {
            ShardItem::Records { records, millis_behind } => {
                if let Some(last) = records.last() {
                    // The KCL's IteratorAgeMilliseconds: how old the newest record read is.
                    let age = sluice_flow::now_ms().saturating_sub(last.arrival_ms);
                    metrics::gauge!("sluice_kinesis_iterator_age_ms", "stream" => shared.backend.stream_name().to_owned(), "shard" => shard.clone())
                        .set(age as f64);
                }
                shared.progress(&shard, |p| {
                    p.waiting_for_parent = false;
                    p.read += records.len() as u64;
                    p.last_sequence = records.last().map(|r| r.sequence_number.to_string());
                    p.millis_behind = millis_behind;
                });
                let stream = shared.backend.stream_name().to_owned();
                let mut ledger = shared.ledger.lock().await;
                // The position after the batch (a record dead-lettered below is done too).
                let last = records.last().map(|r| LeaseCheckpoint::Sequence {
                    sequence: r.sequence_number.to_string(),
                    sub: r.sub_sequence_number,
                });
                let received_ms = sluice_flow::now_ms();
                for mut r in records {
                    if shared.decompress {
                        match decompress(r.data.clone()) {
                            Ok(data) => r.data = data,
                            Err(e) => {
                                // Kept whole in the dead letters; reading goes on past it.
                                let detail =
                                    format!("{}:{}:{}: {e}", r.shard_id, r.sequence_number, r.sub_sequence_number);
                                shared.dead_letters.write("decompress_failed", &detail, &r.data);
                                continue;
                            }
                        }
                    }
                    // No cursor: where each shard got to is in its lease and in the origin.
                    let origin = Some(Arc::new(origin_of(&stream, shared.stream_arn.as_deref(), &r)));
                    let event = Event { payload: r.data, cursor: None, received_ms, origin };
                    if shared.events.send(event).await.is_err() {
                        return;
                    }
                    ledger.sent += 1;
                }
                if let Some(cp) = last {
                    let sent = ledger.sent;
                    ledger.marks.push_back((sent, shard_id.clone(), cp));
                }
            }
            ShardItem::CaughtUp => shared.progress(&shard, |p| {
                p.waiting_for_parent = false;
                p.millis_behind = Some(0);
            }),
            ShardItem::End { .. } => {
                let mut ledger = shared.ledger.lock().await;
                let sent = ledger.sent;
                ledger.marks.push_back((sent, shard_id.clone(), LeaseCheckpoint::ShardEnd));
                shared.progress(&shard, |p| p.ended = true);
                tracing::info!(source = %shared.name, shard = %shard, "shard read to its end");
                break;
            }
        }
    }
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_hands_out_only_spooled_positions_newest_per_shard() {
        let mut l = Ledger::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let seq = |s: &str| LeaseCheckpoint::Sequence { sequence: s.into(), sub: 0 };
        l.marks.push_back((3, a.clone(), seq("1")));
        l.marks.push_back((5, b.clone(), seq("7")));
        l.marks.push_back((9, a.clone(), seq("2")));
        assert!(l.take_done(2).is_empty());
        let d = l.take_done(5);
        assert_eq!(d.get(&a), Some(&seq("1")));
        assert_eq!(d.get(&b), Some(&seq("7")));
        let d = l.take_done(100);
        assert_eq!(d.len(), 1);
        assert_eq!(d.get(&a), Some(&seq("2")));
    }

    #[test]
    fn decompress_undoes_gzip_and_zstd_and_passes_the_rest() {
        use std::io::Write;
        let payload = br#"{"racer":7,"lap":3}"#.repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&payload).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert_eq!(decompress(Bytes::from(gz.clone())).expect("gzip"), Bytes::from(payload.clone()));
        let zs = zstd::bulk::compress(&payload, 3).expect("zstd");
        assert_eq!(decompress(Bytes::from(zs.clone())).expect("zstd"), Bytes::from(payload.clone()));
        assert_eq!(
            decompress(Bytes::from_static(b"{\"plain\":1}")).expect("plain"),
            Bytes::from_static(b"{\"plain\":1}")
        );
        assert!(decompress(Bytes::from(gz[..gz.len() / 2].to_vec())).is_err(), "a cut gzip member");
        assert!(decompress(Bytes::from(zs[..zs.len() - 3].to_vec())).is_err(), "a cut zstd frame");
        assert!(decompress(Bytes::from_static(b"\x1f\x8bnot gzip")).is_err());
    }

    #[test]
    fn options_are_checked() {
        let parse = |t: &str| -> Result<KinesisSourceConfig, String> { toml::from_str(t).map_err(|e| e.to_string()) };
        let base = "stream_name = \"s\"\nendpoint = \"http://127.0.0.1:1\"\napplication = \"app\"\n";
        let c = parse(base).expect("base");
        assert!(build("k", c).is_ok());
        assert!(parse(&format!("{base}bogus = 1\n")).is_err(), "unknown keys are refused");
        let c =
            parse(&format!("{base}starting_position = {{ at_timestamp = \"2026-12-01T00:00:00Z\" }}\n")).expect("ts");
        assert!(build("k", c).is_ok());
        let c = parse(&format!("{base}starting_position = \"oldest\"\n")).expect("parses");
        assert!(build("k", c).is_err());
        let arn = "endpoint = \"aws\"\napplication = \"app\"\nstream_arn = \"arn:aws:kinesis:eu-west-1:123456789012:stream/orders\"\n";
        assert!(build("k", parse(arn).expect("arn")).is_ok());
        assert_eq!(
            parse_stream_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders"),
            Some(("eu-west-1", "orders"))
        );
        assert_eq!(parse_stream_arn("arn:aws:kinesis:eu-west-1:123456789012:table/orders"), None);
        assert_eq!(parse_stream_arn("orders"), None);
        assert!(build("k", parse(&format!("{arn}stream_name = \"orders\"\n")).expect("both")).is_err());
        assert!(build("k", parse("endpoint = \"aws\"\napplication = \"app\"\n").expect("neither")).is_err());
        let c = parse(&format!("{base}read = \"fanout\"\n")).expect("parses");
        assert!(build("k", c).is_ok());
        let c = parse(&format!("{base}read = \"fanout\"\nconsumer_name = \"copier-2\"\n")).expect("parses");
        assert!(build("k", c).is_ok());
        let c = parse(&format!("{base}read = \"fanout\"\nconsumer_name = \"no spaces\"\n")).expect("parses");
        assert!(build("k", c).is_err());
        let c = parse(&format!("{base}consumer_name = \"c\"\n")).expect("parses");
        assert!(build("k", c).is_err(), "consumer_name without fanout");
        let c = parse(&format!("{base}read = \"push\"\n")).expect("parses");
        assert!(build("k", c).is_err());
    }
}
