//! One shard's append-only log: a directory of segments, the reader-visible state (segment list
//! with a sparse index, committed lengths, the tip), and the writer-only state used by the group
//! commit thread.
//!
//! Visibility protocol: the writer writes frames past a segment's committed length, makes them
//! durable, then takes the state's write lock just long enough to extend the committed lengths,
//! index and tip. Readers take the read lock only to snapshot a position (file handle, offset,
//! committed end, tip) and then `pread` without any lock, so they never wait for a write or an
//! fsync, and never see uncommitted bytes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::commit::SyncJob;
use crate::error::{StorageError, at};
use crate::segment::{
    self, FrameRef, INDEX_EVERY_BYTES, INDEX_EVERY_RECORDS, IndexCursor, IndexEntry, SEGMENT_HEADER_LEN,
    SegmentSummary, encode_frame, frame_len, segment_file_name, segment_header, sidecar_path,
};
use crate::sync::{read, write};
use crate::{AppendRecord, Appended, Durability, ReadBatch, ShardPosition, StoredRecord, Trimmed};

/// A committed, reader-visible segment (always holds at least one record).
#[derive(Debug)]
pub(crate) struct Segment {
    pub first_ordinal: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    /// Committed length in bytes.
    pub len: u64,
    pub last_ordinal: u64,
    pub last_offset: u64,
    pub last_arrival: u64,
    /// Sparse index; `index[0]` is the first record.
    pub index: Vec<IndexEntry>,
}

/// Reader-visible state of a shard.
#[derive(Debug)]
pub(crate) struct ShardState {
    pub segments: VecDeque<Segment>,
    /// One past the last committed ordinal.
    pub next_ordinal: u64,
    pub last_arrival: Option<u64>,
}

/// Where a read starts: a frame boundary at or before the wanted ordinal.
struct Loc {
    path: Arc<Path>,
    file: Arc<File>,
    offset: u64,
    end: u64,
    /// Ordinal of the frame at `offset`.
    ordinal: u64,
    /// Average frame size in the segment, for sizing reads.
    avg_frame: u64,
}

impl Segment {
    fn avg_frame(&self) -> u64 {
        let records = self.last_ordinal + 1 - self.first_ordinal;
        (self.len.saturating_sub(SEGMENT_HEADER_LEN) / records.max(1)).max(1)
    }
}

impl ShardState {
    fn position(&self, closed: bool) -> ShardPosition {
        ShardPosition {
            first_ordinal: self.segments.front().map_or(self.next_ordinal, |s| s.first_ordinal),
            next_ordinal: self.next_ordinal,
            last_arrival_ms: self.last_arrival,
            closed,
        }
    }

    /// The segment and index entry to start scanning from for `ordinal` (which must be retained
    /// and committed).
    fn locate(&self, ordinal: u64) -> Option<Loc> {
        let si = self.segments.partition_point(|s| s.first_ordinal <= ordinal).checked_sub(1)?;
        let seg = &self.segments[si];
        if ordinal > seg.last_ordinal {
            return None;
        }
        let ei = seg.index.partition_point(|e| e.ordinal <= ordinal).checked_sub(1)?;
        let e = seg.index[ei];
        Some(Loc {
            path: seg.path.clone(),
            file: seg.file.clone(),
            offset: e.offset,
            end: seg.len,
            ordinal: e.ordinal,
            avg_frame: seg.avg_frame(),
        })
    }
}

/// One shard's log.
pub(crate) struct ShardLog {
    pub index: u32,
    pub dir: PathBuf,
    /// Set (under the commit gate) once the shard takes no more appends.
    pub closed: AtomicBool,
    state: RwLock<ShardState>,
    /// Only the commit thread locks this (plus recovery/creation before it is shared).
    pub writer: Mutex<WriterShard>,
    watch_tx: watch::Sender<u64>,
}

impl std::fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLog").field("index", &self.index).field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A recovered shard log and how many bytes recovery discarded.
pub(crate) struct Recovered {
    pub log: ShardLog,
    pub truncated_bytes: u64,
}

fn remove_segment_files(path: &Path) -> u64 {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove segment");
    }
    let _ = std::fs::remove_file(sidecar_path(path));
    len
}

/// fsyncs a directory (so created/renamed/removed entries are durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

