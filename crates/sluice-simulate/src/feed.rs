//! The feed: a deterministic bike-race telemetry generator, the bounded history kept for resume, and the
//! broadcast that hands every generated message, once, to all connected clients.
//!
//! Data enters through [`generate`], the only writer. Each message is appended to the [`History`] first and
//! only then sent on the broadcast, so a client that subscribes to the broadcast *before* reading the
//! history sees every message at least once (and drops the duplicates by `seq`): resume never leaves a gap
//! at the seam between replay and live delivery.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::stats::Counters;

/// Slots in the broadcast ring. A client that falls this far behind live is cut ("lagged") and can resume
/// from history with `?after=`. In `--fast` mode the generator never runs more than half of this ahead of
/// the slowest client.
pub(crate) const BROADCAST_CAPACITY: usize = 1 << 16;

/// Messages generated per batch in `--fast` mode (one history lock per batch).
const FAST_BATCH: usize = 1024;

/// One generated message: its global sequence number and its JSON text (shared, never copied per client).
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    pub seq: u64,
    pub json: Bytes,
}

/// What the generator needs to know; derived from [`crate::SimConfig`].
#[derive(Clone, Debug)]
pub(crate) struct GenConfig {
    pub racers: u32,
    /// Total messages per second; `None` means as fast as the slowest client takes them.
    pub rate: Option<f64>,
    pub count: Option<u64>,
}

/// The shared feed state: history plus broadcast plus the counters every part reports into.
pub(crate) struct Feed {
    history: Mutex<History>,
    tx: broadcast::Sender<Msg>,
    pub counters: Counters,
}

impl Feed {
    pub(crate) fn new(history: usize) -> Feed {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Feed { history: Mutex::new(History::new(history)), tx, counters: Counters::default() }
    }

    /// A receiver that sees every message published after this call.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Msg> {
        self.tx.subscribe()
    }

    pub(crate) fn history(&self) -> MutexGuard<'_, History> {
        // A panic while holding the lock cannot leave the ring half-updated in a way that matters here.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends to history, then broadcasts. The order is what makes resume gap-free (see module docs).
    fn publish(&self, batch: &[Msg]) {
        {
            let mut history = self.history();
            for msg in batch {
                history.push(msg.json.clone());
            }
        }
        for msg in batch {
            // An error only means nobody is subscribed right now.
            let _ = self.tx.send(msg.clone());
        }
        self.counters.add_generated(batch.len() as u64);
    }
}

/// The last `capacity` messages, addressable by `seq`.
///
/// Invariant: the message at index `i` has `seq == first_seq + i`, and the newest generated seq is
/// `first_seq + len - 1` (so an empty ring at start has `first_seq == 1`, head 0).
pub(crate) struct History {
    first_seq: u64,
    msgs: VecDeque<Bytes>,
    capacity: usize,
}

impl History {
    fn new(capacity: usize) -> History {
        History { first_seq: 1, msgs: VecDeque::new(), capacity }
    }

    fn push(&mut self, json: Bytes) {
        self.msgs.push_back(json);
        if self.msgs.len() > self.capacity {
            self.msgs.pop_front();
            self.first_seq += 1;
        }
    }

    /// The newest generated seq (0 before the first message).
    #[cfg(test)]
    fn head(&self) -> u64 {
        self.first_seq + self.msgs.len() as u64 - 1
    }

    /// The oldest seq still kept, if any.
    pub(crate) fn oldest(&self) -> Option<u64> {
        (!self.msgs.is_empty()).then_some(self.first_seq)
    }

    /// Appends to `out` up to `max` messages with `seq > cursor`, oldest first.
    ///
    /// Returns true when messages right after `cursor` are no longer kept (the replay starts later than
    /// asked: a gap the caller should count).
    pub(crate) fn read_after(&self, cursor: u64, max: usize, out: &mut Vec<Msg>) -> bool {
        let want = cursor.saturating_add(1);
        let end = self.first_seq + self.msgs.len() as u64;
        let gap = want < self.first_seq;
        let start = want.max(self.first_seq);
        if start >= end {
            return gap;
        }
        let skip = (start - self.first_seq) as usize;
        let take = max.min(self.msgs.len() - skip);
        out.extend(self.msgs.range(skip..skip + take).zip(start..).map(|(json, seq)| Msg { seq, json: json.clone() }));
        gap
    }
}

/// Runs the generator until `shutdown` turns true.
pub(crate) async fn generate(feed: std::sync::Arc<Feed>, cfg: GenConfig, mut shutdown: watch::Receiver<bool>) {
    match cfg.rate {
        Some(rate) => generate_paced(&feed, &cfg, rate, &mut shutdown).await,
        None => generate_fast(&feed, &cfg, &mut shutdown).await,
    }
}

