//! The [`LeaseCoordinator`]: renew, take, steal, checkpoint, release, shard sync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::sync::{Notify, mpsc};

use super::table::{Checkpoint, Lease, LeaseTable, Write};
use super::{Clock, InitialPosition, LeaseConfig, LeaseError, LeaseEvent, ShardInfo, SystemClock};

/// One lease this worker holds.
struct Slot {
    /// Cleared when the lease is lost, released or finished (under `counter`'s lock).
    held: AtomicBool,
    /// Clock nanos when the last successful write was sent.
    last_write: AtomicU64,
    /// The `leaseCounter` this worker last wrote; locked across a write so that renewals and
    /// checkpoints of one lease never race.
    counter: tokio::sync::Mutex<u64>,
    /// For a stolen lease whose previous owner has not handed it over yet: when to stop
    /// waiting (clock time). `Acquired` is sent once it is handed over or this passes.
    handoff_until: Mutex<Option<Duration>>,
}

/// How often a stolen lease is looked at while its previous owner hands it over.
const HANDOFF_POLL: Duration = Duration::from_millis(100);

/// What the taker remembers between scans.
struct TakerState {
    /// leaseKey → (counter, clock time of the scan that first saw it).
    seen: HashMap<String, (u64, Duration)>,
    rng: StdRng,
}

struct Schedule {
    next_renew: Duration,
    next_take: Duration,
}

struct Inner {
    table: Arc<dyn LeaseTable>,
    config: LeaseConfig,
    clock: Arc<dyn Clock>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    held: Mutex<HashMap<String, Arc<Slot>>>,
    taker: tokio::sync::Mutex<TakerState>,
    schedule: Mutex<Schedule>,
    /// Shards from the last sync: children and hash ranges for `SHARD_END` checkpoints.
    shards: Mutex<HashMap<String, ShardInfo>>,
    stopped: AtomicBool,
    stop: Notify,
    /// Held for a whole tick, so that shutdown waits for a pass in flight (which might take a
    /// lease) before it releases everything.
    pass: tokio::sync::Mutex<()>,
}

/// Runs one worker's side of an application's leases. Cheap to clone (shared state).
#[derive(Clone)]
pub struct LeaseCoordinator {
    inner: Arc<Inner>,
}

