//! sluice's storage engine: durable per-shard append-only logs plus the stream catalog.
//!
//! # What this crate owns
//!
//! Everything under the data directory:
//!
//! ```text
//! data_dir/
//!   LOCK                      flock'ed while a Store is open (second opener: StorageError::Locked)
//!   secret.key                32 random bytes, created once (iterator signing key)
//!   catalog.json              the Catalog (streams, shards, ...) with a checksum, replaced atomically
//!   catalog.bak.json          an identical copy, used when catalog.json is damaged
//!   quarantine/               copies of damaged bytes, named after the file and offsets they came from
//!   journal/{gen:020}.wal     the write-ahead journal (one generation at a time), see `journal`
//!   streams/{name}.{tag:08x}/ one directory per stream incarnation
//!     {index:012}/            one directory per shard
//!       {ordinal:020}.seg     segments, named by the ordinal of their first record
//!       {ordinal:020}.idx     sparse index sidecar of a sealed segment (optional, for fast startup)
//!       HWM                   high-water mark: no ordinal is ever handed out twice
//! ```
//!
//! The frame and file formats are documented in the `segment` module (source); in short each
//! record is `magic u32 | len u32 | ordinal u64 | body_crc u32 | head_crc u32 | arrival_ms u64 |
//! pk_len u32 | pk | data`, so a scan can find the next intact frame after damage.
//!
//! # How data enters
//!
//! [`Store::append`] queues the call for the single group-commit thread. That thread takes every
//! pending call at once, assigns each record its shard's next ordinal (increasing, starting at
//! 1, never reused; ordinals skip only where damage cost records or after an unclean shutdown
//! that cost bytes at the end of the log) and an arrival time (`max(now, previous)`, so non-decreasing per shard), encodes
//! the frames into one buffer per shard, writes them **once into the journal** (one write for
//! the whole group, with the cursors of [`Store::append_committed`]), then into each touched
//! segment (page cache), fdatasyncs **the journal alone** ([`Durability::Fsync`]; plus, rarely,
//! a high-water mark or a directory), publishes the new committed lengths and sparse index
//! entries to readers, bumps the shard watches, and answers the callers. Segments are
//! fdatasync'ed at journal checkpoints (every 64 MiB of journal, at a clean stop, and when a
//! segment is sealed). So one fsync covers a group however many shards it touched, and a kill at
//! any moment leaves records and cursors together: recovery rewrites from the journal whatever
//! segment bytes are missing. With [`StoreConfig::linger`] the commit thread waits briefly for
//! more appends before writing a small group.
//! A call is all-or-nothing: if any record targets a closed or unknown shard, none of its records
//! is appended. A failed write or fsync (e.g. a full disk) rolls every shard of the group back to
//! its last committed length and fails the group's calls; the store stays usable.
//!
//! The catalog changes only through [`Store::mutate_catalog`], which creates logs for new shards,
//! closes shards between two commit groups, deletes removed streams' data and persists the
//! catalog atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! # How data leaves
//!
//! [`Store::read`] (and [`Store::seek_timestamp`]) snapshot a position under a short read lock —
//! a binary search in the in-memory sparse index (one entry per 128 records or 64 KiB) — then
//! `pread` the segment up to the committed length without holding any lock, so readers never
//! wait for writes or fsyncs. [`Store::watch`] lets push consumers sleep until a commit.
//! [`Store::enforce_retention`] (run every 60 s by a background thread unless
//! [`StoreConfig::retention_thread`] is off) deletes whole sealed segments older than the
//! stream's retention; [`Store::trim_below`] and [`Store::trim_older_than`] trim one shard on
//! demand (by ordinal, by age), for owners that decide themselves what may go.
//!
//! # Recovery and damage
//!
//! Damage costs only the damaged bytes. [`Store::open`] scans and checks every segment that has
//! no trustworthy sidecar (always the newest one). A frame that fails its checksums is skipped
//! by resynchronising on the next intact frame; each damaged range is copied to
//! `data_dir/quarantine/`, logged once with the file, offsets and records lost, counted
//! (`sluice_storage_corrupt_records_total`, `sluice_storage_quarantined_bytes_total`,
//! [`Store::damage`]), and the segment is rewritten without it. Later segments are always kept.
//! Records missing between segments (a deleted or cut segment) are measured with the
//! `prev_last` each segment header records. Only a torn write at the end of the newest
//! segment after an unclean shutdown (never acknowledged) is truncated without a copy
//! (`sluice_storage_truncated_bytes_total`).
//!
//! Sealed segments trusted from their sidecar are verified in full by a background thread after
//! open; readers that meet damage first skip it and report it. The per-shard `HWM` file keeps
//! ordinals from going backwards: a clean shutdown records the exact next ordinal, and while
//! running the writer reserves ordinals ahead in the same group commit, so after a crash that
//! cost bytes at the end of the log ordinals continue above every one handed out. [`verify`]
//! checks a whole data directory without changing it.

