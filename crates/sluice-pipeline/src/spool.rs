//! The spool: every source's events on disk, in arrival order, before any sink sees them.
//!
//! It is the storage engine of the embedded stream used as a local log: one single-shard
//! stream per source under `data_dir/spool`, appended with group commit (fsync by default),
//! each record carrying the event's payload and, in the key field, the time the source
//! received it, the source cursor after it and, for records read from a stream, their
//! [`Origin`] (see [`encode_key`]). So a source resumes from
//! the cursor of the last spooled event, a slow or failing sink never holds up the provider's
//! connection, and each sink reads at its own pace from its own watermark (kept in
//! `data_dir/state/<sink>.json`, advanced only over acknowledged records).
//!
//! Nothing trims the spool by itself: the runtime deletes whole segments below the lowest
//! saved watermark of the sinks reading a source ([`Spool::trim_below`]), so an event stays
//! until every sink has it, and, only if `[spool] max_age` is set, segments older than that
//! ([`Spool::trim_older_than`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_flow::{Event, Origin, SpooledHistory};
use sluice_storage::{AppendRecord, Durability, StorageError, Store, StoreConfig, StoredRecord, StreamMeta, Trimmed};

/// How the spool is kept.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// When an append counts as spooled.
    pub durability: Durability,
    /// Segment size (the unit of trimming).
    pub segment_bytes: u64,
    /// `[spool] linger`: how long the store's group commit waits for more appends before it
    /// writes a group that is not full.
    pub linger: std::time::Duration,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            durability: Durability::Fsync,
            segment_bytes: StoreConfig::DEFAULT_SEGMENT_BYTES,
            linger: DEFAULT_LINGER,
        }
    }
}

/// Default of `[spool] linger` and `[embedded] linger`: long enough to gather the appends of a
/// busy moment into one fsync, short enough not to be felt as latency.
pub const DEFAULT_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// All spools of one pipeline.
#[derive(Clone)]
pub struct Spool {
    store: Store,
    tails: Arc<HashMap<String, Mutex<Tail>>>,
    /// Per source, the newest durable ordinal, sent after the tail has it (so that woken
    /// feeders find the events in memory rather than reading them from disk).
    spooled: Arc<HashMap<String, tokio::sync::watch::Sender<u64>>>,
}

/// One spooled event as a sink's feeder gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// Its ordinal in the source's spool (1 is the first ever).
    pub ordinal: u64,
    /// When it was spooled, epoch ms.
    pub arrival_ms: u64,
    /// When the source received it, epoch ms (the spool time for events spooled before this
    /// was recorded, or whose source did not say).
    pub received_ms: u64,
    /// The event's payload.
    pub payload: Bytes,
    /// Where its source read it from (a stream), if it did.
    pub origin: Option<Arc<Origin>>,
}

/// Most events and bytes each source's in-memory tail keeps.
const TAIL_RECORDS: usize = 65_536;
const TAIL_BYTES: usize = 32 * 1024 * 1024;

/// One event in the memory tail.
#[derive(Debug, Clone)]
struct Kept {
    arrival_ms: u64,
    received_ms: u64,
    payload: Bytes,
    origin: Option<Arc<Origin>>,
}

/// The newest durable events of one source, kept in memory so that feeders that keep up hand
/// them on without reading them back from disk. Only durable events enter it.
#[derive(Default)]
struct Tail {
    /// Ordinal of `events[0]`.
    first: u64,
    events: VecDeque<Kept>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, first_ordinal: u64, events: &[Kept]) {
        if self.first + self.events.len() as u64 != first_ordinal {
            // Not contiguous with what is kept (the first append, or after a restart).
            self.events.clear();
            self.bytes = 0;
            self.first = first_ordinal;
        }
        for e in events {
            self.bytes += e.payload.len();
            self.events.push_back(e.clone());
        }
        while self.events.len() > TAIL_RECORDS || self.bytes > TAIL_BYTES {
            let Some(old) = self.events.pop_front() else { break };
            self.bytes -= old.payload.len();
            self.first += 1;
        }
    }

    /// Up to `max` events from `from`, if `from` is kept. (At the end, the caller asks the
    /// store: an append may be durable there a moment before it is pushed here.)
    fn read(&self, from: u64, max: usize) -> Option<Vec<Spooled>> {
        let end = self.first + self.events.len() as u64;
        if from < self.first || from >= end {
            return None;
        }
        let skip = (from - self.first) as usize;
        Some(
            self.events
                .range(skip..)
                .take(max)
                .zip(from..)
                .map(|(e, ordinal)| Spooled {
                    ordinal,
                    arrival_ms: e.arrival_ms,
                    received_ms: e.received_ms,
                    payload: e.payload.clone(),
                    origin: e.origin.clone(),
                })
                .collect(),
        )
    }
}

/// The tag every spool stream uses (spool streams are never re-created under the same name).
const TAG: u32 = 1;

/// Marks a key written by this version: `\0<received_ms>\0<cursor>`. Earlier versions stored
/// the cursor alone; a cursor is a provider's position (digits, ids, timestamps) and never
/// starts with a NUL, so a key without this shape is read as such an old, bare cursor.
const KEY_MARK: char = '\0';

