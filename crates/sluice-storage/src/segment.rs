//! On-disk formats: segment files, record frames and the sealed-segment sidecar index.
//!
//! # Segment file `{first_ordinal:020}.seg`
//!
//! ```text
//! header  (32 bytes)  b"SLCSEG02" | first_ordinal u64 | prev_last u64 | crc32 u32 | 0 u32
//! frame*              (back to back, no padding)
//! ```
//!
//! `prev_last` is the last ordinal of the shard's previous segment when this one was created
//! (`first_ordinal - 1` unless ordinals were skipped): recovery compares it with what the
//! previous segment really ends with, so a missing or cut segment is measured, not guessed.
//! The crc covers the first 24 bytes.
//!
//! # Record frame (all integers little-endian)
//!
//! ```text
//! magic     u32   FRAME_MAGIC, so a reader can find the next frame after damage
//! body_len  u32
//! ordinal   u64
//! body_crc  u32   CRC-32 (IEEE, crc32fast) of the body
//! head_crc  u32   CRC-32 of the 20 bytes before it
//! body:
//!   arrival_ms  u64
//!   pk_len      u32
//!   pk          pk_len bytes (UTF-8)
//!   data        body_len - 12 - pk_len bytes
//! ```
//!
//! The header has its own checksum so that after damage a scan can resynchronise: a position
//! holding the magic and a valid header checksum (and then a valid body checksum) is a frame.
//! A frame whose body is damaged still names its ordinal, so losses are counted exactly.
//! Ordinals strictly increase along a shard; they may skip (after damage, or when ordinals
//! reserved before an unclean shutdown are skipped so that none is ever reused).
//!
//! Version 1 segments (`SLCSEG01`, 8-byte frame headers without magic) are rewritten in this
//! format when a store opens them.
//!
//! # Sidecar `{first_ordinal:020}.idx`
//!
//! Written once a segment is sealed (and durable), so startup can skip scanning it:
//!
//! ```text
//! b"SLCIDX02" | first_ordinal u64 | seg_len u64 | last_ordinal u64 | last_offset u64
//!             | last_arrival u64 | records u64 | n u64 | n × (ordinal u64, arrival_ms u64, offset u64) | crc32 u32
//! ```
//!
//! It is trusted only if its CRC matches, `seg_len` equals the segment file's length and the
//! frame at `last_offset` decodes, verifies and carries `last_ordinal`; otherwise the segment is
//! scanned. A segment trusted this way is still verified in full by a background check.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{StorageError, at};

/// Segment file magic.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLCSEG02";
/// Version 1 segment magic (migrated at open).
pub(crate) const SEGMENT_MAGIC_V1: [u8; 8] = *b"SLCSEG01";
/// Segment header length.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// First bytes of every frame.
pub(crate) const FRAME_MAGIC: [u8; 4] = [0xF7, 0x5C, 0x1C, 0xE5];
/// `magic` + `body_len` + `ordinal` + `body_crc` + `head_crc`.
pub(crate) const FRAME_HEADER_LEN: usize = 24;
/// `arrival_ms` + `pk_len`.
pub(crate) const BODY_FIXED_LEN: usize = 12;
/// The largest partition key + data a record may have (64 MiB, far above Kinesis' 10 MiB).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Frames whose body claims to be longer than this are corruption.
pub(crate) const MAX_BODY_LEN: usize = MAX_RECORD_BYTES + BODY_FIXED_LEN;

/// A sparse index entry is taken at the first record of a segment and then whenever this many
/// records ...
pub(crate) const INDEX_EVERY_RECORDS: u32 = 128;
/// ... or this many bytes have gone by since the previous entry.
pub(crate) const INDEX_EVERY_BYTES: u64 = 64 * 1024;

const SIDECAR_MAGIC: [u8; 8] = *b"SLCIDX02";
const SIDECAR_FIXED_LEN: usize = 8 * 8;

/// The file name of the segment starting at `first_ordinal`.
pub(crate) fn segment_file_name(first_ordinal: u64) -> String {
    format!("{first_ordinal:020}.seg")
}