pub mod catalog;
mod commit;
mod error;
#[cfg(test)]
mod faults;
mod hwm;
mod journal;
mod repair;
mod segment;
mod shard_log;
mod store;
mod sync;
#[cfg(test)]
mod tests;
mod verify;

use std::path::PathBuf;

pub use catalog::*;
pub use error::StorageError;
pub use segment::MAX_RECORD_BYTES;
pub use store::Store;
pub use verify::{SegmentDamage, VerifyReport, verify};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the data is fdatasync'ed (group commit amortises the cost).
    Fsync,
    /// After write(2): survives a process crash, not a machine crash.
    Os,
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// A shard starts a new segment once its active one has reached this size.
    pub segment_bytes: u64,
    /// Whether a background thread applies each stream's `retention_hours` (every 60 s).
    /// Off for stores whose owner decides what to trim itself (the pipeline's spool, which
    /// keeps events until every sink has them).
    pub retention_thread: bool,
    /// How long the commit thread waits for more appends before it writes a group that is
    /// not full, so that at low rates one fsync covers many appends (zero: never waits).
    pub linger: std::time::Duration,
}

impl StoreConfig {
    /// Default segment size: 64 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

    /// `Durability::Fsync`, 64 MiB segments and the retention thread, in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            segment_bytes: StoreConfig::DEFAULT_SEGMENT_BYTES,
            retention_thread: true,
            linger: std::time::Duration::ZERO,
        }
    }
}

/// One record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRecord {
    /// Target shard index (must be open).
    pub shard: u32,
    /// Partition key (stored verbatim).
    pub partition_key: String,
    /// Payload (shared, so callers hand it over without a copy).
    pub data: bytes::Bytes,
}

/// Records for one stream, in one [`Store::append_committed`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPart {
    /// Stream name.
    pub stream: String,
    /// Its incarnation tag.
    pub tag: u32,
    /// The records, in order.
    pub records: Vec<AppendRecord>,
}

/// Where an appended record landed (one per record, in request order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's ordinal in its shard.
    pub ordinal: u64,
    /// Arrival time, epoch ms.
    pub arrival_ms: u64,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    /// Records in ordinal order.
    pub records: Vec<StoredRecord>,
    /// Where the next read continues (one past the last record returned, or the clamped start).
    pub next_ordinal: u64,
    /// The shard's position when the read started.
    pub tip: ShardPosition,
}

/// A committed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Ordinal in the shard (1-based, gap-free).
    pub ordinal: u64,
    /// Arrival time, epoch ms (non-decreasing per shard).
    pub arrival_ms: u64,
    /// Partition key.
    pub partition_key: String,
    /// Payload.
    pub data: Vec<u8>,
}

/// A shard's retained range and tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPosition {
    /// Oldest retained ordinal (== `next_ordinal` if the shard holds nothing).
    pub first_ordinal: u64,
    /// One past the last committed ordinal.
    pub next_ordinal: u64,
    /// Arrival time of the last committed record, if any.
    pub last_arrival_ms: Option<u64>,
    /// Whether the shard is closed to appends.
    pub closed: bool,
}

/// What a trim removed from one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Whole segments deleted.
    pub segments: u64,
    /// Records in them.
    pub records: u64,
    /// The oldest ordinal the shard still holds afterwards (its `next_ordinal` if empty).
    pub first_ordinal: u64,
}

/// Damage the store found and contained (see [`Store::damage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DamageSummary {
    /// Records lost to damaged or missing bytes.
    pub corrupt_records: u64,
    /// Bytes copied to `data_dir/quarantine/`.
    pub quarantined_bytes: u64,
    /// Damaged (or missing) ranges reported.
    pub damaged_ranges: u64,
    /// The most recent report (file, offsets, records lost).
    pub last: Option<String>,
    /// Whether the background check of sealed segments has finished.
    pub verified: bool,
}

/// Now, epoch milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
