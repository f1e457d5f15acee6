//! On-disk formats: segment files, record frames and the sealed-segment sidecar index.
//!
//! # Segment file `{first_ordinal:020}.seg`
//!
//! ```text
//! header  (16 bytes)  b"SLCSEG01" | first_ordinal u64
//! frame*              (back to back, no padding)
//! ```
//!
//! # Record frame (all integers little-endian)
//!
//! ```text
//! body_len  u32   length of everything after the crc field
//! crc       u32   CRC-32 (IEEE, crc32fast) of the body
//! body:
//!   ordinal     u64
//!   arrival_ms  u64
//!   pk_len      u32
//!   pk          pk_len bytes (UTF-8)
//!   data        body_len - 20 - pk_len bytes
//! ```
//!
//! The body carries its own ordinal so recovery can check continuity, and the CRC covers the
//! ordinal and timestamp as well as the payload.
//!
//! # Sidecar `{first_ordinal:020}.idx`
//!
//! Written once a segment is sealed (and durable), so startup can skip scanning it:
//!
//! ```text
//! b"SLCIDX01" | first_ordinal u64 | seg_len u64 | last_ordinal u64 | last_offset u64
//!             | last_arrival u64 | n u64 | n × (ordinal u64, arrival_ms u64, offset u64) | crc32 u32
//! ```
//!
//! It is trusted only if its CRC matches, `seg_len` equals the segment file's length and the
//! frame at `last_offset` decodes, verifies and carries `last_ordinal`; otherwise the segment is
//! scanned.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{StorageError, at};

/// Segment file magic.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLCSEG01";
/// Segment header length.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
/// `body_len` + `crc`.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// `ordinal` + `arrival_ms` + `pk_len`.
pub(crate) const BODY_FIXED_LEN: usize = 20;
/// The largest partition key + data a record may have (64 MiB, far above Kinesis' 10 MiB).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Frames whose body claims to be longer than this are corruption.
pub(crate) const MAX_BODY_LEN: usize = MAX_RECORD_BYTES + BODY_FIXED_LEN;

/// A sparse index entry is taken at the first record of a segment and then whenever this many
/// records ...
pub(crate) const INDEX_EVERY_RECORDS: u32 = 128;
/// ... or this many bytes have gone by since the previous entry.
pub(crate) const INDEX_EVERY_BYTES: u64 = 64 * 1024;

const SIDECAR_MAGIC: [u8; 8] = *b"SLCIDX01";
const SIDECAR_FIXED_LEN: usize = 8 * 7;

/// The file name of the segment starting at `first_ordinal`.
pub(crate) fn segment_file_name(first_ordinal: u64) -> String {
    format!("{first_ordinal:020}.seg")
}

/// The sidecar path of a segment path.
pub(crate) fn sidecar_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// The segment header for a segment starting at `first_ordinal`.
pub(crate) fn segment_header(first_ordinal: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&first_ordinal.to_le_bytes());
    h
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
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&ordinal.to_le_bytes());
    buf.extend_from_slice(&arrival_ms.to_le_bytes());
    buf.extend_from_slice(&(pk.len() as u32).to_le_bytes());
    buf.extend_from_slice(pk);
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
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
    /// The buffer holds only part of the frame; `need` bytes are needed in total (8 when not
    /// even the header is there).
    Incomplete {
        need: usize,
    },
    /// The bytes are not a valid frame.
    Corrupt(&'static str),
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

/// Decodes the frame at the start of `buf`, verifying its CRC.
#[inline]
pub(crate) fn decode_frame(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return Decoded::Incomplete { need: FRAME_HEADER_LEN };
    }
    let body_len = u32_at(buf, 0) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Decoded::Corrupt("frame length out of range");
    }
    let total = FRAME_HEADER_LEN + body_len;
    if buf.len() < total {
        return Decoded::Incomplete { need: total };
    }
    let body = &buf[FRAME_HEADER_LEN..total];
    if crc32fast::hash(body) != u32_at(buf, 4) {
        return Decoded::Corrupt("frame checksum mismatch");
    }
    let pk_len = u32_at(body, 16) as usize;
    if pk_len > body_len - BODY_FIXED_LEN {
        return Decoded::Corrupt("partition key length out of range");
    }
    Decoded::Frame(FrameRef {
        ordinal: u64_at(body, 0),
        arrival_ms: u64_at(body, 8),
        pk: &body[BODY_FIXED_LEN..BODY_FIXED_LEN + pk_len],
        data: &body[BODY_FIXED_LEN + pk_len..],
        frame_len: total,
    })
}

