//! The write-ahead journal: one file per store that makes a whole group commit durable with
//! one write and one fdatasync, whatever the number of shards it touched, and that commits the
//! sources' cursors atomically with their records.
//!
//! # Files
//!
//! `data_dir/journal/{generation:020}.wal`, one at a time. Each record:
//!
//! ```text
//! magic b"SJN1" | body_len u32 | body_crc u32 | head_crc u32 (of the 12 bytes before it) | body
//! body, kind 1 (a group):    1 u8 | parts u32 | part* | cursors u32 | cursor*
//! body, kind 2 (a snapshot): 2 u8 | 0 u32 | cursors u32 | cursor*
//! part:   dir_len u16 | shard dir (relative to data_dir) | seg_first u64 | offset u64 | len u32 | bytes
//! cursor: name_len u16 | name | len u32 | cursor
//! ```
//!
//! A part is exactly the bytes the group writes into one segment at `offset` (frames, and the
//! segment header when the group starts the segment). A generation starts with a snapshot of
//! every source's cursor.
//!
//! # Order of a group
//!
//! The journal record is written first, then the segments (page cache only), then the journal
//! alone is fdatasync'ed ([`crate::Durability::Fsync`]); the records become visible and the
//! callers are answered after that. So a process killed at any point leaves either nothing of
//! the group or its whole journal record, from which [`recover`] rewrites whatever part of the
//! segments is missing: records and cursors stay together. Segment files are fdatasync'ed at a
//! checkpoint (the journal passed its size limit, or a clean shutdown), after which a new
//! generation starts with a snapshot and the old file is deleted.
//!
//! # Damage
//!
//! A record that fails its checksums is skipped by resynchronising on the next valid record;
//! the bytes are copied to `data_dir/quarantine/`, counted and logged. Cursors then come from
//! the newest intact record naming them (a source resumes earlier: it may repeat events, it
//! loses none). A bad record at the very end is the torn write of an unacknowledged group.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{StorageError, at};
use crate::repair::DamageCtx;
use crate::shard_log::sync_dir;

const MAGIC: [u8; 4] = *b"SJN1";
const HEAD_LEN: usize = 16;
const KIND_GROUP: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
/// The journal directory under the data directory.
pub(crate) const JOURNAL_DIR: &str = "journal";
/// A checkpoint starts a new generation once the journal is this large.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 << 20;
/// ... or once its oldest group is this old.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

fn file_name(generation: u64) -> String {
    format!("{generation:020}.wal")
}

/// The open journal, owned by the commit thread.
pub(crate) struct Journal {
    dir: PathBuf,
    data_dir: PathBuf,
    generation: u64,
    path: Arc<Path>,
    file: Arc<File>,
    len: u64,
    /// The record being built.
    buf: Vec<u8>,
    parts: u32,
    /// Segment files written since the last checkpoint (fdatasync'ed at the next one).
    dirty: HashMap<Arc<Path>, Arc<File>>,
    /// Every source's newest committed cursor (what a snapshot writes).
    pub cursors: HashMap<String, String>,
    /// Bytes after which a checkpoint is due.
    pub limit: u64,
    /// When the last checkpoint ended.
    last_checkpoint: std::time::Instant,
    /// The length of the generation's snapshot (a journal this long holds no group).
    base_len: u64,
}

fn put_str16(buf: &mut Vec<u8>, s: &[u8]) {
    let n = s.len().min(u16::MAX as usize);
    buf.extend_from_slice(&(n as u16).to_le_bytes());
    buf.extend_from_slice(&s[..n]);
}

fn put_cursor(buf: &mut Vec<u8>, name: &str, cursor: &str) {
    put_str16(buf, name.as_bytes());
    buf.extend_from_slice(&(cursor.len() as u32).to_le_bytes());
    buf.extend_from_slice(cursor.as_bytes());
}

fn seal_record(buf: &mut [u8]) {
    let body_len = (buf.len() - HEAD_LEN) as u32;
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&body_len.to_le_bytes());
    let body_crc = crc32fast::hash(&buf[HEAD_LEN..]);
    buf[8..12].copy_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc32fast::hash(&buf[..12]);
    buf[12..16].copy_from_slice(&head_crc.to_le_bytes());
}

fn snapshot_record(cursors: &HashMap<String, String>) -> Vec<u8> {
    let mut buf = vec![0u8; HEAD_LEN];
    buf.push(KIND_SNAPSHOT);
    buf.extend_from_slice(&0u32.to_le_bytes());
    let mut names: Vec<&String> = cursors.keys().collect();
    names.sort();
    buf.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in names {
        put_cursor(&mut buf, n, &cursors[n]);
    }
    seal_record(&mut buf);
    buf
}