impl ShardLog {
    /// Opens (creating if needed) and recovers the shard log in `dir`.
    ///
    /// Every segment without a trustworthy sidecar (always the last one) is scanned and
    /// verified; a torn or corrupt tail is truncated; segments that do not continue the ordinal
    /// sequence of their predecessor are unacknowledged leftovers of an interrupted group and are
    /// deleted (or, if the predecessor was durably sealed, the predecessors are retention
    /// leftovers and those are deleted).
    pub(crate) fn open(dir: PathBuf, index: u32, closed: bool) -> Result<Recovered, StorageError> {
        std::fs::create_dir_all(&dir).map_err(at(&dir))?;
        let mut segs: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(stem) = name.strip_suffix(".seg")
                && stem.len() == 20
                && let Ok(n) = stem.parse::<u64>()
                && n > 0
            {
                segs.push(n);
            }
        }
        segs.sort_unstable();

        struct Kept {
            first: u64,
            path: Arc<Path>,
            file: Arc<File>,
            summary: SegmentSummary,
            from_sidecar: bool,
        }
        let mut kept: Vec<Kept> = Vec::new();
        let mut truncated = 0u64;
        let n = segs.len();
        for (i, &first) in segs.iter().enumerate() {
            let path: Arc<Path> = dir.join(segment_file_name(first)).into();
            if let Some(prev) = kept.last() {
                let expected = prev.summary.last_ordinal + 1;
                let expected = if prev.summary.records == 0 { prev.first } else { expected };
                if first != expected {
                    if first > expected && prev.from_sidecar {
                        tracing::warn!(dir = %dir.display(), first, expected,
                            "gap after a sealed segment: dropping older segments left over from retention");
                        for k in kept.drain(..) {
                            remove_segment_files(&k.path);
                        }
                    } else {
                        let mut bytes = 0;
                        for &later in &segs[i..] {
                            bytes += remove_segment_files(&dir.join(segment_file_name(later)));
                        }
                        tracing::warn!(dir = %dir.display(), first, expected, bytes,
                            "segments not continuing the log were discarded (unacknowledged writes)");
                        truncated += bytes;
                        break;
                    }
                }
            }
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(at(&path))?;
            let is_last = i + 1 == n;
            let sidecar = if is_last { None } else { segment::read_sidecar(&path, &file, first) };
            let from_sidecar = sidecar.is_some();
            let summary = match sidecar {
                Some(s) => s,
                None => {
                    let s = segment::scan_segment(&file, &path, first)?;
                    let file_len = file.metadata().map_err(at(&path))?.len();
                    if s.valid_len < file_len {
                        let cut = file_len - s.valid_len;
                        tracing::warn!(path = %path.display(), valid = s.valid_len, bytes = cut,
                            reason = s.stop_reason.as_deref().unwrap_or(""), "truncating torn or corrupt segment tail");
                        file.set_len(s.valid_len).map_err(at(&path))?;
                        file.sync_all().map_err(at(&path))?;
                        truncated += cut;
                    }
                    s
                }
            };
            kept.push(Kept { first, path, file: Arc::new(file), summary, from_sidecar });
        }

