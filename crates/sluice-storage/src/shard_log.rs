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
use std::io::Write;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::commit::SyncJob;
use crate::error::{StorageError, at};
use crate::hwm::{HwmFile, Mark, RESERVE};
use crate::repair::{self, DamageCtx};
use crate::segment::{
    self, DamageRange, Header, INDEX_EVERY_BYTES, INDEX_EVERY_RECORDS, IndexCursor, IndexEntry, SEGMENT_HEADER_LEN,
    Scanned, SegmentSummary, SidecarInfo, encode_frame, frame_len, segment_file_name, segment_header, sidecar_path,
};
use crate::sync::{lock, read, write};
use crate::{AppendRecord, Appended, ReadBatch, ShardPosition, StoredRecord, Trimmed};

/// A committed, reader-visible segment (always holds at least one record).
#[derive(Debug)]
pub(crate) struct Segment {
    /// The ordinal the segment was named after (its records are at or above it).
    pub first_ordinal: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    /// Committed length in bytes.
    pub len: u64,
    /// Records in the segment (ordinals may skip, so not `last - first + 1`).
    pub records: u64,
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
    first_ordinal: u64,
    path: Arc<Path>,
    file: Arc<File>,
    offset: u64,
    end: u64,
    /// Ordinal of the frame at `offset`.
    ordinal: u64,
    /// The segment's last ordinal.
    last_ordinal: u64,
    /// Average frame size in the segment, for sizing reads.
    avg_frame: u64,
}

impl Segment {
    fn avg_frame(&self) -> u64 {
        (self.len.saturating_sub(SEGMENT_HEADER_LEN) / self.records.max(1)).max(1)
    }