/// The sidecar path of a segment path.
pub(crate) fn sidecar_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// The segment header for a segment starting at `first_ordinal` whose predecessor ended at
/// `prev_last`.
pub(crate) fn segment_header(first_ordinal: u64, prev_last: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&first_ordinal.to_le_bytes());
    h[16..24].copy_from_slice(&prev_last.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// A valid version 2 header.
    V2 { first_ordinal: u64, prev_last: u64 },
    /// A version 1 segment.
    V1,
    /// Not a valid header (damaged or torn).
    Bad,
}

impl Header {
    /// The ordinal before a segment's records, per its header (`first_ordinal - 1` when the
    /// header is not a valid one for a segment named `first_ordinal`).
    pub(crate) fn prev_last(&self, first_ordinal: u64) -> u64 {
        match *self {
            Header::V2 { first_ordinal: f, prev_last } if f == first_ordinal && prev_last < first_ordinal => prev_last,
            _ => first_ordinal - 1,
        }
    }
}

/// Parses the first bytes of a segment file.
pub(crate) fn parse_header(b: &[u8]) -> Header {
    if b.len() >= 16 && b[..8] == SEGMENT_MAGIC_V1 {
        return Header::V1;
    }
    if b.len() < SEGMENT_HEADER_LEN as usize || b[..8] != SEGMENT_MAGIC {
        return Header::Bad;
    }
    if crc32fast::hash(&b[..24]) != u32_at(b, 24) {
        return Header::Bad;
    }
    Header::V2 { first_ordinal: u64_at(b, 8), prev_last: u64_at(b, 16) }
}

/// One sparse index entry: where a record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub ordinal: u64,
    pub arrival_ms: u64,
    /// Byte offset of the frame inside its segment.
    pub offset: u64,
}

/// Decides which records get a sparse index entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexCursor {
    fresh: bool,
    records: u32,
    bytes: u64,
}

impl IndexCursor {
    /// A cursor at the start of a segment (its first record gets an entry).
    pub(crate) fn fresh() -> IndexCursor {
        IndexCursor { fresh: true, records: 0, bytes: 0 }
    }

    /// Accounts one frame of `frame_len` bytes; true if it gets an index entry.
    #[inline]
    pub(crate) fn observe(&mut self, frame_len: usize) -> bool {
        let take = self.fresh || self.records >= INDEX_EVERY_RECORDS || self.bytes >= INDEX_EVERY_BYTES;
        if take {
            *self = IndexCursor { fresh: false, records: 0, bytes: 0 };
        }
        self.records += 1;
        self.bytes += frame_len as u64;
        take
    }
}

/// Total frame length for a key and data of these sizes.
#[inline]
pub(crate) fn frame_len(pk_len: usize, data_len: usize) -> usize {
    FRAME_HEADER_LEN + BODY_FIXED_LEN + pk_len + data_len
}

/// Appends one encoded frame to `buf`. The caller has checked the size limit.
#[inline]
pub(crate) fn encode_frame(buf: &mut Vec<u8>, ordinal: u64, arrival_ms: u64, pk: &[u8], data: &[u8]) {
    let body_len = BODY_FIXED_LEN + pk.len() + data.len();
    let start = buf.len();
    buf.reserve(FRAME_HEADER_LEN + body_len);
    buf.extend_from_slice(&FRAME_MAGIC);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&ordinal.to_le_bytes());
    buf.extend_from_slice(&[0u8; 8]);
    buf.extend_from_slice(&arrival_ms.to_le_bytes());
    buf.extend_from_slice(&(pk.len() as u32).to_le_bytes());
    buf.extend_from_slice(pk);
    buf.extend_from_slice(data);
    let body_crc = crc32fast::hash(&buf[start + FRAME_HEADER_LEN..]);
    buf[start + 16..start + 20].copy_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc32fast::hash(&buf[start..start + 20]);
    buf[start + 20..start + 24].copy_from_slice(&head_crc.to_le_bytes());
}

/// A decoded frame borrowing its buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRef<'a> {
    pub ordinal: u64,
    pub arrival_ms: u64,
    pub pk: &'a [u8],
    pub data: &'a [u8],
    /// Header + body length.
    pub frame_len: usize,
}

