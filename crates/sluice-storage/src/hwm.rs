//! The per-shard high-water mark file `HWM`: the guarantee that a shard never hands out an
//! ordinal (and so a sequence number) twice, whatever recovery has to discard.
//!
//! Two 32-byte slots written alternately (a torn write spoils at most the slot being written):
//!
//! ```text
//! seq u64 | value u64 | flags u64 (bit 0: exact) | crc32 u32 | 0 u32
//! ```
//!
//! While the store runs, `value` is a reservation: no ordinal at or above it has been handed
//! out (the writer extends it, in the same group commit, before any ordinal reaches it). A clean
//! shutdown writes the exact next ordinal with the `exact` flag. At open, recovery compares the
//! log with this mark: after a clean shutdown records missing at the end are measured exactly;
//! after a crash that cost bytes at the end of the log, ordinals skip to the reservation.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{StorageError, at};

/// The file name in a shard directory.
pub(crate) const HWM_FILE: &str = "HWM";
const SLOT: usize = 32;
/// How far ahead a reservation reaches.
pub(crate) const RESERVE: u64 = 1 << 16;

/// A mark read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub value: u64,
    /// Written by a clean shutdown: `value` is exactly the next ordinal.
    pub exact: bool,
}

/// An open mark file.
#[derive(Debug)]
pub(crate) struct HwmFile {
    pub path: Arc<Path>,
    pub file: Arc<File>,
    seq: u64,
}

fn encode(seq: u64, mark: Mark) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&mark.value.to_le_bytes());
    b[16..24].copy_from_slice(&u64::from(mark.exact).to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, Mark)> {
    let word = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[24..28]);
    if crc32fast::hash(&b[..24]) != u32::from_le_bytes(crc) || word(0) == 0 {
        return None;
    }
    Some((word(0), Mark { value: word(8), exact: word(16) & 1 == 1 }))
}

impl HwmFile {
    /// Opens (creating) the mark file of a shard directory and reads its newest valid slot.
    pub(crate) fn open(dir: &Path) -> Result<(HwmFile, Option<Mark>), StorageError> {
        let path: PathBuf = dir.join(HWM_FILE);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(at(&path))?;
        let mut b = [0u8; SLOT * 2];
        let len = file.metadata().map_err(at(&path))?.len() as usize;
        let n = len.min(SLOT * 2);
        file.read_exact_at(&mut b[..n], 0).map_err(at(&path))?;
        let best = [decode(&b[..SLOT]), decode(&b[SLOT..])].into_iter().flatten().max_by_key(|(seq, _)| *seq);
        if best.is_none() && len > 0 {
            tracing::warn!(path = %path.display(), "high-water mark file unreadable; sequence numbers rely on the log alone");
        }
        let seq = best.map_or(0, |(s, _)| s);
        Ok((HwmFile { path: path.into(), file: Arc::new(file), seq }, best.map(|(_, m)| m)))
    }

    /// Writes `mark` into the older slot (not synced; the caller syncs `file`).
    pub(crate) fn write(&mut self, mark: Mark) -> Result<(), StorageError> {
        self.seq += 1;
        let slot = (self.seq % 2) * SLOT as u64;
        self.file.write_all_at(&encode(self.seq, mark), slot).map_err(at(&self.path))
    }

    /// Writes and syncs.
    pub(crate) fn write_durably(&mut self, mark: Mark) -> Result<(), StorageError> {
        self.write(mark)?;
        self.file.sync_data().map_err(at(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_slot_wins_and_a_torn_slot_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut h, m) = HwmFile::open(dir.path()).expect("open");
        assert_eq!(m, None);
        h.write_durably(Mark { value: 10, exact: false }).expect("w");
        h.write_durably(Mark { value: 20, exact: true }).expect("w");
        let (_, m) = HwmFile::open(dir.path()).expect("open");
        assert_eq!(m, Some(Mark { value: 20, exact: true }));
        // Spoil the newer slot (seq 2 lives in slot 0): the older one is used.
        h.file.write_all_at(&[0xff; 4], 4).expect("spoil");
        let (_, m) = HwmFile::open(dir.path()).expect("open");
        assert_eq!(m, Some(Mark { value: 10, exact: false }));
    }
}
