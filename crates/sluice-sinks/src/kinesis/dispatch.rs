//! The Kinesis sink's bookkeeping, free of I/O: which records go into the next PutRecords
//! call, and what happens to each entry when the answer comes back.
//!
//! Records enter with [`Dispatcher::push`] in input order and leave through
//! [`Dispatcher::complete`] as delivered or dead-lettered; in between each one is in exactly
//! one place:
//!
//! ```text
//! push ─▶ waiting[key] ─(key free)─▶ lane.fresh ─(batch)─▶ in flight ─▶ delivered / dead
//!                                        ▲                     │
//!                          lane.built ◀──┴──── failed entry ◀──┘ (retried exactly)
//! ```
//!
//! A *lane* is one open shard of the learnt shard map (plus one for keys no known shard
//! covers); it carries that shard's [`ShardRate`] and is the unit KPL aggregates are built
//! in. `fresh` holds records not yet in any Kinesis record; `built` holds finished entries
//! (aggregates that were built, entries that failed and wait for their retry).
//!
//! **Per-key ordering.** With `ordering = "per_key"` a partition key is *busy* from the moment
//! one of its records enters `fresh` until the entry carrying it is accepted (or dead-lettered);
//! later records of a busy key wait in `waiting[key]` in input order. So at most one
//! not-yet-acknowledged PutRecords entry per key exists at any time, whatever `max_in_flight`
//! is, and a retried entry can never be overtaken. With aggregation the waiting records of a
//! key ride in the same aggregate right behind it, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use sluice_core::kpl::{Aggregator, UserRecord};

use super::config::RetryBackoff;
use super::rate::ShardRate;
use super::shard_map::ShardMap;
use super::stats::Stats;

/// A lane waits until it can send at least this many records at once (or all it has), so a
/// rate-limited shard is fed in chunks rather than one record per call.
const RATE_CHUNK: usize = 50;

/// One user record, ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The pipeline's record id, for the ack.
    pub id: u64,
    /// When the source received it, epoch ms.
    pub received_ms: u64,
    /// When the sink got it.
    pub arrived: Instant,
    /// Its partition key.
    pub key: Arc<str>,
    /// MD5 of the key.
    pub hash: u128,
    /// What goes to Kinesis (compressed if configured).
    pub data: Bytes,
    /// The payload as received (for dead letters).
    pub payload: Bytes,
}

impl Prepared {
    /// What it counts against Kinesis limits: data plus partition key.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

/// One PutRecords entry: a single user record, or a KPL aggregate of several.
#[derive(Debug)]
pub struct Entry {
    /// The user records it carries, in order.
    pub records: Vec<Prepared>,
    /// The Kinesis partition key (`"a"` for an aggregate).
    pub partition_key: Arc<str>,
    /// The explicit hash key (an aggregate's first record's hash).
    pub explicit_hash_key: Option<String>,
    /// The Kinesis data.
    pub data: Bytes,
    route: u128,
    aggregated: bool,
    predicted: Option<Arc<str>>,
    failures: u32,
    throttles: u32,
    not_before: Option<Instant>,
    isolate: bool,
}

impl Entry {
    fn plain(p: Prepared) -> Entry {
        Entry {
            partition_key: p.key.clone(),
            explicit_hash_key: None,
            data: p.data.clone(),
            route: p.hash,
            aggregated: false,
            predicted: None,
            failures: 0,
            throttles: 0,
            not_before: None,
            isolate: false,
            records: vec![p],
        }
    }

    /// What it counts against Kinesis limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// The hash key it is routed by: its explicit hash key if it has one, else the MD5 of its
    /// partition key.
    pub fn route(&self) -> u128 {
        self.route
    }

