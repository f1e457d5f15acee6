//! `verify`: a read-only check of a whole data directory (for `sluice serve --verify`).

use std::path::{Path, PathBuf};

use crate::error::{StorageError, at};
use crate::segment::{self, Header};
use crate::store::STREAMS_DIR;

/// Damage found in one segment (or records missing before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    /// The segment file.
    pub path: PathBuf,
    /// Damaged byte ranges `[start, end)`.
    pub ranges: Vec<(u64, u64)>,
    /// Records lost in them, or missing between this segment and the one before.
    pub records_lost: u64,
    /// What is wrong, in words.
    pub what: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Shard directories checked.
    pub shards: u64,
    /// Segment files checked.
    pub segments: u64,
    /// Intact records found.
    pub records: u64,
    /// Segments with damage (or records missing before them).
    pub damaged: Vec<SegmentDamage>,
    /// Problems with the catalog (and its backup).
    pub catalog_problems: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.catalog_problems.is_empty()
    }

    /// Records lost in all damaged segments.
    pub fn records_lost(&self) -> u64 {
        self.damaged.iter().map(|d| d.records_lost).sum()
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(at(dir))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Checks every segment of every shard under `data_dir` (every frame's checksums, the ordinal
/// order, records missing between segments) and the catalog, changing nothing. Safe to run
/// beside a running server, though the newest segment may then show a write in progress.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, StorageError> {
    let mut report = VerifyReport::default();
    for (name, problem) in crate::store::check_catalog_files(data_dir) {
        if let Some(p) = problem {
            report.catalog_problems.push(format!("{name}: {p}"));
        }
    }
    let streams = data_dir.join(STREAMS_DIR);
    if !streams.exists() {
        return Ok(report);
    }
    for stream in sorted_entries(&streams)? {
        if !stream.is_dir() {
            continue;
        }
        for shard in sorted_entries(&stream)? {
            if !shard.is_dir() {
                continue;
            }
            report.shards += 1;
            verify_shard(&shard, &mut report)?;
        }
    }
    Ok(report)
}

fn verify_shard(dir: &Path, report: &mut VerifyReport) -> Result<(), StorageError> {
    let mut prev_last: Option<u64> = None;
    // The report entry of the previous segment if its end is damaged: records missing before
    // the next segment are lost there.
    let mut tail_entry: Option<usize> = None;
    let segs: Vec<(u64, PathBuf)> = sorted_entries(dir)?
        .into_iter()
        .filter_map(|p| {
            let stem = p.file_name()?.to_str()?.strip_suffix(".seg")?.parse::<u64>().ok()?;
            Some((stem, p))
        })
        .collect();
    let n = segs.len();
    for (i, (first, path)) in segs.into_iter().enumerate() {
        report.segments += 1;
        let file = std::fs::File::open(&path).map_err(at(&path))?;
        let s = segment::scan_segment(&file, &path)?;
        if s.header == Header::V1 {
            report.damaged.push(SegmentDamage {
                path,
                ranges: Vec::new(),
                records_lost: 0,
                what: "version 1 segment (migrated when a store opens it)".into(),
            });
            continue;
        }
        report.records += s.records;
        let hdr_prev = s.header.prev_last(first);
        let mut lost = 0u64;
        let mut what = Vec::new();
        let pending_tail = tail_entry.take();
        if let Some(pl) = prev_last
            && hdr_prev > pl
        {
            match pending_tail.and_then(|i| report.damaged.get_mut(i)) {
                Some(entry) => entry.records_lost += hdr_prev - pl,
                None => {
                    lost += hdr_prev - pl;
                    what.push(format!("records {}..={} missing before it", pl + 1, hdr_prev));
                }
            }
        }
        let damaged_end = s.damage.last().is_some_and(|r| r.before.is_none()) && i + 1 < n;
        for r in &s.damage {
            match r.before {
                Some(_) => lost += r.lost_inside(first),
                None if i + 1 == n => {
                    let mut bytes = vec![0u8; usize::try_from(r.end - r.start).unwrap_or(0)];
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, r.start).map_err(at(&path))?;
                    let after = r.after_or(first);
                    lost += segment::header_ordinals(&bytes).into_iter().filter(|&o| o > after).count() as u64;
                }
                // A sealed segment's damaged end: measured by the next segment's header.
                None => {}
            }
        }
        if !s.damage.is_empty() {
            what.push(format!("{} damaged byte range(s)", s.damage.len()));
        }
        if s.out_of_order > 0 {
            what.push(format!("{} frame(s) out of order", s.out_of_order));
        }
        if !matches!(s.header, Header::V2 { .. }) {
            what.push("damaged segment header".into());
        }
        if !what.is_empty() {
            if damaged_end {
                tail_entry = Some(report.damaged.len());
            }
            report.damaged.push(SegmentDamage {
                path,
                ranges: s.damage.iter().map(|r| (r.start, r.end)).collect(),
                records_lost: lost,
                what: what.join("; "),
            });
        }
        if s.records > 0 {
            prev_last = Some(s.last_ordinal);
        } else if prev_last.is_none() {
            prev_last = Some(first - 1);
        }
    }
    Ok(())
}