/// The outcome of decoding at the start of a buffer.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    Frame(FrameRef<'a>),
    /// The buffer holds only part of the frame; `need` bytes are needed in total (the header
    /// length when not even the header is there).
    Incomplete {
        need: usize,
    },
    /// The bytes are not a valid frame (why, for debugging).
    Corrupt(#[allow(dead_code)] &'static str),
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[inline]
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Whether `b` (at least a header long) starts with a valid frame header; returns the body
/// length and ordinal.
#[inline]
fn valid_header(b: &[u8]) -> Option<(usize, u64)> {
    if b[..4] != FRAME_MAGIC || crc32fast::hash(&b[..20]) != u32_at(b, 20) {
        return None;
    }
    let body_len = u32_at(b, 4) as usize;
    (BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len).then(|| (body_len, u64_at(b, 8)))
}

/// Decodes the frame at the start of `buf`, verifying both checksums.
#[inline]
pub(crate) fn decode_frame(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return Decoded::Incomplete { need: FRAME_HEADER_LEN };
    }
    let Some((body_len, ordinal)) = valid_header(buf) else {
        return Decoded::Corrupt("bad frame header");
    };
    let total = FRAME_HEADER_LEN + body_len;
    if buf.len() < total {
        return Decoded::Incomplete { need: total };
    }
    let body = &buf[FRAME_HEADER_LEN..total];
    if crc32fast::hash(body) != u32_at(buf, 16) {
        return Decoded::Corrupt("frame checksum mismatch");
    }
    let pk_len = u32_at(body, 8) as usize;
    if pk_len > body_len - BODY_FIXED_LEN {
        return Decoded::Corrupt("partition key length out of range");
    }
    Decoded::Frame(FrameRef {
        ordinal,
        arrival_ms: u64_at(body, 0),
        pk: &body[BODY_FIXED_LEN..BODY_FIXED_LEN + pk_len],
        data: &body[BODY_FIXED_LEN + pk_len..],
        frame_len: total,
    })
}

/// The first position at or after `from` where a valid frame header starts: `Ok(pos)`, or
/// `Err(pos)` when the buffer ends before one could be checked (a header could start at `pos`
/// or later, so scanning continues there with more bytes).
fn find_header(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut q = from;
    while q + FRAME_HEADER_LEN <= buf.len() {
        match buf[q..buf.len() - FRAME_HEADER_LEN + 4].windows(4).position(|w| w == FRAME_MAGIC) {
            None => return Err(buf.len() - FRAME_HEADER_LEN + 1),
            Some(i) => {
                q += i;
                if valid_header(&buf[q..]).is_some() {
                    return Ok(q);
                }
                q += 1;
            }
        }
    }
    Err(q.max(from))
}

/// The ordinals of frames whose header is intact inside damaged bytes (their bodies may not
/// be): counts records lost in a damaged range.
pub(crate) fn header_ordinals(damaged: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut q = 0;
    while let Ok(p) = find_header(damaged, q) {
        if let Some((_, ordinal)) = valid_header(&damaged[p..]) {
            out.push(ordinal);
        }
        q = p + 1;
    }
    out
}

/// Whether the damaged bytes at the end of the newest segment (`bytes`, from offset `start` to
/// the end of a file of `file_len` bytes) are a torn write: zeros, a partial segment header, a
/// partial frame header, or one frame whose header is intact but whose body runs past the end.
pub(crate) fn is_torn_tail(bytes: &[u8], start: u64, file_len: u64) -> bool {
    if bytes.iter().all(|&b| b == 0) || bytes.len() < FRAME_HEADER_LEN {
        return true;
    }
    if start == 0 && file_len < SEGMENT_HEADER_LEN {
        return true;
    }
    match valid_header(bytes) {
        Some((body_len, _)) => {
            start + (FRAME_HEADER_LEN + body_len) as u64 > file_len && header_ordinals(bytes).len() == 1
        }
        None => false,
    }
}

/// What a scan meets: a verified frame, or a damaged byte range that was skipped.
#[derive(Debug)]
pub(crate) enum Scanned<'a> {
    /// A frame and its offset in the file.
    Frame(FrameRef<'a>, u64),
    /// Bytes `[start, end)` of the file hold no verifiable frame.
    Damage { start: u64, end: u64 },
}