thread_local! {
    /// Per-thread read buffer, reused across reads so the hot read path does not allocate (or
    /// zero) a buffer per call.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Buffers larger than this are released after use rather than kept per thread.
const KEEP_READ_BUF: usize = 4 << 20;

/// Calls `f` for each frame in `[off, end)` of `file` until `f` breaks or `end` is reached.
/// The first pread asks for `first_chunk` bytes, each later one for twice as much up to
/// `max_chunk` (more if a single frame needs it). Frames are CRC-verified. Returns whether `f`
/// broke.
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
    F: FnMut(&FrameRef<'_>) -> ControlFlow<()>,
{
    READ_BUF.with(|cell| {
        let mut guard = match cell.try_borrow_mut() {
            Ok(g) => g,
            // Re-entrant use cannot happen in this crate; fall back to a private buffer anyway.
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
    F: FnMut(&FrameRef<'_>) -> ControlFlow<()>,
{
    let max_chunk = max_chunk.max(FRAME_HEADER_LEN);
    let mut want_chunk = first_chunk.clamp(FRAME_HEADER_LEN, max_chunk);
    while *off < end {
        let want = (end - *off).min(want_chunk as u64) as usize;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        file.read_exact_at(&mut buf[..want], *off).map_err(at(path))?;
        let mut p = 0usize;
        while p < want {
            match decode_frame(&buf[p..want]) {
                Decoded::Frame(fr) => {
                    if f(&fr).is_break() {
                        return Ok(true);
                    }
                    p += fr.frame_len;
                }
                Decoded::Incomplete { need } => {
                    if (need as u64) > end - (*off + p as u64) {
                        return Err(StorageError::Corrupt(format!(
                            "{}: frame at offset {} runs past the committed end",
                            path.display(),
                            *off + p as u64
                        )));
                    }
                    if p == 0 {
                        want_chunk = want_chunk.max(need);
                    }
                    break;
                }
                Decoded::Corrupt(why) => {
                    return Err(StorageError::Corrupt(format!(
                        "{}: {} at offset {}",
                        path.display(),
                        why,
                        *off + p as u64
                    )));
                }
            }
        }
        *off += p as u64;
        if p > 0 {
            want_chunk = want_chunk.saturating_mul(2).min(max_chunk).max(want_chunk);
        }
    }
    Ok(false)
}

/// What recovery learned about one segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentSummary {
    /// Length of the valid prefix (header + whole verified frames), or 0 without a valid header.
    pub valid_len: u64,
    pub entries: Vec<IndexEntry>,
    /// Number of records (0 if none).
    pub records: u64,
    pub last_ordinal: u64,
    pub last_offset: u64,
    pub last_arrival: u64,
    /// Index cursor state after the last record, to continue the index when appending.
    pub cursor: IndexCursor,
    /// Why the scan stopped before the end of the file, if it did.
    pub stop_reason: Option<String>,
}

/// Sequential reader with a large buffer, for recovery scans.
struct ChunkReader<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    buf_off: u64,
}

impl ChunkReader<'_> {
    fn get(&mut self, off: u64, len: usize) -> Result<&[u8], StorageError> {
        let have = off >= self.buf_off && off + len as u64 <= self.buf_off + self.buf.len() as u64;
        if !have {
            let n = (len.max(1 << 20) as u64).min(self.file_len - off) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, off).map_err(at(self.path))?;
            self.buf_off = off;
        }
        let s = (off - self.buf_off) as usize;
        Ok(&self.buf[s..s + len])
    }
}

/// Scans a whole segment, verifying every frame and ordinal continuity from `first_ordinal`.
pub(crate) fn scan_segment(file: &File, path: &Path, first_ordinal: u64) -> Result<SegmentSummary, StorageError> {
    let file_len = file.metadata().map_err(at(path))?.len();
    let mut s = SegmentSummary {
        valid_len: 0,
        entries: Vec::new(),
        records: 0,
        last_ordinal: first_ordinal.saturating_sub(1),
        last_offset: 0,
        last_arrival: 0,
        cursor: IndexCursor::fresh(),
        stop_reason: None,
    };
    if file_len < SEGMENT_HEADER_LEN {
        if file_len > 0 {
            s.stop_reason = Some("torn segment header".into());
        }
        return Ok(s);
    }
    let mut r = ChunkReader { file, path, file_len, buf: Vec::new(), buf_off: 0 };
    if r.get(0, SEGMENT_HEADER_LEN as usize)? != segment_header(first_ordinal) {
        s.stop_reason = Some("bad segment header".into());
        return Ok(s);
    }
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = first_ordinal;
    while off < file_len {
        if file_len - off < FRAME_HEADER_LEN as u64 {
            s.stop_reason = Some("torn frame header".into());
            break;
        }
        let body_len = u32_at(r.get(off, FRAME_HEADER_LEN)?, 0) as usize;
        if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
            s.stop_reason = Some("frame length out of range".into());
            break;
        }
        let total = FRAME_HEADER_LEN + body_len;
        if off + total as u64 > file_len {
            s.stop_reason = Some("torn frame".into());
            break;
        }
        let frame = match decode_frame(r.get(off, total)?) {
            Decoded::Frame(fr) => fr,
            Decoded::Incomplete { .. } => {
                s.stop_reason = Some("torn frame".into());
                break;
            }
            Decoded::Corrupt(why) => {
                s.stop_reason = Some(why.into());
                break;
            }
        };
        if frame.ordinal != expected {
            s.stop_reason = Some(format!("ordinal {} where {} was expected", frame.ordinal, expected));
            break;
        }
        if s.cursor.observe(total) {
            s.entries.push(IndexEntry { ordinal: frame.ordinal, arrival_ms: frame.arrival_ms, offset: off });
        }
        s.records += 1;
        s.last_ordinal = frame.ordinal;
        s.last_offset = off;
        s.last_arrival = s.last_arrival.max(frame.arrival_ms);
        expected += 1;
        off += total as u64;
    }
    s.valid_len = off;
    Ok(s)
}

/// Writes the sidecar of a sealed segment (temporary file + rename; not fsynced: a lost or
/// torn sidecar only costs a rescan).
pub(crate) fn write_sidecar(
    segment_path: &Path,
    first_ordinal: u64,
    seg_len: u64,
    last_ordinal: u64,
    last_offset: u64,
    last_arrival: u64,
    entries: &[IndexEntry],
) -> Result<(), StorageError> {
    let mut b = Vec::with_capacity(SIDECAR_FIXED_LEN + entries.len() * 24 + 4);
    b.extend_from_slice(&SIDECAR_MAGIC);
    for v in [first_ordinal, seg_len, last_ordinal, last_offset, last_arrival, entries.len() as u64] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for e in entries {
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
    let (first, seg_len, last_ordinal, last_offset, last_arrival, n) =
        (field(0), field(1), field(2), field(3), field(4), field(5));
    let n = usize::try_from(n).ok()?;
    if first != first_ordinal || payload.len() != SIDECAR_FIXED_LEN + n.checked_mul(24)? || n == 0 {
        return None;
    }
    let file_len = file.metadata().ok()?.len();
    if file_len != seg_len || last_offset >= seg_len || last_ordinal < first {
        return None;
    }
    // Verify the header and the last frame.
    let mut hdr = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut hdr, 0).ok()?;
    if hdr != segment_header(first_ordinal) {
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
    if entries[0].ordinal != first || entries[0].offset != SEGMENT_HEADER_LEN {
        return None;
    }
    Some(SegmentSummary {
        valid_len: seg_len,
        entries,
        records: last_ordinal - first + 1,
        last_ordinal,
        last_offset,
        last_arrival,
        // A sealed segment is never appended to again, so the cursor does not matter.
        cursor: IndexCursor::fresh(),
        stop_reason: None,
    })
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
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(matches!(decode_frame(&bad), Decoded::Corrupt(_)));
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