        // Seal what recovery scanned and is not last, so the next startup can skip it.
        let last_idx = kept.len().checked_sub(1);
        for (i, k) in kept.iter().enumerate() {
            if Some(i) != last_idx && !k.from_sidecar && k.summary.records > 0 {
                let s = &k.summary;
                let r = k.file.sync_all().map_err(at(&k.path)).and_then(|()| {
                    segment::write_sidecar(
                        &k.path,
                        k.first,
                        s.valid_len,
                        s.last_ordinal,
                        s.last_offset,
                        s.last_arrival,
                        &s.entries,
                    )
                });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "could not write segment sidecar");
                }
            }
        }

        let mut next_ordinal = 1;
        let mut segments = VecDeque::new();
        let mut active = None;
        let mut cursor = IndexCursor::fresh();
        for k in kept {
            let s = k.summary;
            next_ordinal = if s.records == 0 { k.first } else { s.last_ordinal + 1 };
            active = Some(ActiveSeg {
                first_ordinal: k.first,
                path: k.path.clone(),
                file: k.file.clone(),
                len: s.valid_len,
            });
            cursor = s.cursor;
            if s.records > 0 {
                segments.push_back(Segment {
                    first_ordinal: k.first,
                    path: k.path,
                    file: k.file,
                    len: s.valid_len,
                    last_ordinal: s.last_ordinal,
                    last_offset: s.last_offset,
                    last_arrival: s.last_arrival,
                    index: s.entries,
                });
            }
        }
        let last_arrival = segments.back().map(|s: &Segment| s.last_arrival);
        let writer = WriterShard {
            dir: dir.clone(),
            active,
            next_ordinal,
            last_arrival: last_arrival.unwrap_or(0),
            cursor,
            in_group: false,
            saved: None,
            buf: Vec::new(),
            plans: Vec::new(),
        };
        let (watch_tx, _) = watch::channel(next_ordinal);
        Ok(Recovered {
            log: ShardLog {
                index,
                dir,
                closed: AtomicBool::new(closed),
                state: RwLock::new(ShardState { segments, next_ordinal, last_arrival }),
                writer: Mutex::new(writer),
                watch_tx,
            },
            truncated_bytes: truncated,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the shard closed and wakes watchers (the value is unchanged; they re-check).
    pub(crate) fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::Release);
        self.watch_tx.send_modify(|_| {});
    }

    pub(crate) fn position(&self) -> ShardPosition {
        read(&self.state).position(self.is_closed())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.watch_tx.subscribe()
    }

    /// Reads committed records from `from` (see [`crate::Store::read`]).
    pub(crate) fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch, StorageError> {
        let (tip, from, mut loc) = {
            let st = read(&self.state);
            let tip = st.position(self.is_closed());
            let from = from.max(tip.first_ordinal);
            if from >= tip.next_ordinal || max_records == 0 {
                return Ok(ReadBatch { records: Vec::new(), next_ordinal: from, tip });
            }
            (tip, from, st.locate(from))
        };
        let available = tip.next_ordinal - from;
        let mut records: Vec<StoredRecord> = Vec::with_capacity((available as usize).min(max_records).min(4096));
        let mut next = from;
        let mut bytes = 0usize;
        // Reads grow from an estimate (records skipped after the index entry plus the records
        // wanted, at the segment's average frame size) up to a cap; one big frame still fits.
        let max_chunk =
            max_bytes.saturating_add(max_records.saturating_mul(48)).saturating_add(16 << 10).clamp(64 << 10, 4 << 20);
        let first_chunk = |l: &Loc, next: u64| -> usize {
            let skip = next.saturating_sub(l.ordinal).saturating_mul(l.avg_frame);
            let want = (max_records as u64)
                .min(tip.next_ordinal - next)
                .saturating_mul(l.avg_frame)
                .min((max_bytes as u64).saturating_add(2 * l.avg_frame));
            usize::try_from(skip.saturating_add(want).saturating_add(want / 8).saturating_add(4096))
                .unwrap_or(usize::MAX)
        };
        let mut full = false;
        while let Some(l) = loc.take() {
            let before = next;
            let mut bad_ordinal = None;
            segment::scan_frames(
                &l.file,
                &l.path,
                l.offset,
                l.end,
                first_chunk(&l, next),
                max_chunk,
                |f: &FrameRef<'_>| {
                    if f.ordinal < next {
                        return ControlFlow::Continue(());
                    }
                    if f.ordinal != next {
                        bad_ordinal = Some(f.ordinal);
                        return ControlFlow::Break(());
                    }
                    let size = f.pk.len() + f.data.len();
                    if !records.is_empty() && bytes + size > max_bytes {
                        full = true;
                        return ControlFlow::Break(());
                    }
                    records.push(StoredRecord {
                        ordinal: f.ordinal,
                        arrival_ms: f.arrival_ms,
                        partition_key: String::from_utf8_lossy(f.pk).into_owned(),
                        data: f.data.to_vec(),
                    });
                    bytes += size;
                    next += 1;
                    if records.len() >= max_records || next >= tip.next_ordinal {
                        full = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                },
            )?;
            if let Some(found) = bad_ordinal {
                return Err(StorageError::Corrupt(format!(
                    "{}: found ordinal {found} where {next} was expected",
                    l.path.display()
                )));
            }
            if full || next == before {
                break;
            }
            // Segment exhausted: continue in the next one (which may have been trimmed meanwhile).
            let st = read(&self.state);
            if let Some(front) = st.segments.front() {
                next = next.max(front.first_ordinal);
            }
            if next < tip.next_ordinal {
                loc = st.locate(next);
            }
        }
        Ok(ReadBatch { records, next_ordinal: next, tip })
    }

    /// See [`crate::Store::seek_timestamp`].
    pub(crate) fn seek_timestamp(&self, ts_ms: u64) -> Result<u64, StorageError> {
        let (l, limit, fallback) = {
            let st = read(&self.state);
            let Some(first) = st.segments.front() else { return Ok(st.next_ordinal) };
            if ts_ms <= first.index[0].arrival_ms {
                return Ok(first.first_ordinal);
            }
            if st.last_arrival.is_none_or(|a| ts_ms > a) {
                return Ok(st.next_ordinal);
            }
            // Last segment whose first record is older than ts, then its last entry older than ts.
            let si = st.segments.partition_point(|s| s.index[0].arrival_ms < ts_ms) - 1;
            let seg = &st.segments[si];
            let ei = seg.index.partition_point(|e| e.arrival_ms < ts_ms) - 1;
            // The answer is at most the next entry's ordinal, else the next segment's first.
            let fallback = match seg.index.get(ei + 1) {
                Some(e) => e.ordinal,
                None => st.segments.get(si + 1).map_or(st.next_ordinal, |s| s.first_ordinal),
            };
            let limit = seg.index.get(ei + 1).map_or(seg.len, |e| e.offset);
            let l = Loc {
                path: seg.path.clone(),
                file: seg.file.clone(),
                offset: seg.index[ei].offset,
                end: seg.len,
                ordinal: seg.index[ei].ordinal,
                avg_frame: seg.avg_frame(),
            };
            (l, limit, fallback)
        };
        let mut found = None;
        let first_chunk = (INDEX_EVERY_RECORDS as u64 + 1).saturating_mul(l.avg_frame).min(INDEX_EVERY_BYTES * 2);
        segment::scan_frames(&l.file, &l.path, l.offset, limit.min(l.end), first_chunk as usize, 1 << 20, |f| {
            if f.arrival_ms >= ts_ms {
                found = Some(f.ordinal);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found.unwrap_or(fallback))
    }

    /// Removes whole segments whose newest record is older than `cutoff_ms`, never the newest
    /// segment.
    pub(crate) fn trim(&self, cutoff_ms: u64) -> Trimmed {
        self.trim_front(|s| s.last_arrival < cutoff_ms)
    }

    /// Removes whole segments whose last ordinal is below `ordinal`, never the newest segment.
    pub(crate) fn trim_below(&self, ordinal: u64) -> Trimmed {
        self.trim_front(|s| s.last_ordinal < ordinal)
    }

    /// Removes the oldest segments while `expired` holds for them, keeping at least the newest
    /// (the one the writer appends to, or will roll from).
    fn trim_front(&self, expired: impl Fn(&Segment) -> bool) -> Trimmed {
        let (removed, first_ordinal) = {
            let mut st = write(&self.state);
            let mut out = Vec::new();
            while st.segments.len() > 1 && st.segments.front().is_some_and(&expired) {
                if let Some(s) = st.segments.pop_front() {
                    out.push(s);
                }
            }
            let first = st.position(false).first_ordinal;
            (out, first)
        };
        let records = removed.iter().map(|s| s.last_ordinal + 1 - s.first_ordinal).sum();
        let trimmed = Trimmed { segments: removed.len() as u64, records, first_ordinal };
        if removed.is_empty() {
            return trimmed;
        }
        // Readers that snapshotted one of these segments keep its open file handle, so a
        // read in progress still completes.
        for s in &removed {
            remove_segment_files(&s.path);
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "could not fsync shard directory after trimming");
        }
        tracing::debug!(dir = %self.dir.display(), segments = removed.len(), records, "trimmed segments");
        trimmed
    }

    /// Writes the sidecar for the sealed segment starting at `first_ordinal` (making the segment
    /// durable first under [`Durability::Os`]).
    pub(crate) fn seal(&self, first_ordinal: u64, durability: Durability) {
        let snapshot = {
            let st = read(&self.state);
            let i = st.segments.partition_point(|s| s.first_ordinal < first_ordinal);
            st.segments.get(i).filter(|s| s.first_ordinal == first_ordinal).map(|s| {
                (s.path.clone(), s.file.clone(), s.len, s.last_ordinal, s.last_offset, s.last_arrival, s.index.clone())
            })
        };
        let Some((path, file, len, last_ordinal, last_offset, last_arrival, index)) = snapshot else { return };
        let r =
            (if durability == Durability::Os { file.sync_data().map_err(at(&path)) } else { Ok(()) }).and_then(|()| {
                segment::write_sidecar(&path, first_ordinal, len, last_ordinal, last_offset, last_arrival, &index)
            });
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not write segment sidecar");
        }
    }
}

