//! Emulation of the per-shard service limits (`--enforce-limits`), so producers and consumers
//! can be tested against real throttling: writes 1 MiB/s and 1,000 records/s per shard, reads
//! 5 calls/s and 2 MiB/s per shard.
//!
//! Token buckets refill continuously and hold at most one second of capacity, as the service
//! allows short bursts up to the per-second rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Per-shard write rate: records per second.
pub const WRITE_RECORDS_PER_SEC: f64 = 1000.0;
/// Per-shard write rate: bytes per second.
pub const WRITE_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;
/// Per-shard read rate: calls per second.
pub const READ_CALLS_PER_SEC: f64 = 5.0;
/// Per-shard read rate: bytes per second.
pub const READ_BYTES_PER_SEC: f64 = 2.0 * 1024.0 * 1024.0;

struct Bucket {
    tokens: f64,
    rate: f64,
    updated: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        Bucket { tokens: rate, rate, updated: now }
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.updated = now;
    }
}

#[derive(Default)]
struct ShardBuckets {
    write: Option<(Bucket, Bucket)>,
    read: Option<(Bucket, Bucket)>,
}

/// Shard key: (stream tag, shard index).
type Key = (u32, u32);

/// Per-shard token buckets; disabled unless `--enforce-limits`.
pub struct Limits {
    enabled: bool,
    shards: Mutex<HashMap<Key, ShardBuckets>>,
}

impl Limits {
    /// New limits, enforced or not.
    pub fn new(enabled: bool) -> Limits {
        Limits { enabled, shards: Mutex::new(HashMap::new()) }
    }

    /// Whether limits are enforced.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes capacity for one record of `bytes` on a shard; false means throttled.
    pub fn admit_write(&self, key: Key, bytes: usize) -> bool {
        if !self.enabled {
            return true;
        }
        let now = Instant::now();
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let entry = shards.entry(key).or_default();
        let (records, size) = entry
            .write
            .get_or_insert_with(|| (Bucket::new(WRITE_RECORDS_PER_SEC, now), Bucket::new(WRITE_BYTES_PER_SEC, now)));
        records.refill(now);
        size.refill(now);
        if records.tokens >= 1.0 && size.tokens >= bytes as f64 {
            records.tokens -= 1.0;
            size.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Takes one read call on a shard; false means throttled. Bytes are charged afterwards
    /// with [`Limits::charge_read_bytes`], which may drive the byte bucket negative so that
    /// following calls are throttled until it refills (as after a large GetRecords).
    pub fn admit_read(&self, key: Key) -> bool {
        if !self.enabled {
            return true;
        }
        let now = Instant::now();
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let entry = shards.entry(key).or_default();
        let (calls, bytes) = entry
            .read
            .get_or_insert_with(|| (Bucket::new(READ_CALLS_PER_SEC, now), Bucket::new(READ_BYTES_PER_SEC, now)));
        calls.refill(now);
        bytes.refill(now);
        if calls.tokens >= 1.0 && bytes.tokens > 0.0 {
            calls.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Charges bytes returned by a read.
    pub fn charge_read_bytes(&self, key: Key, n: usize) {
        if !self.enabled {
            return;
        }
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bytes)) = shards.get_mut(&key).and_then(|e| e.read.as_mut()) {
            bytes.tokens -= n as f64;
        }
    }

    /// Bytes a read may return now on a shard (at least 1 MiB to make progress).
    pub fn read_budget(&self, key: Key) -> usize {
        if !self.enabled {
            return usize::MAX;
        }
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards
            .get(&key)
            .and_then(|e| e.read.as_ref())
            .map_or(READ_BYTES_PER_SEC as usize, |(_, b)| b.tokens.max(0.0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_bucket_caps_a_burst_at_one_second() {
        let l = Limits::new(true);
        let admitted = (0..1500).filter(|_| l.admit_write((1, 0), 10)).count();
        assert!((1000..1010).contains(&admitted), "{admitted}");
        // Another shard has its own budget.
        assert!(l.admit_write((1, 1), 10));
        let big = Limits::new(true);
        assert!(big.admit_write((1, 0), 1024 * 1024));
        assert!(!big.admit_write((1, 0), 1024));
    }

    #[test]
    fn read_calls_capped_at_five() {
        let l = Limits::new(true);
        let admitted = (0..10).filter(|_| l.admit_read((1, 0))).count();
        assert_eq!(admitted, 5);
        assert!(Limits::new(false).admit_read((1, 0)));
    }
}
