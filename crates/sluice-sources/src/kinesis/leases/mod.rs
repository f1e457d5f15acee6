//! KCL-compatible leases and checkpoints: which worker reads which shard, and how far it got.
//!
//! Every application (consumer group) has one lease table holding one item per shard in the
//! KCL 2.x schema ([`table`]), so sluice workers and KCL applications can share or inspect it.
//! A [`LeaseCoordinator`] runs in every worker:
//!
//! - **renews** its leases every `failover_time / 3 − 25 ms` (`leaseCounter = N+1` on the
//!   condition `leaseCounter == N`); a failed renew that a re-read does not explain means the
//!   lease was taken: the shard is reported [`LeaseEvent::Lost`] and must stop at once. A lease
//!   not renewed for `failover_time` (e.g. while the table is unreachable) is dropped locally
//!   too, before anyone else may take it;
//! - **scans and takes** right at start and every `2 · (failover_time + 25 ms)`: a lease is
//!   expired when it has no owner, or when its counter has not changed for `failover_time` on
//!   the local monotonic clock since the scan that first saw that counter. It takes expired
//!   leases (those expired for over 3 × `failover_time` first) up to
//!   `target = ceil(leases / live owners incl. itself)`, and only when none is available steals
//!   one lease at a time from the most loaded worker, as KCL 2.x does. While a pass that tried
//!   to take left the worker below target, the next pass comes after one renew interval instead
//!   (so a group that starts together is balanced within seconds, not one steal per 20 s);
//! - **creates leases** for new shards ([`LeaseCoordinator::sync_shards`]): the initial position
//!   for shards without a leased parent, `TRIM_HORIZON` for children; tells a reader when a
//!   child may start ([`LeaseCoordinator::parent_done`]) and deletes the leases of finished
//!   parents once every child has checkpointed;
//! - **checkpoints** for the shard readers ([`LeaseCoordinator::checkpoint`]), conditioned on the
//!   counter (a checkpoint is also a heartbeat);
//! - on shutdown, **checkpoints then releases** every lease, so other workers take them at their
//!   next scan instead of after `failover_time` ([`LeaseCoordinator::shutdown`]).
//!
//! # How a shard reader uses it
//!
//! ```text
//! let table = Arc::new(DynamoLeaseTable::connect(&dynamo_config).await);
//! let (leases, mut events) = LeaseCoordinator::new(table, LeaseConfig::new("my-app", worker_id));
//! leases.initialize().await?;                       // create the table, wait for ACTIVE
//! leases.sync_shards(&shards, InitialPosition::Latest).await?;   // and again on every reshard
//! let task = leases.spawn();                        // renew + take in the background
//! while let Some(event) = events.recv().await {
//!     match event {
//!         LeaseEvent::Acquired { shard, checkpoint } => {
//!             // start a reader: wait for `parent_done(&shard)`, then read from `checkpoint`
//!             // (AT_SEQUENCE_NUMBER, dropping (seq, sub) <= checkpoint); before handing a
//!             // batch on, check `holds(&shard)`; after the sinks acknowledge, call
//!             // `checkpoint(&shard, seq, sub)`; at the shard's end `checkpoint_shard_end`.
//!         }
//!         LeaseEvent::Lost { shard } => { /* stop that reader now; deliver nothing more */ }
//!     }
//! }
//! // SIGTERM: stop readers, then
//! leases.shutdown(&final_positions).await;
//! ```
//!
//! Metrics (label `application`): `sluice_kinesis_leases_held`,
//! `sluice_kinesis_leases_taken_total`, `sluice_kinesis_leases_stolen_total`,
//! `sluice_kinesis_leases_lost_total`, `sluice_kinesis_leases_released_total`,
//! `sluice_kinesis_leases_renewals_total`, `sluice_kinesis_leases_checkpoints_total`.

mod coordinator;
pub mod dynamo;
pub mod memory;
pub mod table;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_core::HashKeyRange;

pub use coordinator::{LeaseCoordinator, ShutdownReport};
pub use dynamo::{DynamoConfig, DynamoLeaseTable};
pub use memory::MemoryLeaseTable;
pub use table::{Checkpoint, Lease, LeaseTable, TableError};

/// The KCL's `epsilonMillis`: slack subtracted from the renew interval and added to the take
/// interval.
pub const EPSILON: Duration = Duration::from_millis(25);

