//! The direct path: the embedded stream is the spool.
//!
//! When a source is read by a `kinesis` sink that writes to the embedded stream in-process (no
//! `endpoint`), the source's events are appended once, straight into the embedded store, and
//! the source's cursor is committed in the same group ([`Store::append_committed`]). A restart
//! resumes the source from that committed cursor, so for a provider that resumes from its
//! cursor nothing is lost and nothing is appended twice, whatever moment the process died at.
//!
//! The sink's semantics are kept: its partition-key strategy, MD5 routing to the open shard
//! covering the key, the stream created with its shard count, its compression, and records
//! over the stream's record size dead-lettered in its dead letters.
//!
//! When other sinks read the same source, the source's spool is kept for them. Each batch is
//! appended to the spool first, then to the stream, with a committed cursor that names the
//! spool ordinal of the batch's last event as well as the provider's cursor ([`Committed`]).
//! A crash between the two appends leaves events in the spool that the stream lacks; on start
//! they are appended to the stream first (the catch-up), then the source resumes from the
//! spool's cursor. The stream thus gets every event once, and the other sinks read the spool
//! as before.
//!
//! Not on the direct path (fed from the spool as before): sinks with `aggregate = true` (KPL
//! aggregates are built by the sink's dispatcher), and every embedded `kinesis` sink of a
//! source but the first (in file order) that qualifies.
//!
//! The spool's trim floor of a source keeps every spooled event the stream lacks (the direct
//! sink's entry is the committed spool ordinal); only the opt-in `[spool] max_age` could
//! delete such events, if the stream could not be written for that long.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, gauge};
use sluice_flow::{Alarms, DeadLetters, Event, SpooledHistory};
use sluice_kinesis_api::LocalApi;
use sluice_sinks::kinesis::{Compression, Key, KinesisConfig, PartitionKeySpec, compress};
use sluice_storage::{AppendPart, AppendRecord, StorageError, Store, StreamStatus};
use tokio::sync::{mpsc, watch};

use crate::runtime::{MAX_WRITE_BACKOFF, SPOOL_BLOCKED, SharedStatus, lock_floors, lock_status};
use crate::spool::Spool;

/// Most events taken from a source's queue per append (as the spool writer takes).
const BATCH: usize = 2048;
/// Most spooled events appended per catch-up append.
const CATCH_UP_BATCH: usize = 1024;

/// The name under which a source's cursor is committed in the embedded store.
pub fn cursor_key(source: &str) -> String {
    format!("source:{source}")
}

/// What the embedded store's committed cursor of a source holds: the spool ordinal up to
/// which the stream has every spooled event of the source, and the provider's cursor after
/// the newest event the stream has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Every spooled event up to this ordinal is in the stream (or was never meant for it).
    pub spool_ordinal: u64,
    /// The provider's cursor of the newest cursor-bearing event in the stream.
    pub cursor: Option<String>,
}

impl Committed {
    /// `<spool ordinal>:<cursor>` (the cursor is opaque and may hold anything, `:` included).
    pub fn encode(&self) -> String {
        format!("{}:{}", self.spool_ordinal, self.cursor.as_deref().unwrap_or(""))
    }

    /// Reads [`Committed::encode`]'s text; `None` if it is not that.
    pub fn decode(text: &str) -> Option<Committed> {
        let (ordinal, cursor) = text.split_once(':')?;
        let spool_ordinal = ordinal.parse().ok()?;
        Some(Committed { spool_ordinal, cursor: Some(cursor).filter(|c| !c.is_empty()).map(str::to_owned) })
    }
}

/// A `kinesis` sink that writes to the embedded stream in-process, as the direct path uses it.
#[derive(Clone)]
pub struct DirectTarget {
    /// The sink's name (its counters, status and dead letters).
    pub sink: String,
    /// The embedded stream's store.
    pub store: Store,
    /// The embedded stream's API, to create the stream as the sink's setup does.
    pub api: LocalApi,
    /// The sink's options.
    pub config: KinesisConfig,
    /// Its partition-key strategy.
    pub spec: Arc<PartitionKeySpec>,
}

impl DirectTarget {
    /// The direct path for a sink configured as `config`; `None` for a sink the direct path
    /// does not serve (`aggregate = true`: its KPL aggregates are built by the sink itself).
    pub fn new(sink: &str, store: Store, api: LocalApi, config: KinesisConfig) -> Option<DirectTarget> {
        if config.aggregate {
            return None;
        }
        let spec = PartitionKeySpec::parse(&config.partition_key).ok()?;
        Some(DirectTarget { sink: sink.to_owned(), store, api, config, spec: Arc::new(spec) })
    }