thread_local! {
    /// Per-thread read buffer, reused across reads so the hot read path does not allocate (or
    /// zero) a buffer per call.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Buffers larger than this are released after use rather than kept per thread.
const KEEP_READ_BUF: usize = 4 << 20;

/// Calls `f` for each verified frame and each damaged range in `[off, end)` of `file` until
/// `f` breaks or `end` is reached. After damage the scan resynchronises on the next valid
/// frame. The first pread asks for `first_chunk` bytes, each later one for twice as much up
/// to `max_chunk` (more if a single frame needs it). Returns whether `f` broke.
pub(crate) fn scan_frames<F>(
    file: &File,
    path: &Path,
    mut off: u64,
    end: u64,
    first_chunk: usize,
    max_chunk: usize,
    mut f: F,
) -> Result<bool, StorageError>
where
    F: FnMut(Scanned<'_>) -> ControlFlow<()>,
{
    READ_BUF.with(|cell| {
        let mut guard = match cell.try_borrow_mut() {
            Ok(g) => g,
            // Re-entrant use (a scan inside a scan callback): use a private buffer.
            Err(_) => return scan_with(&mut Vec::new(), file, path, &mut off, end, (first_chunk, max_chunk), &mut f),
        };
        let r = scan_with(&mut guard, file, path, &mut off, end, (first_chunk, max_chunk), &mut f);
        if guard.capacity() > KEEP_READ_BUF {
            *guard = Vec::new();
        }
        r
    })
}

fn scan_with<F>(
    buf: &mut Vec<u8>,
    file: &File,
    path: &Path,
    off: &mut u64,
    end: u64,
    (first_chunk, max_chunk): (usize, usize),
    f: &mut F,
) -> Result<bool, StorageError>
where
    F: FnMut(Scanned<'_>) -> ControlFlow<()>,
{
    let max_chunk = max_chunk.max(FRAME_HEADER_LEN * 2);
    let mut want_chunk = first_chunk.clamp(FRAME_HEADER_LEN * 2, max_chunk);
    let mut damage: Option<u64> = None;
    'outer: while *off < end {
        let want = (end - *off).min(want_chunk as u64) as usize;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        file.read_exact_at(&mut buf[..want], *off).map_err(at(path))?;
        let mut p = 0usize;
        while p < want {
            let here = *off + p as u64;
            match decode_frame(&buf[p..want]) {
                Decoded::Frame(fr) => {
                    if let Some(start) = damage.take()
                        && f(Scanned::Damage { start, end: here }).is_break()
                    {
                        return Ok(true);
                    }
                    if f(Scanned::Frame(fr, here)).is_break() {
                        return Ok(true);
                    }
                    p += fr.frame_len;
                    continue;
                }
                Decoded::Incomplete { need } if need as u64 <= end - here => {
                    if p == 0 {
                        want_chunk = want_chunk.max(need);
                    }
                    break;
                }
                // Corrupt, or a frame that cannot end before `end` (a cut file, a bad length).
                _ => {}
            }
            damage.get_or_insert(here);
            match find_header(&buf[..want], p + 1) {
                Ok(q) => p = q,
                Err(q) => {
                    if *off + (q + FRAME_HEADER_LEN) as u64 > end {
                        // Too few bytes left for any frame: the damage runs to the end.
                        *off = end;
                        break 'outer;
                    }
                    p = q;
                    break;
                }
            }
        }
        *off += p as u64;
        if p > 0 && damage.is_none() {
            want_chunk = want_chunk.saturating_mul(2).min(max_chunk).max(want_chunk);
        }
    }
    if let Some(start) = damage
        && f(Scanned::Damage { start, end }).is_break()
    {
        return Ok(true);
    }
    Ok(false)
}

/// A damaged byte range found by a full scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DamageRange {
    pub start: u64,
    pub end: u64,
    /// The last intact ordinal before it (0 if none in this segment).
    pub after: u64,
    /// The first intact ordinal after it in this segment, if any.
    pub before: Option<u64>,
}

impl DamageRange {
    /// The last intact ordinal before the range, or the one before the segment's records.
    pub(crate) fn after_or(&self, first_ordinal: u64) -> u64 {
        if self.after == 0 { first_ordinal - 1 } else { self.after }
    }

    /// Records lost inside a segment whose records start at `first_ordinal`, measured by the
    /// intact records around the range (0 for a range at the end).
    pub(crate) fn lost_inside(&self, first_ordinal: u64) -> u64 {
        self.before.map_or(0, |b| b.saturating_sub(self.after_or(first_ordinal) + 1))
    }
}

/// What a full scan learned about one segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentSummary {
    pub header: Header,
    /// File length.
    pub file_len: u64,
    /// End of the last verified frame (the header length if none).
    pub valid_len: u64,
    pub entries: Vec<IndexEntry>,
    /// Number of verified records.
    pub records: u64,
    /// First verified ordinal (0 if none).
    pub first_seen: u64,
    pub last_ordinal: u64,
    pub last_offset: u64,
    pub last_arrival: u64,
    /// Index cursor state after the last record, to continue the index when appending.
    pub cursor: IndexCursor,
    /// Damaged ranges, in file order (the last one may reach the end of the file).
    pub damage: Vec<DamageRange>,
    /// Frames whose ordinal did not increase (dropped as damage, listed by offset).
    pub out_of_order: u64,
}