/// Marks a key that also carries the event's [`Origin`]:
/// `\x01<received_ms>\0<L>\0<origin: L bytes><cursor>`, the origin's fields each written as
/// `<byte length>:<text>` in a fixed order (any text fits, and a damaged origin still lets the
/// cursor after it be found).
const ORIGIN_MARK: char = '\u{1}';

/// What a spool record's key field holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Key<'a> {
    /// When the source received the event, if recorded.
    pub received_ms: Option<u64>,
    /// The source's cursor after it, if any.
    pub cursor: Option<&'a str>,
    /// Where the source read it from, if it came from a stream.
    pub origin: Option<Origin>,
}

/// The key field of a spool record: when the source received the event, its cursor and its
/// origin.
pub fn encode_key(received_ms: u64, cursor: Option<&str>, origin: Option<&Origin>) -> String {
    // Built by hand, not with `format!`: this runs once per spooled event, and the formatting
    // machinery was a fifth of a kinesis source's CPU.
    let cursor = cursor.unwrap_or("");
    let mut ms = itoa::Buffer::new();
    let received = ms.format(received_ms);
    let Some(o) = origin else {
        let mut key = String::with_capacity(2 + received.len() + cursor.len());
        key.push(KEY_MARK);
        key.push_str(received);
        key.push(KEY_MARK);
        key.push_str(cursor);
        return key;
    };
    let mut sub = itoa::Buffer::new();
    let mut arrival = itoa::Buffer::new();
    let fields = [
        o.stream.as_str(),
        o.stream_arn.as_deref().unwrap_or(""),
        o.shard_id.as_str(),
        o.sequence_number.as_str(),
        sub.format(o.sub_sequence_number),
        if o.aggregated { "1" } else { "0" },
        o.partition_key.as_str(),
        o.explicit_hash_key.as_deref().unwrap_or(""),
        arrival.format(o.arrival_ms),
    ];
    let mut num = itoa::Buffer::new();
    let fields_len: usize = fields.iter().map(|f| num.format(f.len()).len() + 1 + f.len()).sum();
    let mut key = String::with_capacity(24 + received.len() + fields_len + cursor.len());
    key.push(ORIGIN_MARK);
    key.push_str(received);
    key.push(KEY_MARK);
    key.push_str(num.format(fields_len));
    key.push(KEY_MARK);
    for field in fields {
        key.push_str(num.format(field.len()));
        key.push(':');
        key.push_str(field);
    }
    key.push_str(cursor);
    key
}

/// Reads the origin's fields written by [`encode_key`].
fn decode_origin(mut text: &str) -> Option<Origin> {
    let mut next = || -> Option<&str> {
        let (len, rest) = text.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let field = rest.get(..len)?;
        text = rest.get(len..)?;
        Some(field)
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let stream = next()?.to_owned();
    let stream_arn = some(next()?);
    let shard_id = next()?.to_owned();
    let sequence_number = next()?.to_owned();
    let sub_sequence_number = next()?.parse().ok()?;
    let aggregated = next()? == "1";
    let partition_key = next()?.to_owned();
    let explicit_hash_key = some(next()?);
    let arrival_ms = next()?.parse().ok()?;
    Some(Origin {
        stream,
        stream_arn,
        shard_id,
        sequence_number,
        sub_sequence_number,
        aggregated,
        partition_key,
        explicit_hash_key,
        arrival_ms,
    })
}

/// Reads a key written by [`encode_key`] or by an earlier version (the bare cursor). A
/// received time of 0 counts as not recorded. An origin that does not parse is left out (the
/// record still reaches the sinks; the loss of its metadata is counted and logged).
pub fn decode_key(key: &str) -> Key<'_> {
    let ms_of =
        |ms: &str| (!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())).then(|| ms.parse::<u64>().ok())?;
    if let Some(rest) = key.strip_prefix(ORIGIN_MARK)
        && let Some((ms, rest)) = rest.split_once(KEY_MARK)
        && let Some(ms) = ms_of(ms)
        && let Some((len, rest)) = rest.split_once(KEY_MARK)
        && let Ok(len) = len.parse::<usize>()
        && let (Some(fields), Some(cursor)) = (rest.get(..len), rest.get(len..))
    {
        let origin = decode_origin(fields);
        if origin.is_none() {
            metrics::counter!("sluice_pipeline_spool_origin_unreadable_total").increment(1);
            tracing::warn!("a spooled record's origin does not parse; delivered without it");
        }
        return Key {
            received_ms: Some(ms).filter(|&ms| ms > 0),
            cursor: Some(cursor).filter(|c| !c.is_empty()),
            origin,
        };
    }
    let parsed = key.strip_prefix(KEY_MARK).and_then(|rest| {
        let (ms, cursor) = rest.split_once(KEY_MARK)?;
        Some((ms_of(ms)?, cursor))
    });
    let (received, cursor) = match parsed {
        Some((ms, cursor)) => (Some(ms).filter(|&ms| ms > 0), cursor),
        None => (None, key),
    };
    Key { received_ms: received, cursor: Some(cursor).filter(|c| !c.is_empty()), origin: None }
}