/// What [`LeaseCoordinator::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Final checkpoints written.
    pub checkpointed: Vec<String>,
    /// Leases released (owner cleared).
    pub released: Vec<String>,
    /// Leases that turned out to be someone else's already, or whose write failed.
    pub failed: Vec<(String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why a slot is dropped.
enum Drop {
    /// Taken by another worker or expired locally: send `Lost`.
    Lost,
    /// Stolen with a handoff request: send `HandOff`.
    HandOff,
    /// Released, or finished at `SHARD_END`: the caller knows.
    Quiet,
}

impl LeaseCoordinator {
    /// A coordinator on the process's monotonic clock, and the receiver of its events.
    pub fn new(
        table: Arc<dyn LeaseTable>,
        config: LeaseConfig,
    ) -> (LeaseCoordinator, mpsc::UnboundedReceiver<LeaseEvent>) {
        LeaseCoordinator::with_clock(table, config, Arc::new(SystemClock::new()))
    }

    /// A coordinator on the given clock (tests inject a [`super::FakeClock`] and drive
    /// [`tick`](Self::tick) themselves).
    pub fn with_clock(
        table: Arc<dyn LeaseTable>,
        config: LeaseConfig,
        clock: Arc<dyn Clock>,
    ) -> (LeaseCoordinator, mpsc::UnboundedReceiver<LeaseEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let seed = config
            .worker_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let now = clock.now();
        let inner = Inner {
            table,
            config,
            clock,
            events,
            held: Mutex::new(HashMap::new()),
            taker: tokio::sync::Mutex::new(TakerState { seen: HashMap::new(), rng: StdRng::seed_from_u64(seed) }),
            schedule: Mutex::new(Schedule { next_renew: now, next_take: now }),
            shards: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
        };
        (LeaseCoordinator { inner: Arc::new(inner) }, rx)
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.inner.config
    }

    /// Creates the lease table if it is missing and waits until it is ACTIVE.
    pub async fn initialize(&self) -> Result<(), LeaseError> {
        Ok(self.inner.table.ensure_table().await?)
    }

    /// Does this worker hold `shard`'s lease right now? False as soon as it is lost, released,
    /// finished, or not renewed within `failover_time`. Check before delivering every batch.
    pub fn holds(&self, shard: &str) -> bool {
        let slot = lock(&self.inner.held).get(shard).cloned();
        slot.is_some_and(|s| self.fresh(&s))
    }

    /// The shards this worker holds, sorted.
    pub fn held(&self) -> Vec<String> {
        let slots: Vec<(String, Arc<Slot>)> =
            lock(&self.inner.held).iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let mut held: Vec<String> = slots.into_iter().filter(|(_, s)| self.fresh(s)).map(|(k, _)| k).collect();
        held.sort();
        held
    }

    fn fresh(&self, slot: &Slot) -> bool {
        let age = nanos(self.inner.clock.now()).saturating_sub(slot.last_write.load(Ordering::SeqCst));
        slot.held.load(Ordering::SeqCst) && age <= nanos(self.inner.config.failover_time)
    }

    /// Runs whatever is due at the clock's current time (a renew pass, a scan-and-take pass)
    /// and answers when something is due next. [`spawn`](Self::spawn) calls it in a loop.
    pub async fn tick(&self) -> Duration {
        let _pass = self.inner.pass.lock().await;
        let now = self.inner.clock.now();
        if self.inner.stopped.load(Ordering::SeqCst) {
            return now + self.inner.config.take_interval;
        }
        let (renew_due, take_due) = {
            let s = lock(&self.inner.schedule);
            (now >= s.next_renew, now >= s.next_take)
        };
        if renew_due {
            self.renew_all().await;
            lock(&self.inner.schedule).next_renew = now + self.inner.config.renew_interval;
        }
        if take_due {
            let catch_up = self.take_pass().await;
            let interval = if catch_up { self.inner.config.renew_interval } else { self.inner.config.take_interval };
            lock(&self.inner.schedule).next_take = now + interval;
        }
        let waiting = self.check_handoffs().await;
        let s = lock(&self.inner.schedule);
        let next = s.next_renew.min(s.next_take);
        if waiting { next.min(now + HANDOFF_POLL) } else { next }
    }

    /// Looks at every stolen lease still waiting for its previous owner's handoff; answers
    /// whether any still waits.
    async fn check_handoffs(&self) -> bool {
        let slots: Vec<(String, Arc<Slot>)> = lock(&self.inner.held)
            .iter()
            .filter(|(_, s)| lock(&s.handoff_until).is_some())
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut waiting = false;
        for (shard, slot) in slots {
            waiting |= !self.check_handoff(&shard, &slot).await;
        }
        waiting
    }

    /// True once the lease is handed over (or the wait is given up, or the lease is gone).
    async fn check_handoff(&self, shard: &str, slot: &Arc<Slot>) -> bool {
        let me = &self.inner.config.worker_id;
        let mut counter = slot.counter.lock().await;
        let Some(until) = *lock(&slot.handoff_until) else { return true };
        if !slot.held.load(Ordering::SeqCst) {
            return true;
        }
        let sent = self.inner.clock.now();
        let lease = match self.inner.table.get(shard).await {
            Ok(Some(l)) if l.owner.as_deref() == Some(me.as_str()) => l,
            Ok(found) => {
                let reason = match found {
                    Some(l) => format!("taken by {:?} during the handoff", l.owner),
                    None => "deleted during the handoff".to_owned(),
                };
                self.drop_slot(shard, slot, Drop::Quiet, &reason);
                return true;
            }
            Err(e) => {
                tracing::debug!(shard, error = %e, "handoff check failed; retrying");
                return false;
            }
        };
        let handed_over = lease.checkpoint_owner.is_none();
        if !handed_over && sent < until {
            return false;
        }
        let mut lease = lease;
        if !handed_over {
            // Nobody answered: read from the checkpoint there is, and clear the marker so that a
            // late handoff cannot move the checkpoint under this reader.
            let write = Write::Take { owner: me.clone(), owner_switched: false };
            match self.inner.table.update(shard, lease.counter, &write).await {
                Ok(true) => lease.counter += 1,
                Ok(false) | Err(_) => return false,
            }
            metrics::counter!("sluice_kinesis_leases_handoff_timeouts_total", "application" => self.application())
                .increment(1);
            tracing::warn!(
                application = %self.inner.config.application,
                shard,
                previous_owner = ?lease.checkpoint_owner,
                checkpoint = %lease.checkpoint,
                "the previous owner did not hand the lease over in time: reading from its last checkpoint"
            );
        }
        // The previous owner's handoff write advanced the counter; it is ours again.
        *counter = lease.counter;
        slot.last_write.store(nanos(sent), Ordering::SeqCst);
        *lock(&slot.handoff_until) = None;
        tracing::info!(
            application = %self.inner.config.application,
            worker = %me,
            shard,
            checkpoint = %lease.checkpoint,
            handed_over,
            "stolen lease ready to read"
        );
        let _ = self.inner.events.send(LeaseEvent::Acquired { shard: shard.to_owned(), checkpoint: lease.checkpoint });
        true
    }

    /// The previous owner's side of a steal ([`LeaseEvent::HandOff`]): writes `checkpoint`
    /// (the newest position fully processed, if newer than the lease's) and clears the
    /// handoff marker, so the new owner starts exactly there. False when the new owner
    /// stopped waiting (it then reads from the older checkpoint: duplicates, no loss).
    pub async fn hand_off(&self, shard: &str, checkpoint: Option<Checkpoint>) -> Result<bool, LeaseError> {
        let me = &self.inner.config.worker_id;
        // The new owner renews meanwhile: retry on a moved counter.
        for _ in 0..5 {
            let Some(lease) = self.inner.table.get(shard).await? else { return Ok(false) };
            if lease.checkpoint_owner.as_deref() != Some(me.as_str()) {
                return Ok(false);
            }
            let write = Write::HandOff { checkpoint: checkpoint.clone() };
            if self.inner.table.update(shard, lease.counter, &write).await? {
                metrics::counter!("sluice_kinesis_leases_handed_off_total", "application" => self.application())
                    .increment(1);
                tracing::info!(
                    application = %self.inner.config.application,
                    worker = %me,
                    shard,
                    to = ?lease.owner,
                    checkpoint = ?checkpoint.as_ref().map(ToString::to_string),
                    "lease handed over"
                );
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// How a lease that is no longer ours was taken: with a handoff request to this worker, or
    /// not.
    fn drop_kind(&self, lease: &Lease) -> Drop {
        let me = Some(self.inner.config.worker_id.as_str());
        if lease.checkpoint_owner.as_deref() == me && lease.owner.as_deref() != me { Drop::HandOff } else { Drop::Lost }
    }

    /// Runs [`tick`](Self::tick) on a tokio task until [`shutdown`](Self::shutdown) or
    /// [`stop`](Self::stop).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            while !this.inner.stopped.load(Ordering::SeqCst) {
                let next = this.tick().await;
                let wait = next.saturating_sub(this.inner.clock.now());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = this.inner.stop.notified() => {}
                }
            }
        })
    }

    /// Stops the background task without releasing anything (leases expire after
    /// `failover_time`, like a crash).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.stop.notify_waiters();
    }

    fn application(&self) -> String {
        self.inner.config.application.clone()
    }

    fn update_held_gauge(&self) {
        let n = lock(&self.inner.held).len();
        metrics::gauge!("sluice_kinesis_leases_held", "application" => self.application()).set(n as f64);
    }

    /// Removes `shard`'s slot (if it is still `slot`) and marks it not held.
    fn drop_slot(&self, shard: &str, slot: &Arc<Slot>, why: Drop, reason: &str) {
        slot.held.store(false, Ordering::SeqCst);
        {
            let mut held = lock(&self.inner.held);
            if held.get(shard).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                held.remove(shard);
            }
        }
        self.update_held_gauge();
        match why {
            Drop::Lost => {
                metrics::counter!("sluice_kinesis_leases_lost_total", "application" => self.application()).increment(1);
                tracing::warn!(
                    application = %self.inner.config.application,
                    worker = %self.inner.config.worker_id,
                    shard,
                    reason,
                    "lease lost: stopping the shard"
                );
                let _ = self.inner.events.send(LeaseEvent::Lost { shard: shard.to_owned() });
            }
            Drop::HandOff => {
                tracing::info!(
                    application = %self.inner.config.application,
                    worker = %self.inner.config.worker_id,
                    shard,
                    reason,
                    "lease stolen to balance the load: stopping the shard and handing it over"
                );
                let _ = self.inner.events.send(LeaseEvent::HandOff { shard: shard.to_owned() });
            }
            Drop::Quiet => {}
        }
    }

    async fn renew_all(&self) {
        let slots: Vec<(String, Arc<Slot>)> =
            lock(&self.inner.held).iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let renewals = slots.iter().map(|(shard, slot)| self.renew(shard, slot));
        futures_util::future::join_all(renewals).await;
    }

    async fn renew(&self, shard: &str, slot: &Arc<Slot>) {
        let mut counter = slot.counter.lock().await;
        if !slot.held.load(Ordering::SeqCst) {
            return;
        }
        if !self.fresh(slot) {
            self.drop_slot(shard, slot, Drop::Lost, "not renewed within failover_time");
            return;
        }
        let sent = self.inner.clock.now();
        match self.inner.table.update(shard, *counter, &Write::Renew).await {
            Ok(true) => {
                *counter += 1;
                slot.last_write.store(nanos(sent), Ordering::SeqCst);
                metrics::counter!("sluice_kinesis_leases_renewals_total", "application" => self.application())
                    .increment(1);
            }
            Ok(false) => match self.inner.table.get(shard).await {
                // The write landed but its answer was lost (a retry saw the new counter).
                // Still ours: the write landed but its answer was lost, or the previous owner
                // handed the lease over meanwhile (its write moved the counter).
                Ok(Some(l)) if l.owner.as_deref() == Some(&self.inner.config.worker_id) && l.counter > *counter => {
                    *counter = l.counter;
                    slot.last_write.store(nanos(sent), Ordering::SeqCst);
                }
                Ok(Some(l)) => {
                    let reason = format!("renew refused: owner {:?}, counter {}", l.owner, l.counter);
                    self.drop_slot(shard, slot, self.drop_kind(&l), &reason);
                }
                Ok(None) => self.drop_slot(shard, slot, Drop::Lost, "renew refused: lease deleted"),
                Err(e) => tracing::warn!(shard, error = %e, "lease re-read after a refused renew failed; retrying"),
            },
            Err(e) => tracing::warn!(shard, error = %e, "lease renew failed; retrying"),
        }
    }

    /// One scan-and-take pass. True when the next pass should come early (it tried to take and
    /// this worker is still below its target).
    async fn take_pass(&self) -> bool {
        let me = self.inner.config.worker_id.clone();
        let failover = self.inner.config.failover_time;
        let leases = match self.inner.table.scan().await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::warn!(application = %self.inner.config.application, error = %e, "lease scan failed");
                return false;
            }
        };
        let scan_time = self.inner.clock.now();
        let mut taker = self.inner.taker.lock().await;

        // When did each counter first show up?
        let mut seen = HashMap::with_capacity(leases.len());
        for l in &leases {
            let since = match taker.seen.get(&l.key) {
                Some(&(counter, since)) if counter == l.counter => since,
                _ => scan_time,
            };
            seen.insert(l.key.clone(), (l.counter, since));
        }
        taker.seen = seen;

        // A lease of ours that the table shows with another owner and a newer counter was taken.
        let held: HashMap<String, Arc<Slot>> = lock(&self.inner.held).clone();
        for l in &leases {
            if let Some(slot) = held.get(&l.key)
                && l.owner.as_deref() != Some(me.as_str())
                && let Ok(counter) = slot.counter.try_lock()
                && l.counter > *counter
                && slot.held.load(Ordering::SeqCst)
            {
                drop(counter);
                self.drop_slot(&l.key, slot, self.drop_kind(l), &format!("scan shows owner {:?}", l.owner));
            }
        }

        self.clean_up_parents(&leases).await;

        // Leases still to be processed; SHARD_END ones are done.
        let active: Vec<&Lease> = leases.iter().filter(|l| l.checkpoint != Checkpoint::ShardEnd).collect();
        if active.is_empty() {
            return false;
        }
        let age = |l: &Lease| scan_time.saturating_sub(taker.seen.get(&l.key).map_or(scan_time, |s| s.1));
        let held_now: BTreeSet<String> = lock(&self.inner.held).keys().cloned().collect();
        let is_available = |l: &Lease| !held_now.contains(&l.key) && (l.owner.is_none() || age(l) > failover);
        let mut available: Vec<&Lease> = Vec::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for l in &active {
            if is_available(l) {
                available.push(l);
            } else if let Some(owner) = l.owner.as_deref() {
                *counts.entry(owner).or_default() += 1;
            }
        }
        counts.entry(me.as_str()).or_default();
        let workers = counts.len();
        let target = if workers >= active.len() { 1 } else { active.len().div_ceil(workers) };
        let mine = counts.get(me.as_str()).copied().unwrap_or(0);
        let needed = target.saturating_sub(mine);
        if needed == 0 {
            return false;
        }

        let very_old = failover * self.inner.config.very_old_factor;
        let mut to_take: Vec<(Lease, bool)> = Vec::new();
        if !available.is_empty() {
            let (mut old, mut rest): (Vec<&Lease>, Vec<&Lease>) =
                available.iter().copied().partition(|l| l.owner.is_some() && age(l) > very_old);
            old.shuffle(&mut taker.rng);
            rest.shuffle(&mut taker.rng);
            to_take.extend(old.into_iter().chain(rest).take(needed).map(|l| (l.clone(), false)));
        } else {
            // Steal from the most loaded worker (ties: the first by id), KCL 2.x's rule.
            let Some((&victim, &most)) = counts.iter().rev().max_by_key(|(_, n)| **n) else { return false };
            let mut n = 0;
            if victim != me && most >= target {
                n = needed.min(most - target);
                if needed > 1 && n == 0 {
                    n = 1;
                }
                n = n.min(self.inner.config.max_steal);
            }
            if n > 0 {
                let mut candidates: Vec<&Lease> =
                    active.iter().copied().filter(|l| l.owner.as_deref() == Some(victim)).collect();
                candidates.shuffle(&mut taker.rng);
                to_take.extend(candidates.into_iter().take(n).map(|l| (l.clone(), true)));
                tracing::info!(
                    application = %self.inner.config.application,
                    worker = %me,
                    victim,
                    victim_leases = most,
                    target,
                    needed,
                    "no lease available: stealing"
                );
            }
        }
        if to_take.is_empty() {
            return false;
        }
        drop(taker);

        let mut taken = 0;
        for (lease, steal) in &to_take {
            if self.take(lease, *steal).await {
                taken += 1;
            }
        }
        tracing::debug!(
            worker = %me, leases = active.len(), workers, target, mine, tried = to_take.len(), taken,
            "take pass"
        );
        mine + taken < target
    }

    /// Takes one lease seen in a scan; true when it is now ours.
    async fn take(&self, lease: &Lease, steal: bool) -> bool {
        let me = &self.inner.config.worker_id;
        let owner_switched = lease.owner.as_ref().is_some_and(|o| o != me);
        // A live owner is asked to hand the lease over with its last checkpoint, so that this
        // worker does not read again what it read since its last checkpoint.
        let write = match (&lease.owner, steal) {
            (Some(from), true) => Write::Steal { owner: me.clone(), from: from.clone() },
            _ => Write::Take { owner: me.clone(), owner_switched },
        };
        let handoff = matches!(write, Write::Steal { .. });
        let sent = self.inner.clock.now();
        match self.inner.table.update(&lease.key, lease.counter, &write).await {
            Ok(true) => {
                let slot = Arc::new(Slot {
                    held: AtomicBool::new(true),
                    last_write: AtomicU64::new(nanos(sent)),
                    counter: tokio::sync::Mutex::new(lease.counter + 1),
                    handoff_until: Mutex::new(handoff.then(|| sent + self.inner.config.handoff_timeout)),
                });
                lock(&self.inner.held).insert(lease.key.clone(), slot);
                self.inner.taker.lock().await.seen.insert(lease.key.clone(), (lease.counter + 1, sent));
                self.update_held_gauge();
                let app = self.application();
                metrics::counter!("sluice_kinesis_leases_taken_total", "application" => app.clone()).increment(1);
                if steal {
                    metrics::counter!("sluice_kinesis_leases_stolen_total", "application" => app).increment(1);
                }
                tracing::info!(
                    application = %self.inner.config.application,
                    worker = %me,
                    shard = %lease.key,
                    from = lease.owner.as_deref().unwrap_or("nobody"),
                    checkpoint = %lease.checkpoint,
                    stolen = steal,
                    "lease taken"
                );
                if !handoff {
                    let _ = self
                        .inner
                        .events
                        .send(LeaseEvent::Acquired { shard: lease.key.clone(), checkpoint: lease.checkpoint.clone() });
                }
                true
            }
            Ok(false) => {
                tracing::debug!(shard = %lease.key, "lease take lost a race");
                false
            }
            Err(e) => {
                tracing::warn!(shard = %lease.key, error = %e, "lease take failed");
                false
            }
        }
    }

    /// Deletes the leases of finished parents whose children have all checkpointed past their
    /// start (a sequence number or `SHARD_END`).
    async fn clean_up_parents(&self, leases: &[Lease]) {
        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        for parent in leases.iter().filter(|l| l.checkpoint == Checkpoint::ShardEnd) {
            let mut children: BTreeSet<&str> = parent.children.iter().map(String::as_str).collect();
            children.extend(leases.iter().filter(|l| l.parents.contains(&parent.key)).map(|l| l.key.as_str()));
            let started = |c: &&str| {
                by_key.get(c).is_some_and(|l| !l.checkpoint.is_sentinel() || l.checkpoint == Checkpoint::ShardEnd)
            };
            if children.is_empty() || !children.iter().all(started) {
                continue;
            }
            match self.inner.table.delete_finished(&parent.key).await {
                Ok(true) => tracing::info!(
                    application = %self.inner.config.application,
                    shard = %parent.key,
                    children = ?children,
                    "finished parent lease deleted"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(shard = %parent.key, error = %e, "deleting a finished parent lease failed"),
            }
        }
    }

    /// Records that every record of `shard` up to `sequence` / `sub` was processed (conditioned
    /// on the lease counter; also renews the lease). [`LeaseError::Lost`] means another worker
    /// has the shard: stop it.
    pub async fn checkpoint(&self, shard: &str, sequence: &str, sub: u64) -> Result<(), LeaseError> {
        if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LeaseError::BadSequence(sequence.to_owned()));
        }
        self.write_checkpoint(shard, Checkpoint::Sequence { sequence: sequence.to_owned(), sub }).await
    }

    /// Records that `shard` was read to its end. The lease is then no longer held or renewed
    /// (no [`LeaseEvent::Lost`] follows), and its children may start
    /// ([`parent_done`](Self::parent_done)).
    pub async fn checkpoint_shard_end(&self, shard: &str) -> Result<(), LeaseError> {
        self.write_checkpoint(shard, Checkpoint::ShardEnd).await
    }

    async fn write_checkpoint(&self, shard: &str, checkpoint: Checkpoint) -> Result<(), LeaseError> {
        let not_held = || LeaseError::NotHeld { shard: shard.to_owned() };
        let slot = lock(&self.inner.held).get(shard).cloned().ok_or_else(not_held)?;
        let mut counter = slot.counter.lock().await;
        if !slot.held.load(Ordering::SeqCst) {
            return Err(not_held());
        }
        if !self.fresh(&slot) {
            let reason = "not renewed within failover_time";
            self.drop_slot(shard, &slot, Drop::Lost, reason);
            return Err(LeaseError::Lost { shard: shard.to_owned(), reason: reason.to_owned() });
        }
        let (children, hash_range) = {
            let shards = lock(&self.inner.shards);
            let children: BTreeSet<String> = if checkpoint == Checkpoint::ShardEnd {
                shards.values().filter(|s| s.parents.iter().any(|p| p == shard)).map(|s| s.id.clone()).collect()
            } else {
                BTreeSet::new()
            };
            (children, shards.get(shard).and_then(|info| info.hash_range))
        };
        let write = Write::Checkpoint { checkpoint: checkpoint.clone(), children, hash_range };
        let sent = self.inner.clock.now();
        let written = match self.inner.table.update(shard, *counter, &write).await? {
            true => true,
            false => {
                let found = self.inner.table.get(shard).await?;
                match found {
                    Some(l)
                        if l.owner.as_deref() == Some(&self.inner.config.worker_id)
                            && l.counter == *counter + 1
                            && l.checkpoint == checkpoint =>
                    {
                        true
                    }
                    found => {
                        let (reason, why) = match found {
                            Some(l) => (
                                format!("checkpoint refused: owner {:?}, counter {}", l.owner, l.counter),
                                self.drop_kind(&l),
                            ),
                            None => ("checkpoint refused: lease deleted".to_owned(), Drop::Lost),
                        };
                        let handoff = matches!(why, Drop::HandOff);
                        self.drop_slot(shard, &slot, why, &reason);
                        if handoff {
                            return Err(LeaseError::HandingOff { shard: shard.to_owned() });
                        }
                        return Err(LeaseError::Lost { shard: shard.to_owned(), reason });
                    }
                }
            }
        };
        debug_assert!(written);
        *counter += 1;
        slot.last_write.store(nanos(sent), Ordering::SeqCst);
        metrics::counter!("sluice_kinesis_leases_checkpoints_total", "application" => self.application()).increment(1);
        if checkpoint == Checkpoint::ShardEnd {
            tracing::info!(application = %self.inner.config.application, shard, "shard finished: SHARD_END checkpointed");
            self.drop_slot(shard, &slot, Drop::Quiet, "SHARD_END");
        }
        Ok(())
    }

    /// Gives `shard`'s lease up (clears the owner on the counter condition) so that another
    /// worker takes it at its next scan. Stop reading the shard first.
    pub async fn release(&self, shard: &str) -> Result<(), LeaseError> {
        let not_held = || LeaseError::NotHeld { shard: shard.to_owned() };
        let slot = lock(&self.inner.held).get(shard).cloned().ok_or_else(not_held)?;
        let counter = slot.counter.lock().await;
        if !slot.held.load(Ordering::SeqCst) {
            return Err(not_held());
        }
        match self.inner.table.update(shard, *counter, &Write::Release).await? {
            true => {
                metrics::counter!("sluice_kinesis_leases_released_total", "application" => self.application())
                    .increment(1);
                tracing::info!(
                    application = %self.inner.config.application,
                    worker = %self.inner.config.worker_id,
                    shard,
                    "lease released"
                );
                self.drop_slot(shard, &slot, Drop::Quiet, "released");
                Ok(())
            }
            false => {
                let reason = "release refused: counter moved".to_owned();
                self.drop_slot(shard, &slot, Drop::Lost, &reason);
                Err(LeaseError::Lost { shard: shard.to_owned(), reason })
            }
        }
    }

    /// Graceful shutdown: stops the background task, writes the final checkpoints given
    /// (`SHARD_END` finishes the shard), then releases every lease still held.
    pub async fn shutdown(&self, final_checkpoints: &[(String, Checkpoint)]) -> ShutdownReport {
        self.stop();
        // Wait for a pass in flight; no pass starts after this.
        let _pass = self.inner.pass.lock().await;
        let mut report = ShutdownReport::default();
        for (shard, checkpoint) in final_checkpoints {
            let written = match checkpoint {
                Checkpoint::ShardEnd => self.checkpoint_shard_end(shard).await,
                Checkpoint::Sequence { sequence, sub } => self.checkpoint(shard, sequence, *sub).await,
                _ => continue,
            };
            match written {
                Ok(()) => report.checkpointed.push(shard.clone()),
                Err(e) => report.failed.push((shard.clone(), e.to_string())),
            }
        }
        let held: Vec<String> = lock(&self.inner.held).keys().cloned().collect();
        for shard in held {
            match self.release(&shard).await {
                Ok(()) => report.released.push(shard),
                Err(e) => report.failed.push((shard, e.to_string())),
            }
        }
        report.released.sort();
        report
    }

    /// Creates the missing leases for `shards` (every shard of the stream, from ListShards):
    /// shards with a leased parent start at `TRIM_HORIZON`, the others at `initial` (with
    /// [`InitialPosition::Latest`], closed shards without a leased parent get no lease).
    /// Answers how many leases it created. Safe to run in every worker at once.
    pub async fn sync_shards(&self, shards: &[ShardInfo], initial: InitialPosition) -> Result<usize, LeaseError> {
        {
            let mut known = lock(&self.inner.shards);
            for s in shards {
                known.insert(s.id.clone(), s.clone());
            }
        }
        let existing: BTreeSet<String> = self.inner.table.scan().await?.into_iter().map(|l| l.key).collect();
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in shards {
            for p in &s.parents {
                children.entry(p.as_str()).or_default().push(s.id.as_str());
            }
        }
        // A closed shard with a leased descendant was read to its end already: its lease was
        // deleted once its children started. Leasing it again would read it all twice.
        let consumed = |id: &str| {
            let mut stack: Vec<&str> = children.get(id).cloned().unwrap_or_default();
            let mut seen = BTreeSet::new();
            while let Some(c) = stack.pop() {
                if existing.contains(c) {
                    return true;
                }
                if seen.insert(c) {
                    stack.extend(children.get(c).into_iter().flatten().copied());
                }
            }
            false
        };
        let mut leased: HashMap<String, bool> = HashMap::new();
        let mut created = 0;
        // Parents first, so a child sees whether its parents are leased.
        for shard in topological(shards) {
            let has_leased_parent =
                shard.parents.iter().any(|p| existing.contains(p) || leased.get(p).copied().unwrap_or(false));
            if existing.contains(&shard.id) {
                leased.insert(shard.id.clone(), true);
                continue;
            }
            if shard.closed && consumed(&shard.id) {
                leased.insert(shard.id.clone(), false);
                continue;
            }
            let include = match initial {
                InitialPosition::TrimHorizon | InitialPosition::AtTimestamp => true,
                InitialPosition::Latest => !shard.closed || has_leased_parent,
            };
            leased.insert(shard.id.clone(), include);
            if !include {
                continue;
            }
            let checkpoint = if has_leased_parent { Checkpoint::TrimHorizon } else { initial.checkpoint() };
            let mut lease = Lease::new(shard.id.clone(), checkpoint);
            lease.parents = shard.parents.iter().cloned().collect();
            lease.hash_range = shard.hash_range;
            if self.inner.table.create(&lease).await? {
                created += 1;
                tracing::info!(
                    application = %self.inner.config.application,
                    shard = %shard.id,
                    checkpoint = %lease.checkpoint,
                    parents = ?lease.parents,
                    "lease created"
                );
            }
        }
        Ok(created)
    }

    /// May `shard` be read? True when every parent lease that still exists has checkpoint
    /// `SHARD_END` (a missing parent lease does not block; after a merge both parents must be
    /// done). Poll it before reading a child.
    pub async fn parent_done(&self, shard: &str) -> Result<bool, LeaseError> {
        let parents: BTreeSet<String> = match self.inner.table.get(shard).await? {
            Some(lease) => lease.parents,
            None => {
                lock(&self.inner.shards).get(shard).map(|s| s.parents.iter().cloned().collect()).unwrap_or_default()
            }
        };
        for parent in &parents {
            if let Some(lease) = self.inner.table.get(parent).await?
                && lease.checkpoint != Checkpoint::ShardEnd
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// `shards` ordered so that every parent in the list comes before its children.
fn topological(shards: &[ShardInfo]) -> Vec<&ShardInfo> {
    let by_id: HashMap<&str, &ShardInfo> = shards.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(shards.len());
    for start in shards {
        // Depth-first without recursion; `done` also guards against cycles.
        let mut stack = vec![(start, false)];
        while let Some((s, expanded)) = stack.pop() {
            if done.contains(s.id.as_str()) {
                continue;
            }
            if expanded {
                done.insert(s.id.as_str());
                order.push(s);
                continue;
            }
            stack.push((s, true));
            for p in &s.parents {
                if let Some(parent) = by_id.get(p.as_str())
                    && !done.contains(p.as_str())
                    && !stack.iter().any(|(q, _)| q.id == *p)
                {
                    stack.push((parent, false));
                }
            }
        }
    }
    order
}
