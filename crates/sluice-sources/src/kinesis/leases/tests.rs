//! The coordinator over [`MemoryLeaseTable`] on a [`FakeClock`]: no real sleeps, every step
//! deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::table::{self, Attr, CHECKPOINT_OWNER, LEASE_OWNER, OWNER_SWITCHES};
use super::*;

const F: Duration = Duration::from_secs(10);

struct Worker {
    coord: LeaseCoordinator,
    events: UnboundedReceiver<LeaseEvent>,
    next: Duration,
    alive: bool,
    /// Shards held according to the events received.
    held: BTreeSet<String>,
    log: Vec<(Duration, LeaseEvent)>,
    /// Handoffs asked for and not yet made.
    handoffs: Vec<String>,
    /// Whether it makes them (a worker that does not stands for a KCL 2.x one).
    answers_handoffs: bool,
}

struct Sim {
    clock: FakeClock,
    table: MemoryLeaseTable,
    workers: Vec<Worker>,
    config: fn(LeaseConfig) -> LeaseConfig,
    /// Shard → since when two workers' views both hold it (a steal not yet noticed).
    doubly_held: BTreeMap<String, Duration>,
    /// The longest such overlap seen.
    max_overlap: Duration,
}

fn shard(i: usize) -> String {
    format!("shardId-{i:012}")
}

fn roots(n: usize) -> Vec<ShardInfo> {
    (0..n).map(|i| ShardInfo { id: shard(i), parents: vec![], hash_range: None, closed: false }).collect()
}

impl Sim {
    fn new() -> Sim {
        Sim {
            clock: FakeClock::new(),
            table: MemoryLeaseTable::new(),
            workers: Vec::new(),
            config: |c| c,
            doubly_held: BTreeMap::new(),
            max_overlap: Duration::ZERO,
        }
    }

    fn add_worker(&mut self) -> usize {
        let i = self.workers.len();
        let config = (self.config)(LeaseConfig::new("app", format!("w{i}")).with_failover_time(F));
        let (coord, events) =
            LeaseCoordinator::with_clock(Arc::new(self.table.clone()), config, Arc::new(self.clock.clone()));
        self.workers.push(Worker {
            coord,
            events,
            next: self.clock.now(),
            alive: true,
            held: BTreeSet::new(),
            log: Vec::new(),
            handoffs: Vec::new(),
            answers_handoffs: true,
        });
        i
    }

    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn drain(&mut self, i: usize) {
        let now = self.clock.now();
        let w = &mut self.workers[i];
        while let Ok(event) = w.events.try_recv() {
            match &event {
                LeaseEvent::Acquired { shard, .. } => assert!(w.held.insert(shard.clone()), "acquired twice: {shard}"),
                LeaseEvent::Lost { shard } => assert!(w.held.remove(shard), "lost a lease never held: {shard}"),
                LeaseEvent::HandOff { shard } => {
                    assert!(w.held.remove(shard), "handing off a lease never held: {shard}");
                    w.handoffs.push(shard.clone());
                }
            }
            w.log.push((now, event));
        }
    }

    /// Workers that were asked to hand a lease over do so (as the source does once its reader
    /// stopped), unless they are dead.
    async fn hand_over(&mut self) {
        for w in self.workers.iter_mut().filter(|w| w.alive && w.answers_handoffs) {
            for shard in std::mem::take(&mut w.handoffs) {
                let _ = w.coord.hand_off(&shard, None).await;
            }
        }
    }