async fn generate_paced(feed: &Feed, cfg: &GenConfig, rate: f64, shutdown: &mut watch::Receiver<bool>) {
    let mut race = RaceGen::new(cfg.racers, f64::from(cfg.racers) / rate);
    let mut batch = Vec::new();
    // One tick per message at low rates, never more often than 1 kHz nor rarer than 20 Hz.
    let tick = Duration::from_secs_f64((1.0 / rate).clamp(0.001, 0.05));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    // Messages "owed" at time t are floor(t * rate); after a long pause (suspended process) the backlog
    // beyond one second is skipped rather than burst out.
    let mut skipped: u64 = 0;
    let max_burst = rate.ceil().max(1.0) as u64;
    loop {
        tokio::select! {
            biased;
            _ = stopped(shutdown) => return,
            _ = interval.tick() => {}
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).saturating_sub(skipped);
        let made = race.generated();
        let mut n = due.saturating_sub(made);
        if n > max_burst {
            skipped += n - max_burst;
            n = max_burst;
        }
        if let Some(count) = cfg.count {
            n = n.min(count.saturating_sub(made));
        }
        if n == 0 {
            if cfg.count.is_some_and(|c| made >= c) {
                break;
            }
            continue;
        }
        let ts = unix_millis();
        batch.clear();
        batch.extend((0..n).map(|_| race.next(ts)));
        feed.publish(&batch);
    }
    // --count reached: clients stay connected, nothing more is generated.
    stopped(shutdown).await;
}

async fn generate_fast(feed: &Feed, cfg: &GenConfig, shutdown: &mut watch::Receiver<bool>) {
    let mut race = RaceGen::new(cfg.racers, 1.0);
    let mut batch = Vec::with_capacity(FAST_BATCH);
    let window = BROADCAST_CAPACITY / 2;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let made = race.generated();
        let remaining = cfg.count.map_or(u64::MAX, |c| c.saturating_sub(made));
        if remaining == 0 {
            break;
        }
        // Back-pressure: nobody listening, or the slowest client is half a ring behind.
        let backlog = feed.tx.len();
        if feed.tx.receiver_count() == 0 || backlog >= window {
            let pause = if feed.tx.receiver_count() == 0 { 5 } else { 1 };
            tokio::select! {
                biased;
                _ = stopped(shutdown) => return,
                _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
            }
            continue;
        }
        let n = (window - backlog).min(FAST_BATCH).min(remaining as usize);
        let ts = unix_millis();
        batch.clear();
        batch.extend((0..n).map(|_| race.next(ts)));
        feed.publish(&batch);
        // Let the clients' tasks run; on a small machine they share the cores with us.
        tokio::task::yield_now().await;
    }
    stopped(shutdown).await;
}

/// Resolves once the simulator is stopping (or its handle is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not be held across an await by callers.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Metres per lap of the simulated circuit.
const LAP_METRES: f64 = 5_000.0;
/// Bytes per allocation that many messages are carved from.
const CHUNK: usize = 64 * 1024;
/// Teams the racers ride for (racer i rides for team i mod TEAMS).
const TEAMS: usize = 25;

/// Longest message the formatter can write (seq and ts are at most 20 digits each).
const MAX_MSG: usize = 256;

struct Racer {
    cadence: i64,
    power: i64,
    heart_rate: i64,
    /// Tenths of a km/h, so the JSON's one decimal is exact.
    speed_dkph: i64,
    /// Road gradient in tenths of a percent.
    gradient_dpct: i64,
    metres: f64,
}

/// Generates the race: racers take turns round-robin, so with `N` racers at `N` messages per second each
/// racer reports once per second. Values random-walk within plausible ranges; deterministic per run.
pub(crate) struct RaceGen {
    racers: Vec<Racer>,
    rng: u64,
    next_seq: u64,
    /// Seconds of race time between two reports of one racer.
    report_interval_s: f64,
    buf: BytesMut,
}

impl RaceGen {
    pub(crate) fn new(racers: u32, report_interval_s: f64) -> RaceGen {
        let mut rng = 0x5eed_0fb1_c7c1_e5a7_u64;
        let racers = (0..racers.max(1))
            .map(|_| Racer {
                cadence: 80 + range(&mut rng, 16),
                power: 200 + range(&mut rng, 120),
                heart_rate: 125 + range(&mut rng, 40),
                speed_dkph: 340 + range(&mut rng, 80),
                gradient_dpct: range(&mut rng, 60) - 20,
                metres: range(&mut rng, 3 * LAP_METRES as i64) as f64,
            })
            .collect();
        RaceGen { racers, rng, next_seq: 1, report_interval_s, buf: BytesMut::with_capacity(CHUNK) }
    }

    /// How many messages this generator has produced.
    pub(crate) fn generated(&self) -> u64 {
        self.next_seq - 1
    }