/// Creates generation `generation` holding a snapshot of `cursors`: written to a temporary
/// file, fdatasync'ed (with `sync`), renamed into place, directory fsync'ed.
fn create_generation(
    dir: &Path,
    generation: u64,
    cursors: &HashMap<String, String>,
    sync: bool,
) -> Result<(Arc<Path>, Arc<File>, u64), StorageError> {
    let path: Arc<Path> = dir.join(file_name(generation)).into();
    let tmp = dir.join(format!("{}.tmp", file_name(generation)));
    let rec = snapshot_record(cursors);
    {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(at(&tmp))?;
        f.write_all_at(&rec, 0).map_err(at(&tmp))?;
        if sync {
            f.sync_data().map_err(at(&tmp))?;
        }
    }
    std::fs::rename(&tmp, &path).map_err(at(&path))?;
    if sync {
        sync_dir(dir)?;
    }
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(at(&path))?;
    Ok((path, Arc::new(file), rec.len() as u64))
}

impl Journal {
    /// Starts building a group record.
    pub(crate) fn begin(&mut self) {
        self.buf.clear();
        self.buf.resize(HEAD_LEN, 0);
        self.buf.push(KIND_GROUP);
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.parts = 0;
    }

    /// Adds the bytes a group writes into one segment at `offset`.
    pub(crate) fn add_part(&mut self, shard_dir: &Path, seg_first: u64, offset: u64, bytes: &[u8]) {
        let rel = shard_dir.strip_prefix(&self.data_dir).unwrap_or(shard_dir);
        put_str16(&mut self.buf, rel.as_os_str().as_encoded_bytes());
        self.buf.extend_from_slice(&seg_first.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self.parts += 1;
    }

    /// Notes a segment file the group writes (fdatasync'ed at the next checkpoint).
    pub(crate) fn touch(&mut self, path: &Arc<Path>, file: &Arc<File>) {
        if !self.dirty.contains_key(path) {
            self.dirty.insert(path.clone(), file.clone());
        }
    }

    /// Ends the record with the group's cursors and writes it (one positional write).
    pub(crate) fn write(&mut self, cursors: &[(String, String)]) -> Result<(), StorageError> {
        let at_parts = HEAD_LEN + 1;
        self.buf[at_parts..at_parts + 4].copy_from_slice(&self.parts.to_le_bytes());
        self.buf.extend_from_slice(&(cursors.len() as u32).to_le_bytes());
        for (name, cursor) in cursors {
            put_cursor(&mut self.buf, name, cursor);
        }
        seal_record(&mut self.buf);
        #[cfg(test)]
        crate::faults::before_write(&self.path)?;
        self.file.write_all_at(&self.buf, self.len).map_err(at(&self.path))?;
        self.len += self.buf.len() as u64;
        if self.buf.capacity() > (16 << 20) {
            self.buf = Vec::with_capacity(1 << 20);
        }
        Ok(())
    }

    /// Forgets the last written record (its group failed): recovery must not redo it.
    pub(crate) fn unwrite(&mut self, len_before: u64) {
        if let Err(e) = self.file.set_len(len_before) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not cut a failed group from the journal");
        }
        self.len = len_before;
    }

    /// The journal's length (where the next record goes).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether a checkpoint is due: the journal passed its size limit, or it holds groups
    /// written more than [`CHECKPOINT_EVERY`] ago (so that the disk space it takes stays
    /// small, and a restart has little to check).
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.len > self.limit || (self.len > self.base_len && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
    }

    /// The fdatasync that makes a written group durable.
    pub(crate) fn sync_job(&self) -> crate::commit::SyncJob {
        crate::commit::SyncJob { file: self.file.clone(), path: self.path.clone() }
    }

    /// Makes every segment written since the last checkpoint durable, then starts a new
    /// generation with a snapshot of the cursors and deletes the old one.
    pub(crate) fn checkpoint(&mut self, pool: &crate::commit::SyncPool, sync: bool) -> Result<(), StorageError> {
        if sync {
            let jobs = self
                .dirty
                .iter()
                .map(|(path, file)| crate::commit::SyncJob { file: file.clone(), path: path.clone() })
                .collect();
            pool.run(jobs)?;
        }
        let next = self.generation + 1;
        let (path, file, len) = create_generation(&self.dir, next, &self.cursors, sync)?;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.len = len;
        self.base_len = len;
        self.generation = next;
        self.dirty.clear();
        self.last_checkpoint = std::time::Instant::now();
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not remove an old journal generation");
        }
        metrics::counter!("sluice_storage_checkpoints_total").increment(1);
        Ok(())
    }
}