    /// Runs every live worker's ticks due up to `until`, in time order; `check` sees the
    /// simulation after every tick and stops the run by answering true.
    async fn run_until_with(&mut self, until: Duration, mut check: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            let Some(i) =
                (0..self.workers.len()).filter(|&i| self.workers[i].alive).min_by_key(|&i| (self.workers[i].next, i))
            else {
                return false;
            };
            if self.workers[i].next > until {
                self.clock.set(until);
                return false;
            }
            self.clock.set(self.workers[i].next);
            let next = self.workers[i].coord.tick().await;
            assert!(next > self.clock.now(), "tick must schedule into the future");
            self.workers[i].next = next;
            for j in 0..self.workers.len() {
                self.drain(j);
            }
            self.hand_over().await;
            self.check_exclusive();
            if check(self) {
                return true;
            }
        }
    }

    async fn run_until(&mut self, until: Duration) {
        self.run_until_with(until, |_| false).await;
    }

    /// Owner of every lease in the table.
    fn owners(&self) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        for i in 0..64 {
            if let Some(item) = self.table.item(&shard(i)) {
                let owner = match item.get(LEASE_OWNER) {
                    Some(Attr::S(o)) => Some(o.clone()),
                    _ => None,
                };
                out.insert(shard(i), owner);
            }
        }
        out
    }

    /// Leases per owner (including owners with none among the live workers).
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> =
            self.workers.iter().enumerate().filter(|(_, w)| w.alive).map(|(i, _)| (format!("w{i}"), 0)).collect();
        for owner in self.owners().into_values().flatten() {
            *counts.entry(owner).or_default() += 1;
        }
        counts
    }

    /// Every lease owned by a live worker, counts within one of each other, and every worker's
    /// own view (events, `holds`) agrees with the table.
    fn balanced(&self) -> bool {
        let owners = self.owners();
        let live: BTreeSet<String> =
            self.workers.iter().enumerate().filter(|(_, w)| w.alive).map(|(i, _)| format!("w{i}")).collect();
        if owners.values().any(|o| o.as_ref().is_none_or(|o| !live.contains(o))) {
            return false;
        }
        let counts = self.counts();
        let (min, max) = (counts.values().min().copied(), counts.values().max().copied());
        if max.zip(min).is_none_or(|(max, min)| max - min > 1) {
            return false;
        }
        self.workers.iter().enumerate().filter(|(_, w)| w.alive).all(|(i, w)| {
            let mine: BTreeSet<String> =
                owners.iter().filter(|(_, o)| o.as_deref() == Some(&format!("w{i}"))).map(|(k, _)| k.clone()).collect();
            w.held == mine && w.coord.held().into_iter().collect::<BTreeSet<_>>() == mine
        })
    }

    /// Two workers' views hold one shard only after a steal, and only until the victim's next
    /// renewal (one renew interval); the table always has one owner.
    fn check_exclusive(&mut self) {
        let mut holders: BTreeMap<String, usize> = BTreeMap::new();
        for w in self.workers.iter().filter(|w| w.alive) {
            for s in w.coord.held() {
                *holders.entry(s).or_default() += 1;
            }
        }
        let now = self.now();
        let renew = self.workers.first().map(|w| w.coord.config().renew_interval).unwrap_or_default();
        self.doubly_held.retain(|s, _| holders.get(s).is_some_and(|&n| n > 1));
        for (s, n) in holders {
            assert!(n <= 2, "{s} held by {n} workers at {now:?}");
            if n == 2 {
                let since = *self.doubly_held.entry(s.clone()).or_insert(now);
                self.max_overlap = self.max_overlap.max(now - since);
                assert!(now - since <= renew, "{s} held by two workers since {since:?}, now {now:?}");
            }
        }
    }
}

async fn balanced_sim(shards: usize, workers: usize) -> (Sim, Duration) {
    balanced_sim_with(shards, workers, |c| c).await
}

async fn balanced_sim_with(shards: usize, workers: usize, config: fn(LeaseConfig) -> LeaseConfig) -> (Sim, Duration) {
    let mut sim = Sim::new();
    sim.config = config;
    for _ in 0..workers {
        sim.add_worker();
    }
    let created = sim.workers[0].coord.sync_shards(&roots(shards), InitialPosition::TrimHorizon).await;
    assert_eq!(created, Ok(shards));
    let mut at = None;
    sim.run_until_with(F * 2, |s| {
        if s.balanced() && at.is_none() {
            at = Some(s.now());
        }
        false
    })
    .await;
    let at = at.unwrap_or_else(|| panic!("not balanced within 2 x failover_time: {:?}", sim.counts()));
    assert!(sim.balanced(), "balance did not hold: {:?}", sim.counts());
    (sim, at)
}