    /// Its partition keys, each once, in first-seen order.
    fn keys(&self) -> Vec<Arc<str>> {
        let mut seen = FxHashSet::default();
        self.records.iter().filter(|r| seen.insert(&*r.key)).map(|r| r.key.clone()).collect()
    }
}

/// The entries of one PutRecords call.
#[derive(Debug)]
pub struct Batch {
    /// In request order.
    pub entries: Vec<Entry>,
}

impl Batch {
    /// User records in the batch.
    pub fn record_count(&self) -> usize {
        self.entries.iter().map(|e| e.records.len()).sum()
    }
}

/// The answer for one entry of a PutRecords call that went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    /// Stored on this shard.
    Accepted {
        /// Where it landed.
        shard_id: Arc<str>,
    },
    /// `ProvisionedThroughputExceededException` (or a KMS throttle).
    Throttled,
    /// Any other per-entry error (`InternalFailure` …): retried, counted against `max_retries`.
    Failed {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// Refused for good (`ValidationException`, `InvalidArgumentException`).
    Rejected {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
}

/// Why a whole call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// `ValidationException` / `InvalidArgumentException`: some entry can never be accepted.
    Rejected(String),
    /// `ResourceNotFoundException`: the stream is gone or not active.
    NotFound(String),
    /// The call itself was throttled.
    Throttled(String),
    /// Anything else: connection refused, 5xx, timeouts, credentials … retried forever.
    Transient(String),
}

/// What [`Dispatcher::complete`] and [`Dispatcher::install_map`] decided.
#[derive(Debug, Default)]
pub struct Report {
    /// Accepted by the stream: ack as delivered.
    pub delivered: Vec<Prepared>,
    /// Write to the dead-letter file, then ack as dead-lettered: `(record, reason, detail)`.
    pub dead: Vec<(Prepared, &'static str, String)>,
    /// The shard map looks stale: fetch it again.
    pub refresh_map: bool,
    /// The stream was not found: make sure it exists before fetching the map.
    pub stream_missing: bool,
    /// A whole call failed for a transient reason (for logging).
    pub call_error: Option<String>,
}

/// The knobs the dispatcher needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Entries per call.
    pub max_batch_records: usize,
    /// Bytes per call.
    pub max_batch_bytes: usize,
    /// How long a record may wait for company.
    pub linger: Duration,
    /// Calls at once.
    pub max_in_flight: usize,
    /// `ordering = "per_key"`.
    pub per_key: bool,
    /// Build KPL aggregates.
    pub aggregate: bool,
    /// Largest aggregate (partition key `"a"` included).
    pub max_aggregate_bytes: usize,
    /// Non-throttle failures allowed per entry.
    pub max_retries: Option<u32>,
    /// Retry backoff.
    pub backoff: RetryBackoff,
    /// Pace each shard.
    pub rate_limit: bool,
}

struct Lane {
    shard: Option<Arc<str>>,
    built: VecDeque<Entry>,
    fresh: VecDeque<Prepared>,
    fresh_bytes: usize,
    rate: Option<ShardRate>,
}

impl Lane {
    fn new(shard: Option<Arc<str>>, rate: Option<ShardRate>) -> Lane {
        Lane { shard, built: VecDeque::new(), fresh: VecDeque::new(), fresh_bytes: 0, rate }
    }

    fn pending(&self) -> usize {
        self.built.len() + self.fresh.len()
    }

    /// Whether the shard's pace allows sending now: `want` records at once when it is
    /// rate-limited, so a slow shard gets chunks.
    fn rate_ready(&mut self, now: Instant, want: usize) -> bool {
        match &mut self.rate {
            None => true,
            Some(r) => {
                // ready() first: it refills the buckets.
                r.ready(now) && (want <= 1 || r.ready_at_n(now, want) <= now)
            }
        }
    }
}

/// See the module documentation.
pub struct Dispatcher {
    s: Settings,
    stats: Stats,
    map: ShardMap,
    lanes: Vec<Lane>,
    /// Per busy key (`per_key` only), its records waiting for the key's entry to settle.
    /// FxHash: a lookup per record on short keys; the table holds at most the records the
    /// sink holds.
    waiting: FxHashMap<Arc<str>, VecDeque<Prepared>>,
    parked: Vec<(Entry, Arc<str>)>,
    held: usize,
    held_bytes: usize,
    in_flight: usize,
    paused_until: Option<Instant>,
    call_failures: u32,
    rr: usize,
}

impl Dispatcher {
    /// An empty dispatcher with no shard map yet.
    pub fn new(s: Settings, stats: Stats) -> Dispatcher {
        Dispatcher {
            s,
            stats,
            map: ShardMap::default(),
            lanes: vec![Lane::new(None, None)],
            waiting: FxHashMap::default(),
            parked: Vec::new(),
            held: 0,
            held_bytes: 0,
            in_flight: 0,
            paused_until: None,
            call_failures: 0,
            rr: 0,
        }
    }

    /// Records held anywhere (waiting, queued, in flight, parked).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes of the records held.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// PutRecords calls under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Takes a new record, in input order.
    pub fn push(&mut self, p: Prepared) {
        self.held += 1;
        self.held_bytes += p.size();
        if self.s.per_key {
            if let Some(queue) = self.waiting.get_mut(&p.key) {
                queue.push_back(p);
                return;
            }
            self.waiting.insert(p.key.clone(), VecDeque::new());
        }
        self.push_fresh(p, false);
    }

    fn lane_of(&self, hash: u128) -> usize {
        self.map.predict(hash).unwrap_or(self.lanes.len() - 1)
    }

    fn push_fresh(&mut self, p: Prepared, front: bool) {
        let li = self.lane_of(p.hash);
        let lane = &mut self.lanes[li];
        lane.fresh_bytes += p.size();
        if front { lane.fresh.push_front(p) } else { lane.fresh.push_back(p) }
    }

