//! The catalog: every stream's metadata (shards, ranges, parents, status, retention, tags,
//! consumers). It is small, lives in memory, and is persisted atomically as one JSON file on
//! every change (write a temporary file, fsync, rename, fsync the directory).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_core::hash::HashKeyRange;

/// All streams, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Streams by name (including those being deleted).
    #[serde(default)]
    pub streams: BTreeMap<String, StreamMeta>,
}

/// Stream status as Kinesis reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    /// Just created.
    Creating,
    /// Normal operation.
    Active,
    /// Resharding or changing settings; I/O still allowed.
    Updating,
    /// Being deleted.
    Deleting,
}

impl StreamStatus {
    /// The wire name (`ACTIVE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
            StreamStatus::Deleting => "DELETING",
        }
    }
}

/// Capacity mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StreamMode {
    /// Fixed shard count.
    #[default]
    Provisioned,
    /// Scales by itself (emulated with a fixed shard count here).
    OnDemand,
}

/// One stream's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Stream name, `[a-zA-Z0-9_.-]{1,128}`.
    pub name: String,
    /// Distinguishes incarnations of the same name; embedded in sequence numbers and iterators
    /// and in the on-disk directory name.
    pub tag: u32,
    /// Creation time, epoch milliseconds.
    pub created_ms: u64,
    /// Status, reported as `status` until `status_until_ms`, then as the settled status.
    pub status: StreamStatus,
    /// When a transitional status (CREATING, UPDATING) settles to ACTIVE, epoch ms.
    #[serde(default)]
    pub status_until_ms: u64,
    /// Retention in hours (24..=8760).
    pub retention_hours: u32,
    /// Capacity mode.
    #[serde(default)]
    pub mode: StreamMode,
    /// Every shard the stream has had that is not yet expired, ordered by index.
    pub shards: Vec<ShardMeta>,
    /// The index the next new shard gets.
    pub next_shard_index: u32,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Enhanced fan-out consumers.
    #[serde(default)]
    pub consumers: Vec<ConsumerMeta>,
    /// KMS key id when server-side encryption is "on" (recorded, not applied).
    #[serde(default)]
    pub encryption_key: Option<String>,
    /// Shard-level metrics enabled with EnableEnhancedMonitoring.
    #[serde(default)]
    pub shard_level_metrics: Vec<String>,
    /// Largest record accepted, KiB (1024..=10240).
    #[serde(default = "default_max_record_kib")]
    pub max_record_size_kib: u32,
    /// Epoch ms of recent UpdateShardCount calls (for the 10-per-24h quota).
    #[serde(default)]
    pub scaling_history_ms: Vec<u64>,
}

fn default_max_record_kib() -> u32 {
    1024
}

/// One shard's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Index; the shard id is `shardId-{index:012}`.
    pub index: u32,
    /// Parent (split, or the `ShardToMerge` of a merge).
    #[serde(default)]
    pub parent: Option<u32>,
    /// The other parent of a merge.
    #[serde(default)]
    pub adjacent_parent: Option<u32>,
    /// Hash keys this shard owns.
    pub range: HashKeyRange,
    /// Creation time, epoch ms.
    pub created_ms: u64,
    /// Set once the shard is closed (split or merged away): no more appends.
    #[serde(default)]
    pub closed_ms: Option<u64>,
}

impl ShardMeta {
    /// Whether the shard still takes writes.
    pub fn is_open(&self) -> bool {
        self.closed_ms.is_none()
    }
}

/// An enhanced fan-out consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerMeta {
    /// Consumer name.
    pub name: String,
    /// Creation time, epoch ms (its seconds are part of the ARN).
    pub created_ms: u64,
    /// Transitional status until `status_until_ms` (CREATING / DELETING).
    pub status: String,
    /// When the transitional status settles.
    #[serde(default)]
    pub status_until_ms: u64,
}

impl StreamMeta {
    /// A new ACTIVE, provisioned stream with 24 h retention whose shards `0..n` own `ranges`
    /// (in order), all created at `now_ms`; callers adjust status, mode, tags and limits.
    pub fn new(name: String, tag: u32, now_ms: u64, ranges: Vec<HashKeyRange>) -> StreamMeta {
        let shards: Vec<ShardMeta> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, range)| ShardMeta {
                index: i as u32,
                parent: None,
                adjacent_parent: None,
                range,
                created_ms: now_ms,
                closed_ms: None,
            })
            .collect();
        StreamMeta {
            name,
            tag,
            created_ms: now_ms,
            status: StreamStatus::Active,
            status_until_ms: 0,
            retention_hours: 24,
            mode: StreamMode::Provisioned,
            next_shard_index: shards.len() as u32,
            shards,
            tags: BTreeMap::new(),
            consumers: Vec::new(),
            encryption_key: None,
            shard_level_metrics: Vec::new(),
            max_record_size_kib: default_max_record_kib(),
            scaling_history_ms: Vec::new(),
        }
    }

    /// Shards that take writes, ordered by index.
    pub fn open_shards(&self) -> impl Iterator<Item = &ShardMeta> {
        self.shards.iter().filter(|s| s.is_open())
    }

    /// A shard by index.
    pub fn shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.index == index)
    }
}