#[tokio::test]
async fn eight_leases_balance_across_three_workers_within_two_failover_times() {
    let (sim, at) = balanced_sim(8, 3).await;
    let counts: Vec<usize> = sim.counts().into_values().collect();
    assert_eq!(counts.iter().sum::<usize>(), 8);
    assert!(counts.iter().all(|&n| n == 2 || n == 3), "{counts:?}");
    // Every lease changed hands at most through single steals; nothing was lost twice.
    eprintln!("balanced at {at:?} of fake time: {:?}", sim.counts());
    assert!(at < F, "expected balance well within failover_time, took {at:?}");
}

#[tokio::test]
async fn staggered_starts_balance_too() {
    let mut sim = Sim::new();
    sim.add_worker();
    sim.workers[0].coord.sync_shards(&roots(8), InitialPosition::TrimHorizon).await.ok();
    sim.run_until(Duration::from_secs(30)).await;
    assert_eq!(sim.counts().get("w0"), Some(&8));
    let start = sim.now();
    sim.add_worker();
    sim.run_until(start + Duration::from_secs(5)).await;
    sim.add_worker();
    let mut at = None;
    sim.run_until_with(start + F * 2, |s| {
        if s.balanced() && at.is_none() {
            at = Some(s.now());
        }
        false
    })
    .await;
    let at = at.map(|t| t - start);
    eprintln!("joined 2 workers to a loaded one: balanced after {at:?}: {:?}", sim.counts());
    assert!(at.is_some_and(|t| t <= F * 2), "{:?}", sim.counts());
}

#[tokio::test]
async fn a_crashed_worker_loses_its_leases_after_failover_time() {
    for take_interval in [None, Some(Duration::from_millis(2500))] {
        let mut sim = Sim::new();
        if take_interval.is_some() {
            sim.config = |c| LeaseConfig { take_interval: Duration::from_millis(2500), ..c };
        }
        for _ in 0..3 {
            sim.add_worker();
        }
        sim.workers[0].coord.sync_shards(&roots(8), InitialPosition::TrimHorizon).await.ok();
        sim.run_until(Duration::from_secs(45)).await;
        assert!(sim.balanced(), "{:?}", sim.counts());
        // w2 crashes just after a renewal: it neither renews nor releases any more.
        let last_renewal = sim.workers[2].next - sim.workers[2].coord.config().renew_interval;
        let crash = sim.now();
        let victims: BTreeSet<String> = sim.workers[2].held.clone();
        assert!(!victims.is_empty());
        sim.workers[2].alive = false;
        let mut first_taken = None;
        let done = sim
            .run_until_with(crash + Duration::from_secs(120), |s| {
                let owners = s.owners();
                let taken = victims.iter().filter(|v| owners[*v].as_deref() != Some("w2")).count();
                if taken > 0 && first_taken.is_none() {
                    first_taken = Some(s.now());
                }
                taken == victims.len()
            })
            .await;
        assert!(done, "w2's leases were not taken over: {:?}", sim.owners());
        let first = first_taken.unwrap_or_default();
        let all = sim.now();
        eprintln!(
            "take_interval {:?}: crash at {crash:?} (last renewal {last_renewal:?}); first lease taken {:?} later, all {} taken {:?} later",
            sim.workers[0].coord.config().take_interval,
            first - crash,
            victims.len(),
            all - crash
        );
        // Never before failover_time since the last renewal could have been seen.
        assert!(first >= last_renewal + F, "taken too early: {first:?}");
        let bound = F + sim.workers[0].coord.config().take_interval * 2;
        assert!(all - crash <= bound, "took {:?} > {bound:?}", all - crash);
        if take_interval.is_some() {
            assert!(all - crash <= F + Duration::from_secs(5), "failover with 2.5 s scans: {:?}", all - crash);
        }
        // The crashed worker's own view expires too: it would stop delivering.
        assert!(sim.workers[2].coord.held().is_empty());
        sim.run_until(sim.now() + Duration::from_secs(1)).await;
        let counts = sim.counts();
        assert_eq!(counts.get("w0").copied().unwrap_or(0) + counts.get("w1").copied().unwrap_or(0), 8, "{counts:?}");
    }
}