    fn pop_fresh(&mut self, li: usize) -> Option<Prepared> {
        let lane = &mut self.lanes[li];
        let p = lane.fresh.pop_front()?;
        lane.fresh_bytes -= p.size();
        Some(p)
    }

    /// Puts an entry back to be sent again (at the front of its lane).
    fn requeue(&mut self, mut e: Entry) {
        let li = self.lane_of(e.route);
        e.predicted = self.lanes[li].shard.clone();
        self.lanes[li].built.push_front(e);
    }

    /// The next PutRecords call to make, if one is due and allowed now. `draining` sends
    /// whatever is queued without waiting for `linger`.
    pub fn next_batch(&mut self, now: Instant, draining: bool) -> Option<Batch> {
        if self.in_flight >= self.s.max_in_flight || self.paused_until.is_some_and(|t| now < t) {
            return None;
        }
        let n = self.lanes.len();
        // Which lanes may send now, and whether their fresh records fill a call.
        let ready: Vec<bool> = (0..n)
            .map(|li| {
                let want = self.lanes[li].pending().min(RATE_CHUNK);
                self.lanes[li].pending() > 0 && self.lanes[li].rate_ready(now, want)
            })
            .collect();
        let (sendable, sendable_bytes) = (0..n)
            .filter(|&li| ready[li])
            .fold((0, 0), |(c, b), li| (c + self.lanes[li].fresh.len(), b + self.lanes[li].fresh_bytes));
        let full =
            (!self.s.aggregate && sendable >= self.s.max_batch_records) || sendable_bytes >= self.s.max_batch_bytes;

        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        'lanes: for step in 0..n {
            let li = (self.rr + step) % n;
            if !ready[li] {
                continue;
            }
            // Entries already built (retries, aggregates) go first, each when its backoff ends.
            let mut i = 0;
            while i < self.lanes[li].built.len() {
                if entries.len() >= self.s.max_batch_records {
                    break 'lanes;
                }
                let e = &self.lanes[li].built[i];
                let skip = e.not_before.is_some_and(|t| t > now)
                    || (e.isolate && !entries.is_empty())
                    || (!entries.is_empty() && bytes + e.size() > self.s.max_batch_bytes);
                if skip {
                    i += 1;
                    continue;
                }
                if !self.lanes[li].rate_ready(now, 1) {
                    continue 'lanes;
                }
                let Some(e) = self.lanes[li].built.remove(i) else { break };
                if let Some(r) = &mut self.lanes[li].rate {
                    r.take(e.size());
                }
                bytes += e.size();
                let isolate = e.isolate;
                entries.push(e);
                if isolate {
                    break 'lanes;
                }
            }
            let due =
                draining || full || self.lanes[li].fresh.front().is_some_and(|p| p.arrived + self.s.linger <= now);
            if !due {
                continue;
            }
            while let Some(front) = self.lanes[li].fresh.front() {
                if entries.len() >= self.s.max_batch_records {
                    break 'lanes;
                }
                let room = self.s.max_batch_bytes.saturating_sub(bytes);
                if !entries.is_empty() && front.size() + 1 > room {
                    continue 'lanes;
                }
                if !self.lanes[li].rate_ready(now, 1) {
                    continue 'lanes;
                }
                let Some(mut e) = self.build_entry(li, room) else { break };
                e.predicted = self.lanes[li].shard.clone();
                if let Some(r) = &mut self.lanes[li].rate {
                    r.take(e.size());
                }
                bytes += e.size();
                entries.push(e);
            }
        }
        self.rr = (self.rr + 1) % n;
        if entries.is_empty() {
            return None;
        }
        self.in_flight += 1;
        self.stats.in_flight.set(self.in_flight as f64);
        Some(Batch { entries })
    }