/// The segment the writer appends to.
#[derive(Debug, Clone)]
pub(crate) struct ActiveSeg {
    pub first_ordinal: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    /// Committed length (bytes durable / visible).
    pub len: u64,
}

/// What the writer does to one segment within one group.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The segment; `seg.len` is the offset where this plan's bytes go.
    seg: ActiveSeg,
    is_new: bool,
    /// Where this plan's bytes start in the shard's group buffer.
    buf_start: usize,
    entries: Vec<IndexEntry>,
    last_ordinal: u64,
    last_offset: u64,
    last_arrival: u64,
}

/// Committed writer fields, saved at the start of a group for rollback.
#[derive(Debug)]
struct Saved {
    active: Option<ActiveSeg>,
    next_ordinal: u64,
    last_arrival: u64,
    cursor: IndexCursor,
}

/// Writer-only state of a shard (owned by the commit thread).
#[derive(Debug)]
pub(crate) struct WriterShard {
    dir: PathBuf,
    active: Option<ActiveSeg>,
    next_ordinal: u64,
    last_arrival: u64,
    cursor: IndexCursor,
    /// Whether the shard is part of the current group.
    pub in_group: bool,
    saved: Option<Saved>,
    /// Frames of the current group, all segments back to back.
    buf: Vec<u8>,
    plans: Vec<Plan>,
}