impl SegmentSummary {
    /// Whether anything is wrong with the segment.
    pub(crate) fn is_clean(&self) -> bool {
        matches!(self.header, Header::V2 { .. }) && self.damage.is_empty() && self.out_of_order == 0
    }
}

/// Scans a whole segment, verifying every frame, skipping (and listing) damage.
pub(crate) fn scan_segment(file: &File, path: &Path) -> Result<SegmentSummary, StorageError> {
    let file_len = file.metadata().map_err(at(path))?.len();
    let mut hdr = vec![0u8; (SEGMENT_HEADER_LEN.min(file_len)) as usize];
    file.read_exact_at(&mut hdr, 0).map_err(at(path))?;
    let header = parse_header(&hdr);
    let mut s = SegmentSummary {
        header,
        file_len,
        valid_len: SEGMENT_HEADER_LEN.min(file_len),
        entries: Vec::new(),
        records: 0,
        first_seen: 0,
        last_ordinal: 0,
        last_offset: 0,
        last_arrival: 0,
        cursor: IndexCursor::fresh(),
        damage: Vec::new(),
        out_of_order: 0,
    };
    if header == Header::V1 {
        return Ok(s);
    }
    // A damaged header is damage too, but the frames after it are still found.
    let start = if header == Header::Bad { 0 } else { SEGMENT_HEADER_LEN };
    if header == Header::Bad {
        s.valid_len = 0;
    }
    let mut pending: Option<(u64, u64)> = None;
    scan_frames(file, path, start, file_len, 1 << 20, 4 << 20, |item| {
        match item {
            Scanned::Damage { start, end } => pending = Some((start, end)),
            Scanned::Frame(fr, off) => {
                if s.records > 0 && fr.ordinal <= s.last_ordinal {
                    // An old frame where a newer one should be: treat its bytes as damage.
                    s.out_of_order += 1;
                    let (ds, _) = pending.unwrap_or((off, off));
                    pending = Some((ds, off + fr.frame_len as u64));
                    return ControlFlow::Continue(());
                }
                if let Some((ds, de)) = pending.take() {
                    s.damage.push(DamageRange { start: ds, end: de, after: s.last_ordinal, before: Some(fr.ordinal) });
                    // The index restarts after damage so that locating never scans across it.
                    s.cursor = IndexCursor::fresh();
                }
                if s.cursor.observe(fr.frame_len) {
                    s.entries.push(IndexEntry { ordinal: fr.ordinal, arrival_ms: fr.arrival_ms, offset: off });
                }
                if s.records == 0 {
                    s.first_seen = fr.ordinal;
                }
                s.records += 1;
                s.last_ordinal = fr.ordinal;
                s.last_offset = off;
                s.last_arrival = s.last_arrival.max(fr.arrival_ms);
                s.valid_len = off + fr.frame_len as u64;
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some((ds, de)) = pending {
        s.damage.push(DamageRange { start: ds, end: de, after: s.last_ordinal, before: None });
    }
    Ok(s)
}

/// Writes the sidecar of a sealed segment (temporary file + rename; not fsynced: a lost or
/// torn sidecar only costs a rescan).
pub(crate) fn write_sidecar(segment_path: &Path, first_ordinal: u64, s: &SidecarInfo<'_>) -> Result<(), StorageError> {
    let mut b = Vec::with_capacity(SIDECAR_FIXED_LEN + s.entries.len() * 24 + 4);
    b.extend_from_slice(&SIDECAR_MAGIC);
    for v in
        [first_ordinal, s.seg_len, s.last_ordinal, s.last_offset, s.last_arrival, s.records, s.entries.len() as u64]
    {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for e in s.entries {
        b.extend_from_slice(&e.ordinal.to_le_bytes());
        b.extend_from_slice(&e.arrival_ms.to_le_bytes());
        b.extend_from_slice(&e.offset.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = sidecar_path(segment_path);
    let tmp = path.with_extension("idx.tmp");
    let mut f = File::create(&tmp).map_err(at(&tmp))?;
    f.write_all(&b).map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(at(&path))?;
    Ok(())
}

/// What a sidecar records about a sealed segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SidecarInfo<'a> {
    pub seg_len: u64,
    pub last_ordinal: u64,
    pub last_offset: u64,
    pub last_arrival: u64,
    pub records: u64,
    pub entries: &'a [IndexEntry],
}

/// Loads and validates the sidecar of a segment; `None` if missing or not trustworthy.
pub(crate) fn read_sidecar(segment_path: &Path, file: &File, first_ordinal: u64) -> Option<SegmentSummary> {
    let path = sidecar_path(segment_path);
    let b = std::fs::read(&path).ok()?;
    if b.len() < SIDECAR_FIXED_LEN + 4 || b[..8] != SIDECAR_MAGIC {
        return None;
    }
    let (payload, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(payload) != u32_at(crc, 0) {
        return None;
    }
    let field = |i: usize| u64_at(payload, 8 + i * 8);
    let (first, seg_len, last_ordinal, last_offset, last_arrival, records, n) =
        (field(0), field(1), field(2), field(3), field(4), field(5), field(6));
    let n = usize::try_from(n).ok()?;
    if first != first_ordinal || payload.len() != SIDECAR_FIXED_LEN + n.checked_mul(24)? || n == 0 || records == 0 {
        return None;
    }
    let file_len = file.metadata().ok()?.len();
    if file_len != seg_len || last_offset >= seg_len || last_ordinal < first {
        return None;
    }
    // Verify the header and the last frame.
    let mut hdr = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut hdr, 0).ok()?;
    let header = parse_header(&hdr);
    if !matches!(header, Header::V2 { first_ordinal: f, .. } if f == first_ordinal) {
        return None;
    }
    let tail_len = usize::try_from(seg_len - last_offset).ok()?;
    if tail_len > FRAME_HEADER_LEN + MAX_BODY_LEN {
        return None;
    }
    let mut tail = vec![0u8; tail_len];
    file.read_exact_at(&mut tail, last_offset).ok()?;
    match decode_frame(&tail) {
        Decoded::Frame(fr) if fr.frame_len == tail_len && fr.ordinal == last_ordinal => {}
        _ => return None,
    }
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let at = SIDECAR_FIXED_LEN + i * 24;
        entries.push(IndexEntry {
            ordinal: u64_at(payload, at),
            arrival_ms: u64_at(payload, at + 8),
            offset: u64_at(payload, at + 16),
        });
    }
    if entries[0].ordinal < first || entries[0].offset != SEGMENT_HEADER_LEN {
        return None;
    }
    Some(SegmentSummary {
        header,
        file_len,
        valid_len: seg_len,
        first_seen: entries[0].ordinal,
        entries,
        records,
        last_ordinal,
        last_offset,
        last_arrival,
        // A sealed segment is never appended to again, so the cursor does not matter.
        cursor: IndexCursor::fresh(),
        damage: Vec::new(),
        out_of_order: 0,
    })
}

/// Rewrites a version 1 segment (`SLCSEG01`: `len u32 | crc u32 | ordinal u64 | arrival u64 |
/// pk_len u32 | pk | data` frames) in the current format; stops at the first frame that does
/// not verify (version 1 recovery truncated there too). Returns the records kept.
pub(crate) fn migrate_v1(path: &Path, first_ordinal: u64, prev_last: u64) -> Result<u64, StorageError> {
    let old = std::fs::read(path).map_err(at(path))?;
    let mut out = Vec::with_capacity(old.len() + old.len() / 4);
    out.extend_from_slice(&segment_header(first_ordinal, prev_last));
    let mut p = 16usize;
    let mut kept = 0u64;
    let mut expected = first_ordinal;
    while p + 28 <= old.len() {
        let body_len = u32_at(&old, p) as usize;
        if !(20..=MAX_RECORD_BYTES + 20).contains(&body_len) || p + 8 + body_len > old.len() {
            break;
        }
        let body = &old[p + 8..p + 8 + body_len];
        let pk_len = u32_at(body, 16) as usize;
        if crc32fast::hash(body) != u32_at(&old, p + 4) || pk_len > body_len - 20 || u64_at(body, 0) != expected {
            break;
        }
        encode_frame(&mut out, expected, u64_at(body, 8), &body[20..20 + pk_len], &body[20 + pk_len..]);
        kept += 1;
        expected += 1;
        p += 8 + body_len;
    }
    if p < old.len() {
        tracing::warn!(path = %path.display(), bytes = old.len() - p, "version 1 segment: dropped a torn or corrupt tail while migrating");
    }
    let tmp = path.with_extension("seg.tmp");
    let mut f = File::create(&tmp).map_err(at(&tmp))?;
    f.write_all(&out).and_then(|()| f.sync_all()).map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    let _ = std::fs::remove_file(sidecar_path(path));
    tracing::info!(path = %path.display(), records = kept, "migrated a version 1 segment to version 2");
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 1234, b"key", b"hello");
        encode_frame(&mut buf, 8, 1235, b"", b"");
        assert_eq!(buf.len(), frame_len(3, 5) + frame_len(0, 0));
        let Decoded::Frame(a) = decode_frame(&buf) else { panic!("first frame") };
        assert_eq!((a.ordinal, a.arrival_ms, a.pk, a.data), (7, 1234, &b"key"[..], &b"hello"[..]));
        let Decoded::Frame(b) = decode_frame(&buf[a.frame_len..]) else { panic!("second frame") };
        assert_eq!((b.ordinal, b.pk.len(), b.data.len()), (8, 0, 0));
        assert!(matches!(decode_frame(&buf[..a.frame_len - 1]), Decoded::Incomplete { .. }));
        for at in [0, 5, 9, 17, 22, 30] {
            let mut bad = buf.clone();
            bad[at] ^= 1;
            assert!(matches!(decode_frame(&bad), Decoded::Corrupt(_)), "flip at {at}");
        }
    }

    #[test]
    fn a_scan_resynchronises_on_the_next_intact_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.seg");
        let mut buf = segment_header(1, 0).to_vec();
        let mut offs = Vec::new();
        for i in 1..=50u64 {
            offs.push(buf.len());
            // Payloads that contain the frame magic must not fool the scan.
            let mut data = FRAME_MAGIC.repeat(8);
            data.extend_from_slice(&[i as u8; 40]);
            encode_frame(&mut buf, i, 1000 + i, b"k", &data);
        }
        buf[offs[9] + 40] ^= 0xff; // frame 10's body
        buf[offs[19] + 2] ^= 0xff; // frame 20's magic
        buf[offs[29] + 9] ^= 0xff; // frame 30's ordinal (header checksum)
        buf.truncate(offs[49] + 30); // frame 50 cut
        std::fs::write(&path, &buf).expect("write");
        let file = File::open(&path).expect("open");
        let s = scan_segment(&file, &path).expect("scan");
        assert_eq!(s.records, 46);
        assert_eq!(s.last_ordinal, 49);
        let ranges: Vec<(u64, u64, u64, Option<u64>)> =
            s.damage.iter().map(|r| (r.start, r.end, r.after, r.before)).collect();
        let at = |i: usize| offs[i] as u64;
        assert_eq!(
            ranges,
            vec![
                (at(9), at(10), 9, Some(11)),
                (at(19), at(20), 19, Some(21)),
                (at(29), at(30), 29, Some(31)),
                (at(49), buf.len() as u64, 49, None),
            ]
        );
        assert_eq!(header_ordinals(&buf[offs[49]..]), vec![50]);
        assert!(is_torn_tail(&buf[offs[49]..], at(49), buf.len() as u64));
        assert!(!is_torn_tail(&buf[offs[9]..offs[10]], at(9), buf.len() as u64));
    }

    #[test]
    fn index_cursor_takes_first_and_every_128() {
        let mut c = IndexCursor::fresh();
        let taken: Vec<usize> = (0..300).filter(|_| c.observe(100)).collect();
        assert_eq!(taken, vec![0, 128, 256]);
        let mut c = IndexCursor::fresh();
        let taken: Vec<usize> = (0..4).filter(|_| c.observe(40_000)).collect();
        assert_eq!(taken, vec![0, 2]);
    }
}
