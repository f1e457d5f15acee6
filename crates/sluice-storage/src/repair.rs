//! Damage handling: copying damaged byte ranges to `data_dir/quarantine/`, counting and
//! reporting what was lost, and rewriting a segment without its damaged bytes.
//!
//! Every damaged range is reported exactly once per process: one WARN line naming the file,
//! the byte offsets and the records lost, the `sluice_storage_corrupt_records_total` and
//! `sluice_storage_quarantined_bytes_total` counters, and [`DamageStats`] (which
//! `Store::damage` exposes).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{StorageError, at};
use crate::segment::{SEGMENT_HEADER_LEN, segment_header, sidecar_path};
use crate::sync::lock;

/// Totals of the damage found since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct DamageStats {
    pub corrupt_records: AtomicU64,
    pub quarantined_bytes: AtomicU64,
    pub ranges: AtomicU64,
    /// The most recent report, for operators.
    pub last: Mutex<Option<String>>,
}

/// Where one shard's damage goes and who counts it.
#[derive(Debug)]
pub(crate) struct DamageCtx {
    /// `data_dir/quarantine`.
    pub quarantine_dir: PathBuf,
    /// Names the shard in quarantine file names (`stream.tag-shard`).
    pub label: String,
    pub stats: std::sync::Arc<DamageStats>,
    /// Ranges already reported by readers: (segment first ordinal, start offset).
    seen: Mutex<HashSet<(u64, u64)>>,
}

impl DamageCtx {
    pub(crate) fn new(quarantine_dir: PathBuf, label: String, stats: std::sync::Arc<DamageStats>) -> DamageCtx {
        DamageCtx { quarantine_dir, label, stats, seen: Mutex::new(HashSet::new()) }
    }

    /// Whether a reader already reported this range (and marks it reported).
    pub(crate) fn first_sighting(&self, segment_first: u64, start: u64) -> bool {
        lock(&self.seen).insert((segment_first, start))
    }

    /// Copies bytes `[start, end)` of `file` into the quarantine directory (fsynced) and returns
    /// the quarantine file's path and the bytes. The name says where the bytes came from.
    pub(crate) fn quarantine(
        &self,
        seg_path: &Path,
        file: &File,
        start: u64,
        end: u64,
    ) -> Result<(PathBuf, Vec<u8>), StorageError> {
        let dir = &self.quarantine_dir;
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        let seg_name = seg_path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
        let name = format!("{}-{}-{}-{}.bin", self.label.replace(['/', '\\'], "_"), seg_name, start, end);
        let path = dir.join(name);
        let len = usize::try_from(end.saturating_sub(start))
            .map_err(|_| StorageError::Corrupt(format!("{}: damaged range too large", seg_path.display())))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, start).map_err(at(seg_path))?;
        let mut out = OpenOptions::new().write(true).create(true).truncate(true).open(&path).map_err(at(&path))?;
        out.write_all(&bytes).and_then(|()| out.sync_all()).map_err(at(&path))?;
        crate::shard_log::sync_dir(dir)?;
        self.stats.quarantined_bytes.fetch_add(len as u64, Ordering::Relaxed);
        metrics::counter!("sluice_storage_quarantined_bytes_total").increment(len as u64);
        Ok((path, bytes))
    }

    /// Counts and logs one damaged range (once).
    pub(crate) fn report(&self, seg_path: &Path, start: u64, end: u64, lost: u64, copy: Option<&Path>, what: &str) {
        self.stats.corrupt_records.fetch_add(lost, Ordering::Relaxed);
        self.stats.ranges.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_storage_corrupt_records_total").increment(lost);
        metrics::counter!("sluice_storage_damaged_ranges_total").increment(1);
        let msg = format!(
            "{}: bytes {start}..{end} damaged ({what}); {lost} record(s) lost{}",
            seg_path.display(),
            copy.map(|p| format!(", copy kept in {}", p.display())).unwrap_or_default()
        );
        tracing::warn!(
            file = %seg_path.display(), start, end, records_lost = lost,
            quarantine = copy.map(|p| p.display().to_string()).unwrap_or_default(),
            "{what}: damaged bytes skipped, intact records kept"
        );
        *lock(&self.stats.last) = Some(msg);
    }

    /// Counts and logs records found missing without damaged bytes (a segment removed or cut
    /// at a frame boundary).
    pub(crate) fn report_missing(&self, where_: &str, from: u64, to: u64) {
        let lost = to + 1 - from;
        self.stats.corrupt_records.fetch_add(lost, Ordering::Relaxed);
        self.stats.ranges.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_storage_corrupt_records_total").increment(lost);
        metrics::counter!("sluice_storage_damaged_ranges_total").increment(1);
        tracing::warn!(shard = %self.label, location = where_, first = from, last = to, records_lost = lost,
            "records missing from the log (a segment deleted or cut); the records around them are kept");
        *lock(&self.stats.last) = Some(format!("{} {where_}: records {from}..={to} missing ({lost} lost)", self.label));
    }
}

/// Rewrites the segment at `path` with a fresh header and only the bytes of `[header, keep_end)`
/// outside `drop` (sorted, non-overlapping ranges). Temporary file, fsync, rename, fsync of
/// the directory; the old sidecar is removed. Returns the new file, opened read-write.
pub(crate) fn rewrite_segment(
    path: &Path,
    old: &File,
    first_ordinal: u64,
    prev_last: u64,
    drop: &[(u64, u64)],
    keep_end: u64,
) -> Result<File, StorageError> {
    let tmp = path.with_extension("seg.tmp");
    let mut out = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(at(&tmp))?;
    out.write_all(&segment_header(first_ordinal, prev_last)).map_err(at(&tmp))?;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut buf = Vec::new();
    let mut copy = |from: u64, to: u64, out: &mut File| -> Result<(), StorageError> {
        let mut o = from;
        while o < to {
            let n = (to - o).min(4 << 20) as usize;
            buf.resize(n, 0);
            old.read_exact_at(&mut buf, o).map_err(at(path))?;
            out.write_all(&buf).map_err(at(&tmp))?;
            o += n as u64;
        }
        Ok(())
    };
    for &(s, e) in drop {
        let s = s.max(SEGMENT_HEADER_LEN);
        if s > pos {
            copy(pos, s.min(keep_end), &mut out)?;
        }
        pos = pos.max(e);
        if pos >= keep_end {
            break;
        }
    }
    if pos < keep_end {
        copy(pos, keep_end, &mut out)?;
    }
    out.sync_all().map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))?;
    let _ = std::fs::remove_file(sidecar_path(path));
    if let Some(dir) = path.parent() {
        crate::shard_log::sync_dir(dir)?;
    }
    Ok(out)
}

/// Rewrites only the header of a segment in place (to record `prev_last` once a loss before
/// it was reported, so it is not reported again).
pub(crate) fn rewrite_header(path: &Path, file: &File, first_ordinal: u64, prev_last: u64) -> Result<(), StorageError> {
    file.write_all_at(&segment_header(first_ordinal, prev_last), 0).map_err(at(path))?;
    file.sync_data().map_err(at(path))
}