    /// The committed cursor of `source`, if the store has one this module wrote.
    pub fn committed(&self, source: &str) -> Option<Committed> {
        Committed::decode(&self.store.committed_cursor(&cursor_key(source))?)
    }

    /// The stream's open shards as they are now, or `None` if the stream cannot take records
    /// (missing, being deleted, no open shard).
    fn router(&self) -> Option<Router> {
        let cat = self.store.catalog();
        let meta = cat.streams.get(&self.config.stream_name)?;
        if meta.status == StreamStatus::Deleting {
            return None;
        }
        let mut table: Vec<(u128, u128, u32)> =
            meta.open_shards().map(|s| (s.range.start, s.range.end, s.index)).collect();
        table.sort_unstable();
        if table.is_empty() {
            return None;
        }
        Some(Router { tag: meta.tag, table, max_record: meta.max_record_size_kib as usize * 1024 })
    }

    /// Makes sure the stream exists (creating it with the sink's shard count, as the sink's
    /// setup does) and learns its shards; retries forever, as the sink's setup does.
    async fn ready(&self) -> Router {
        let mut wait = Duration::from_millis(100);
        loop {
            if let Some(router) = self.router() {
                return router;
            }
            if self.config.create_stream {
                let request =
                    serde_json::json!({"StreamName": self.config.stream_name, "ShardCount": self.config.shards});
                match self.api.call("CreateStream", &request).await {
                    Ok(_) => {
                        tracing::info!(sink = %self.sink, stream = %self.config.stream_name, shards = self.config.shards, "stream created");
                        continue;
                    }
                    Err(e) if e.kind == "ResourceInUseException" => {}
                    Err(e) => {
                        tracing::warn!(sink = %self.sink, stream = %self.config.stream_name, error = %e, "could not create the stream")
                    }
                }
            } else {
                tracing::warn!(sink = %self.sink, stream = %self.config.stream_name, "the stream does not exist (create_stream = false); waiting for it");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// The stream's open shards, by hash-key range.
struct Router {
    tag: u32,
    /// `(start, end, shard index)`, by start.
    table: Vec<(u128, u128, u32)>,
    /// The stream's largest record (data + partition key).
    max_record: usize,
}

impl Router {
    /// The open shard whose range covers `hash`.
    fn shard(&self, hash: u128) -> Option<u32> {
        let i = self.table.partition_point(|(start, _, _)| *start <= hash).checked_sub(1)?;
        let (_, end, index) = self.table[i];
        (hash <= end).then_some(index)
    }
}

/// One event made into a record for the stream (key chosen, payload compressed).
struct Prepared {
    key: String,
    hash: u128,
    data: Bytes,
}

/// A record that can never be accepted, for the dead letters.
struct Dead {
    payload: Bytes,
    reason: &'static str,
    detail: String,
}

/// Chooses each event's key, compresses, and sets aside what is over `max_record`, as the
/// sink's preparing step does.
fn prepare(target: &DirectTarget, events: &[Event], max_record: usize) -> (Vec<Prepared>, Vec<Dead>) {
    let mut ready = Vec::with_capacity(events.len());
    let mut dead = Vec::new();
    for e in events {
        let key = match target.spec.key_for(&e.payload) {
            Key::Chosen(k) => k.into_owned(),
            Key::Fallback(k) => {
                counter!("sluice_sink_partition_key_fallback_total", "sink" => target.sink.clone()).increment(1);
                k
            }
        };
        let data = match compress(target.config.compression, &e.payload) {
            Ok(d) => d,
            Err(err) => {
                dead.push(Dead { payload: e.payload.clone(), reason: "compression_failed", detail: err.to_string() });
                continue;
            }
        };
        if data.len() + key.len() > max_record {
            let detail = format!(
                "{} bytes of data and partition key (after compression), over the {max_record}-byte record limit",
                data.len() + key.len()
            );
            dead.push(Dead { payload: e.payload.clone(), reason: "too_large", detail });
            continue;
        }
        let hash = sluice_core::partition_key_hash(&key);
        ready.push(Prepared { key, hash, data });
    }
    (ready, dead)
}

/// The records for the stream's open shards, or `None` if a hash falls outside them all.
fn route(router: &Router, prepared: &[Prepared]) -> Option<Vec<AppendRecord>> {
    prepared
        .iter()
        .map(|p| {
            Some(AppendRecord { shard: router.shard(p.hash)?, partition_key: p.key.clone(), data: p.data.clone() })
        })
        .collect()
}

/// A failing write, told once when it starts and once when it ends (as the spool writer does).
struct Blocked {
    since: Option<(std::time::Instant, u64)>,
    backoff: Duration,
}

impl Blocked {
    fn new() -> Blocked {
        Blocked { since: None, backoff: Duration::from_millis(50) }
    }

    async fn failed(&mut self, source: &str, alarms: &Alarms, what: &str, e: &StorageError) {
        counter!("sluice_pipeline_spool_errors_total", "source" => source.to_owned()).increment(1);
        match &mut self.since {
            Some((_, failures)) => {
                *failures += 1;
                tracing::debug!(source = %source, error = %e, retry_in_ms = self.backoff.as_millis() as u64, "{what} write failed again");
            }
            None => {
                self.since = Some((std::time::Instant::now(), 1));
                gauge!("sluice_pipeline_spool_blocked", "source" => source.to_owned()).set(1.0);
                alarms.raise(SPOOL_BLOCKED, format!("{what} cannot write: {e}"));
                tracing::error!(source = %source, "{what} cannot write ({e}): the source stops reading until it can");
            }
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_WRITE_BACKOFF);
    }

    fn succeeded(&mut self, source: &str, alarms: &Alarms) {
        self.backoff = Duration::from_millis(50);
        if let Some((since, failures)) = self.since.take() {
            gauge!("sluice_pipeline_spool_blocked", "source" => source.to_owned()).set(0.0);
            alarms.clear(SPOOL_BLOCKED);
            tracing::info!(source = %source, blocked_ms = since.elapsed().as_millis() as u64, failures,
                "writes succeed again: the source reads again");
        }
    }
}

/// Where the runtime's bookkeeping lives, for one source on the direct path.
pub(crate) struct Books {
    /// Live counters.
    pub status: SharedStatus,
    /// The source's alarm board.
    pub alarms: Alarms,
    /// The source's `spooled` count (events durable since start).
    pub spooled: watch::Sender<u64>,
    /// The source's `delivered` count when no other sink reads it (else the runtime keeps it
    /// from every reader's watermark, the direct sink's included).
    pub delivered: Option<watch::Sender<u64>>,
    /// The spool's trim floors: the direct sink's entry keeps every spooled event the stream
    /// lacks.
    pub floors: crate::runtime::Floors,
}

/// Writes one source's events to the embedded stream (and, with other readers, to its spool
/// first): the task that replaces the spool writer for a source on the direct path.
pub(crate) struct DirectWriter {
    /// The sink the source is written for.
    pub target: DirectTarget,
    /// The source's name.
    pub source: String,
    /// The pipeline's spools.
    pub spool: Spool,
    /// Whether other sinks read the source (from its spool).
    pub spooled_too: bool,
    /// What the stream holds of the source, as committed.
    pub committed: Committed,
    /// The sink's dead letters.
    pub dead_letters: DeadLetters,
    /// The runtime's bookkeeping.
    pub books: Books,
}

impl DirectWriter {
    /// Catches up with the spool, then writes every batch the source sends until it stops.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut router = self.target.ready().await;
        self.catch_up(&mut router).await;
        let mut buf = Vec::with_capacity(BATCH);
        let mut blocked = Blocked::new();
        loop {
            if rx.recv_many(&mut buf, BATCH).await == 0 {
                break;
            }
            let n = buf.len() as u64;
            let cursor = buf.iter().rev().find_map(|e| e.cursor.clone());
            if self.spooled_too {
                // Spool first: the stream's committed cursor then never names an event the
                // spool lacks, and a crash between the two appends is repaired by the catch-up.
                let last = loop {
                    match self.spool.append(&self.source, &buf).await {
                        Ok(last) => break last,
                        Err(e) => blocked.failed(&self.source, &self.books.alarms, "spool", &e).await,
                    }
                };
                blocked.succeeded(&self.source, &self.books.alarms);
                self.committed.spool_ordinal = last;
                gauge!("sluice_pipeline_spool_last_ordinal", "source" => self.source.clone()).set(last as f64);
                self.spooled(n, cursor.as_ref(), Some(last + 1));
            }
            if cursor.is_some() {
                self.committed.cursor = cursor.clone();
            }
            self.append(&mut router, &buf, &mut blocked).await;
            if !self.spooled_too {
                self.spooled(n, cursor.as_ref(), None);
                if let Some(d) = &self.books.delivered {
                    d.send_modify(|c| *c += n);
                }
            }
            buf.clear();
        }
    }

    /// Counts `n` events as durable (spooled) for the source.
    fn spooled(&self, n: u64, cursor: Option<&String>, spool_next: Option<u64>) {
        counter!("sluice_pipeline_spooled_total", "source" => self.source.clone()).increment(n);
        self.books.spooled.send_modify(|c| *c += n);
        let mut st = lock_status(&self.books.status);
        if let Some(s) = st.sources.get_mut(&self.source) {
            s.spooled += n;
            if let Some(next) = spool_next {
                s.spool_next = next;
            }
            if let Some(c) = cursor {
                s.cursor = Some(c.clone());
            }
        }
    }

    /// Appends to the stream what the spool holds past the committed spool ordinal (a crash
    /// came between a batch's spool append and its stream append, or an older version spooled
    /// it for the sink and had not delivered it).
    async fn catch_up(&mut self, router: &mut Router) {
        let mut blocked = Blocked::new();
        let mut caught = 0u64;
        loop {
            let tip = match self.spool.next_ordinal(&self.source) {
                Ok(next) => next.saturating_sub(1),
                Err(e) => {
                    blocked.failed(&self.source, &self.books.alarms, "spool", &e).await;
                    continue;
                }
            };
            let from = self.committed.spool_ordinal + 1;
            if from > tip {
                break;
            }
            let (events, next) = match self.spool.read_events(&self.source, from, CATCH_UP_BATCH) {
                Ok(r) => r,
                Err(e) => {
                    blocked.failed(&self.source, &self.books.alarms, "spool", &e).await;
                    continue;
                }
            };
            blocked.succeeded(&self.source, &self.books.alarms);
            if next <= from {
                // Nothing readable from here on (the store clamps a trimmed start forward).
                break;
            }
            let batch: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
            if let Some(c) = batch.iter().rev().find_map(|e| e.cursor.clone()) {
                self.committed.cursor = Some(c);
            }
            self.committed.spool_ordinal = next - 1;
            caught += batch.len() as u64;
            self.append(router, &batch, &mut blocked).await;
        }
        if caught > 0 {
            tracing::info!(source = %self.source, sink = %self.target.sink, events = caught,
                "appended to the stream the spooled events it did not have yet");
        }
    }

    /// Appends one batch with the committed cursor; retried until it is durable (a full disk
    /// blocks the source, a resharding reloads the shards).
    async fn append(&self, router: &mut Router, events: &[Event], blocked: &mut Blocked) {
        let (prepared, dead) = prepare(&self.target, events, router.max_record);
        if !dead.is_empty() {
            self.dead_letter(dead).await;
        }
        let sink = &self.target.sink;
        let cursors = vec![(cursor_key(&self.source), self.committed.encode())];
        loop {
            let Some(records) = route(router, &prepared) else {
                // A hash no open shard covers: the map is stale (a resharding under way).
                tokio::time::sleep(Duration::from_millis(50)).await;
                *router = self.target.ready().await;
                continue;
            };
            let parts = if records.is_empty() {
                Vec::new()
            } else {
                vec![AppendPart { stream: self.target.config.stream_name.clone(), tag: router.tag, records }]
            };
            match self.target.store.append_committed(parts, cursors.clone()).await {
                Ok(_) => {
                    blocked.succeeded(&self.source, &self.books.alarms);
                    let n = prepared.len() as u64;
                    counter!("sluice_pipeline_delivered_total", "sink" => sink.clone()).increment(n);
                    counter!("sluice_sink_records_put_total", "sink" => sink.clone()).increment(n);
                    let mut st = lock_status(&self.books.status);
                    if let Some(s) = st.sinks.get_mut(sink) {
                        s.delivered += n;
                        if self.spooled_too {
                            s.watermarks.insert(self.source.clone(), self.committed.spool_ordinal);
                        }
                    }
                    drop(st);
                    if let Some(floors) = lock_floors(&self.books.floors).get_mut(&self.source) {
                        floors.insert(sink.clone(), self.committed.spool_ordinal);
                    }
                    return;
                }
                Err(StorageError::ShardClosed { .. } | StorageError::NoSuchShard | StorageError::NoSuchStream) => {
                    // A resharding closed a shard, or the stream was deleted: learn the shards
                    // again (creating the stream anew if the sink may) and route again.
                    tracing::info!(sink = %sink, stream = %self.target.config.stream_name, "the stream's shards changed; routing again");
                    *router = self.target.ready().await;
                }
                Err(e) => blocked.failed(&self.source, &self.books.alarms, "embedded stream", &e).await,
            }
        }
    }

    /// Writes dead letters (fsynced, off the async threads) and counts them as the sink does.
    async fn dead_letter(&self, dead: Vec<Dead>) {
        let n = dead.len() as u64;
        let dl = self.dead_letters.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for d in dead {
                dl.write(d.reason, &d.detail, &d.payload);
            }
        })
        .await;
        let sink = &self.target.sink;
        counter!("sluice_pipeline_dead_lettered_total", "sink" => sink.clone()).increment(n);
        counter!("sluice_sink_records_dead_lettered_total", "sink" => sink.clone()).increment(n);
        if let Some(s) = lock_status(&self.books.status).sinks.get_mut(sink) {
            s.dead_lettered += n;
        }
    }
}

/// A source's history read from the embedded stream (the direct path keeps no spool of it):
/// the newest records of the stream's open shards, by arrival time. Payloads are as stored,
/// so it is offered only when the sink does not compress.
pub struct StreamHistory {
    store: Store,
    stream: String,
    source: String,
}

impl StreamHistory {
    /// The history of `source`, written by `target`; `None` when the target compresses.
    pub fn new(target: &DirectTarget, source: &str) -> Option<StreamHistory> {
        (target.config.compression == Compression::None).then(|| StreamHistory {
            store: target.store.clone(),
            stream: target.config.stream_name.clone(),
            source: source.to_owned(),
        })
    }

