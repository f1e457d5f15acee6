//! The spool: every source's events on disk, in arrival order, before any sink sees them.
//!
//! It is the storage engine of the embedded stream used as a local log: one single-shard
//! stream per source under `data_dir/spool`, appended with group commit (fsync by default),
//! each record carrying the event's payload and, in the key field, the source cursor after it.
//! So a source resumes from the cursor of the last spooled event, a slow or failing sink never
//! holds up the provider's connection, and each sink reads at its own pace from its own
//! watermark (kept in `data_dir/state/<sink>.json`, advanced only over acknowledged records).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_flow::Event;
use sluice_storage::{AppendRecord, Durability, StorageError, Store, StoreConfig, StoredRecord, StreamMeta};

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
    /// The event's payload.
    pub payload: Bytes,
}

/// Most events and bytes each source's in-memory tail keeps.
const TAIL_RECORDS: usize = 65_536;
const TAIL_BYTES: usize = 32 * 1024 * 1024;

/// The newest durable events of one source, kept in memory so that feeders that keep up hand
/// them on without reading them back from disk. Only durable events enter it.
#[derive(Default)]
struct Tail {
    /// Ordinal of `events[0]`.
    first: u64,
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, first_ordinal: u64, events: &[(u64, Bytes)]) {
        if self.first + self.events.len() as u64 != first_ordinal {
            // Not contiguous with what is kept (the first append, or after a restart).
            self.events.clear();
            self.bytes = 0;
            self.first = first_ordinal;
        }
        for e in events {
            self.bytes += e.1.len();
            self.events.push_back(e.clone());
        }
        while self.events.len() > TAIL_RECORDS || self.bytes > TAIL_BYTES {
            let Some((_, old)) = self.events.pop_front() else { break };
            self.bytes -= old.len();
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
                .map(|((arrival_ms, payload), ordinal)| Spooled {
                    ordinal,
                    arrival_ms: *arrival_ms,
                    payload: payload.clone(),
                })
                .collect(),
        )
    }
}

/// The tag every spool stream uses (spool streams are never re-created under the same name).
const TAG: u32 = 1;