/// What recovery found in the journal.
pub(crate) struct Recovery {
    /// Every source's newest intact cursor.
    pub cursors: HashMap<String, String>,
    /// Segment bytes rewritten from the journal.
    pub redone_bytes: u64,
    /// Segment files recovery wrote (to fsync before the journal is replaced).
    pub written: Vec<(PathBuf, File)>,
    generation: u64,
}

/// One parsed record.
enum Rec<'a> {
    Group { parts: Vec<Part<'a>>, cursors: Vec<(String, String)> },
    Snapshot { cursors: Vec<(String, String)> },
}

struct Part<'a> {
    shard_dir: &'a [u8],
    seg_first: u64,
    offset: u64,
    bytes: &'a [u8],
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn cursors(&mut self) -> Option<Vec<(String, String)>> {
        let n = self.u32()?;
        let mut out = Vec::new();
        for _ in 0..n {
            let l = self.u16()? as usize;
            let name = String::from_utf8(self.take(l)?.to_vec()).ok()?;
            let l = self.u32()? as usize;
            let cursor = String::from_utf8(self.take(l)?.to_vec()).ok()?;
            out.push((name, cursor));
        }
        Some(out)
    }
}

fn parse_body(body: &[u8]) -> Option<Rec<'_>> {
    let mut r = Reader { b: body, pos: 0 };
    let kind = r.take(1)?[0];
    let n = r.u32()?;
    let mut parts = Vec::new();
    for _ in 0..n {
        let l = r.u16()? as usize;
        let shard_dir = r.take(l)?;
        let seg_first = r.u64()?;
        let offset = r.u64()?;
        let len = r.u32()? as usize;
        let bytes = r.take(len)?;
        parts.push(Part { shard_dir, seg_first, offset, bytes });
    }
    let cursors = r.cursors()?;
    match kind {
        KIND_GROUP => Some(Rec::Group { parts, cursors }),
        KIND_SNAPSHOT => Some(Rec::Snapshot { cursors }),
        _ => None,
    }
}

/// A valid record header at `pos`: its body length.
fn header_at(b: &[u8], pos: usize) -> Option<usize> {
    let h = b.get(pos..pos + HEAD_LEN)?;
    if h[..4] != MAGIC || crc32fast::hash(&h[..12]) != u32::from_le_bytes(h[12..16].try_into().ok()?) {
        return None;
    }
    Some(u32::from_le_bytes(h[4..8].try_into().ok()?) as usize)
}

/// A whole valid record at `pos`: its body.
fn record_at(b: &[u8], pos: usize) -> Option<&[u8]> {
    let len = header_at(b, pos)?;
    let body = b.get(pos + HEAD_LEN..(pos + HEAD_LEN).checked_add(len)?)?;
    let crc = u32::from_le_bytes(b.get(pos + 8..pos + 12)?.try_into().ok()?);
    (crc32fast::hash(body) == crc).then_some(body)
}