    pub(crate) fn next(&mut self, ts_ms: u64) -> Msg {
        let seq = self.next_seq;
        self.next_seq += 1;
        let idx = ((seq - 1) % self.racers.len() as u64) as usize;
        let rng = &mut self.rng;
        let r = &mut self.racers[idx];
        r.cadence = (r.cadence + range(rng, 5) - 2).clamp(60, 120);
        r.power = (r.power + range(rng, 31) - 15).clamp(80, 600);
        r.heart_rate = (r.heart_rate + range(rng, 3) - 1).clamp(95, 200);
        r.speed_dkph = (r.speed_dkph + range(rng, 11) - 5).clamp(150, 700);
        r.gradient_dpct = (r.gradient_dpct + range(rng, 5) - 2).clamp(-80, 120);
        r.metres += r.speed_dkph as f64 / 36.0 * self.report_interval_s;
        let lap = (r.metres / LAP_METRES) as u64 + 1;

        if self.buf.capacity() < MAX_MSG {
            // The previous chunk stays alive as long as messages carved from it are referenced.
            self.buf = BytesMut::with_capacity(CHUNK);
        }
        let b = &mut self.buf;
        b.put_slice(b"{\"seq\":");
        put_uint(b, seq, 1);
        b.put_slice(b",\"racer\":\"r");
        put_uint(b, idx as u64, 4);
        b.put_slice(b"\",\"team\":\"t");
        put_uint(b, (idx % TEAMS) as u64, 2);
        b.put_slice(b"\",\"ts\":");
        put_uint(b, ts_ms, 1);
        b.put_slice(b",\"cadence\":");
        put_uint(b, r.cadence as u64, 1);
        b.put_slice(b",\"power\":");
        put_uint(b, r.power as u64, 1);
        b.put_slice(b",\"heart_rate\":");
        put_uint(b, r.heart_rate as u64, 1);
        b.put_slice(b",\"speed_kph\":");
        put_uint(b, r.speed_dkph as u64 / 10, 1);
        b.put_u8(b'.');
        b.put_u8(b'0' + (r.speed_dkph % 10) as u8);
        b.put_slice(b",\"gradient_pct\":");
        if r.gradient_dpct < 0 {
            b.put_u8(b'-');
        }
        put_uint(b, r.gradient_dpct.unsigned_abs() / 10, 1);
        b.put_u8(b'.');
        b.put_u8(b'0' + (r.gradient_dpct.unsigned_abs() % 10) as u8);
        b.put_slice(b",\"lap\":");
        put_uint(b, lap, 1);
        b.put_u8(b'}');
        Msg { seq, json: self.buf.split().freeze() }
    }
}

/// Writes `v` in decimal, zero-padded to at least `width` digits.
fn put_uint(buf: &mut BytesMut, mut v: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in (digits.len() - i)..width {
        buf.put_u8(b'0');
    }
    buf.put_slice(&digits[i..]);
}

/// A uniform-ish value in `0..n` from a xorshift64* state (quality is irrelevant, speed is not).
fn range(state: &mut u64, n: i64) -> i64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as i64 % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_valid_json_with_the_race_fields() {
        let mut race = RaceGen::new(1000, 1.0);
        for expected_seq in 1..=5000u64 {
            let msg = race.next(1_795_320_000_123);
            assert_eq!(msg.seq, expected_seq);
            let v: serde_json::Value = serde_json::from_slice(&msg.json).unwrap();
            assert_eq!(v["seq"], expected_seq);
            assert_eq!(v["racer"], format!("r{:04}", (expected_seq - 1) % 1000));
            assert_eq!(v["ts"], 1_795_320_000_123u64);
            for field in ["cadence", "power", "heart_rate", "lap"] {
                assert!(v[field].is_u64(), "{field} in {v}");
            }
            assert!(v["speed_kph"].is_number());
            assert!(v["gradient_pct"].as_f64().is_some_and(|g| (-8.0..=12.0).contains(&g)), "{v}");
            assert_eq!(v["team"], format!("t{:02}", ((expected_seq - 1) % 1000) % 25));
            assert!((140..=160).contains(&msg.json.len()), "{}", msg.json.len());
        }
    }

    #[test]
    fn history_reads_after_a_cursor_and_reports_gaps() {
        let mut history = History::new(3);
        assert_eq!(history.head(), 0);
        for i in 1..=5u64 {
            history.push(Bytes::from(i.to_string()));
        }
        assert_eq!(history.head(), 5);
        assert_eq!(history.oldest(), Some(3));
        let mut out = Vec::new();
        assert!(!history.read_after(3, 10, &mut out));
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
        out.clear();
        assert!(history.read_after(0, 10, &mut out));
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(&out[0].json[..], b"3");
        out.clear();
        assert!(!history.read_after(2, 1, &mut out));
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
        out.clear();
        assert!(!history.read_after(9, 10, &mut out));
        assert!(out.is_empty());

        let mut none = History::new(0);
        none.push(Bytes::from_static(b"x"));
        assert_eq!(none.head(), 1);
        assert_eq!(none.oldest(), None);
        assert!(none.read_after(0, 10, &mut out));
        assert!(!none.read_after(1, 10, &mut out));
        assert!(out.is_empty());
    }
}