impl Spool {
    /// Opens (or creates) the spools under `dir`, one stream per source name.
    pub fn open(
        dir: &Path,
        durability: Durability,
        retention_hours: u32,
        sources: &[String],
    ) -> Result<Spool, StorageError> {
        let mut cfg = StoreConfig::new(dir.to_path_buf());
        cfg.durability = durability;
        let store = Store::open(cfg)?;
        let now = sluice_flow::now_ms();
        store.mutate_catalog(|cat| {
            for name in sources {
                let entry = cat.streams.entry(name.clone()).or_insert_with(|| {
                    let mut meta = StreamMeta::new(name.clone(), TAG, now, vec![sluice_core::HashKeyRange::FULL]);
                    meta.max_record_size_kib = 65536;
                    meta
                });
                entry.retention_hours = retention_hours;
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
    pub async fn append(&self, source: &str, events: Vec<Event>) -> Result<u64, StorageError> {
        let payloads: Vec<Bytes> = events.iter().map(|e| e.payload.clone()).collect();
        let records = events
            .into_iter()
            .map(|e| AppendRecord { shard: 0, partition_key: e.cursor.unwrap_or_default(), data: e.payload })
            .collect();
        let done = self.store.append(source, TAG, records).await?;
        if let (Some(first), Some(tail)) = (done.first(), self.tails.get(source)) {
            let kept: Vec<(u64, Bytes)> = done.iter().map(|a| a.arrival_ms).zip(payloads).collect();
            tail.lock().unwrap_or_else(|p| p.into_inner()).push(first.ordinal, &kept);
        }
        let last = done.last().map_or(0, |a| a.ordinal);
        if let Some(signal) = self.spooled.get(source) {
            signal.send_replace(last);
        }
        Ok(last)
    }

    /// Up to `max` events from `from` (an ordinal; 1 is the first ever), and the ordinal after
    /// the last one returned. Recent events come from memory, older ones from disk.
    pub fn read(&self, source: &str, from: u64, max: usize) -> Result<(Vec<Spooled>, u64), StorageError> {
        if let Some(tail) = self.tails.get(source)
            && let Some(events) = tail.lock().unwrap_or_else(|p| p.into_inner()).read(from, max)
        {
            let next = events.last().map_or(from, |e| e.ordinal + 1);
            return Ok((events, next));
        }
        let (records, next) = self.read_stored(source, from, max)?;
        let events = records
            .into_iter()
            .map(|r| Spooled { ordinal: r.ordinal, arrival_ms: r.arrival_ms, payload: Bytes::from(r.data) })
            .collect();
        Ok((events, next))
    }

    fn read_stored(&self, source: &str, from: u64, max: usize) -> Result<(Vec<StoredRecord>, u64), StorageError> {
        let batch = self.store.read(source, TAG, 0, from, max, 4 * 1024 * 1024)?;
        Ok((batch.records, batch.next_ordinal))
    }

    /// One past the last spooled ordinal.
    pub fn next_ordinal(&self, source: &str) -> Result<u64, StorageError> {
        Ok(self.store.shard_position(source, TAG, 0)?.next_ordinal)
    }

    /// The cursor stored with the newest spooled event, if any.
    pub fn last_cursor(&self, source: &str) -> Result<Option<String>, StorageError> {
        let pos = self.store.shard_position(source, TAG, 0)?;
        if pos.next_ordinal <= pos.first_ordinal {
            return Ok(None);
        }
        let (records, _) = self.read_stored(source, pos.next_ordinal - 1, 1)?;
        Ok(records.into_iter().next().map(|r| r.partition_key).filter(|c| !c.is_empty()))
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
#[derive(Debug, Default)]
pub struct Watermark {
    /// Everything ≤ this is done.
    pub done: u64,
    pending: BTreeSet<u64>,
}

impl Watermark {
    /// Starts at `done`.
    pub fn new(done: u64) -> Watermark {
        Watermark { done, pending: BTreeSet::new() }
    }

    /// Marks one ordinal done; returns true if the watermark moved.
    pub fn ack(&mut self, ordinal: u64) -> bool {
        if ordinal <= self.done {
            return false;
        }
        if ordinal != self.done + 1 {
            self.pending.insert(ordinal);
            return false;
        }
        // The common case (acks in order) never touches the set.
        self.done = ordinal;
        while self.pending.first() == Some(&(self.done + 1)) {
            self.pending.pop_first();
            self.done += 1;
        }
        true
    }

    /// Acknowledged but not yet contiguous.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
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
    fn spool_round_trip_and_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let spool = Spool::open(dir.path(), Durability::Fsync, 24, &["feed".to_owned()]).expect("open");
        let events = (1..=3)
            .map(|i| Event {
                payload: bytes::Bytes::from(format!("e{i}")),
                cursor: Some(i.to_string()),
                received_ms: 0,
            })
            .collect();
        assert_eq!(rt.block_on(spool.append("feed", events)).expect("append"), 3);
        assert_eq!(spool.last_cursor("feed").expect("cursor").as_deref(), Some("3"));
        let (records, next) = spool.read("feed", 2, 10).expect("read");
        assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), vec![&b"e2"[..], &b"e3"[..]]);
        assert_eq!(next, 4);
        spool.shutdown();
        drop(spool);
        let again = Spool::open(dir.path(), Durability::Fsync, 24, &["feed".to_owned()]).expect("reopen");
        assert_eq!(again.last_cursor("feed").expect("cursor").as_deref(), Some("3"));
        assert_eq!(again.next_ordinal("feed").expect("next"), 4);
    }

    #[test]
    fn the_tail_keeps_the_newest_contiguous_events() {
        let ev = |o: u64| (o * 10, Bytes::from(format!("e{o}")));
        let mut t = Tail::default();
        t.push(5, &[ev(5), ev(6), ev(7)]);
        assert_eq!(t.read(4, 10), None, "before the tail: read from disk");
        assert_eq!(t.read(8, 10), None, "past the tail: ask the store");
        let got = t.read(6, 10).expect("kept");
        assert_eq!(got.iter().map(|e| e.ordinal).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!(got[0], Spooled { ordinal: 6, arrival_ms: 60, payload: Bytes::from("e6") });
        assert_eq!(t.read(5, 1).expect("kept").len(), 1);
        t.push(9, &[ev(9)]);
        assert_eq!(t.read(7, 10), None, "a gap resets the tail");
        assert_eq!(t.read(9, 10).expect("kept")[0].ordinal, 9);
        let many: Vec<(u64, Bytes)> = (10..10 + TAIL_RECORDS as u64 + 5).map(ev).collect();
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