    /// Takes the next entry from a lane's fresh records: one record, or with aggregation as
    /// many as fit in one aggregate (a key's waiting records right behind it).
    fn build_entry(&mut self, li: usize, room: usize) -> Option<Entry> {
        let first = self.pop_fresh(li)?;
        if !(self.s.aggregate && self.lanes[li].shard.is_some()) {
            return Some(Entry::plain(first));
        }
        let limit =
            self.s.max_aggregate_bytes.min(room).saturating_sub(sluice_core::kpl::AGGREGATE_PARTITION_KEY.len());
        let mut agg = Aggregator::new(limit);
        let mut records = Vec::new();
        let user = |p: &Prepared| UserRecord::new(p.key.as_ref(), p.data.as_ref());
        let mut next = Some(first);
        'build: while let Some(p) = next.take() {
            agg.push(user(&p));
            let key = p.key.clone();
            records.push(p);
            // The key's waiting records ride along, in order.
            if self.s.per_key {
                while let Some(w) = self.waiting.get_mut(&key).and_then(|q| q.front()) {
                    if !agg.fits_parts(&w.key, None, w.data.len()) {
                        break 'build;
                    }
                    let Some(w) = self.waiting.get_mut(&key).and_then(|q| q.pop_front()) else { break };
                    agg.push(user(&w));
                    records.push(w);
                }
            }
            match self.lanes[li].fresh.front() {
                Some(f) if agg.fits_parts(&f.key, None, f.data.len()) => next = self.pop_fresh(li),
                _ => break,
            }
        }
        if records.len() == 1 {
            return records.pop().map(Entry::plain);
        }
        let route = records[0].hash;
        let kr = agg.finish()?;
        Some(Entry {
            records,
            partition_key: Arc::from(kr.partition_key),
            explicit_hash_key: kr.explicit_hash_key,
            data: Bytes::from(kr.data),
            route,
            aggregated: true,
            predicted: None,
            failures: 0,
            throttles: 0,
            not_before: None,
            isolate: false,
        })
    }

    /// When [`Dispatcher::next_batch`] may next have something (None: only when a call
    /// completes or a record arrives).
    pub fn wakeup(&mut self, now: Instant, draining: bool) -> Option<Instant> {
        if self.in_flight >= self.s.max_in_flight {
            return None;
        }
        let linger = self.s.linger;
        let mut earliest: Option<Instant> = None;
        for lane in &mut self.lanes {
            let built = lane.built.iter().map(|e| e.not_before.unwrap_or(now)).min();
            let fresh = lane.fresh.front().map(|p| if draining { now } else { p.arrived + linger });
            let Some(mut t) = built.into_iter().chain(fresh).min() else { continue };
            let want = lane.pending().min(RATE_CHUNK);
            if let Some(r) = &mut lane.rate {
                t = t.max(r.ready_at_n(now, want));
            }
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
        let t = earliest?;
        let t = self.paused_until.map_or(t, |p| t.max(p));
        Some(t.max(now + Duration::from_millis(1)))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.s.backoff.base.as_secs_f64();
        let max = self.s.backoff.max.as_secs_f64();
        let exp = attempt.saturating_sub(1).min(40) as i32;
        let d = (base * 2f64.powi(exp)).min(max);
        Duration::from_secs_f64(d * rand::random_range(0.5..=1.0))
    }

    fn pause(&mut self, now: Instant) {
        self.call_failures = self.call_failures.saturating_add(1);
        self.paused_until = Some(now + self.backoff(self.call_failures));
    }

    /// Settles a finished call.
    pub fn complete(&mut self, batch: Batch, outcome: Result<Vec<EntryResult>, CallError>, now: Instant) -> Report {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.in_flight.set(self.in_flight as f64);
        let mut report = Report::default();
        let n = batch.record_count() as u64;
        let outcome = match outcome {
            Ok(results) if results.len() != batch.entries.len() => Err(CallError::Transient(format!(
                "PutRecords answered {} results for {} records",
                results.len(),
                batch.entries.len()
            ))),
            other => other,
        };
        match outcome {
            Ok(results) => {
                self.call_failures = 0;
                self.paused_until = None;
                for (e, r) in batch.entries.into_iter().zip(results) {
                    self.settle(e, r, now, &mut report);
                }
            }
            Err(CallError::Rejected(msg)) => {
                let mut entries = batch.entries;
                if entries.len() == 1 {
                    if let Some(e) = entries.pop() {
                        self.reject(e, "rejected", &msg, &mut report);
                    }
                } else {
                    // Find the culprit: send every entry on its own.
                    for mut e in entries.into_iter().rev() {
                        e.isolate = true;
                        self.requeue(e);
                    }
                }
            }
            Err(CallError::NotFound(msg)) => {
                report.refresh_map = true;
                report.stream_missing = true;
                report.call_error = Some(msg);
                self.stats.failed.increment(n);
                self.stats.retried.increment(n);
                self.pause(now);
                for e in batch.entries.into_iter().rev() {
                    self.requeue(e);
                }
            }
            Err(CallError::Throttled(_)) => {
                self.stats.throttled.increment(n);
                self.stats.retried.increment(n);
                for e in batch.entries.into_iter().rev() {
                    self.throttle(e, now);
                }
            }
            Err(CallError::Transient(msg)) => {
                report.call_error = Some(msg);
                self.stats.failed.increment(n);
                self.stats.retried.increment(n);
                self.pause(now);
                for e in batch.entries.into_iter().rev() {
                    self.requeue(e);
                }
            }
        }
        report
    }

    fn settle(&mut self, mut e: Entry, result: EntryResult, now: Instant, report: &mut Report) {
        let n = e.records.len() as u64;
        match result {
            EntryResult::Accepted { shard_id } => {
                self.stats.put.increment(n);
                if e.predicted.as_deref().is_some_and(|p| p != &*shard_id) {
                    report.refresh_map = true;
                }
                if !e.aggregated {
                    self.deliver(e, report);
                    return;
                }
                // An aggregate is only as good as its sub-records' fit in the shard it landed
                // on (the KCL drops it otherwise). A shard's range never changes, so a known
                // id settles it now; an unknown one waits for the next map.
                match self.map.range_of(&shard_id) {
                    Some(range) => self.landed(e, range, &shard_id, report),
                    None => {
                        report.refresh_map = true;
                        self.parked.push((e, shard_id));
                    }
                }
            }
            EntryResult::Throttled => {
                self.stats.throttled.increment(n);
                self.stats.retried.increment(n);
                self.throttle(e, now);
            }
            EntryResult::Failed { code, message } => {
                self.stats.failed.increment(n);
                e.failures += 1;
                if self.s.max_retries.is_some_and(|m| e.failures > m) {
                    let detail = format!("{code} after {} attempts: {message}", e.failures);
                    self.kill(e, "retries_exhausted", &detail, report);
                } else {
                    self.stats.retried.increment(n);
                    e.not_before = Some(now + self.backoff(e.failures));
                    self.requeue(e);
                }
            }
            EntryResult::Rejected { code, message } => {
                self.reject(e, "rejected", &format!("{code}: {message}"), report)
            }
        }
    }

    fn throttle(&mut self, mut e: Entry, now: Instant) {
        let li = self.lane_of(e.route);
        if let Some(r) = &mut self.lanes[li].rate {
            r.throttled(now);
        }
        e.throttles += 1;
        e.not_before = Some(now + self.backoff(e.throttles));
        self.requeue(e);
    }

    /// An entry that can never be accepted: an aggregate is split so only the culprit is
    /// dead-lettered; a single record is dead-lettered.
    fn reject(&mut self, e: Entry, reason: &'static str, detail: &str, report: &mut Report) {
        if !(e.aggregated && e.records.len() > 1) {
            self.kill(e, reason, detail, report);
            return;
        }
        self.stats.retried.increment(e.records.len() as u64);
        let mut firsts: Vec<Prepared> = Vec::new();
        let mut rest: Vec<Prepared> = Vec::new();
        for r in e.records {
            if self.s.per_key && firsts.iter().any(|f| f.key == r.key) {
                rest.push(r);
            } else {
                firsts.push(r);
            }
        }
        // Later records of a key go back in front of its waiting queue, in order, so the key
        // still has a single entry out.
        for r in rest.into_iter().rev() {
            self.waiting.entry(r.key.clone()).or_default().push_front(r);
        }
        for r in firsts.into_iter().rev() {
            let mut single = Entry::plain(r);
            single.isolate = true;
            self.requeue(single);
        }
    }

    fn kill(&mut self, e: Entry, reason: &'static str, detail: &str, report: &mut Report) {
        self.stats.dead_lettered.increment(e.records.len() as u64);
        self.release_records(&e.records);
        for r in e.records {
            self.held -= 1;
            self.held_bytes -= r.size();
            report.dead.push((r, reason, detail.to_owned()));
        }
    }

    fn deliver(&mut self, e: Entry, report: &mut Report) {
        self.release_records(&e.records);
        report.delivered.reserve(e.records.len());
        for r in e.records {
            self.held -= 1;
            self.held_bytes -= r.size();
            report.delivered.push(r);
        }
    }

    /// A settled entry's keys, each once, in first-seen order, are free again (see
    /// [`Dispatcher::release`]); without collecting them for the usual one-record entry.
    fn release_records(&mut self, records: &[Prepared]) {
        if !self.s.per_key {
            return;
        }
        match records {
            [] => {}
            [one] => self.release_key(&one.key),
            many => {
                let mut seen: FxHashSet<&str> = FxHashSet::default();
                for r in many {
                    if seen.insert(&r.key) {
                        self.release_key(&r.key);
                    }
                }
            }
        }
    }

    /// The keys' entry is done: each key's next waiting record becomes sendable.
    fn release(&mut self, keys: &[Arc<str>]) {
        if !self.s.per_key {
            return;
        }
        for key in keys {
            self.release_key(key);
        }
    }

    /// One key's entry is done: its next waiting record becomes sendable, or the key is free.
    fn release_key(&mut self, key: &str) {
        let next = match self.waiting.get_mut(key) {
            Some(q) => q.pop_front(),
            None => return,
        };
        match next {
            // It has waited already: put it first so linger does not delay it again.
            Some(p) => self.push_fresh(p, true),
            None => {
                self.waiting.remove(key);
            }
        }
    }

    /// An accepted aggregate on a shard covering `range`: sub-records inside are delivered,
    /// the others are sent again (as the KPL does; consumers may see them twice).
    fn landed(&mut self, e: Entry, range: sluice_core::HashKeyRange, shard_id: &str, report: &mut Report) {
        if e.records.iter().all(|r| range.contains(r.hash)) {
            self.deliver(e, report);
            return;
        }
        let keys = e.keys();
        let (inside, outside): (Vec<Prepared>, Vec<Prepared>) =
            e.records.into_iter().partition(|r| range.contains(r.hash));
        tracing::info!(shard = %shard_id, records = outside.len(), "re-sending aggregated records that landed on the wrong shard");
        self.stats.retried.increment(outside.len() as u64);
        report.refresh_map = true;
        for r in inside {
            self.held -= 1;
            self.held_bytes -= r.size();
            report.delivered.push(r);
        }
        if self.s.per_key {
            // Same key, same hash: a key's records are all inside or all outside, and those
            // outside go back in front of the key's queue, in order.
            for r in outside.into_iter().rev() {
                self.waiting.entry(r.key.clone()).or_default().push_front(r);
            }
        } else {
            for r in outside.into_iter().rev() {
                self.push_fresh(r, true);
            }
        }
        self.release(&keys);
    }

    /// Switches to a new shard map: lanes are rebuilt (keeping each shard's pace), queued
    /// records and entries move to the lanes the new map predicts, and aggregates parked after
    /// landing on an unexpected shard are settled: sub-records inside that shard's range are
    /// delivered, the others are sent again (as the KPL does; consumers may see them twice).
    pub fn install_map(&mut self, map: ShardMap, now: Instant) -> Report {
        let mut old_rates: HashMap<Arc<str>, ShardRate> = HashMap::new();
        let mut built = Vec::new();
        let mut fresh = Vec::new();
        for lane in self.lanes.drain(..) {
            if let (Some(id), Some(rate)) = (lane.shard, lane.rate) {
                old_rates.insert(id, rate);
            }
            built.extend(lane.built);
            fresh.extend(lane.fresh);
        }
        for s in map.open_shards() {
            let rate = self.s.rate_limit.then(|| old_rates.remove(&s.id).unwrap_or_else(|| ShardRate::new(now)));
            self.lanes.push(Lane::new(Some(s.id.clone()), rate));
        }
        self.lanes.push(Lane::new(None, None));
        self.map = map;
        self.rr = 0;
        for e in built {
            let li = self.lane_of(e.route);
            let mut e = e;
            e.predicted = self.lanes[li].shard.clone();
            self.lanes[li].built.push_back(e);
        }
        for p in fresh {
            self.push_fresh(p, false);
        }
        let mut report = Report::default();
        for (e, shard_id) in std::mem::take(&mut self.parked) {
            match self.map.range_of(&shard_id) {
                Some(range) => self.landed(e, range, &shard_id, &mut report),
                None => {
                    tracing::warn!(shard = %shard_id, "an aggregate landed on a shard the stream does not list; keeping it");
                    self.deliver(e, &mut report);
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sluice_core::HashKeyRange;
    use sluice_core::hash::parse_hash_key;
    use sluice_core::kpl;

    use super::super::shard_map::ShardInfo;
    use super::*;

    /// `n` shards of equal ranges, ids from `first` (real streams never reuse a shard id).
    fn even_map(n: u32) -> ShardMap {
        ids_map(n, 0)
    }

    fn ids_map(n: u32, first: u32) -> ShardMap {
        let step = u128::MAX / u128::from(n);
        ShardMap::new(
            (0..n)
                .map(|i| {
                    let start = step * u128::from(i);
                    let end = if i + 1 == n { u128::MAX } else { step * u128::from(i + 1) - 1 };
                    let id = format!("shardId-{:012}", first + i).into();
                    ShardInfo { id, range: HashKeyRange { start, end }, open: true }
                })
                .collect(),
        )
    }

    fn settings(per_key: bool, aggregate: bool) -> Settings {
        Settings {
            max_batch_records: 20,
            max_batch_bytes: 4000,
            linger: Duration::from_millis(50),
            max_in_flight: 4,
            per_key,
            aggregate,
            max_aggregate_bytes: 600,
            max_retries: None,
            backoff: RetryBackoff { base: Duration::from_millis(1), max: Duration::from_millis(20) },
            rate_limit: false,
        }
    }

    fn record(id: u64, key: &str, payload: &str, now: Instant) -> Prepared {
        Prepared {
            id,
            received_ms: 0,
            arrived: now,
            key: Arc::from(key),
            hash: sluice_core::partition_key_hash(key),
            data: Bytes::from(payload.to_owned()),
            payload: Bytes::from(payload.to_owned()),
        }
    }

    /// What a consumer reads per key, and what was acked.
    #[derive(Default)]
    struct World {
        stream: BTreeMap<String, Vec<u64>>,
        delivered: Vec<u64>,
        dead: Vec<u64>,
    }

    impl World {
        fn absorb(&mut self, report: Report) {
            self.delivered.extend(report.delivered.iter().map(|p| p.id));
            self.dead.extend(report.dead.iter().map(|(p, _, _)| p.id));
        }
    }

    /// Plays the service: routes by the real map, fails at random, and records what a consumer
    /// keeping in-range sub-records would read.
    fn answer(
        batch: &Batch,
        real: &ShardMap,
        rng: &mut StdRng,
        world: &mut World,
    ) -> Result<Vec<EntryResult>, CallError> {
        if rng.random_bool(0.1) {
            return Err(CallError::Transient("connection refused".into()));
        }
        if rng.random_bool(0.05) {
            return Err(CallError::Throttled("slow down".into()));
        }
        let poison = |e: &Entry| e.records.iter().any(|r| r.payload.as_ref() == b"poison");
        if batch.entries.len() > 1 && batch.entries.iter().any(poison) && rng.random_bool(0.5) {
            return Err(CallError::Rejected("1 validation error detected".into()));
        }
        let mut out = Vec::new();
        for e in &batch.entries {
            if poison(e) {
                out.push(EntryResult::Rejected { code: "ValidationException".into(), message: "too big".into() });
                continue;
            }
            let roll: f64 = rng.random();
            if roll < 0.2 {
                out.push(EntryResult::Throttled);
                continue;
            }
            if roll < 0.3 {
                out.push(EntryResult::Failed { code: "InternalFailure".into(), message: "oops".into() });
                continue;
            }
            let route = match &e.explicit_hash_key {
                Some(h) => parse_hash_key(h).expect("valid ehk"),
                None => sluice_core::partition_key_hash(&e.partition_key),
            };
            let shard = &real.open_shards()[real.predict(route).expect("covered")];
            let subs = kpl::decode(&e.data, &e.partition_key).expect("decodes");
            assert_eq!(subs.len(), e.records.len());
            for (sub, rec) in subs.iter().zip(&e.records) {
                assert_eq!(sub.data, rec.data.as_ref());
                assert_eq!(sub.partition_key, rec.key.as_ref());
                if shard.range.contains(sub.hash_key()) {
                    world.stream.entry(sub.partition_key.clone()).or_default().push(rec.id);
                }
            }
            out.push(EntryResult::Accepted { shard_id: shard.id.clone() });
        }
        Ok(out)
    }

    fn simulate(seed: u64, per_key: bool, aggregate: bool, keys: usize, n: u64, stale_map: bool, draining: bool) {
        let mut rng = StdRng::seed_from_u64(seed);
        let real = even_map(4);
        let mut d = Dispatcher::new(settings(per_key, aggregate), Stats::new("sim"));
        let mut now = Instant::now();
        let mut world = World::default();
        world.absorb(d.install_map(if stale_map { ids_map(2, 100) } else { real.clone() }, now));
        let mut input: Vec<(u64, String)> = (0..n).map(|i| (i, format!("key-{}", rng.random_range(0..keys)))).collect();
        let poison: HashSet<u64> = (0..n).filter(|_| rng.random_bool(0.03)).collect();
        input.reverse();
        let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut outstanding: Vec<Batch> = Vec::new();
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 200_000, "no progress");
            for _ in 0..rng.random_range(0..8) {
                if let Some((id, key)) = input.pop() {
                    let body = if poison.contains(&id) { "poison".to_owned() } else { format!("{{\"n\":{id}}}") };
                    if !poison.contains(&id) {
                        want.entry(key.clone()).or_default().push(id);
                    }
                    d.push(record(id, &key, &body, now));
                }
            }
            let drain = draining || input.is_empty();
            while let Some(b) = d.next_batch(now, drain) {
                assert!(b.entries.len() <= 20);
                assert!(b.entries.len() == 1 || b.entries.iter().map(Entry::size).sum::<usize>() <= 4000);
                if per_key {
                    // At most one entry per key in flight, across all outstanding calls.
                    let mut seen = HashSet::new();
                    for e in outstanding.iter().chain(std::iter::once(&b)).flat_map(|b| &b.entries) {
                        for k in e.keys() {
                            assert!(seen.insert(k.clone()), "key {k} has two entries in flight");
                        }
                    }
                }
                outstanding.push(b);
            }
            if outstanding.is_empty() {
                if input.is_empty() && d.held() == 0 {
                    break;
                }
                let wake = d.wakeup(now, drain).unwrap_or(now + Duration::from_millis(1));
                now = wake.max(now + Duration::from_millis(1));
                continue;
            }
            let b = outstanding.swap_remove(rng.random_range(0..outstanding.len()));
            let result = answer(&b, &real, &mut rng, &mut world);
            let report = d.complete(b, result, now);
            let refresh = report.refresh_map;
            world.absorb(report);
            if refresh {
                world.absorb(d.install_map(real.clone(), now));
            }
            now += Duration::from_millis(rng.random_range(0..5));
        }
        let mut acked: Vec<u64> = world.delivered.iter().chain(&world.dead).copied().collect();
        acked.sort_unstable();
        assert_eq!(acked, (0..n).collect::<Vec<_>>(), "every record acked exactly once");
        let mut dead = world.dead.clone();
        dead.sort_unstable();
        let mut poison: Vec<u64> = poison.into_iter().collect();
        poison.sort_unstable();
        assert_eq!(dead, poison, "exactly the poison records are dead-lettered");
        if per_key {
            assert_eq!(world.stream, want, "per-key order and exactly-once on the stream");
        } else {
            for (k, ids) in &mut world.stream {
                ids.sort_unstable();
                assert_eq!(Some(&*ids), want.get(k), "exactly-once on the stream");
            }
        }
        assert_eq!(d.held_bytes(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn random_failures_lose_nothing_and_keep_key_order(
            seed in any::<u64>(),
            per_key in any::<bool>(),
            aggregate in any::<bool>(),
            keys in 1usize..30,
            stale_map in any::<bool>(),
            draining in any::<bool>(),
        ) {
            simulate(seed, per_key, aggregate, keys, 300, stale_map, draining);
        }
    }

    #[test]
    fn a_hot_key_is_aggregated_in_order() {
        simulate(7, true, true, 1, 500, false, false);
        simulate(8, true, true, 1, 500, true, true);
    }

    #[test]
    fn linger_holds_a_small_batch_and_count_releases_it() {
        let now = Instant::now();
        let mut d = Dispatcher::new(settings(true, false), Stats::new("t"));
        d.install_map(even_map(1), now);
        for i in 0..5 {
            d.push(record(i, &format!("k{i}"), "{}", now));
        }
        assert!(d.next_batch(now, false).is_none(), "lingers");
        assert_eq!(d.wakeup(now, false), Some(now + Duration::from_millis(50)));
        let b = d.next_batch(now + Duration::from_millis(50), false).expect("due");
        assert_eq!(b.entries.len(), 5);
        for i in 5..25 {
            d.push(record(i, &format!("k{i}"), "{}", now));
        }
        let b2 = d.next_batch(now, false).expect("full batch goes at once");
        assert_eq!(b2.entries.len(), 20);
        assert_eq!(d.in_flight(), 2);
    }

    #[test]
    fn a_busy_key_waits_for_its_entry() {
        let now = Instant::now();
        let mut d = Dispatcher::new(settings(true, false), Stats::new("t"));
        d.install_map(even_map(2), now);
        d.push(record(1, "k", "1", now));
        d.push(record(2, "k", "2", now));
        let b = d.next_batch(now, true).expect("first");
        assert_eq!(b.entries.len(), 1);
        assert!(d.next_batch(now, true).is_none(), "second record of k waits");
        let r = d.complete(b, Ok(vec![EntryResult::Throttled]), now);
        assert!(r.delivered.is_empty());
        let later = now + Duration::from_secs(1);
        let b = d.next_batch(later, true).expect("retry");
        assert_eq!(b.entries[0].records[0].id, 1, "the failed entry goes again, not the next one");
        let shard: Arc<str> = b.entries[0].predicted.clone().expect("predicted");
        let r = d.complete(b, Ok(vec![EntryResult::Accepted { shard_id: shard.clone() }]), later);
        assert_eq!(r.delivered.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1]);
        let b = d.next_batch(later, true).expect("then the next");
        assert_eq!(b.entries[0].records[0].id, 2);
    }

    #[test]
    fn max_retries_dead_letters() {
        let now = Instant::now();
        let mut s = settings(true, false);
        s.max_retries = Some(1);
        let mut d = Dispatcher::new(s, Stats::new("t"));
        d.push(record(1, "k", "1", now));
        let failed = || Ok(vec![EntryResult::Failed { code: "InternalFailure".into(), message: "x".into() }]);
        let b = d.next_batch(now, true).expect("first");
        assert!(d.complete(b, failed(), now).dead.is_empty());
        let b = d.next_batch(now + Duration::from_secs(1), true).expect("retry");
        let r = d.complete(b, failed(), now);
        assert_eq!(r.dead.len(), 1);
        assert_eq!(r.dead[0].1, "retries_exhausted");
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn rate_limit_paces_a_shard() {
        let now = Instant::now();
        let mut s = settings(false, false);
        s.rate_limit = true;
        s.max_batch_records = 500;
        s.max_batch_bytes = 5 << 20;
        s.max_in_flight = 100;
        let mut d = Dispatcher::new(s, Stats::new("t"));
        d.install_map(even_map(1), now);
        for i in 0..3000 {
            d.push(record(i, "k", "{}", now));
        }
        let mut sent = 0;
        while let Some(b) = d.next_batch(now, true) {
            sent += b.entries.len();
        }
        assert_eq!(sent, 950, "one second's worth at once");
        let wake = d.wakeup(now, true).expect("more later");
        assert!(wake >= now + Duration::from_millis(50), "waits for a chunk, not a single record");
    }
}
