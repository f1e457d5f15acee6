//! Per-shard write pacing: stay under a shard's 1,000 records/s and 1 MiB/s, and slow down
//! further when the shard throttles anyway (another producer, a smaller limit).
//!
//! Two token buckets per shard, each holding at most one second of capacity (the service
//! allows the same burst), scaled by an adaptive factor: a throttle cuts the factor by 30 %
//! (down to 10 %) and empties the buckets; each quiet second gives 10 % back.

use std::time::{Duration, Instant};

/// Records per second one shard takes, with a little headroom for clock skew between us and
/// the service's buckets.
const RECORDS_PER_SEC: f64 = 1000.0 * HEADROOM;
/// Bytes (data + partition key) per second one shard takes.
const BYTES_PER_SEC: f64 = 1024.0 * 1024.0 * HEADROOM;
const HEADROOM: f64 = 0.95;
const MIN_FACTOR: f64 = 0.1;
const CUT: f64 = 0.7;
const RECOVERY_PER_SEC: f64 = 0.1;

/// The pace of one shard.
#[derive(Debug, Clone)]
pub struct ShardRate {
    factor: f64,
    records: f64,
    bytes: f64,
    updated: Instant,
    last_throttle: Option<Instant>,
}

impl ShardRate {
    /// A shard at full speed with full buckets.
    pub fn new(now: Instant) -> ShardRate {
        ShardRate { factor: 1.0, records: RECORDS_PER_SEC, bytes: BYTES_PER_SEC, updated: now, last_throttle: None }
    }

    /// The current fraction of the nominal limit.
    #[cfg(test)]
    pub fn factor(&self) -> f64 {
        self.factor
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let quiet = self.last_throttle.is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(1));
        if quiet {
            self.factor = (self.factor + dt * RECOVERY_PER_SEC).min(1.0);
        }
        self.records = (self.records + dt * RECORDS_PER_SEC * self.factor).min(RECORDS_PER_SEC * self.factor);
        self.bytes = (self.bytes + dt * BYTES_PER_SEC * self.factor).min(BYTES_PER_SEC * self.factor);
        self.updated = now;
    }

    /// Whether one more record may go now. A record bigger than the remaining byte budget may
    /// still go (the buckets then run into debt), so large records are never starved.
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.records >= 1.0 && self.bytes > 0.0
    }

    /// When `n` records (at most a full bucket) and one byte may go.
    pub fn ready_at_n(&mut self, now: Instant, n: usize) -> Instant {
        self.refill(now);
        let want = (n.max(1) as f64).min(RECORDS_PER_SEC * self.factor);
        let need_records = (want - self.records).max(0.0) / (RECORDS_PER_SEC * self.factor);
        let need_bytes = if self.bytes > 0.0 { 0.0 } else { (1.0 - self.bytes) / (BYTES_PER_SEC * self.factor) };
        now + Duration::from_secs_f64(need_records.max(need_bytes).min(10.0))
    }

    /// Spends capacity for one Kinesis record of `bytes`.
    pub fn take(&mut self, bytes: usize) {
        self.records -= 1.0;
        self.bytes -= bytes as f64;
    }

    /// The shard throttled us: slow down (at most once per 200 ms, as one call often brings
    /// many throttled entries) and let its buckets refill first.
    pub fn throttled(&mut self, now: Instant) {
        self.refill(now);
        if self.last_throttle.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(200)) {
            self.factor = (self.factor * CUT).max(MIN_FACTOR);
        }
        self.records = self.records.min(0.0);
        self.bytes = self.bytes.min(0.0);
        self.last_throttle = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_records_and_bytes() {
        let t0 = Instant::now();
        let mut r = ShardRate::new(t0);
        let mut sent = 0;
        while r.ready(t0) {
            r.take(10);
            sent += 1;
        }
        assert_eq!(sent, 950);
        let next = r.ready_at_n(t0, 1);
        assert!(r.ready_at_n(t0, 50) >= t0 + Duration::from_millis(50));
        assert!(next > t0 && next <= t0 + Duration::from_millis(2));
        let mut big = ShardRate::new(t0);
        assert!(big.ready(t0));
        big.take(2 * 1024 * 1024);
        assert!(!big.ready(t0 + Duration::from_millis(500)));
        assert!(big.ready(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn throttling_slows_down_and_recovers() {
        let t0 = Instant::now();
        let mut r = ShardRate::new(t0);
        r.throttled(t0);
        r.throttled(t0);
        assert!((r.factor() - 0.7).abs() < 1e-9, "one cut per 200 ms");
        r.throttled(t0 + Duration::from_millis(300));
        assert!((r.factor() - 0.49).abs() < 1e-9);
        let t0 = t0 + Duration::from_millis(300);
        assert!(!r.ready(t0));
        r.ready(t0 + Duration::from_secs(10));
        assert!(r.factor() > 0.99);
    }
}