fn spooled_of(r: StoredRecord) -> Spooled {
    let key = decode_key(&r.partition_key);
    Spooled {
        ordinal: r.ordinal,
        arrival_ms: r.arrival_ms,
        received_ms: key.received_ms.unwrap_or(r.arrival_ms),
        origin: key.origin.map(Arc::new),
        payload: Bytes::from(r.data),
    }
}

impl Spool {
    /// Opens (or creates) the spools under `dir`, one stream per source name.
    pub fn open(dir: &Path, opts: &SpoolOptions, sources: &[String]) -> Result<Spool, StorageError> {
        let mut cfg = StoreConfig::new(dir.to_path_buf());
        cfg.durability = opts.durability;
        cfg.segment_bytes = opts.segment_bytes;
        cfg.linger = opts.linger;
        // The runtime decides what may go (delivered, or past `max_age`), not the streams'
        // `retention_hours` (which spools of earlier versions still carry in their catalog).
        cfg.retention_thread = false;
        let store = Store::open(cfg)?;
        let now = sluice_flow::now_ms();
        store.mutate_catalog(|cat| {
            for name in sources {
                cat.streams.entry(name.clone()).or_insert_with(|| {
                    let mut meta = StreamMeta::new(name.clone(), TAG, now, vec![sluice_core::HashKeyRange::FULL]);
                    meta.max_record_size_kib = 65536;
                    meta
                });
            }
            Ok::<(), StorageError>(())
        })?;
        let tails = sources.iter().map(|n| (n.clone(), Mutex::new(Tail::default()))).collect();
        let mut spooled = HashMap::new();
        for name in sources {
            let next = store.shard_position(name, TAG, 0)?.next_ordinal;
            spooled.insert(name.clone(), tokio::sync::watch::Sender::new(next.saturating_sub(1)));
        }
        Ok(Spool { store, tails: Arc::new(tails), spooled: Arc::new(spooled) })
    }

    /// Appends events in order; returns the ordinal of the last one. Durable on return.
    pub async fn append(&self, source: &str, events: &[Event]) -> Result<u64, StorageError> {
        let records = events
            .iter()
            .map(|e| AppendRecord {
                shard: 0,
                partition_key: encode_key(e.received_ms, e.cursor.as_deref(), e.origin.as_deref()),
                data: e.payload.clone(),
            })
            .collect();
        let done = self.store.append(source, TAG, records).await?;
        if let (Some(first), Some(tail)) = (done.first(), self.tails.get(source)) {
            let kept: Vec<Kept> = done
                .iter()
                .zip(events)
                .map(|(a, e)| Kept {
                    arrival_ms: a.arrival_ms,
                    received_ms: if e.received_ms > 0 { e.received_ms } else { a.arrival_ms },
                    payload: e.payload.clone(),
                    origin: e.origin.clone(),
                })
                .collect();
            tail.lock().unwrap_or_else(|p| p.into_inner()).push(first.ordinal, &kept);
        }
        let last = done.last().map_or(0, |a| a.ordinal);
        if let Some(signal) = self.spooled.get(source) {
            signal.send_replace(last);
        }
        Ok(last)
    }

    /// Up to `max` events from `from` (an ordinal; 1 is the first ever; a trimmed one reads
    /// from the oldest kept), and the ordinal after the last one returned. Recent events come
    /// from memory, older ones from disk.
    pub fn read(&self, source: &str, from: u64, max: usize) -> Result<(Vec<Spooled>, u64), StorageError> {
        if let Some(tail) = self.tails.get(source)
            && let Some(events) = tail.lock().unwrap_or_else(|p| p.into_inner()).read(from, max)
        {
            let next = events.last().map_or(from, |e| e.ordinal + 1);
            return Ok((events, next));
        }
        let (records, next) = self.read_stored(source, from, max)?;
        Ok((records.into_iter().map(spooled_of).collect(), next))
    }

    fn read_stored(&self, source: &str, from: u64, max: usize) -> Result<(Vec<StoredRecord>, u64), StorageError> {
        let batch = self.store.read(source, TAG, 0, from, max, 4 * 1024 * 1024)?;
        Ok((batch.records, batch.next_ordinal))
    }

    /// Up to `max` events from `from` read back whole, with the cursor and origin spooled with
    /// each, and the ordinal after the last one returned (the direct path's catch-up: events
    /// spooled but not yet appended to the embedded stream when the process stopped).
    pub fn read_events(&self, source: &str, from: u64, max: usize) -> Result<(Vec<(u64, Event)>, u64), StorageError> {
        let (records, next) = self.read_stored(source, from, max)?;
        let events = records
            .into_iter()
            .map(|r| {
                let key = decode_key(&r.partition_key);
                let event = Event {
                    payload: Bytes::from(r.data),
                    cursor: key.cursor.map(str::to_owned),
                    received_ms: key.received_ms.unwrap_or(r.arrival_ms),
                    origin: key.origin.map(Arc::new),
                };
                (r.ordinal, event)
            })
            .collect();
        Ok((events, next))
    }