/// Reads the newest journal generation, rewrites into the segments whatever part of its
/// groups is missing, and returns the cursors. Leftover temporary and older generations are
/// removed. `damage` receives damaged journal bytes.
pub(crate) fn recover(data_dir: &Path, damage: &DamageCtx) -> Result<Recovery, StorageError> {
    let dir = data_dir.join(JOURNAL_DIR);
    std::fs::create_dir_all(&dir).map_err(at(&dir))?;
    let mut gens = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(at(&dir))? {
        let entry = entry.map_err(at(&dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(g) = stem.parse::<u64>()
        {
            gens.push(g);
        }
    }
    gens.sort_unstable();
    let mut out = Recovery { cursors: HashMap::new(), redone_bytes: 0, written: Vec::new(), generation: 0 };
    let Some(&newest) = gens.last() else { return Ok(out) };
    out.generation = newest;
    for &g in &gens[..gens.len() - 1] {
        let _ = std::fs::remove_file(dir.join(file_name(g)));
    }
    let path = dir.join(file_name(newest));
    let bytes = std::fs::read(&path).map_err(at(&path))?;
    let file = File::open(&path).map_err(at(&path))?;
    let mut pos = 0usize;
    let mut files: HashMap<PathBuf, File> = HashMap::new();
    while pos < bytes.len() {
        if let Some(body) = record_at(&bytes, pos) {
            match parse_body(body) {
                Some(Rec::Group { parts, cursors }) => {
                    for p in &parts {
                        out.redone_bytes += redo(data_dir, p, &mut files)?;
                    }
                    out.cursors.extend(cursors);
                }
                Some(Rec::Snapshot { cursors }) => out.cursors.extend(cursors),
                None => {
                    tracing::warn!(path = %path.display(), offset = pos, "a journal record of an unknown kind; skipped")
                }
            }
            pos += HEAD_LEN + body.len();
            continue;
        }
        // Damage or a torn write: find the next intact record.
        let next = (pos + 1..bytes.len()).find(|&p| record_at(&bytes, p).is_some());
        let end = next.unwrap_or(bytes.len());
        let zeros = bytes[pos..end].iter().all(|&b| b == 0);
        if next.is_none() && zeros {
            tracing::warn!(path = %path.display(), offset = pos, bytes = end - pos, "ignoring zeros at the end of the journal");
        } else {
            let (copy, _) = damage.quarantine(&path, &file, pos as u64, end as u64)?;
            let what = if next.is_none() {
                "a torn or damaged record at the end of the journal (a group that was never acknowledged, or a damaged cursor: the source may repeat events)"
            } else {
                "damaged journal record (its cursors are lost: the source may repeat events)"
            };
            damage.report(&path, pos as u64, end as u64, 0, Some(&copy), what);
        }
        pos = end;
    }
    out.written = files.into_iter().collect();
    if out.redone_bytes > 0 {
        metrics::counter!("sluice_storage_redone_bytes_total").increment(out.redone_bytes);
        tracing::warn!(bytes = out.redone_bytes, "recovery rewrote segment bytes from the journal (an unclean stop)");
    }
    Ok(out)
}

/// Makes `p.bytes` be at `p.offset` of its segment if the segment still ends with a prefix of
/// them (a write cut short, or not made at all). A segment trimmed or rewritten since is left
/// alone. Returns the bytes written.
fn redo(data_dir: &Path, p: &Part<'_>, files: &mut HashMap<PathBuf, File>) -> Result<u64, StorageError> {
    let Ok(rel) = std::str::from_utf8(p.shard_dir) else { return Ok(0) };
    let shard_dir = data_dir.join(rel);
    if !shard_dir.is_dir() {
        return Ok(0);
    }
    let path = shard_dir.join(crate::segment::segment_file_name(p.seg_first));
    if !files.contains_key(&path) {
        let exists = path.exists();
        if !exists {
            // Create it only if it would be the shard's newest segment: an older one was
            // trimmed on purpose.
            let newer = std::fs::read_dir(&shard_dir)
                .map_err(at(&shard_dir))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse::<u64>().ok())
                .any(|first| first >= p.seg_first);
            if newer || p.offset != 0 {
                return Ok(0);
            }
        }
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(at(&path))?;
        files.insert(path.clone(), f);
    }
    let Some(f) = files.get(&path) else { return Ok(0) };
    let len = f.metadata().map_err(at(&path))?.len();
    if len < p.offset {
        return Ok(0);
    }
    let have = (len - p.offset).min(p.bytes.len() as u64) as usize;
    let mut existing = vec![0u8; have];
    f.read_exact_at(&mut existing, p.offset).map_err(at(&path))?;
    if existing[..] != p.bytes[..have] {
        // Some other bytes there: zeros of a write that never reached the disk are redone,
        // anything else (a segment rewritten since) is kept.
        let first_diff = existing.iter().zip(p.bytes).position(|(a, b)| a != b).unwrap_or(have);
        if existing[first_diff..].iter().any(|&b| b != 0) {
            return Ok(0);
        }
    } else if have == p.bytes.len() {
        return Ok(0);
    }
    f.write_all_at(p.bytes, p.offset).map_err(at(&path))?;
    Ok(p.bytes.len() as u64)
}

/// Opens the journal after recovery: the redone segments are made durable, and a new
/// generation starts with a snapshot of the recovered cursors (the old one is removed).
pub(crate) fn open_after(data_dir: &Path, rec: Recovery, sync: bool) -> Result<Journal, StorageError> {
    let dir = data_dir.join(JOURNAL_DIR);
    if sync {
        for (path, f) in &rec.written {
            f.sync_all().map_err(at(path))?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
        }
    }
    let generation = rec.generation + 1;
    let (path, file, len) = create_generation(&dir, generation, &rec.cursors, sync)?;
    if rec.generation > 0 || dir.join(file_name(0)).exists() {
        let _ = std::fs::remove_file(dir.join(file_name(rec.generation)));
    }
    Ok(Journal {
        dir,
        data_dir: data_dir.to_path_buf(),
        generation,
        path,
        file,
        len,
        buf: Vec::new(),
        parts: 0,
        dirty: HashMap::new(),
        cursors: rec.cursors,
        limit: CHECKPOINT_BYTES,
        last_checkpoint: std::time::Instant::now(),
        base_len: len,
    })
}