#[tokio::test]
async fn a_released_lease_is_taken_at_the_next_take() {
    released_leases_are_taken_at_the_next_take(|c| c).await;
    // With scans every 2.5 s, the "handoff within 3 s".
    let handoff =
        released_leases_are_taken_at_the_next_take(|c| LeaseConfig { take_interval: Duration::from_millis(2500), ..c })
            .await;
    assert!(handoff <= Duration::from_secs(3), "{handoff:?}");
}

async fn released_leases_are_taken_at_the_next_take(config: fn(LeaseConfig) -> LeaseConfig) -> Duration {
    let (mut sim, _) = balanced_sim_with(8, 3, config).await;
    sim.run_until(Duration::from_secs(50)).await;
    let shards: Vec<String> = sim.workers[2].held.iter().cloned().collect();
    let finals: Vec<(String, Checkpoint)> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), Checkpoint::Sequence { sequence: format!("4959{i}"), sub: 0 }))
        .collect();
    let released_at = sim.now();
    let report = sim.workers[2].coord.shutdown(&finals).await;
    assert_eq!(report.released, shards);
    assert_eq!(report.checkpointed.len(), shards.len());
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    sim.workers[2].alive = false;
    sim.drain(2);
    assert!(sim.workers[2].log.iter().all(|(t, e)| *t < released_at || !matches!(e, LeaseEvent::Lost { .. })));
    let mut taken_at = None;
    let done = sim
        .run_until_with(released_at + F * 3, |s| {
            let owners = s.owners();
            let all = shards.iter().all(|k| owners[k].as_deref().is_some_and(|o| o != "w2"));
            if all && taken_at.is_none() {
                taken_at = Some(s.now());
            }
            all
        })
        .await;
    assert!(done);
    let handoff = taken_at.unwrap_or_default() - released_at;
    let take_interval = sim.workers[0].coord.config().take_interval;
    eprintln!("released {} leases; all taken {handoff:?} later (take interval {take_interval:?})", shards.len());
    assert!(handoff <= take_interval, "{handoff:?}");
    // The takers start from the final checkpoints.
    for (shard, cp) in &finals {
        let acquired = sim.workers[..2]
            .iter()
            .flat_map(|w| &w.log)
            .any(|(_, e)| matches!(e, LeaseEvent::Acquired { shard: s, checkpoint } if s == shard && checkpoint == cp));
        assert!(acquired, "{shard} not acquired at {cp}");
    }
    handoff
}

#[tokio::test]
async fn steals_one_lease_at_a_time_from_the_most_loaded_worker() {
    let mut sim = Sim::new();
    sim.add_worker();
    sim.workers[0].coord.sync_shards(&roots(8), InitialPosition::TrimHorizon).await.ok();
    sim.run_until(Duration::from_secs(30)).await;
    assert_eq!(sim.counts().get("w0"), Some(&8));
    sim.add_worker();
    let mut history = vec![0usize];
    let mut steal_times = Vec::new();
    sim.run_until_with(Duration::from_secs(90), |s| {
        let mine = s.counts().get("w1").copied().unwrap_or(0);
        if mine != *history.last().unwrap_or(&0) {
            history.push(mine);
            steal_times.push(s.now());
        }
        false
    })
    .await;
    eprintln!("w1's leases: {history:?} at {steal_times:?}");
    assert_eq!(history, vec![0, 1, 2, 3, 4], "one at a time up to target 4");
    let counts = sim.counts();
    assert_eq!((counts["w0"], counts["w1"]), (4, 4));
    // Stolen leases count one owner switch each; w0 was told.
    let switched = sim
        .owners()
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some("w1"))
        .filter(|(k, _)| sim.table.item(k).and_then(|i| i.get(OWNER_SWITCHES).cloned()) == Some(Attr::N("1".into())))
        .count();
    assert_eq!(switched, 4);
    // w0 was asked to hand each over (not told it lost them), and did: no marker is left.
    let handed = sim.workers[0].log.iter().filter(|(_, e)| matches!(e, LeaseEvent::HandOff { .. })).count();
    assert_eq!(handed, 4);
    assert!(sim.workers[0].log.iter().all(|(_, e)| !matches!(e, LeaseEvent::Lost { .. })));
    assert!(
        sim.owners().keys().all(|k| sim.table.item(k).is_some_and(|i| !i.contains_key(CHECKPOINT_OWNER))),
        "checkpointOwner cleared"
    );
}