    /// One past the last spooled ordinal.
    pub fn next_ordinal(&self, source: &str) -> Result<u64, StorageError> {
        Ok(self.store.shard_position(source, TAG, 0)?.next_ordinal)
    }

    /// The oldest ordinal still kept (`next_ordinal` when nothing is).
    pub fn first_ordinal(&self, source: &str) -> Result<u64, StorageError> {
        Ok(self.store.shard_position(source, TAG, 0)?.first_ordinal)
    }

    /// The cursor stored with the newest spooled event, if any.
    pub fn last_cursor(&self, source: &str) -> Result<Option<String>, StorageError> {
        // The newest record, not the one at `next_ordinal - 1`: ordinals may skip (after
        // damage, or after an unclean shutdown that cost bytes at the end).
        let last = self.store.read_last(source, TAG, 0)?;
        Ok(last.and_then(|r| decode_key(&r.partition_key).cursor.map(str::to_owned)))
    }

    /// Up to `max` of the newest spooled events received at or after `since_ms`, oldest first.
    pub fn recent(&self, source: &str, max: usize, since_ms: u64) -> Result<Vec<Spooled>, StorageError> {
        let pos = self.store.shard_position(source, TAG, 0)?;
        let mut from = pos.next_ordinal.saturating_sub(max as u64).max(pos.first_ordinal);
        let mut out = Vec::with_capacity(max.min(4096));
        while from < pos.next_ordinal && out.len() < max {
            let (events, next) = self.read(source, from, max - out.len())?;
            // A read may return nothing yet move on, past unreadable records.
            if next <= from {
                break;
            }
            out.extend(events.into_iter().filter(|e| e.received_ms >= since_ms));
            from = next;
        }
        Ok(out)
    }

    /// Deletes the source's whole segments that hold only ordinals below `ordinal` (never the
    /// newest segment).
    pub fn trim_below(&self, source: &str, ordinal: u64) -> Result<Trimmed, StorageError> {
        self.store.trim_below(source, TAG, 0, ordinal)
    }

    /// Deletes the source's whole segments whose newest event was spooled before `cutoff_ms`
    /// (never the newest segment), delivered or not.
    pub fn trim_older_than(&self, source: &str, cutoff_ms: u64) -> Result<Trimmed, StorageError> {
        self.store.trim_older_than(source, TAG, 0, cutoff_ms)
    }

    /// Why the spool's writes fail, while its last group commit failed (a full disk, an I/O
    /// error); `None` once one succeeds again.
    pub fn write_failure(&self) -> Option<String> {
        self.store.write_failure()
    }

    /// Wakes when new events are spooled (durable, and in the memory tail).
    pub fn watch(&self, source: &str) -> Result<tokio::sync::watch::Receiver<u64>, StorageError> {
        self.spooled.get(source).map(|s| s.subscribe()).ok_or(StorageError::NoSuchStream)
    }

    /// Stops the store's writer after pending appends.
    pub fn shutdown(&self) {
        self.store.shutdown();
    }
}

/// A source's spooled history, as [`SourceContext::history`](sluice_flow::SourceContext)
/// hands it to the source (to rebuild a de-duplication window after a restart).
pub struct SpoolHistory {
    spool: Spool,
    source: String,
}

impl SpoolHistory {
    /// The history of `source`.
    pub fn new(spool: Spool, source: String) -> SpoolHistory {
        SpoolHistory { spool, source }
    }
}

impl SpooledHistory for SpoolHistory {
    fn recent(&self, max: usize, since_ms: u64) -> Vec<(u64, Bytes)> {
        match self.spool.recent(&self.source, max, since_ms) {
            Ok(events) => events.into_iter().map(|e| (e.received_ms, e.payload)).collect(),
            Err(e) => {
                // The source then starts with an empty window: a duplicate may get through,
                // nothing is lost.
                tracing::warn!(source = %self.source, error = %e, "could not read the spooled history");
                Vec::new()
            }
        }
    }
}

/// A sink's durable read positions: per input, every ordinal ≤ the watermark is done
/// (delivered or dead-lettered).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkState {
    /// Input source → watermark ordinal.
    pub watermarks: BTreeMap<String, u64>,
}

impl SinkState {
    fn path(dir: &Path, sink: &str) -> PathBuf {
        dir.join(format!("{sink}.json"))
    }