impl WriterShard {
    /// Joins the current group (saves the committed state for rollback).
    pub(crate) fn begin_group(&mut self) {
        self.in_group = true;
        self.saved = Some(Saved {
            active: self.active.clone(),
            next_ordinal: self.next_ordinal,
            last_arrival: self.last_arrival,
            cursor: self.cursor,
        });
    }

    fn planned_len(&self, p: &Plan) -> u64 {
        p.seg.len + (self.buf.len() - p.buf_start) as u64
    }

    fn start_plan(&mut self, seg: ActiveSeg, is_new: bool) {
        let buf_start = self.buf.len();
        if seg.len == 0 {
            self.buf.extend_from_slice(&segment_header(seg.first_ordinal));
        }
        self.plans.push(Plan {
            seg,
            is_new,
            buf_start,
            entries: Vec::new(),
            last_ordinal: 0,
            last_offset: 0,
            last_arrival: 0,
        });
    }

    /// Encodes one record into the group buffer, rolling to a new segment when the current one
    /// has reached `segment_bytes`. Creates the new segment file, so it can fail.
    #[inline]
    pub(crate) fn append(
        &mut self,
        rec: &AppendRecord,
        now_ms: u64,
        segment_bytes: u64,
    ) -> Result<Appended, StorageError> {
        let current_len = match self.plans.last() {
            Some(p) => Some(self.planned_len(p)),
            None => self.active.as_ref().map(|a| a.len),
        };
        let roll = current_len.is_none_or(|len| len >= segment_bytes && len > SEGMENT_HEADER_LEN);
        if roll {
            let first = self.next_ordinal;
            let path: Arc<Path> = self.dir.join(segment_file_name(first)).into();
            let file =
                OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(at(&path))?;
            self.cursor = IndexCursor::fresh();
            self.start_plan(ActiveSeg { first_ordinal: first, path, file: Arc::new(file), len: 0 }, true);
        } else if self.plans.is_empty()
            && let Some(a) = self.active.clone()
        {
            self.start_plan(a, false);
        }
        let ordinal = self.next_ordinal;
        let arrival = now_ms.max(self.last_arrival);
        let buf_len = self.buf.len();
        let Some(plan) = self.plans.last_mut() else {
            return Err(StorageError::Corrupt("writer has no segment to append to".into()));
        };
        let offset = plan.seg.len + (buf_len - plan.buf_start) as u64;
        let pk = rec.partition_key.as_bytes();
        if self.cursor.observe(frame_len(pk.len(), rec.data.len())) {
            plan.entries.push(IndexEntry { ordinal, arrival_ms: arrival, offset });
        }
        plan.last_ordinal = ordinal;
        plan.last_offset = offset;
        plan.last_arrival = arrival;
        encode_frame(&mut self.buf, ordinal, arrival, pk, &rec.data);
        self.next_ordinal += 1;
        self.last_arrival = arrival;
        Ok(Appended { ordinal, arrival_ms: arrival })
    }

    fn plan_range(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.plans.get(i + 1).map_or(self.buf.len(), |p| p.buf_start);
        self.plans[i].buf_start..end
    }