#[tokio::test]
async fn a_steal_waits_for_the_victims_last_checkpoint_and_starts_exactly_there() {
    let mut sim = Sim::new();
    sim.add_worker();
    sim.workers[0].coord.sync_shards(&roots(2), InitialPosition::TrimHorizon).await.ok();
    sim.run_until(Duration::from_secs(1)).await;
    // w1 joins and steals one lease; it does not read it yet.
    sim.add_worker();
    sim.workers[1].coord.tick().await;
    sim.drain(1);
    let stolen = sim.workers[1].coord.held().into_iter().next().unwrap_or_default();
    assert!(!stolen.is_empty(), "w1 stole nothing");
    assert!(sim.workers[1].held.is_empty(), "no Acquired before the handoff");
    let item = sim.table.item(&stolen).unwrap_or_default();
    assert_eq!(item.get(CHECKPOINT_OWNER), Some(&Attr::S("w0".into())));
    // w0 read on meanwhile: its checkpoint is refused and turned into a handoff request.
    let refused = sim.workers[0].coord.checkpoint(&stolen, "200", 0).await;
    assert!(matches!(refused, Err(LeaseError::HandingOff { .. })), "{refused:?}");
    sim.drain(0);
    assert_eq!(sim.workers[0].log.last().map(|(_, e)| e.clone()), Some(LeaseEvent::HandOff { shard: stolen.clone() }));
    assert!(!sim.workers[0].coord.holds(&stolen));
    // Its reader stopped and its last position spooled, w0 hands over at 250.
    let cp = Checkpoint::Sequence { sequence: "250".into(), sub: 3 };
    assert_eq!(sim.workers[0].coord.hand_off(&stolen, Some(cp.clone())).await, Ok(true));
    assert_eq!(sim.workers[0].coord.hand_off(&stolen, None).await, Ok(false), "once");
    sim.workers[0].handoffs.clear();
    sim.clock.advance(Duration::from_millis(100));
    sim.workers[1].coord.tick().await;
    sim.drain(1);
    let acquired = sim.workers[1].log.iter().find_map(|(_, e)| match e {
        LeaseEvent::Acquired { shard, checkpoint } if *shard == stolen => Some(checkpoint.clone()),
        _ => None,
    });
    assert_eq!(acquired, Some(cp), "the thief starts exactly after the victim's last record");
    // And it holds the lease: it renews and checkpoints on the counter the handoff left.
    assert_eq!(sim.workers[1].coord.checkpoint(&stolen, "300", 0).await, Ok(()));
    sim.run_until(sim.now() + Duration::from_secs(20)).await;
    assert!(sim.workers[1].coord.holds(&stolen));
}