    /// Loads a sink's state (empty if none yet).
    pub fn load(dir: &Path, sink: &str) -> std::io::Result<SinkState> {
        match std::fs::read(Self::path(dir, sink)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SinkState::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, dir: &Path, sink: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let path = Self::path(dir, sink);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// How far ahead of what it has handed out a feeder reserves, so that it persists its
/// dispatch mark once per window rather than once per record.
pub const DISPATCH_WINDOW: u64 = 16_384;

/// The highest spool ordinal a sink's feeder may have handed out for one input, persisted
/// *before* records beyond it are handed out. After a crash, every record between the
/// watermark and this mark may reach the sink a second time, so it bounds (from above) what
/// is counted as redelivered.
///
/// The next reservation is saved in the background half a window ahead of need, so a feeder
/// that keeps up never waits for the fsync (which can take hundreds of milliseconds on a busy
/// disk).
pub struct DispatchMark {
    path: PathBuf,
    /// Records up to this ordinal may have been handed out.
    pub reserved: u64,
    saving: Option<(u64, tokio::task::JoinHandle<std::io::Result<()>>)>,
}

impl DispatchMark {
    /// Loads the mark of `sink` for `input` (0 when none was saved).
    pub fn load(dir: &Path, sink: &str, input: &str) -> DispatchMark {
        let path = dir.join(format!("{sink}.{input}.dispatched"));
        let reserved = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        DispatchMark { path, reserved, saving: None }
    }

    /// Makes sure `ordinal` is covered by a saved reservation; waits only when the background
    /// save has not finished yet. An error leaves the mark as it was (the caller retries).
    pub async fn cover(&mut self, ordinal: u64) -> std::io::Result<()> {
        loop {
            if self.saving.as_ref().is_some_and(|(_, h)| h.is_finished()) {
                self.finish_save().await?;
            }
            if ordinal + DISPATCH_WINDOW / 2 <= self.reserved {
                return Ok(());
            }
            if self.saving.is_none() {
                let target = ordinal + DISPATCH_WINDOW;
                let path = self.path.clone();
                self.saving = Some((target, tokio::task::spawn_blocking(move || save_reservation(&path, target))));
            }
            if ordinal <= self.reserved {
                return Ok(());
            }
            self.finish_save().await?;
        }
    }

    async fn finish_save(&mut self) -> std::io::Result<()> {
        let Some((target, handle)) = self.saving.take() else { return Ok(()) };
        handle.await.map_err(std::io::Error::other)??;
        self.reserved = self.reserved.max(target);
        Ok(())
    }
}

/// Writes a reservation atomically: temporary file, fsync, rename.
fn save_reservation(path: &Path, value: u64) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("dispatched.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(value.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Turns out-of-order acknowledgements into a contiguous watermark.
///
/// Besides acknowledgements, ordinals that no acknowledgement can ever come for are marked
/// done: those a read skipped (damaged records; a spool may have ordinal gaps, see
/// [`Watermark::mark`]) and those `max_age` deleted ([`Watermark::skip_to`]).
#[derive(Debug, Default)]
pub struct Watermark {
    /// Everything ≤ this is done.
    pub done: u64,
    /// Done but not contiguous with `done`: disjoint, non-adjacent ranges, first → last.
    pending: BTreeMap<u64, u64>,
}

impl Watermark {
    /// Starts at `done`.
    pub fn new(done: u64) -> Watermark {
        Watermark { done, pending: BTreeMap::new() }
    }

    /// Marks one ordinal done; returns true if the watermark moved.
    pub fn ack(&mut self, ordinal: u64) -> bool {
        self.mark(ordinal, ordinal)
    }

    /// Marks `first..=last` done (acknowledged, or skipped by a read because the records are
    /// unreadable); returns true if the watermark moved.
    pub fn mark(&mut self, first: u64, last: u64) -> bool {
        if last <= self.done || first > last {
            return false;
        }
        let first = first.max(self.done + 1);
        if first == self.done + 1 {
            // The common case (acks in order) never touches the map.
            self.done = last;
            self.absorb();
            return true;
        }
        self.insert(first, last);
        false
    }

    /// Moves the watermark to at least `ordinal` without acknowledgements: everything up to it
    /// is gone from the spool (expired by `max_age`), so no ack for it can be waited for.
    /// Returns true if the watermark moved.
    pub fn skip_to(&mut self, ordinal: u64) -> bool {
        if ordinal <= self.done {
            return false;
        }
        self.done = ordinal;
        self.absorb();
        true
    }

    /// Acknowledged (or skipped) ordinals not yet contiguous with the watermark.
    pub fn pending(&self) -> usize {
        self.pending.iter().map(|(first, last)| last - first + 1).sum::<u64>() as usize
    }

    /// Takes pending ranges that now touch or lie below the watermark.
    fn absorb(&mut self) {
        while let Some((&first, &last)) = self.pending.first_key_value() {
            if first > self.done + 1 {
                break;
            }
            self.pending.pop_first();
            self.done = self.done.max(last);
        }
    }

    /// Adds a range above `done + 1`, merged with the ranges it overlaps or touches.
    fn insert(&mut self, mut first: u64, mut last: u64) {
        if let Some((&f, &l)) = self.pending.range(..=first).next_back()
            && l.saturating_add(1) >= first
        {
            first = f;
            last = last.max(l);
            self.pending.remove(&f);
        }
        while let Some((&f, &l)) = self.pending.range(first..).next() {
            if f > last.saturating_add(1) {
                break;
            }
            last = last.max(l);
            self.pending.remove(&f);
        }
        self.pending.insert(first, last);
    }
}

/// The ordinals a read from `from` passed over without returning them, as ranges in order:
/// `ordinals` are those the read returned (ascending), `after` the next ordinal it says to
/// read. A store skips records it cannot read (damaged), so its reads may jump.
pub fn skipped_by_read(from: u64, ordinals: impl IntoIterator<Item = u64>, after: u64) -> Vec<(u64, u64)> {
    let mut expect = from;
    let mut out = Vec::new();
    for o in ordinals {
        if o > expect {
            out.push((expect, o - 1));
        }
        expect = expect.max(o + 1);
    }
    if after > expect {
        out.push((expect, after - 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dispatch_mark_is_saved_ahead_of_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = DispatchMark::load(dir.path(), "out", "feed");
        assert_eq!(m.reserved, 0);
        m.cover(5).await.expect("cover");
        assert_eq!(m.reserved, 5 + DISPATCH_WINDOW, "nothing was reserved: the first record waits");
        m.cover(6).await.expect("cover");
        assert_eq!(DispatchMark::load(dir.path(), "out", "feed").reserved, 5 + DISPATCH_WINDOW);
        // Half a window before the end, the next reservation is saved in the background.
        let half = 5 + DISPATCH_WINDOW / 2 + 1;
        m.cover(half).await.expect("cover");
        assert!(half <= m.reserved);
        m.cover(5 + DISPATCH_WINDOW + 1).await.expect("cover");
        assert_eq!(m.reserved, half + DISPATCH_WINDOW, "the background reservation covers it");
        assert!(DispatchMark::load(dir.path(), "out", "feed").reserved > 5 + DISPATCH_WINDOW);
    }

    #[test]
    fn watermark_only_moves_over_contiguous_acks() {
        let mut w = Watermark::new(10);
        assert!(!w.ack(12));
        assert!(!w.ack(9));
        assert_eq!(w.done, 10);
        assert!(w.ack(11));
        assert_eq!(w.done, 12);
        assert_eq!(w.pending(), 0);
        assert!(!w.ack(15));
        assert!(!w.ack(14));
        assert!(w.ack(13));
        assert_eq!((w.done, w.pending()), (15, 0));
        assert!(w.ack(16));
        assert!(!w.ack(16));
        assert_eq!(w.done, 16);
    }

    #[test]
    fn the_watermark_moves_over_a_gap_a_read_skipped() {
        // Records 41, 42 and 50.. are read; 43..=49 are damaged and were skipped by the read.
        let got = [41, 42, 50, 51];
        let skipped = skipped_by_read(41, got, 52);
        assert_eq!(skipped, vec![(43, 49)]);
        let mut w = Watermark::new(40);
        assert!(w.ack(41));
        assert!(!w.ack(50), "acks after the gap wait");
        assert!(!w.ack(51));
        assert_eq!((w.done, w.pending()), (41, 2));
        assert!(w.ack(42));
        assert_eq!(w.done, 42, "nothing was ever coming for 43..=49 unless told");
        for (first, last) in skipped {
            assert!(w.mark(first, last));
        }
        assert_eq!((w.done, w.pending()), (51, 0), "the gap and the acks after it are done");
        // The skip may also arrive first, and acks out of order around several gaps.
        let mut w = Watermark::new(0);
        assert!(!w.mark(3, 4));
        assert!(!w.mark(8, 9));
        assert!(!w.ack(6));
        assert!(!w.ack(5));
        assert_eq!(w.pending(), 6);
        assert!(!w.mark(4, 4), "already pending");
        assert!(w.ack(1));
        assert_eq!(w.done, 1);
        assert!(w.ack(2));
        assert_eq!((w.done, w.pending()), (6, 2));
        assert!(w.ack(7));
        assert_eq!((w.done, w.pending()), (9, 0));
        // A read that returned nothing but moved on, and a read that ended in a gap.
        assert_eq!(skipped_by_read(10, [], 15), vec![(10, 14)]);
        assert_eq!(skipped_by_read(10, [10, 11], 20), vec![(12, 19)]);
        assert_eq!(skipped_by_read(10, [10, 11], 12), vec![]);
        assert_eq!(skipped_by_read(10, [], 10), vec![]);
    }

    #[test]
    fn skip_to_passes_expired_ordinals_and_absorbs_later_acks() {
        let mut w = Watermark::new(3);
        assert!(!w.ack(8));
        assert!(!w.ack(10));
        assert!(w.skip_to(7), "4..=7 expired");
        assert_eq!((w.done, w.pending()), (8, 1), "8 was acknowledged already");
        assert!(!w.skip_to(5));
        assert!(w.ack(9));
        assert_eq!((w.done, w.pending()), (10, 0));
    }

    #[test]
    fn keys_carry_received_time_and_cursor_and_old_bare_cursors_still_read() {
        let rc = |k: &str| {
            let k = decode_key(k);
            assert_eq!(k.origin, None);
            (k.received_ms, k.cursor.map(str::to_owned))
        };
        let s = |c: &str| Some(c.to_owned());
        assert_eq!(rc(&encode_key(1_700_000_000_123, Some("42"), None)), (Some(1_700_000_000_123), s("42")));
        assert_eq!(rc(&encode_key(5, None, None)), (Some(5), None));
        assert_eq!(rc(&encode_key(0, Some("7"), None)), (None, s("7")), "0: not recorded");
        assert_eq!(rc(&encode_key(9, Some("a\0b"), None)), (Some(9), s("a\0b")));
        // Keys of earlier versions: the cursor alone (or nothing).
        assert_eq!(rc("1234"), (None, s("1234")));
        assert_eq!(rc(""), (None, None));
        assert_eq!(rc("evt-9:x"), (None, s("evt-9:x")));
        assert_eq!(rc("\0x\0y"), (None, s("\0x\0y")), "not our shape: a bare cursor");
    }

    #[test]
    fn keys_carry_a_records_origin_whatever_its_strings_hold() {
        let origin = Origin {
            stream: "orders".into(),
            stream_arn: Some("arn:aws:kinesis:us-east-1:000000000000:stream/orders".into()),
            shard_id: "shardId-000000000003".into(),
            sequence_number: "49650000000000000000000000000000000000000000000000000003".into(),
            sub_sequence_number: 4,
            aggregated: true,
            partition_key: "key\0with\u{1}nul and \"quotes\" ü".into(),
            explicit_hash_key: None,
            arrival_ms: 1_700_000_000_456,
        };
        let key = encode_key(1_700_000_000_500, Some("shardId-000000000003:4965:4\0x"), Some(&origin));
        let k = decode_key(&key);
        assert_eq!(k.received_ms, Some(1_700_000_000_500));
        assert_eq!(k.cursor, Some("shardId-000000000003:4965:4\0x"));
        assert_eq!(k.origin.as_ref(), Some(&origin));
        // A damaged origin costs the metadata, not the record or its cursor.
        let k = decode_key("\u{1}12\u{0}5\u{0}x:abcc-9");
        assert_eq!((k.received_ms, k.cursor, k.origin), (Some(12), Some("c-9"), None));
    }

    /// A spool written by the previous version (cursor alone in the key, 24 h retention in its
    /// catalog) still resumes its source and feeds sinks; new events carry their received time.
    #[test]
    fn spools_of_the_previous_version_still_resume_and_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        {
            let store = Store::open(StoreConfig::new(dir.path())).expect("open");
            store
                .mutate_catalog(|cat| {
                    let mut meta = StreamMeta::new("feed".into(), TAG, 1, vec![sluice_core::HashKeyRange::FULL]);
                    meta.retention_hours = 24;
                    cat.streams.insert("feed".into(), meta);
                    Ok::<(), StorageError>(())
                })
                .expect("create");
            let old: Vec<AppendRecord> = (1..=3)
                .map(|i| AppendRecord { shard: 0, partition_key: format!("{i}"), data: Bytes::from(format!("old{i}")) })
                .collect();
            rt.block_on(store.append("feed", TAG, old)).expect("append");
            store.shutdown();
        }
        let spool = Spool::open(dir.path(), &SpoolOptions::default(), &["feed".to_owned()]).expect("open");
        assert_eq!(spool.last_cursor("feed").expect("cursor").as_deref(), Some("3"), "the source resumes after 3");
        let (old, next) = spool.read("feed", 1, 10).expect("read");
        assert_eq!(next, 4);
        assert!(old.iter().all(|e| e.received_ms == e.arrival_ms && e.received_ms > 0), "{old:?}");
        let received = old[2].received_ms + 5;
        let e = Event { payload: Bytes::from("new4"), cursor: Some("4".into()), received_ms: received, origin: None };
        assert_eq!(rt.block_on(spool.append("feed", &[e])).expect("append"), 4);
        assert_eq!(spool.read("feed", 4, 1).expect("read").0[0].received_ms, received, "from memory");
        spool.shutdown();
        drop(spool);
        let spool = Spool::open(dir.path(), &SpoolOptions::default(), &["feed".to_owned()]).expect("reopen");
        let (all, _) = spool.read("feed", 1, 10).expect("read");
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].received_ms, received, "from disk");
        assert_eq!(spool.last_cursor("feed").expect("cursor").as_deref(), Some("4"));
        let history = SpoolHistory::new(spool.clone(), "feed".into());
        assert_eq!(
            history.recent(2, 0),
            vec![(all[2].received_ms, Bytes::from("old3")), (received, Bytes::from("new4"))]
        );
        assert_eq!(history.recent(10, received), vec![(received, Bytes::from("new4"))]);
        spool.shutdown();
    }

    #[test]
    fn recent_reads_the_newest_events_from_memory_or_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let opts = SpoolOptions { segment_bytes: 2048, ..SpoolOptions::default() };
        let spool = Spool::open(dir.path(), &opts, &["feed".to_owned()]).expect("open");
        let ev = |i: u64| Event {
            payload: Bytes::from(format!("{i:0>100}")),
            cursor: Some(i.to_string()),
            received_ms: i,
            origin: None,
        };
        rt.block_on(spool.append("feed", &(1..=100).map(ev).collect::<Vec<_>>())).expect("append");
        let got = spool.recent("feed", 5, 0).expect("recent");
        assert_eq!(got.iter().map(|e| e.received_ms).collect::<Vec<_>>(), vec![96, 97, 98, 99, 100]);
        assert_eq!(spool.recent("feed", 50, 98).expect("recent").len(), 3, "only those received since 98");
        spool.shutdown();
        drop(spool);
        let spool = Spool::open(dir.path(), &opts, &["feed".to_owned()]).expect("reopen");
        // After a restart the memory tail is empty: the same answer comes from disk.
        let got = spool.recent("feed", 5, 0).expect("recent");
        assert_eq!(got.iter().map(|e| e.received_ms).collect::<Vec<_>>(), vec![96, 97, 98, 99, 100]);
        // Trimming below 60 keeps every segment holding 60 or later, and the newest.
        let t = spool.trim_below("feed", 60).expect("trim");
        assert!(t.segments > 0 && t.first_ordinal <= 60, "{t:?}");
        assert_eq!(spool.first_ordinal("feed").expect("first"), t.first_ordinal);
        assert_eq!(spool.recent("feed", 1000, 0).expect("recent").len() as u64, 101 - t.first_ordinal);
        spool.shutdown();
    }

    #[test]
    fn spool_round_trip_and_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let spool = Spool::open(dir.path(), &SpoolOptions::default(), &["feed".to_owned()]).expect("open");
        // The second event came from a stream: its origin is kept, in memory and on disk.
        let origin = |i: u64| {
            (i == 2).then(|| {
                Arc::new(Origin {
                    stream: "s".into(),
                    stream_arn: None,
                    shard_id: "shardId-000000000000".into(),
                    sequence_number: "77".into(),
                    sub_sequence_number: 1,
                    aggregated: true,
                    partition_key: "pk".into(),
                    explicit_hash_key: Some("12".into()),
                    arrival_ms: 5,
                })
            })
        };
        let events: Vec<Event> = (1..=3)
            .map(|i| Event {
                payload: bytes::Bytes::from(format!("e{i}")),
                cursor: Some(i.to_string()),
                received_ms: 0,
                origin: origin(i),
            })
            .collect();
        assert_eq!(rt.block_on(spool.append("feed", &events)).expect("append"), 3);
        let (records, _) = spool.read("feed", 1, 10).expect("read");
        assert_eq!(records.iter().map(|r| r.origin.clone()).collect::<Vec<_>>(), vec![None, origin(2), None]);
        assert_eq!(spool.last_cursor("feed").expect("cursor").as_deref(), Some("3"));
        let (records, next) = spool.read("feed", 2, 10).expect("read");
        assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), vec![&b"e2"[..], &b"e3"[..]]);
        assert_eq!(next, 4);
        spool.shutdown();
        drop(spool);
        let again = Spool::open(dir.path(), &SpoolOptions::default(), &["feed".to_owned()]).expect("reopen");
        assert_eq!(again.last_cursor("feed").expect("cursor").as_deref(), Some("3"));
        assert_eq!(again.next_ordinal("feed").expect("next"), 4);
        let (records, _) = again.read("feed", 1, 10).expect("read from disk");
        assert_eq!(records.iter().map(|r| r.origin.clone()).collect::<Vec<_>>(), vec![None, origin(2), None]);
    }

    #[test]
    fn the_tail_keeps_the_newest_contiguous_events() {
        let ev = |o: u64| Kept {
            arrival_ms: o * 10,
            received_ms: o * 10 - 1,
            payload: Bytes::from(format!("e{o}")),
            origin: None,
        };
        let mut t = Tail::default();
        t.push(5, &[ev(5), ev(6), ev(7)]);
        assert_eq!(t.read(4, 10), None, "before the tail: read from disk");
        assert_eq!(t.read(8, 10), None, "past the tail: ask the store");
        let got = t.read(6, 10).expect("kept");
        assert_eq!(got.iter().map(|e| e.ordinal).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!(
            got[0],
            Spooled { ordinal: 6, arrival_ms: 60, received_ms: 59, payload: Bytes::from("e6"), origin: None }
        );
        assert_eq!(t.read(5, 1).expect("kept").len(), 1);
        t.push(9, &[ev(9)]);
        assert_eq!(t.read(7, 10), None, "a gap resets the tail");
        assert_eq!(t.read(9, 10).expect("kept")[0].ordinal, 9);
        let many: Vec<Kept> = (10..10 + TAIL_RECORDS as u64 + 5).map(ev).collect();
        t.push(10, &many);
        assert_eq!(t.events.len(), TAIL_RECORDS);
        assert_eq!(t.first, 15, "the oldest were dropped");
        assert_eq!(t.read(14, 1), None);
    }

    #[test]
    fn sink_state_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = SinkState::default();
        s.watermarks.insert("feed".into(), 42);
        s.save(dir.path(), "out").expect("save");
        assert_eq!(SinkState::load(dir.path(), "out").expect("load"), s);
        assert_eq!(SinkState::load(dir.path(), "other").expect("load"), SinkState::default());
    }
}