/// How a worker shares an application's leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The consumer group; names the lease table.
    pub application: String,
    /// This worker's `leaseOwner` value (see [`default_worker_id`]).
    pub worker_id: String,
    /// How long a lease lives without a renewal (the KCL's `failoverTimeMillis`, 10 s).
    pub failover_time: Duration,
    /// How often leases are renewed (`failover_time / 3 − 25 ms`).
    pub renew_interval: Duration,
    /// How often the table is scanned for leases to take (`2 · (failover_time + 25 ms)`).
    /// Failing over a crashed worker takes between `failover_time` and `failover_time + 2 ·
    /// take_interval`; a released lease is taken within one `take_interval`.
    pub take_interval: Duration,
    /// Leases stolen per scan (the KCL's `maxLeasesToStealAtOneTime`, 1).
    pub max_steal: usize,
    /// Leases expired for this many `failover_time`s are taken first (3).
    pub very_old_factor: u32,
    /// How long a stolen lease waits for its previous owner's last checkpoint
    /// ([`LeaseEvent::HandOff`]) before it is read from the checkpoint it has
    /// (`failover_time`: a live owner notices within a renew interval).
    pub handoff_timeout: Duration,
}

impl LeaseConfig {
    /// The KCL's defaults: `failover_time` 10 s, renew every 3.308 s, take every 20.05 s.
    pub fn new(application: impl Into<String>, worker_id: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            application: application.into(),
            worker_id: worker_id.into(),
            failover_time: Duration::ZERO,
            renew_interval: Duration::ZERO,
            take_interval: Duration::ZERO,
            max_steal: 1,
            very_old_factor: 3,
            handoff_timeout: Duration::ZERO,
        }
        .with_failover_time(Duration::from_secs(10))
    }

    /// Sets `failover_time` and the two intervals derived from it.
    pub fn with_failover_time(mut self, failover_time: Duration) -> LeaseConfig {
        self.failover_time = failover_time;
        self.renew_interval = (failover_time / 3).saturating_sub(EPSILON).max(Duration::from_millis(1));
        self.take_interval = (failover_time + EPSILON) * 2;
        self.handoff_timeout = failover_time;
        self
    }
}

/// A worker id like the KCL's: host, process id and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".to_owned());
    format!("{host}-{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// What the coordinator tells the shard readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This worker now holds `shard`; read it from `checkpoint` (after its parents are done).
    Acquired {
        /// The shard id.
        shard: String,
        /// Where the previous owner got to.
        checkpoint: Checkpoint,
    },
    /// This worker no longer holds `shard` (taken by another worker, or not renewed within
    /// `failover_time`): stop reading and delivering it at once.
    Lost {
        /// The shard id.
        shard: String,
    },
    /// Another worker stole `shard` to balance the load and waits for this one's last
    /// checkpoint: stop reading it at once, then call
    /// [`LeaseCoordinator::hand_off`] with the newest position fully processed (so the new
    /// owner starts exactly there, not at an older checkpoint).
    HandOff {
        /// The shard id.
        shard: String,
    },
}

/// A shard as shard sync sees it (from ListShards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-…`.
    pub id: String,
    /// `ParentShardId` and `AdjacentParentShardId` (after a merge).
    pub parents: Vec<String>,
    /// The shard's hash key range.
    pub hash_range: Option<HashKeyRange>,
    /// Closed (has an ending sequence number).
    pub closed: bool,
}

/// Where a new application starts reading shards that have no leased parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// Every shard from its oldest record.
    TrimHorizon,
    /// Open shards from the tip; closed shards are not leased.
    Latest,
    /// Every shard from the configured timestamp (kept by the reader).
    AtTimestamp,
}

impl InitialPosition {
    /// The sentinel checkpoint.
    pub fn checkpoint(self) -> Checkpoint {
        match self {
            InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
            InitialPosition::Latest => Checkpoint::Latest,
            InitialPosition::AtTimestamp => Checkpoint::AtTimestamp,
        }
    }
}

/// Why a lease call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// This worker does not hold the shard's lease (never had it, released it, or already
    /// reported it lost).
    #[error("lease {shard} is not held by this worker")]
    NotHeld {
        /// The shard id.
        shard: String,
    },
    /// The lease was stolen with a handoff request: [`LeaseEvent::HandOff`] was sent; stop the
    /// shard and hand it over with its last checkpoint.
    #[error("lease {shard} is being handed over to another worker")]
    HandingOff {
        /// The shard id.
        shard: String,
    },
    /// The lease was taken by another worker: [`LeaseEvent::Lost`] was sent; stop the shard.
    #[error("lease {shard} was lost: {reason}")]
    Lost {
        /// The shard id.
        shard: String,
        /// What showed it.
        reason: String,
    },
    /// Not a sequence number (decimal digits).
    #[error("{0:?} is not a sequence number")]
    BadSequence(String),
    /// The table call failed; the lease is still held, retry.
    #[error(transparent)]
    Table(#[from] TableError),
}

/// A monotonic clock: the time since an arbitrary start.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// Starts counting now.
    pub fn new() -> SystemClock {
        SystemClock { start: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that moves only when told (tests). Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// At zero.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves to `t` (never backwards).
    pub fn set(&self, t: Duration) {
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_max(nanos, Ordering::SeqCst);
    }

    /// Moves forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.set(self.now() + d);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}