#[tokio::test]
async fn a_victim_that_does_not_hand_over_delays_the_thief_by_the_handoff_timeout_only() {
    let mut sim = Sim::new();
    sim.add_worker();
    sim.workers[0].answers_handoffs = false;
    sim.workers[0].coord.sync_shards(&roots(2), InitialPosition::TrimHorizon).await.ok();
    sim.run_until(Duration::from_secs(1)).await;
    assert_eq!(sim.workers[0].coord.checkpoint(&shard(0), "100", 0).await, Ok(()));
    assert_eq!(sim.workers[0].coord.checkpoint(&shard(1), "100", 0).await, Ok(()));
    let joined = sim.now();
    sim.add_worker();
    let mut acquired_at = None;
    sim.run_until_with(joined + F * 2, |s| {
        if acquired_at.is_none() && !s.workers[1].held.is_empty() {
            acquired_at = Some(s.now());
        }
        false
    })
    .await;
    let at = acquired_at.unwrap_or_else(|| panic!("never acquired: {:?}", sim.workers[1].log));
    assert!(at - joined >= F && at - joined <= F + Duration::from_millis(200), "after {:?}", at - joined);
    let stolen = sim.workers[1].held.iter().next().cloned().unwrap_or_default();
    let item = sim.table.item(&stolen).unwrap_or_default();
    assert!(!item.contains_key(CHECKPOINT_OWNER), "the marker is cleared: a late handoff cannot move it");
    assert_eq!(item.get("checkpoint"), Some(&Attr::S("100".into())));
    assert_eq!(sim.workers[0].coord.hand_off(&stolen, None).await, Ok(false), "too late");
}

#[tokio::test]
async fn a_stale_checkpoint_after_losing_the_lease_fails_and_reports_lost() {
    let mut sim = Sim::new();
    sim.add_worker();
    sim.workers[0].coord.sync_shards(&roots(2), InitialPosition::TrimHorizon).await.ok();
    sim.run_until(Duration::from_secs(1)).await;
    let s0 = shard(0);
    assert!(sim.workers[0].coord.holds(&s0));
    assert_eq!(sim.workers[0].coord.checkpoint(&s0, "100", 0).await, Ok(()));
    // Another application's worker (a KCL 2.x one: no handoff) takes a lease; w0 checkpoints
    // before its renew notices.
    let stolen = shard(1);
    let counter = sim.table.get(&stolen).await.ok().flatten().map_or(0, |l| l.counter);
    let take = table::Write::Take { owner: "kcl".into(), owner_switched: true };
    assert_eq!(sim.table.update(&stolen, counter, &take).await, Ok(true));
    assert!(sim.workers[0].coord.holds(&stolen), "w0 has not noticed yet");
    let stale = sim.workers[0].coord.checkpoint(&stolen, "200", 0).await;
    assert!(matches!(stale, Err(LeaseError::Lost { .. })), "{stale:?}");
    assert!(!sim.workers[0].coord.holds(&stolen));
    sim.drain(0);
    assert_eq!(sim.workers[0].log.last().map(|(_, e)| e.clone()), Some(LeaseEvent::Lost { shard: stolen.clone() }));
    // The table keeps the thief's view (not w0's stale checkpoint).
    let cp = sim.table.item(&stolen).and_then(|i| i.get("checkpoint").cloned());
    assert_ne!(cp, Some(Attr::S("200".into())));
    // A checkpoint of a lease no longer held is refused locally.
    let again = sim.workers[0].coord.checkpoint(&stolen, "300", 0).await;
    assert!(matches!(again, Err(LeaseError::NotHeld { .. })), "{again:?}");
    assert!(matches!(sim.workers[0].coord.checkpoint(&s0, "12x", 0).await, Err(LeaseError::BadSequence(_))));
}