    fn read(&self, max: usize, since_ms: u64) -> Result<Vec<(u64, Bytes)>, StorageError> {
        let cat = self.store.catalog();
        let Some(meta) = cat.streams.get(&self.stream) else { return Ok(Vec::new()) };
        let mut all = Vec::new();
        for shard in meta.open_shards() {
            let pos = self.store.shard_position(&self.stream, meta.tag, shard.index)?;
            let from = self.store.seek_timestamp(&self.stream, meta.tag, shard.index, since_ms)?;
            // At most `max` come from any one shard.
            let mut from = from.max(pos.next_ordinal.saturating_sub(max as u64));
            while from < pos.next_ordinal {
                let batch = self.store.read(&self.stream, meta.tag, shard.index, from, 10_000, 8 << 20)?;
                if batch.next_ordinal <= from {
                    break;
                }
                all.extend(
                    batch
                        .records
                        .into_iter()
                        .filter(|r| r.arrival_ms >= since_ms)
                        .map(|r| (r.arrival_ms, Bytes::from(r.data))),
                );
                from = batch.next_ordinal;
            }
        }
        all.sort_by_key(|(ms, _)| *ms);
        let skip = all.len().saturating_sub(max);
        Ok(all.split_off(skip))
    }
}

impl SpooledHistory for StreamHistory {
    fn recent(&self, max: usize, since_ms: u64) -> Vec<(u64, Bytes)> {
        match self.read(max, since_ms) {
            Ok(h) => h,
            Err(e) => {
                // The source then starts with an empty window: a duplicate may get through,
                // nothing is lost.
                tracing::warn!(source = %self.source, error = %e, "could not read the history from the stream");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_cursor_round_trips_with_any_cursor_text() {
        for c in [
            Committed { spool_ordinal: 0, cursor: None },
            Committed { spool_ordinal: 42, cursor: Some("17".into()) },
            Committed { spool_ordinal: 7, cursor: Some("a:b:c".into()) },
        ] {
            assert_eq!(Committed::decode(&c.encode()), Some(c.clone()));
        }
        assert_eq!(Committed::decode("not ours"), None);
        assert_eq!(cursor_key("race"), "source:race");
    }

    use crate::runtime::{DEFAULT_SINK_FAILING_AFTER, RuntimeOptions, SinkSpec, start, start_with};
    use crate::spool::SpoolOptions;
    use sluice_flow::{Ack, BoxFuture, FlowError, Sink, SinkContext, Source, SourceContext};
    use std::sync::Mutex;

    /// Emits `count` events `{"seq":i,"racer":"r<i%5>"}` numbered after the resume cursor,
    /// each with cursor `i`, then idles until shutdown.
    struct Numbered {
        count: u64,
        resumed: Arc<Mutex<Option<Option<String>>>>,
        /// Then waits for this and sends `more` events after.
        then: Option<(Arc<tokio::sync::Notify>, u64)>,
        /// The event with this seq is padded past the stream's record size.
        big: Option<u64>,
    }

    fn numbered(i: u64, big: Option<u64>) -> Event {
        let pad = if big == Some(i) { "x".repeat(1_100_000) } else { String::new() };
        Event {
            payload: Bytes::from(format!("{{\"seq\":{i},\"racer\":\"r{}\",\"pad\":\"{pad}\"}}", i % 5)),
            cursor: Some(i.to_string()),
            received_ms: 0,
            origin: None,
        }
    }

    impl Source for Numbered {
        fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<Result<(), FlowError>> {
            Box::pin(async move {
                *self.resumed.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.resume_cursor.clone());
                let start: u64 = ctx.resume_cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
                for i in start + 1..=start + self.count {
                    if ctx.events.send(numbered(i, self.big)).await.is_err() {
                        break;
                    }
                }
                if let Some((go, more)) = &self.then {
                    go.notified().await;
                    let from = start + self.count + 1;
                    for i in from..from + more {
                        if ctx.events.send(numbered(i, self.big)).await.is_err() {
                            break;
                        }
                    }
                }
                let mut stop = ctx.shutdown.clone();
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            })
        }
    }

    /// Collects the seqs it gets and acknowledges them.
    struct Collect(Arc<Mutex<Vec<u64>>>);

    impl Sink for Collect {
        fn run(self: Box<Self>, mut ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
            Box::pin(async move {
                while let Some(r) = ctx.records.recv().await {
                    let seq = serde_json::from_slice::<serde_json::Value>(&r.payload)
                        .ok()
                        .and_then(|v| v["seq"].as_u64())
                        .unwrap_or(0);
                    self.0.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
                    let _ = ctx.acks.send(Ack::Delivered(vec![r.id]));
                }
                Ok(())
            })
        }
    }

    struct Env {
        dir: tempfile::TempDir,
        store: Store,
        server: sluice_kinesis_api::Server,
    }

    async fn env() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(sluice_storage::StoreConfig::new(dir.path().join("stream"))).expect("store");
        let addr = "127.0.0.1:0".parse().expect("addr");
        let server =
            sluice_kinesis_api::Server::start(store.clone(), Default::default(), addr, None).await.expect("server");
        Env { dir, store, server }
    }

    impl Env {
        fn opts(&self) -> RuntimeOptions {
            RuntimeOptions {
                data_dir: self.dir.path().to_path_buf(),
                spool: SpoolOptions { segment_bytes: 4096, ..SpoolOptions::default() },
                spool_max_age: None,
                sink_failing_after: DEFAULT_SINK_FAILING_AFTER,
            }
        }

        fn route(&self) -> crate::runtime::DirectRoute {
            let mut config = KinesisConfig::new("race", "http://127.0.0.1:1");
            config.partition_key = "/racer".into();
            config.shards = 3;
            let target = DirectTarget::new("out", self.store.clone(), self.server.local(), config).expect("target");
            crate::runtime::DirectRoute { source: "feed".into(), target }
        }

        /// Every record of the stream: `(shard, partition key, seq)`.
        fn stream(&self) -> Vec<(u32, String, u64)> {
            let cat = self.store.catalog();
            let Some(meta) = cat.streams.get("race") else { return Vec::new() };
            let mut out = Vec::new();
            for shard in &meta.shards {
                let batch = self.store.read("race", meta.tag, shard.index, 0, 100_000, 64 << 20).expect("read");
                for r in batch.records {
                    let seq = serde_json::from_slice::<serde_json::Value>(&r.data)
                        .ok()
                        .and_then(|v| v["seq"].as_u64())
                        .unwrap_or(0);
                    out.push((shard.index, r.partition_key, seq));
                }
            }
            out
        }
    }

    fn source(count: u64, resumed: &Arc<Mutex<Option<Option<String>>>>) -> Vec<(String, Box<dyn Source>)> {
        vec![("feed".into(), Box::new(Numbered { count, resumed: resumed.clone(), then: None, big: None }))]
    }

    fn direct_sink() -> SinkSpec {
        // The direct writer serves its only input: the sink itself is never run.
        SinkSpec { name: "out".into(), inputs: vec!["feed".into()], sink: Box::new(Collect(Default::default())) }
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "not reached in time: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn seqs(records: &[(u32, String, u64)]) -> Vec<u64> {
        let mut s: Vec<u64> = records.iter().map(|r| r.2).collect();
        s.sort_unstable();
        s
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_routed_by_key_once_and_a_restart_resumes_from_the_committed_cursor() {
        let env = env().await;
        let resumed = Arc::new(Mutex::new(None));
        let run =
            start_with(&env.opts(), source(500, &resumed), vec![direct_sink()], vec![env.route()]).expect("start");
        wait_for("500 delivered", || run.status().sinks["out"].delivered == 500).await;
        assert_eq!(run.status().sources["feed"].spooled, 500);
        assert_eq!(run.status().sources["feed"].cursor.as_deref(), Some("500"));
        assert_eq!(run.status().sources["feed"].spool_next, 1, "nothing was spooled: no other sink reads it");
        run.shutdown().await;

        // Created with the sink's shard count; every record on the open shard covering MD5(key).
        let cat = env.store.catalog();
        let meta = cat.streams.get("race").expect("stream created");
        assert_eq!(meta.open_shards().count(), 3);
        let records = env.stream();
        for (shard, key, seq) in &records {
            assert_eq!(key, &format!("r{}", seq % 5));
            let hash = sluice_core::partition_key_hash(key);
            let covering = meta.open_shards().find(|s| s.range.contains(hash)).map(|s| s.index);
            assert_eq!(covering, Some(*shard), "record {seq} with key {key}");
        }
        assert_eq!(seqs(&records), (1..=500).collect::<Vec<u64>>());
        assert_eq!(env.store.committed_cursor("source:feed").as_deref(), Some("0:500"));
        // The history (a redundant source's de-duplication window) comes from the stream.
        let route = env.route();
        let history = StreamHistory::new(&route.target, "feed").expect("no compression");
        let recent = history.recent(10, 0);
        assert_eq!(recent.len(), 10);
        assert!(recent.windows(2).all(|w| w[0].0 <= w[1].0), "oldest first");
        assert!(recent.iter().all(|(_, p)| p.starts_with(b"{\"seq\":")));
        assert_eq!(history.recent(500, 0).len(), 500);
        assert!(history.recent(10, sluice_flow::now_ms() + 60_000).is_empty(), "none received since then");

        // Restarted: resumes after 500 (from the store, as no spool was written), once.
        let run =
            start_with(&env.opts(), source(100, &resumed), vec![direct_sink()], vec![env.route()]).expect("restart");
        wait_for("100 more delivered", || run.status().sinks["out"].delivered == 100).await;
        run.shutdown().await;
        assert_eq!(resumed.lock().expect("resumed").clone(), Some(Some("500".to_owned())));
        assert_eq!(seqs(&env.stream()), (1..=600).collect::<Vec<u64>>());
        env.server.shutdown().await.expect("server");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resharding_mid_run_reroutes_and_an_oversized_record_is_dead_lettered() {
        let env = env().await;
        let resumed = Arc::new(Mutex::new(None));
        let go = Arc::new(tokio::sync::Notify::new());
        let source: Vec<(String, Box<dyn Source>)> = vec![(
            "feed".into(),
            Box::new(Numbered { count: 200, resumed: resumed.clone(), then: Some((go.clone(), 200)), big: Some(250) }),
        )];
        let run = start_with(&env.opts(), source, vec![direct_sink()], vec![env.route()]).expect("start");
        wait_for("200 delivered", || run.status().sinks["out"].delivered == 200).await;
        // 3 shards become 6: the writer's shard map is stale, its next append is refused
        // (ShardClosed) and routed again over the new shards.
        let request =
            serde_json::json!({"StreamName": "race", "TargetShardCount": 6, "ScalingType": "UNIFORM_SCALING"});
        env.server.local().call("UpdateShardCount", &request).await.expect("reshard");
        go.notify_one();
        wait_for("the rest delivered or dead-lettered", || {
            let s = run.status();
            s.sinks["out"].delivered == 399 && s.sinks["out"].dead_lettered == 1
        })
        .await;
        assert_eq!(run.status().sources["feed"].cursor.as_deref(), Some("400"));
        run.shutdown().await;
        let cat = env.store.catalog();
        let meta = cat.streams.get("race").expect("stream");
        assert_eq!(meta.open_shards().count(), 6);
        let records = env.stream();
        for (shard, key, seq) in records.iter().filter(|r| r.2 > 200) {
            let hash = sluice_core::partition_key_hash(key);
            let covering = meta.open_shards().find(|s| s.range.contains(hash)).map(|s| s.index);
            assert_eq!(covering, Some(*shard), "record {seq} after the resharding, on an open shard");
        }
        let want: Vec<u64> = (1..=400).filter(|&s| s != 250).collect();
        assert_eq!(seqs(&records), want, "every event once, but the oversized one");
        let dead = std::fs::read_to_string(env.dir.path().join("dead-letter/out.ndjson")).expect("dead letters");
        assert_eq!(dead.lines().count(), 1);
        assert!(dead.contains("too_large"), "{}", &dead[..200.min(dead.len())]);
        env.server.shutdown().await.expect("server");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spooled_events_the_stream_lacks_are_appended_first_after_a_crash_between_the_appends() {
        let env = env().await;
        let resumed = Arc::new(Mutex::new(None));
        let got = Arc::new(Mutex::new(Vec::new()));
        let other =
            || SinkSpec { name: "other".into(), inputs: vec!["feed".into()], sink: Box::new(Collect(got.clone())) };
        // Both sinks: each batch goes to the spool (for `other`), then to the stream.
        let run = start_with(&env.opts(), source(300, &resumed), vec![direct_sink(), other()], vec![env.route()])
            .expect("start");
        wait_for("300 in the stream", || run.status().sinks["out"].delivered == 300).await;
        wait_for("300 to the other sink", || got.lock().map(|g| g.len() == 300).unwrap_or(false)).await;
        assert_eq!(run.status().sinks["out"].watermarks["feed"], 300);
        run.shutdown().await;
        assert_eq!(env.store.committed_cursor("source:feed").as_deref(), Some("300:300"));

        // A crash between the two appends, 200 times over: the spool takes events the stream
        // never got (a run with no direct route writes only the spool).
        let run = start(&env.opts(), source(200, &resumed), vec![other()]).expect("spool only");
        wait_for("200 more spooled", || run.status().sources["feed"].spool_next == 501).await;
        run.shutdown().await;
        assert_eq!(seqs(&env.stream()).len(), 300);

        // On start, the 200 are appended to the stream before anything new, and the source
        // resumes from the spool's cursor.
        let run = start_with(&env.opts(), source(50, &resumed), vec![direct_sink(), other()], vec![env.route()])
            .expect("restart");
        wait_for("caught up and 50 more", || run.status().sinks["out"].delivered == 250).await;
        wait_for("the other sink has them all", || got.lock().map(|g| g.len() == 550).unwrap_or(false)).await;
        run.shutdown().await;
        assert_eq!(resumed.lock().expect("resumed").clone(), Some(Some("500".to_owned())));
        assert_eq!(seqs(&env.stream()), (1..=550).collect::<Vec<u64>>(), "every event once");
        assert_eq!(env.store.committed_cursor("source:feed").as_deref(), Some("550:550"));
        env.server.shutdown().await.expect("server");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_data_dir_is_upgraded_from_the_spool_and_the_sinks_watermark() {
        let env = env().await;
        let resumed = Arc::new(Mutex::new(None));
        // An earlier version: everything spooled, nothing committed in the stream, and the
        // sink `out` acknowledged nothing.
        let run = start(&env.opts(), source(120, &resumed), vec![]).expect("old");
        wait_for("120 spooled", || run.status().sources["feed"].spool_next == 121).await;
        run.shutdown().await;
        let run = start_with(&env.opts(), source(30, &resumed), vec![direct_sink()], vec![env.route()]).expect("new");
        wait_for("150 in the stream", || run.status().sinks["out"].delivered == 150).await;
        run.shutdown().await;
        assert_eq!(resumed.lock().expect("resumed").clone(), Some(Some("120".to_owned())), "the spool's cursor");
        assert_eq!(seqs(&env.stream()), (1..=150).collect::<Vec<u64>>());
        env.server.shutdown().await.expect("server");
    }

    #[test]
    fn routes_to_the_open_shard_covering_the_hash() {
        let half = 1u128 << 127;
        let router = Router { tag: 1, table: vec![(0, half - 1, 3), (half, u128::MAX, 4)], max_record: 1 << 20 };
        assert_eq!(router.shard(0), Some(3));
        assert_eq!(router.shard(half - 1), Some(3));
        assert_eq!(router.shard(half), Some(4));
        assert_eq!(router.shard(u128::MAX), Some(4));
        let gap = Router { tag: 1, table: vec![(10, 20, 0)], max_record: 1 << 20 };
        assert_eq!((gap.shard(5), gap.shard(21)), (None, None));
    }
}