    fn loc(&self, e: IndexEntry) -> Loc {
        Loc {
            first_ordinal: self.first_ordinal,
            path: self.path.clone(),
            file: self.file.clone(),
            offset: e.offset,
            end: self.len,
            ordinal: e.ordinal,
            last_ordinal: self.last_ordinal,
            avg_frame: self.avg_frame(),
        }
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

    /// The segment and index entry to start scanning from for the first record at or after
    /// `ordinal` (ordinals may skip, so that record may be in a later segment).
    fn locate(&self, ordinal: u64) -> Option<Loc> {
        let si = self.segments.partition_point(|s| s.last_ordinal < ordinal);
        let seg = self.segments.get(si)?;
        let ei = seg.index.partition_point(|e| e.ordinal <= ordinal).saturating_sub(1);
        Some(seg.loc(*seg.index.get(ei)?))
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
    /// Where damage goes and who counts it.
    pub damage: DamageCtx,
    /// Serialises trimming with the background verification's segment swaps.
    maintenance: Mutex<()>,
    /// Sealed segments trusted from their sidecar at open, still to be verified in full.
    unverified: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLog").field("index", &self.index).field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A recovered shard log and how many bytes recovery discarded.
pub(crate) struct Recovered {
    pub log: ShardLog,
    /// Torn (unacknowledged) bytes cut from the newest segment.
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

fn open_rw(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new().read(true).write(true).open(path).map_err(at(path))
}

/// A segment as recovery sees it.
struct Found {
    first: u64,
    path: Arc<Path>,
    file: File,
    s: SegmentSummary,
    /// Trusted from its sidecar (verified later, in the background).
    trusted: bool,
}

/// Records lost in a damaged range of a segment whose records start at `first` and whose last
/// record (per the index) is `seg_last`.
fn range_loss(r: &DamageRange, first: u64, seg_last: u64) -> u64 {
    match r.before {
        Some(_) => r.lost_inside(first),
        None => seg_last.saturating_sub(r.after_or(first)),
    }
}

impl ShardLog {
    /// Opens (creating if needed) and recovers the shard log in `dir`.
    ///
    /// Every segment without a trustworthy sidecar (always the newest one) is scanned and
    /// verified. Damage costs only the damaged bytes: each damaged range is copied to the
    /// quarantine, counted and logged, and the segment is rewritten without it; later
    /// segments are always kept. Only a torn tail of the newest segment (a write that was never
    /// acknowledged) is truncated without a copy. The high-water mark makes sure no ordinal is
    /// handed out twice.
    pub(crate) fn open(dir: PathBuf, index: u32, closed: bool, damage: DamageCtx) -> Result<Recovered, StorageError> {
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
        let (hwm, mark) = HwmFile::open(&dir)?;

        // Pass 1: what is there.
        let mut found: Vec<Found> = Vec::with_capacity(segs.len());
        let n = segs.len();
        for (i, &first) in segs.iter().enumerate() {
            let path: Arc<Path> = dir.join(segment_file_name(first)).into();
            let mut file = open_rw(&path)?;
            let sidecar = if i + 1 < n { segment::read_sidecar(&path, &file, first) } else { None };
            let trusted = sidecar.is_some();
            let s = match sidecar {
                Some(s) => s,
                None => {
                    let mut s = segment::scan_segment(&file, &path)?;
                    if s.header == Header::V1 {
                        segment::migrate_v1(&path, first, first - 1)?;
                        file = open_rw(&path)?;
                        s = segment::scan_segment(&file, &path)?;
                    }
                    s
                }
            };
            found.push(Found { first, path, file, s, trusted });
        }

        // Pass 2: account for and repair damage, oldest first.
        let mut truncated = 0u64;
        let mut tail_discarded = false;
        // The last intact ordinal of the segments kept so far.
        let mut prev_last: Option<u64> = None;
        // A sealed segment's damaged tail: its loss is measured by the next segment's header.
        let mut pending_tail: Option<(Arc<Path>, u64, u64, Option<PathBuf>)> = None;
        // The highest ordinal known lost at the end of the newest segment.
        let mut tail_lost_to = 0u64;
        let mut kept: Vec<Found> = Vec::with_capacity(found.len());
        let total = found.len();
        for (i, mut f) in found.into_iter().enumerate() {
            let newest = i + 1 == total;
            let hdr_prev = f.s.header.prev_last(f.first);
            let mut fix_prev = None;
            if let Some(pl) = prev_last {
                if hdr_prev > pl {
                    match pending_tail.take() {
                        Some((p, s, e, copy)) => {
                            damage.report(&p, s, e, hdr_prev - pl, copy.as_deref(), "damaged end of a sealed segment")
                        }
                        None => damage.report_missing(&format!("before {}", f.path.display()), pl + 1, hdr_prev),
                    }
                    fix_prev = Some(pl);
                } else if hdr_prev < pl && f.s.records > 0 && f.s.first_seen <= pl {
                    // Cannot happen with files this store wrote; keep the newer data readable
                    // by dropping the overlap from the older segment's point of view.
                    tracing::warn!(path = %f.path.display(), prev_last = pl, "segment overlaps its predecessor");
                }
            }
            if let Some((p, s, e, copy)) = pending_tail.take() {
                damage.report(&p, s, e, 0, copy.as_deref(), "damaged end of a sealed segment");
            }

            // Damage inside this segment.
            let mut drops: Vec<(u64, u64)> = Vec::new();
            let ranges = std::mem::take(&mut f.s.damage);
            let header_bad = !matches!(f.s.header, Header::V2 { .. });
            for r in &ranges {
                let at_end = r.before.is_none() && r.end == f.s.file_len;
                if newest && at_end {
                    let mut bytes = vec![0u8; usize::try_from(r.end - r.start).unwrap_or(0)];
                    f.file.read_exact_at(&mut bytes, r.start).map_err(at(&f.path))?;
                    tail_discarded = true;
                    // After a clean shutdown nothing at the end is a torn write: it is damage.
                    let clean = matches!(mark, Some(Mark { exact: true, .. }));
                    if !clean && segment::is_torn_tail(&bytes, r.start, f.s.file_len) {
                        tracing::warn!(path = %f.path.display(), offset = r.start, bytes = bytes.len(),
                            "truncating a torn write at the end of the newest segment (never acknowledged)");
                        truncated += bytes.len() as u64;
                        drops.push((r.start, r.end));
                        continue;
                    }
                    let copy = damage.quarantine(&f.path, &f.file, r.start, r.end).map(|(p, _)| p)?;
                    let after = r.after_or(f.first);
                    let max_header = segment::header_ordinals(&bytes).into_iter().filter(|&o| o > after).max();
                    let lost = max_header.map_or(0, |m| m - after);
                    tail_lost_to = tail_lost_to.max(max_header.unwrap_or(0));
                    damage.report(&f.path, r.start, r.end, lost, Some(&copy), "damaged end of the newest segment");
                    drops.push((r.start, r.end));
                    continue;
                }
                let copy = damage.quarantine(&f.path, &f.file, r.start, r.end).map(|(p, _)| p)?;
                if r.before.is_some() {
                    let what = if r.start == 0 { "damaged segment header" } else { "damaged records" };
                    damage.report(&f.path, r.start, r.end, r.lost_inside(f.first), Some(&copy), what);
                } else {
                    pending_tail = Some((f.path.clone(), r.start, r.end, Some(copy)));
                }
                drops.push((r.start, r.end));
            }

            if f.s.records == 0 && !newest {
                // Nothing intact left (or an empty leftover): the segment goes; the loss is
                // measured against the next segment's header.
                if ranges.is_empty() && !header_bad {
                    tracing::info!(path = %f.path.display(), "removing an empty segment");
                }
                remove_segment_files(&f.path);
                if prev_last.is_none() {
                    prev_last = Some(f.first - 1);
                }
                continue;
            }
            let new_prev = fix_prev.unwrap_or(hdr_prev);
            if !drops.is_empty() || header_bad || f.s.out_of_order > 0 {
                let file = repair::rewrite_segment(&f.path, &f.file, f.first, new_prev, &drops, f.s.file_len)?;
                f.file = file;
                f.s = segment::scan_segment(&f.file, &f.path)?;
                f.trusted = false;
            } else if let Some(pl) = fix_prev {
                repair::rewrite_header(&f.path, &f.file, f.first, pl)?;
            }
            if f.s.records > 0 {
                prev_last = Some(f.s.last_ordinal);
            } else if prev_last.is_none() {
                prev_last = Some(new_prev);
            }
            kept.push(f);
        }
        if let Some((p, s, e, copy)) = pending_tail.take() {
            damage.report(&p, s, e, 0, copy.as_deref(), "damaged end of a sealed segment");
        }

        // The next ordinal: after the newest intact record, never below the high-water mark's
        // promise.
        let natural = match kept.last() {
            Some(k) if k.s.records > 0 => k.s.last_ordinal + 1,
            Some(k) => k.first.max(prev_last.map_or(1, |p| p + 1)),
            None => prev_last.map_or(1, |p| p + 1),
        };
        let mut next_ordinal = natural;
        match mark {
            Some(Mark { value, exact: true }) if value > natural => {
                let counted = tail_lost_to.max(natural - 1);
                if value - 1 > counted {
                    damage.report_missing("at the end of the log", counted + 1, value - 1);
                }
                next_ordinal = value;
            }
            Some(Mark { value, exact: false }) if value > natural && tail_discarded => {
                tracing::info!(dir = %dir.display(), from = natural, to = value,
                    "bytes at the end of the log were discarded after an unclean shutdown; skipping the ordinals reserved before it so that none is reused");
                next_ordinal = value;
            }
            _ => {}
        }
        if next_ordinal > natural {
            // The skip is made durable at once by starting the next segment at the new
            // ordinal (its header records where the log really ended), so that a restart
            // before any append neither reuses nor re-reports anything.
            let path: Arc<Path> = dir.join(segment_file_name(next_ordinal)).into();
            let mut file =
                OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(at(&path))?;
            file.write_all(&segment_header(next_ordinal, natural - 1))
                .and_then(|()| file.sync_all())
                .map_err(at(&path))?;
            sync_dir(&dir)?;
            let s = segment::scan_segment(&file, &path)?;
            kept.push(Found { first: next_ordinal, path, file, s, trusted: false });
        }

        // Seal what recovery scanned and is not the active segment, so the next startup can
        // skip it.
        let last_idx = kept.len().checked_sub(1);
        for (i, k) in kept.iter().enumerate() {
            if Some(i) != last_idx && !k.trusted && k.s.records > 0 {
                let s = &k.s;
                let info = SidecarInfo {
                    seg_len: s.valid_len,
                    last_ordinal: s.last_ordinal,
                    last_offset: s.last_offset,
                    last_arrival: s.last_arrival,
                    records: s.records,
                    entries: &s.entries,
                };
                let r = k
                    .file
                    .sync_all()
                    .map_err(at(&k.path))
                    .and_then(|()| segment::write_sidecar(&k.path, k.first, &info));
                if let Err(e) = r {
                    tracing::warn!(error = %e, "could not write segment sidecar");
                }
            }
        }

        let mut segments = VecDeque::new();
        let mut active = None;
        let mut cursor = IndexCursor::fresh();
        let mut unverified = Vec::new();
        for k in kept {
            let s = k.s;
            let file = Arc::new(k.file);
            active =
                Some(ActiveSeg { first_ordinal: k.first, path: k.path.clone(), file: file.clone(), len: s.valid_len });
            cursor = s.cursor;
            if k.trusted {
                unverified.push(k.first);
            }
            if s.records > 0 {
                segments.push_back(Segment {
                    first_ordinal: k.first,
                    path: k.path,
                    file,
                    len: s.valid_len,
                    records: s.records,
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
            last_written: natural - 1,
            last_arrival: last_arrival.unwrap_or(0),
            cursor,
            hwm,
            // The first group writes a reservation whatever the file says: an exact mark
            // left by a clean shutdown stops being true at the first append.
            reserved: 0,
            disk_mark: mark,
            reserving: None,
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
                damage,
                maintenance: Mutex::new(()),
                unverified: Mutex::new(unverified),
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

    /// Reads committed records from `from` (see [`crate::Store::read`]). Damaged bytes are
    /// skipped (reported once), and ordinals may skip.
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
            let mut damaged: Vec<(u64, u64)> = Vec::new();
            segment::scan_frames(&l.file, &l.path, l.offset, l.end, first_chunk(&l, next), max_chunk, |item| {
                let f = match item {
                    Scanned::Frame(f, _) => f,
                    Scanned::Damage { start, end } => {
                        damaged.push((start, end));
                        return ControlFlow::Continue(());
                    }
                };
                if f.ordinal < next {
                    return ControlFlow::Continue(());
                }
                if f.ordinal >= tip.next_ordinal {
                    full = true;
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
                next = f.ordinal + 1;
                if records.len() >= max_records || next >= tip.next_ordinal {
                    full = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })?;
            for (start, end) in damaged {
                self.report_read_damage(&l, start, end);
            }
            if full {
                break;
            }
            // Segment exhausted: continue in the next one (which may have been trimmed meanwhile).
            next = next.max(l.last_ordinal + 1);
            let st = read(&self.state);
            if let Some(front) = st.segments.front() {
                next = next.max(front.first_ordinal);
            }
            if next < tip.next_ordinal {
                loc = st.locate(next);
            }
        }
        if !full {
            // Every segment up to the tip was read: no record lies between `next` and the tip.
            next = tip.next_ordinal;
        }
        Ok(ReadBatch { records, next_ordinal: next.min(tip.next_ordinal), tip })
    }

    /// The newest committed record, if the shard holds any (ordinals may skip, so this is not
    /// always `next_ordinal - 1`).
    pub(crate) fn read_last(&self) -> Result<Option<StoredRecord>, StorageError> {
        let (from, tip) = {
            let st = read(&self.state);
            match st.segments.back() {
                Some(seg) => (seg.last_ordinal, st.next_ordinal),
                None => return Ok(None),
            }
        };
        let batch = self.read(from, 1, usize::MAX)?;
        Ok(batch.records.into_iter().next().filter(|r| r.ordinal < tip))
    }

    /// Damage met by a reader (it appeared after recovery and the background check): copied
    /// and reported once; readers skip it meanwhile.
    fn report_read_damage(&self, l: &Loc, start: u64, end: u64) {
        if !self.damage.first_sighting(l.first_ordinal, start) {
            return;
        }
        // Measure the loss as recovery would: from the intact records around the range.
        let lost = match segment::scan_segment(&l.file, &l.path) {
            Ok(s) => {
                s.damage.iter().find(|r| r.start == start).map_or(0, |r| range_loss(r, l.first_ordinal, l.last_ordinal))
            }
            Err(_) => 0,
        };
        match self.damage.quarantine(&l.path, &l.file, start, end) {
            Ok((copy, _)) => {
                self.damage.report(&l.path, start, end, lost, Some(&copy), "damaged records found by a read");
            }
            Err(e) => {
                tracing::error!(error = %e, "could not copy damaged bytes to the quarantine");
                self.damage.report(&l.path, start, end, lost, None, "damaged records found by a read");
            }
        }
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
            (seg.loc(seg.index[ei]), limit, fallback)
        };
        let mut found = None;
        let mut damaged = Vec::new();
        let first_chunk = (INDEX_EVERY_RECORDS as u64 + 1).saturating_mul(l.avg_frame).min(INDEX_EVERY_BYTES * 2);
        segment::scan_frames(&l.file, &l.path, l.offset, limit.min(l.end), first_chunk as usize, 1 << 20, |item| {
            match item {
                Scanned::Frame(f, _) if f.arrival_ms >= ts_ms => {
                    found = Some(f.ordinal);
                    return ControlFlow::Break(());
                }
                Scanned::Frame(..) => {}
                Scanned::Damage { start, end } => damaged.push((start, end)),
            }
            ControlFlow::Continue(())
        })?;
        for (start, end) in damaged {
            self.report_read_damage(&l, start, end);
        }
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
        let _maintenance = lock(&self.maintenance);
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
        let records = removed.iter().map(|s| s.records).sum();
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
    pub(crate) fn seal(&self, first_ordinal: u64) {
        let snapshot = {
            let st = read(&self.state);
            let i = st.segments.partition_point(|s| s.first_ordinal < first_ordinal);
            st.segments.get(i).filter(|s| s.first_ordinal == first_ordinal).map(|s| {
                (
                    s.path.clone(),
                    s.file.clone(),
                    (s.len, s.last_ordinal, s.last_offset, s.last_arrival, s.records),
                    s.index.clone(),
                )
            })
        };
        let Some((path, file, (seg_len, last_ordinal, last_offset, last_arrival, records), entries)) = snapshot else {
            return;
        };
        let info = SidecarInfo { seg_len, last_ordinal, last_offset, last_arrival, records, entries: &entries };
        // Segments are synced at journal checkpoints, not per group: make this one durable
        // before its sidecar vouches for it.
        let r = file.sync_data().map_err(at(&path)).and_then(|()| segment::write_sidecar(&path, first_ordinal, &info));
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not write segment sidecar");
        }
    }

    /// Verifies in full the sealed segments that were trusted from their sidecar at open;
    /// damage found is quarantined, reported and cut out (the segment is rewritten and swapped
    /// in, so readers never meet it). Stops early when `stop` says so. Returns the number of
    /// segments verified.
    pub(crate) fn verify_sealed(&self, stop: &dyn Fn() -> bool) -> u64 {
        let todo = std::mem::take(&mut *lock(&self.unverified));
        let mut done = 0;
        for first in todo {
            if stop() {
                break;
            }
            if let Err(e) = self.verify_one(first) {
                tracing::error!(dir = %self.dir.display(), segment = first, error = %e, "could not verify a segment");
            }
            done += 1;
        }
        done
    }

    fn verify_one(&self, first: u64) -> Result<(), StorageError> {
        let _maintenance = lock(&self.maintenance);
        let snapshot = {
            let st = read(&self.state);
            let i = st.segments.partition_point(|s| s.first_ordinal < first);
            // The newest segment is the writer's; it was scanned at open anyway.
            if i + 1 >= st.segments.len() {
                return Ok(());
            }
            let s = &st.segments[i];
            if s.first_ordinal != first {
                return Ok(());
            }
            let next = &st.segments[i + 1];
            (
                s.path.clone(),
                s.file.clone(),
                s.len,
                s.last_ordinal,
                (next.path.clone(), next.file.clone(), next.first_ordinal),
            )
        };
        let (path, file, len, last_ordinal, (next_path, next_file, next_first)) = snapshot;
        let s = segment::scan_segment(&file, &path)?;
        if s.is_clean() && s.valid_len == len && s.last_ordinal == last_ordinal {
            return Ok(());
        }
        let hdr_prev = s.header.prev_last(first);
        let mut drops = Vec::new();
        for r in &s.damage {
            drops.push((r.start, r.end));
            if !self.damage.first_sighting(first, r.start) {
                continue; // a reader reported it already
            }
            let copy = self.damage.quarantine(&path, &file, r.start, r.end).map(|(p, _)| p)?;
            let lost = range_loss(r, first, last_ordinal);
            self.damage.report(
                &path,
                r.start,
                r.end,
                lost,
                Some(&copy),
                "damaged records found by the background check",
            );
        }
        let new_file = repair::rewrite_segment(&path, &file, first, hdr_prev, &drops, s.file_len)?;
        let ns = segment::scan_segment(&new_file, &path)?;
        let new_file = Arc::new(new_file);
        let mut st = write(&self.state);
        let Some(i) = st.segments.iter().position(|x| x.first_ordinal == first) else { return Ok(()) };
        if ns.records == 0 {
            st.segments.remove(i);
            drop(st);
            remove_segment_files(&path);
        } else {
            let seg = &mut st.segments[i];
            seg.file = new_file.clone();
            seg.len = ns.valid_len;
            seg.records = ns.records;
            seg.last_ordinal = ns.last_ordinal;
            seg.last_offset = ns.last_offset;
            seg.last_arrival = ns.last_arrival;
            seg.index = ns.entries.clone();
            drop(st);
            let info = SidecarInfo {
                seg_len: ns.valid_len,
                last_ordinal: ns.last_ordinal,
                last_offset: ns.last_offset,
                last_arrival: ns.last_arrival,
                records: ns.records,
                entries: &ns.entries,
            };
            if let Err(e) = segment::write_sidecar(&path, first, &info) {
                tracing::warn!(error = %e, "could not write segment sidecar");
            }
        }
        // The next segment's header now records where this one really ends, so the loss is
        // not reported again at the next start.
        let new_last = if ns.records > 0 { ns.last_ordinal } else { hdr_prev };
        repair::rewrite_header(&next_path, &next_file, next_first, new_last)
    }

    /// Records a clean shutdown: the exact next ordinal (so the next open can tell precisely
    /// whether records are missing at the end).
    pub(crate) fn mark_clean(&self) {
        let mut w = lock(&self.writer);
        let mark = Mark { value: w.next_ordinal, exact: true };
        if w.disk_mark == Some(mark) {
            return; // idle since a clean start: nothing to write
        }
        match w.hwm.write_durably(mark) {
            Ok(()) => w.disk_mark = Some(mark),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not record the high-water mark at shutdown")
            }
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
    records: u64,
    last_ordinal: u64,
    last_offset: u64,
    last_arrival: u64,
}

/// Committed writer fields, saved at the start of a group for rollback.
#[derive(Debug)]
struct Saved {
    active: Option<ActiveSeg>,
    next_ordinal: u64,
    last_written: u64,
    last_arrival: u64,
    cursor: IndexCursor,
}

/// Writer-only state of a shard (owned by the commit thread).
#[derive(Debug)]
pub(crate) struct WriterShard {
    dir: PathBuf,
    active: Option<ActiveSeg>,
    next_ordinal: u64,
    /// The last ordinal in the log (below `next_ordinal - 1` after a skip); a new segment's
    /// header records it.
    last_written: u64,
    last_arrival: u64,
    cursor: IndexCursor,
    /// The high-water mark file.
    hwm: HwmFile,
    /// No ordinal at or above this has been handed out (durably promised).
    reserved: u64,
    /// The mark the file holds (as far as this writer knows).
    disk_mark: Option<Mark>,
    /// A reservation written in the current group, effective once it commits.
    reserving: Option<u64>,
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
            last_written: self.last_written,
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
            self.buf.extend_from_slice(&segment_header(seg.first_ordinal, self.last_written));
        }
        self.plans.push(Plan {
            seg,
            is_new,
            buf_start,
            entries: Vec::new(),
            records: 0,
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
        plan.records += 1;
        plan.last_ordinal = ordinal;
        plan.last_offset = offset;
        plan.last_arrival = arrival;
        encode_frame(&mut self.buf, ordinal, arrival, pk, &rec.data);
        self.next_ordinal += 1;
        self.last_written = ordinal;
        self.last_arrival = arrival;
        Ok(Appended { ordinal, arrival_ms: arrival })
    }

    fn plan_range(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.plans.get(i + 1).map_or(self.buf.len(), |p| p.buf_start);
        self.plans[i].buf_start..end
    }

    /// Writes the group's bytes: one positional write per touched segment, and a new
    /// high-water mark reservation when the group's ordinals reach the old one.
    pub(crate) fn write_out(&mut self) -> Result<(), StorageError> {
        for (i, p) in self.plans.iter().enumerate() {
            let range = self.plan_range(i);
            #[cfg(test)]
            crate::faults::before_write(&p.seg.path)?;
            p.seg.file.write_all_at(&self.buf[range], p.seg.len).map_err(at(&p.seg.path))?;
            #[cfg(test)]
            crate::faults::after_write(&p.seg.path)?;
        }
        if self.next_ordinal > self.reserved {
            let value = self.next_ordinal + RESERVE;
            self.hwm.write(Mark { value, exact: false })?;
            self.reserving = Some(value);
        }
        Ok(())
    }

    /// Puts the group's bytes into the journal record, one part per touched segment.
    pub(crate) fn journal_into(&self, j: &mut crate::journal::Journal) {
        for (i, p) in self.plans.iter().enumerate() {
            let range = self.plan_range(i);
            j.add_part(&self.dir, p.seg.first_ordinal, p.seg.len, &self.buf[range]);
            j.touch(&p.seg.path, &p.seg.file);
        }
    }

    /// The fdatasyncs this group needs besides the journal's: a new high-water mark, and the
    /// directory if a segment was created (the segments themselves are synced at checkpoints).
    pub(crate) fn meta_sync_jobs(&self, out: &mut Vec<SyncJob>) -> Result<(), StorageError> {
        if self.reserving.is_some() {
            out.push(SyncJob { file: self.hwm.file.clone(), path: self.hwm.path.clone() });
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
        self.reserving = None;
        if let Some(s) = self.saved.take() {
            self.active = s.active;
            self.next_ordinal = s.next_ordinal;
            self.last_written = s.last_written;
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
                        b.records += p.records;
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
                        records: p.records,
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
        if let Some(r) = self.reserving.take() {
            self.reserved = r;
            self.disk_mark = Some(Mark { value: r, exact: false });
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