#[tokio::test]
async fn an_unreachable_table_drops_leases_locally_before_anyone_may_take_them() {
    let mut sim = Sim::new();
    sim.add_worker();
    sim.workers[0].coord.sync_shards(&roots(3), InitialPosition::TrimHorizon).await.ok();
    sim.run_until(Duration::from_secs(5)).await;
    assert_eq!(sim.workers[0].coord.held().len(), 3);
    // The last renewal that went through.
    let last_ok = sim.workers[0].next - sim.workers[0].coord.config().renew_interval;
    sim.table.set_failing(true);
    sim.run_until(last_ok + F - Duration::from_millis(500)).await;
    assert_eq!(sim.workers[0].coord.held().len(), 3, "still within failover_time");
    sim.run_until(last_ok + F + Duration::from_millis(10)).await;
    assert!(sim.workers[0].coord.held().is_empty(), "holds() must turn false after failover_time");
    sim.run_until(last_ok + F + Duration::from_secs(4)).await;
    assert!(sim.workers[0].held.is_empty(), "Lost sent for each: {:?}", sim.workers[0].log);
    // Back again: the leases expired (nobody renewed them) and are taken again.
    sim.table.set_failing(false);
    sim.run_until(last_ok + F * 5).await;
    assert_eq!(sim.workers[0].held.len(), 3);
}

fn split_shards() -> Vec<ShardInfo> {
    vec![
        ShardInfo { id: "p".into(), parents: vec![], hash_range: None, closed: true },
        ShardInfo { id: "c1".into(), parents: vec!["p".into()], hash_range: None, closed: false },
        ShardInfo { id: "c2".into(), parents: vec!["p".into()], hash_range: None, closed: false },
    ]
}

#[tokio::test]
async fn split_children_wait_for_the_parent_and_the_parent_lease_is_cleaned_up() {
    let mut sim = Sim::new();
    sim.add_worker();
    let coord = sim.workers[0].coord.clone();
    assert_eq!(coord.sync_shards(&split_shards(), InitialPosition::Latest).await, Ok(2));
    assert!(sim.table.item("p").is_none(), "LATEST leases no closed shard without a leased parent");
    assert_eq!(sim.table.item("c1").and_then(|i| i.get("checkpoint").cloned()), Some(Attr::S("LATEST".into())));
    assert_eq!(coord.parent_done("c1").await, Ok(true), "a missing parent lease does not block");

    let mut sim = Sim::new();
    sim.add_worker();
    let coord = sim.workers[0].coord.clone();
    assert_eq!(coord.sync_shards(&split_shards(), InitialPosition::AtTimestamp).await, Ok(3));
    for (k, cp) in [("p", "AT_TIMESTAMP"), ("c1", "TRIM_HORIZON"), ("c2", "TRIM_HORIZON")] {
        assert_eq!(sim.table.item(k).and_then(|i| i.get("checkpoint").cloned()), Some(Attr::S(cp.into())), "{k}");
    }
    assert_eq!(
        sim.table.item("c1").and_then(|i| i.get("parentShardId").cloned()),
        Some(Attr::Ss(BTreeSet::from(["p".into()])))
    );
    sim.run_until(Duration::from_secs(1)).await;
    assert_eq!(sim.workers[0].held.len(), 3);
    assert_eq!(coord.parent_done("c1").await, Ok(false));
    assert_eq!(coord.parent_done("p").await, Ok(true));
    coord.checkpoint("p", "1000", 0).await.ok();
    assert_eq!(coord.parent_done("c2").await, Ok(false));
    assert_eq!(coord.checkpoint_shard_end("p").await, Ok(()));
    assert!(!coord.holds("p"), "a finished shard is no longer held");
    assert_eq!(
        sim.table.item("p").and_then(|i| i.get("childShardIds").cloned()),
        Some(Attr::Ss(BTreeSet::from(["c1".into(), "c2".into()])))
    );
    assert_eq!(coord.parent_done("c1").await, Ok(true));
    assert_eq!(coord.parent_done("c2").await, Ok(true));
    // Parent kept until both children checkpointed a sequence number.
    coord.checkpoint("c1", "2000", 0).await.ok();
    sim.run_until(Duration::from_secs(60)).await;
    assert!(sim.table.item("p").is_some(), "c2 has not started yet");
    coord.checkpoint("c2", "2001", 0).await.ok();
    sim.run_until(Duration::from_secs(120)).await;
    assert!(sim.table.item("p").is_none(), "parent lease deleted once both children run");
    assert_eq!(coord.held(), vec!["c1".to_owned(), "c2".to_owned()]);
    // The closed parent is still listed (within retention): a later sync must not lease it
    // again, or it would be read twice.
    for initial in [InitialPosition::TrimHorizon, InitialPosition::Latest] {
        assert_eq!(coord.sync_shards(&split_shards(), initial).await, Ok(0));
        assert!(sim.table.item("p").is_none(), "a consumed parent is not leased again ({initial:?})");
    }
}