    /// Writes the group's bytes: one positional write per touched segment.
    pub(crate) fn write_out(&self) -> Result<(), StorageError> {
        for (i, p) in self.plans.iter().enumerate() {
            let range = self.plan_range(i);
            #[cfg(test)]
            crate::faults::before_write(&p.seg.path)?;
            p.seg.file.write_all_at(&self.buf[range], p.seg.len).map_err(at(&p.seg.path))?;
            #[cfg(test)]
            crate::faults::after_write(&p.seg.path)?;
        }
        Ok(())
    }

    /// The fdatasyncs this group needs: every touched segment once, and the directory if a
    /// segment was created.
    pub(crate) fn sync_jobs(&self, out: &mut Vec<SyncJob>) -> Result<(), StorageError> {
        for p in &self.plans {
            out.push(SyncJob { file: p.seg.file.clone(), path: p.seg.path.clone() });
        }
        if self.plans.iter().any(|p| p.is_new) {
            let d = File::open(&self.dir).map_err(at(&self.dir))?;
            out.push(SyncJob { file: Arc::new(d), path: self.dir.as_path().into() });
        }
        Ok(())
    }

    /// Undoes the group: truncates the previously active segment back to its committed length,
    /// deletes segments created in the group and restores the committed counters.
    pub(crate) fn rollback(&mut self) {
        for p in &self.plans {
            if p.is_new {
                if let Err(e) = std::fs::remove_file(&p.seg.path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.seg.path.display(), error = %e, "could not remove rolled-back segment");
                }
            } else if let Err(e) = p.seg.file.set_len(p.seg.len) {
                // The next group overwrites these bytes at the same offset anyway.
                tracing::warn!(path = %p.seg.path.display(), error = %e, "could not truncate rolled-back segment");
            }
        }
        if let Some(s) = self.saved.take() {
            self.active = s.active;
            self.next_ordinal = s.next_ordinal;
            self.last_arrival = s.last_arrival;
            self.cursor = s.cursor;
        }
        self.end_group();
    }

    /// Makes the group's records visible, returns the first ordinals of segments sealed by it
    /// and how many records it appended, and ends the group.
    pub(crate) fn publish(&mut self, log: &ShardLog) -> (Vec<u64>, u64) {
        let mut sealed = Vec::new();
        let records = self.saved.as_ref().map_or(0, |s| self.next_ordinal - s.next_ordinal);
        if let Some(prev) = self.saved.as_ref().and_then(|s| s.active.as_ref())
            && self.plans.first().is_some_and(|p| p.seg.first_ordinal != prev.first_ordinal)
            && prev.len > SEGMENT_HEADER_LEN
        {
            sealed.push(prev.first_ordinal);
        }
        let mut new_active = None;
        {
            let mut st = write(&log.state);
            let n = self.plans.len();
            for i in 0..n {
                let range = self.plan_range(i);
                let p = &mut self.plans[i];
                let end = p.seg.len + range.len() as u64;
                match st.segments.back_mut() {
                    Some(b) if b.first_ordinal == p.seg.first_ordinal => {
                        b.len = end;
                        b.last_ordinal = p.last_ordinal;
                        b.last_offset = p.last_offset;
                        b.last_arrival = p.last_arrival;
                        b.index.append(&mut p.entries);
                    }
                    _ => st.segments.push_back(Segment {
                        first_ordinal: p.seg.first_ordinal,
                        path: p.seg.path.clone(),
                        file: p.seg.file.clone(),
                        len: end,
                        last_ordinal: p.last_ordinal,
                        last_offset: p.last_offset,
                        last_arrival: p.last_arrival,
                        index: std::mem::take(&mut p.entries),
                    }),
                }
                if i + 1 < n {
                    sealed.push(p.seg.first_ordinal);
                } else {
                    new_active = Some(ActiveSeg { len: end, ..p.seg.clone() });
                }
            }
            st.next_ordinal = self.next_ordinal;
            st.last_arrival = Some(self.last_arrival);
        }
        log.watch_tx.send_replace(self.next_ordinal);
        if new_active.is_some() {
            self.active = new_active;
        }
        self.saved = None;
        self.end_group();
        (sealed, records)
    }

    fn end_group(&mut self) {
        self.in_group = false;
        self.plans.clear();
        self.buf.clear();
        if self.buf.capacity() > (16 << 20) {
            self.buf.shrink_to(1 << 20);
        }
    }
}