#[tokio::test]
async fn merge_children_need_both_parents() {
    let shards = [
        ShardInfo { id: "a".into(), parents: vec![], hash_range: None, closed: true },
        ShardInfo { id: "b".into(), parents: vec![], hash_range: None, closed: true },
        ShardInfo { id: "m".into(), parents: vec!["a".into(), "b".into()], hash_range: None, closed: false },
    ];
    let mut sim = Sim::new();
    sim.add_worker();
    sim.add_worker();
    let c0 = sim.workers[0].coord.clone();
    // Children listed before parents still get TRIM_HORIZON.
    let reversed: Vec<ShardInfo> = shards.iter().rev().cloned().collect();
    assert_eq!(c0.sync_shards(&reversed, InitialPosition::TrimHorizon).await, Ok(3));
    assert_eq!(sim.table.item("m").and_then(|i| i.get("checkpoint").cloned()), Some(Attr::S("TRIM_HORIZON".into())));
    sim.run_until(Duration::from_secs(15)).await;
    let owner_of = |sim: &Sim, k: &str| {
        sim.workers
            .iter()
            .position(|w| w.held.contains(k))
            .unwrap_or_else(|| panic!("{k} not held: {:?}", sim.owners()))
    };
    let (wa, wb) = (owner_of(&sim, "a"), owner_of(&sim, "b"));
    assert_eq!(c0.parent_done("m").await, Ok(false));
    sim.workers[wa].coord.checkpoint_shard_end("a").await.ok();
    assert_eq!(c0.parent_done("m").await, Ok(false), "b not finished");
    sim.workers[wb].coord.checkpoint_shard_end("b").await.ok();
    assert_eq!(c0.parent_done("m").await, Ok(true));
    // Both finished parents stay until the child checkpoints; then both are deleted.
    sim.run_until(Duration::from_secs(60)).await;
    assert!(sim.table.item("a").is_some() && sim.table.item("b").is_some());
    let wm = owner_of(&sim, "m");
    assert_eq!(sim.workers[wm].coord.checkpoint("m", "777", 2).await, Ok(()));
    sim.run_until(Duration::from_secs(100)).await;
    assert!(sim.table.item("a").is_none() && sim.table.item("b").is_none());
    assert_eq!(
        sim.table.item("m").and_then(|i| i.get("checkpointSubSequenceNumber").cloned()),
        Some(Attr::N("2".into()))
    );
    assert_eq!(owner_of(&sim, "m"), wm);
}

#[tokio::test]
async fn latest_children_of_leased_parents_start_at_trim_horizon() {
    let mut sim = Sim::new();
    sim.add_worker();
    let coord = sim.workers[0].coord.clone();
    let before = vec![ShardInfo { id: "p".into(), parents: vec![], hash_range: None, closed: false }];
    assert_eq!(coord.sync_shards(&before, InitialPosition::Latest).await, Ok(1));
    assert_eq!(coord.sync_shards(&split_shards(), InitialPosition::Latest).await, Ok(2));
    for (k, cp) in [("p", "LATEST"), ("c1", "TRIM_HORIZON"), ("c2", "TRIM_HORIZON")] {
        assert_eq!(sim.table.item(k).and_then(|i| i.get("checkpoint").cloned()), Some(Attr::S(cp.into())), "{k}");
    }
    // Two workers syncing at once create each lease once.
    assert_eq!(coord.sync_shards(&split_shards(), InitialPosition::Latest).await, Ok(0));
}
