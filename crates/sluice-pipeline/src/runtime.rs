//! Running a pipeline: sources → spool → sinks, with acknowledgements flowing back.
//!
//! Per source, one task runs the connection and one writes its events to the spool in batches
//! (each batch is durable before the next is taken). Per sink, one feeder per input reads the
//! spool from the sink's watermark and hands records over in order; one task collects the
//! sink's acknowledgements, advances each input's watermark over contiguous acks only, and
//! saves it. Nothing is dropped: a failing spool write (a full disk) is retried until it
//! succeeds while the source waits (the `spool_blocked` alarm is up meanwhile), and a keeper
//! task deletes a source's spool segments only below the lowest *saved* watermark of the sinks
//! reading it, so a record is forgotten once every sink acknowledged it. The one exception is
//! the opt-in `[spool] max_age`: segments older than that go even if a sink has not
//! acknowledged them, and every such record is counted (`sluice_pipeline_spool_expired_total`)
//! and logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge};
use sluice_flow::{
    Ack, Alarms, DeadLetters, Event, Output, Record, Sink, SinkContext, Source, SourceContext, SourceReport,
};
use sluice_storage::StorageError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::direct::{Books, DirectTarget, DirectWriter};
use crate::spool::{DispatchMark, SinkState, Spool, SpoolHistory, SpoolOptions, Watermark, skipped_by_read};

/// How often the keeper trims the spools.
const KEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts of a failing spool write.
pub(crate) const MAX_WRITE_BACKOFF: Duration = Duration::from_secs(2);
/// The alarm a source shows while its spool cannot be written.
pub const SPOOL_BLOCKED: &str = "spool_blocked";
/// The alarm a source shows while a sink's feeder cannot read its spool.
pub const SPOOL_READ_FAILED: &str = "spool_read_failed";
/// The alarm a source shows while it waits because its spool queue stays full (the spool
/// cannot write, or cannot keep up): paused by backpressure, it does not read the provider.
pub const SOURCE_PAUSED: &str = "source_paused";
/// The alarm a sink shows while records wait for it and it has acknowledged none for longer
/// than `[api] sink_failing_after` (a refusing endpoint, a full disk, …).
pub const SINK_FAILING: &str = "sink_failing";
/// How long a source's spool queue must stay full before the source counts as paused.
const PAUSED_AFTER: Duration = Duration::from_secs(1);
/// How often the health monitor looks at sources and sinks.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
/// Default of `[api] sink_failing_after`.
pub const DEFAULT_SINK_FAILING_AFTER: Duration = Duration::from_secs(60);

/// Per source, the saved watermark of every sink reading it: the spool may be trimmed below
/// the lowest.
pub(crate) type Floors = Arc<Mutex<BTreeMap<String, BTreeMap<String, u64>>>>;

/// Bits of a record id that hold the spool ordinal; the bits above hold the input index.
const ORDINAL_BITS: u32 = 48;
const ORDINAL_MASK: u64 = (1 << ORDINAL_BITS) - 1;

/// Live counters shown by `/health` and the demo.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Status {
    /// Per source: events spooled since start, and the latest cursor.
    pub sources: BTreeMap<String, SourceStatus>,
    /// Per sink: records delivered / dead-lettered since start, and watermarks per input.
    pub sinks: BTreeMap<String, SinkStatus>,
}

/// One source's live counters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SourceStatus {
    /// Events written to the spool since start.
    pub spooled: u64,
    /// Cursor of the newest spooled event.
    pub cursor: Option<String>,
    /// One past the newest spooled ordinal.
    pub spool_next: u64,
    /// Events `[spool] max_age` deleted before every sink reading the source had them.
    pub expired: u64,
    /// What the source reports about itself (a `kinesis` source: its leases), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// One sink's live counters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SinkStatus {
    /// Records acknowledged as delivered since start.
    pub delivered: u64,
    /// Records acknowledged as dead-lettered since start.
    pub dead_lettered: u64,
    /// Input → every spool ordinal up to this is done.
    pub watermarks: BTreeMap<String, u64>,
    /// Records that may be delivered a second time because they were handed out before the
    /// last stop but not acknowledged.
    pub redelivered: u64,
    /// Spool ordinals its reads passed over since start (damaged records, ordinals a recovery
    /// never used): done without delivery.
    pub skipped: u64,
}

/// One raised alarm of one component, as `/health` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RaisedAlarm {
    /// The component (a source's name).
    pub component: String,
    /// The alarm (`spool_blocked`, `silence`, `no_connection`, …).
    pub alarm: String,
    /// When it was raised, epoch ms.
    pub since_ms: u64,
    /// What an operator should know.
    pub detail: String,
}

/// Every raised alarm on `boards`, in component then alarm order.
pub fn raised_alarms(boards: &AlarmBoards) -> Vec<RaisedAlarm> {
    let mut out = Vec::new();
    for (component, board) in boards.iter() {
        for (alarm, a) in board.snapshot() {
            out.push(RaisedAlarm { component: component.clone(), alarm, since_ms: a.since_ms, detail: a.detail });
        }
    }
    out
}

/// Shared, cheaply readable status.
pub type SharedStatus = Arc<Mutex<Status>>;

/// A sink ready to run, with its inputs.
pub struct SinkSpec {
    /// Name.
    pub name: String,
    /// Source names it reads.
    pub inputs: Vec<String>,
    /// The component.
    pub sink: Box<dyn Sink>,
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The pipeline's data directory.
    pub data_dir: PathBuf,
    /// How the spool is written.
    pub spool: SpoolOptions,
    /// `[spool] max_age`: also delete spooled events older than this, acknowledged or not.
    pub spool_max_age: Option<Duration>,
    /// A sink that acknowledged nothing this long while records waited for it is failing.
    pub sink_failing_after: Duration,
}

/// A running pipeline.
pub struct Running {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sink_tasks: Vec<JoinHandle<()>>,
    spool: Spool,
    /// Live counters.
    pub status: SharedStatus,
    /// Every source's alarm board, by source name (what `/health` reports).
    pub alarms: AlarmBoards,
    /// Every sink's alarm board, by sink name (`sink_failing`).
    pub sink_alarms: AlarmBoards,
    /// What each source reports about itself, by source name.
    pub reports: Reports,
}

/// The alarm boards of a pipeline's components, by component name.
pub type AlarmBoards = Arc<Vec<(String, Alarms)>>;

/// The sources' own reports, by source name.
pub type Reports = Arc<Vec<(String, SourceReport)>>;

/// The live counters with each source's own report.
pub fn status_snapshot(status: &SharedStatus, reports: &Reports) -> Status {
    let mut snapshot = lock(status).clone();
    for (name, report) in reports.iter() {
        if let Some(s) = snapshot.sources.get_mut(name) {
            s.report = report.get();
        }
    }
    snapshot
}

fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live counters, locked (a poisoned lock is still used: they are only counters).
pub(crate) fn lock_status(s: &SharedStatus) -> std::sync::MutexGuard<'_, Status> {
    lock(s)
}

/// Starts sources, spool writers, feeders and sinks.
pub fn start(
    opts: &RuntimeOptions,
    sources: Vec<(String, Box<dyn Source>)>,
    sinks: Vec<SinkSpec>,
) -> Result<Running, StorageError> {
    start_with(opts, sources, sinks, Vec::new())
}

/// A source written straight into the embedded stream for one of its sinks (see
/// [`crate::direct`]).
pub struct DirectRoute {
    /// The source's name.
    pub source: String,
    /// The embedded `kinesis` sink it is written for (not fed from the spool for this input).
    pub target: DirectTarget,
}

/// [`start`], with sources on the direct path: each route's source is written into the
/// embedded stream by a [`crate::direct`] writer instead of (or, when other sinks read it,
/// after) its spool, and the route's sink is not fed that source from the spool.
pub fn start_with(
    opts: &RuntimeOptions,
    sources: Vec<(String, Box<dyn Source>)>,
    mut sinks: Vec<SinkSpec>,
    direct: Vec<DirectRoute>,
) -> Result<Running, StorageError> {
    let source_names: Vec<&String> = sources.iter().map(|(n, _)| n).collect();
    // One route per source, to a sink that reads it (anything else is ignored).
    let mut routes: BTreeMap<String, DirectTarget> = BTreeMap::new();
    for r in direct {
        let reads = sinks.iter().any(|s| s.name == r.target.sink && s.inputs.contains(&r.source));
        if reads && source_names.contains(&&r.source) && !routes.contains_key(&r.source) {
            routes.insert(r.source, r.target);
        }
    }
    // The direct sinks whose every input is direct have nothing to read from the spool.
    let mut idle_sinks = Vec::new();
    for spec in &mut sinks {
        let before = spec.inputs.len();
        spec.inputs.retain(|i| routes.get(i).is_none_or(|t| t.sink != spec.name));
        if spec.inputs.is_empty() && before > 0 {
            idle_sinks.push(spec.name.clone());
        }
    }
    // Sinks other sinks read (transforming handlers): their events are spooled under their
    // name, like a source's.
    let outputs: Vec<String> =
        sinks.iter().filter(|s| sinks.iter().any(|r| r.inputs.contains(&s.name))).map(|s| s.name.clone()).collect();
    let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).chain(outputs.iter().cloned()).collect();
    let spool = Spool::open(&opts.data_dir.join("spool"), &opts.spool, &names)?;
    let dead_dir = opts.data_dir.join("dead-letter");
    let state_dir = opts.data_dir.join("state");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
    let mut tasks = Vec::new();
    let mut boards = Vec::new();
    let readers: BTreeMap<String, Vec<String>> = names
        .iter()
        .map(|n| (n.clone(), sinks.iter().filter(|s| s.inputs.contains(n)).map(|s| s.name.clone()).collect()))
        .collect();
    let mut delivered_watches = Vec::new();
    let mut reports = Vec::new();
    let floors: Floors = Arc::new(Mutex::new(names.iter().map(|n| (n.clone(), BTreeMap::new())).collect()));
    let mut watched_sources = Vec::new();
    let mut watched_sinks = Vec::new();

    let mut direct_writers = Vec::new();
    for (name, source) in sources {
        let mut resume = spool.last_cursor(&name)?;
        let next = spool.next_ordinal(&name)?;
        let route = routes.get(&name).cloned();
        let spooled_too = readers.get(&name).is_some_and(|r| !r.is_empty());
        let committed = route.as_ref().map(|t| {
            let committed = t.committed(&name).unwrap_or_else(|| {
                // No cursor committed yet (a new data dir, or one an earlier version wrote):
                // the stream has what the sink acknowledged from the spool; the catch-up
                // appends the rest.
                let acked = SinkState::load(&state_dir, &t.sink)
                    .ok()
                    .and_then(|s| s.watermarks.get(&name).copied())
                    .unwrap_or(0);
                crate::direct::Committed { spool_ordinal: acked, cursor: None }
            });
            // The spool ahead of the stream is caught up before the source's first batch,
            // so its cursor is the resume point; otherwise the stream's is (the spool is
            // not written when no other sink reads the source).
            if next.saturating_sub(1) <= committed.spool_ordinal && committed.cursor.is_some() {
                resume = committed.cursor.clone();
            }
            committed
        });
        gauge!("sluice_pipeline_spool_last_ordinal", "source" => name.clone()).set(next.saturating_sub(1) as f64);
        gauge!("sluice_pipeline_spool_first_ordinal", "source" => name.clone()).set(spool.first_ordinal(&name)? as f64);
        gauge!("sluice_pipeline_spool_blocked", "source" => name.clone()).set(0.0);
        let alarms = Alarms::default();
        boards.push((name.clone(), alarms.clone()));
        let report = SourceReport::default();
        reports.push((name.clone(), report.clone()));
        lock(&status)
            .sources
            .insert(name.clone(), SourceStatus { cursor: resume.clone(), spool_next: next, ..SourceStatus::default() });
        if let Some(c) = &resume {
            tracing::info!(source = %name, cursor = %c, "resuming after the last spooled event");
        }
        let (tx, rx) = mpsc::channel::<Event>(8192);
        let (spooled_tx, spooled_rx) = watch::channel(0u64);
        let (delivered_tx, delivered_rx) = watch::channel(0u64);
        let mut delivered_tx = Some(delivered_tx);
        if let (Some(target), Some(committed)) = (&route, &committed) {
            lock_floors(&floors).entry(name.clone()).or_default().insert(target.sink.clone(), committed.spool_ordinal);
        }
        match &route {
            // Only the direct sink: an event is delivered when its append returns.
            Some(_) if !spooled_too => {}
            _ => {
                let mut sinks = readers.get(&name).cloned().unwrap_or_default();
                sinks.extend(route.as_ref().map(|t| t.sink.clone()));
                delivered_watches.push(DeliveredWatch {
                    source: name.clone(),
                    sinks,
                    first: next,
                    spooled: spooled_rx.clone(),
                    tx: delivered_tx.take().unwrap_or_else(|| watch::channel(0).0),
                });
            }
        }
        watched_sources.push(WatchedSource { name: name.clone(), queue: tx.downgrade(), alarms: alarms.clone() });
        let ctx = SourceContext {
            name: name.clone(),
            resume_cursor: resume,
            events: tx,
            dead_letters: DeadLetters::new(&dead_dir, &name),
            shutdown: shutdown_rx.clone(),
            alarms: alarms.clone(),
            history: match route.as_ref().and_then(|t| crate::direct::StreamHistory::new(t, &name)) {
                Some(h) => Some(Arc::new(h)),
                None => Some(Arc::new(SpoolHistory::new(spool.clone(), name.clone()))),
            },
            spooled: Some(spooled_rx),
            delivered: Some(delivered_rx),
            report: report.clone(),
        };
        let source_name = name.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = source.run(ctx).await {
                tracing::error!(source = %source_name, error = %e, "source stopped");
            }
        }));
        match (route, committed) {
            (Some(target), Some(committed)) => {
                tracing::info!(source = %name, sink = %target.sink, stream = %target.config.stream_name, spooled_too,
                    "written straight into the embedded stream, with its cursor");
                let writer = DirectWriter {
                    dead_letters: DeadLetters::new(&dead_dir, &target.sink),
                    target,
                    source: name,
                    spool: spool.clone(),
                    spooled_too,
                    committed,
                    books: Books {
                        status: status.clone(),
                        alarms,
                        spooled: spooled_tx,
                        delivered: delivered_tx,
                        floors: floors.clone(),
                    },
                };
                // Spawned once every sink's status exists (it counts into the direct sink's).
                direct_writers.push((writer, rx));
            }
            _ => tasks.push(tokio::spawn(spool_writer(spool.clone(), name, rx, status.clone(), alarms, spooled_tx))),
        }
    }

    let mut sink_outputs: BTreeMap<String, (Output, JoinHandle<()>)> = BTreeMap::new();
    for name in &outputs {
        let next = spool.next_ordinal(name)?;
        gauge!("sluice_pipeline_spool_last_ordinal", "source" => name.clone()).set(next.saturating_sub(1) as f64);
        gauge!("sluice_pipeline_spool_first_ordinal", "source" => name.clone()).set(spool.first_ordinal(name)? as f64);
        let alarms = Alarms::default();
        boards.push((name.clone(), alarms.clone()));
        lock(&status).sources.insert(name.clone(), SourceStatus { spool_next: next, ..SourceStatus::default() });
        let (tx, rx) = mpsc::channel::<Event>(8192);
        let (spooled_tx, spooled_rx) = watch::channel(0u64);
        // Ends when the sink drops its output (it stops), not with the sources.
        let writer = tokio::spawn(spool_writer(spool.clone(), name.clone(), rx, status.clone(), alarms, spooled_tx));
        sink_outputs.insert(name.clone(), (Output::new(tx, spooled_rx), writer));
    }

    let mut sink_tasks = Vec::new();
    for spec in sinks {
        let state =
            SinkState::load(&state_dir, &spec.name).map_err(|e| StorageError::io(state_dir.join(&spec.name), e))?;
        let (rec_tx, rec_rx) = mpsc::channel::<Record>(4096);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Ack>();
        let (skip_tx, skip_rx) = mpsc::unbounded_channel::<Skipped>();
        let mut marks = Vec::new();
        let mut sink_status = SinkStatus::default();
        let progress = Arc::new(SinkProgress::default());
        let sink_board = Alarms::default();
        gauge!("sluice_pipeline_sink_failing", "sink" => spec.name.clone()).set(0.0);
        watched_sinks.push(WatchedSink {
            name: spec.name.clone(),
            progress: progress.clone(),
            alarms: sink_board.clone(),
        });
        for (i, input) in spec.inputs.iter().enumerate() {
            // What `max_age` deleted while unacknowledged cannot be waited for any more.
            let expired = spool.first_ordinal(input)?.saturating_sub(1);
            let done = state.watermarks.get(input).copied().unwrap_or(0).max(expired);
            if let Some(readers) = lock_floors(&floors).get_mut(input) {
                readers.insert(spec.name.clone(), done);
            }
            let mark = DispatchMark::load(&state_dir, &spec.name, input);
            // Everything up to the reservation may have been handed out before the stop, but
            // nothing past what the spool holds.
            let tip = spool.next_ordinal(input)?.saturating_sub(1);
            sink_status.redelivered += mark.reserved.min(tip).saturating_sub(done);
            sink_status.watermarks.insert(input.clone(), done);
            marks.push(Mark { input: input.clone(), watermark: Watermark::new(done) });
            let source = FeederInput {
                spool: spool.clone(),
                sink: spec.name.clone(),
                input: input.clone(),
                index: i as u64,
                alarms: boards.iter().find(|(n, _)| n == input).map(|(_, a)| a.clone()).unwrap_or_default(),
                skips: skip_tx.clone(),
            };
            tasks.push(tokio::spawn(feeder(
                source,
                done + 1,
                rec_tx.clone(),
                mark,
                progress.clone(),
                shutdown_rx.clone(),
            )));
        }
        // A direct sink's watermark under a source that other sinks read from the spool: the
        // spool ordinal up to which the stream has its events (kept by its direct writer).
        for (source, target) in &routes {
            if target.sink == spec.name
                && let Some(&o) = lock_floors(&floors).get(source).and_then(|r| r.get(&spec.name))
                && readers.get(source).is_some_and(|r| !r.is_empty())
            {
                sink_status.watermarks.insert(source.clone(), o);
            }
        }
        if idle_sinks.contains(&spec.name) {
            // Every input is written straight into the stream: nothing to feed, acknowledge
            // or save; the direct writers count its deliveries.
            lock(&status).sinks.insert(spec.name.clone(), sink_status);
            tracing::info!(sink = %spec.name, "every input is written straight into the embedded stream");
            continue;
        }
        if sink_status.redelivered > 0 {
            counter!("sluice_pipeline_redelivered_total", "sink" => spec.name.clone())
                .increment(sink_status.redelivered);
            tracing::warn!(sink = %spec.name, records = sink_status.redelivered, "records handed out before the last stop were not acknowledged; delivering them again");
        }
        lock(&status).sinks.insert(spec.name.clone(), sink_status);
        drop(rec_tx);
        drop(skip_tx);
        let (output, output_writer) = sink_outputs.remove(&spec.name).unzip();
        let ctx = SinkContext {
            name: spec.name.clone(),
            records: rec_rx,
            acks: ack_tx,
            dead_letters: DeadLetters::new(&dead_dir, &spec.name),
            shutdown: shutdown_rx.clone(),
            output,
        };
        let sink_name = spec.name.clone();
        let sink = spec.sink;
        let run = tokio::spawn(async move {
            if let Err(e) = sink.run(ctx).await {
                tracing::error!(sink = %sink_name, error = %e, "sink stopped");
            }
        });
        sink_tasks.push(run);
        sink_tasks.extend(output_writer);
        sink_tasks.push(tokio::spawn(ack_collector(
            spec.name,
            marks,
            Inbox { acks: ack_rx, skips: skip_rx },
            state_dir.clone(),
            (status.clone(), progress),
            spool.clone(),
            floors.clone(),
        )));
    }
    tasks.push(tokio::spawn(keeper(spool.clone(), floors, status.clone(), opts.spool_max_age, shutdown_rx.clone())));
    let sink_alarms = Arc::new(watched_sinks.iter().map(|w| (w.name.clone(), w.alarms.clone())).collect());
    for (writer, rx) in direct_writers {
        tasks.push(tokio::spawn(writer.run(rx)));
    }
    tasks.push(tokio::spawn(watch_delivered(delivered_watches, status.clone())));
    tasks.push(tokio::spawn(monitor(watched_sources, watched_sinks, opts.sink_failing_after, shutdown_rx)));
    Ok(Running {
        shutdown: shutdown_tx,
        tasks,
        sink_tasks,
        spool,
        status,
        alarms: Arc::new(boards),
        sink_alarms,
        reports: Arc::new(reports),
    })
}

pub(crate) fn lock_floors(f: &Floors) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, u64>>> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many of one source's events (sent since this start) every sink reading it has done.
struct DeliveredWatch {
    source: String,
    sinks: Vec<String>,
    /// The spool ordinal of the first event of this start.
    first: u64,
    spooled: watch::Receiver<u64>,
    tx: watch::Sender<u64>,
}

/// Keeps each source's `delivered` count (see `SourceContext::delivered`): the lowest
/// watermark of the sinks reading it, as a count of this start's events. Ordinals of one start
/// are contiguous, so the watermark maps to a count directly.
async fn watch_delivered(watches: Vec<DeliveredWatch>, status: SharedStatus) {
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A source that does not watch the count dropped its receiver when it started (and
        // every source drops it when it stops): nothing to keep up for it, and once none
        // watches, this task ends. Sources still checkpoint while they stop, so shutdown alone
        // does not end it.
        if watches.iter().all(|w| w.tx.is_closed()) {
            return;
        }
        let st = lock(&status);
        for w in watches.iter().filter(|w| !w.tx.is_closed()) {
            let spooled = *w.spooled.borrow();
            let low = w.sinks.iter().filter_map(|s| st.sinks.get(s)?.watermarks.get(&w.source).copied()).min();
            let done = match low {
                Some(wm) => wm.saturating_sub(w.first.saturating_sub(1)).min(spooled),
                // No sink reads it: taken by the spool is all there is.
                None if w.sinks.is_empty() => spooled,
                None => 0,
            };
            w.tx.send_if_modified(|d| {
                let moved = done > *d;
                if moved {
                    *d = done;
                }
                moved
            });
        }
    }
}

/// Trims every spool once per [`KEEP_INTERVAL`] until shutdown.
async fn keeper(
    spool: Spool,
    floors: Floors,
    status: SharedStatus,
    max_age: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEEP_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (spool, floors, status) = (spool.clone(), floors.clone(), status.clone());
        // File deletions and a directory fsync: off the async threads.
        let _ =
            tokio::task::spawn_blocking(move || keep_once(&spool, &floors, &status, max_age, sluice_flow::now_ms()))
                .await;
    }
}

/// One pass of the keeper: per source, deletes the segments every reader has saved a
/// watermark past (a source no sink reads is kept whole), then, with `max_age`, the segments
/// older than that, counting and logging what some sink had not acknowledged yet.
fn keep_once(spool: &Spool, floors: &Floors, status: &SharedStatus, max_age: Option<Duration>, now_ms: u64) {
    let floors = lock_floors(floors).clone();
    for (source, readers) in &floors {
        if let Some(&floor) = readers.values().min() {
            match spool.trim_below(source, floor + 1) {
                Ok(t) if t.segments > 0 => {
                    counter!("sluice_pipeline_spool_trimmed_segments_total", "source" => source.clone())
                        .increment(t.segments);
                    tracing::debug!(source = %source, segments = t.segments, records = t.records, "delivered spool segments deleted");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(source = %source, error = %e, "could not trim the spool"),
            }
        }
        if let Some(age) = max_age {
            let before = spool.first_ordinal(source).unwrap_or(0);
            let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
            // The status stays locked across the trim: a sink that sees the spool's first
            // ordinal move passes its watermark over the deleted records, and were that seen
            // here first, they would look acknowledged and their loss would go uncounted.
            let (trimmed, live) = {
                let st = lock(status);
                let trimmed = spool.trim_older_than(source, cutoff);
                // Records above the lowest live watermark were not acknowledged by every
                // reader: they are lost to that sink.
                let live = readers.keys().filter_map(|sink| st.sinks.get(sink)?.watermarks.get(source).copied()).min();
                (trimmed, live)
            };
            match trimmed {
                Ok(t) if t.segments > 0 => {
                    counter!("sluice_pipeline_spool_trimmed_segments_total", "source" => source.clone())
                        .increment(t.segments);
                    let expired = live.map_or(0, |w| {
                        t.first_ordinal.saturating_sub(1).saturating_sub(w.max(before.saturating_sub(1)))
                    });
                    if expired > 0 {
                        if let Some(st) = lock(status).sources.get_mut(source) {
                            st.expired += expired;
                        }
                        counter!("sluice_pipeline_spool_expired_total", "source" => source.clone()).increment(expired);
                        tracing::warn!(source = %source, events = expired, max_age = ?age,
                            "spooled events older than max_age were deleted before every sink acknowledged them");
                    } else {
                        tracing::info!(source = %source, segments = t.segments, records = t.records, max_age = ?age,
                            "spool segments older than max_age deleted (no sink was still waiting for them)");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(source = %source, error = %e, "could not trim the spool by age"),
            }
        }
        if let Ok(first) = spool.first_ordinal(source) {
            gauge!("sluice_pipeline_spool_first_ordinal", "source" => source.clone()).set(first as f64);
        }
    }
}

async fn spool_writer(
    spool: Spool,
    source: String,
    mut rx: mpsc::Receiver<Event>,
    status: SharedStatus,
    alarms: Alarms,
    spooled: watch::Sender<u64>,
) {
    let mut buf = Vec::with_capacity(2048);
    // Since when writes fail, and how often they did: told once when it starts and once
    // when it ends, not per retry.
    let mut blocked: Option<(std::time::Instant, u64)> = None;
    loop {
        if rx.recv_many(&mut buf, 2048).await == 0 {
            break;
        }
        let n = buf.len() as u64;
        let cursor = buf.iter().rev().find_map(|e| e.cursor.clone());
        let mut backoff = Duration::from_millis(50);
        loop {
            // The events stay in `buf` until the spool has them: a failed write (disk full)
            // is retried, never dropped; the source waits on the bounded channel meanwhile.
            match spool.append(&source, &buf).await {
                Ok(last) => {
                    counter!("sluice_pipeline_spooled_total", "source" => source.clone()).increment(n);
                    spooled.send_modify(|c| *c += n);
                    gauge!("sluice_pipeline_spool_last_ordinal", "source" => source.clone()).set(last as f64);
                    if let Some((since, failures)) = blocked.take() {
                        gauge!("sluice_pipeline_spool_blocked", "source" => source.clone()).set(0.0);
                        alarms.clear(SPOOL_BLOCKED);
                        tracing::info!(source = %source, blocked_ms = since.elapsed().as_millis() as u64, failures,
                            "spool writes again: the source reads again");
                    }
                    let mut st = lock(&status);
                    if let Some(s) = st.sources.get_mut(&source) {
                        s.spooled += n;
                        s.spool_next = last + 1;
                        if cursor.is_some() {
                            s.cursor = cursor.clone();
                        }
                    }
                    break;
                }
                Err(e) => {
                    counter!("sluice_pipeline_spool_errors_total", "source" => source.clone()).increment(1);
                    match &mut blocked {
                        Some((_, failures)) => {
                            *failures += 1;
                            tracing::debug!(source = %source, error = %e, retry_in_ms = backoff.as_millis() as u64, "spool write failed again");
                        }
                        None => {
                            blocked = Some((std::time::Instant::now(), 1));
                            gauge!("sluice_pipeline_spool_blocked", "source" => source.clone()).set(1.0);
                            alarms.raise(SPOOL_BLOCKED, format!("spool cannot write: {e}"));
                            tracing::error!(source = %source, "spool cannot write ({e}): the source stops reading until space returns");
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_WRITE_BACKOFF);
                }
            }
        }
        buf.clear();
    }
}

/// What the health monitor sees of one sink: records handed to it and acknowledged since
/// start, and when the last acknowledgement came.
#[derive(Debug, Default)]
struct SinkProgress {
    handed: AtomicU64,
    acked: AtomicU64,
    last_ack_ms: AtomicU64,
}

/// A source as the health monitor watches it: its spool queue (weakly: the source owns it).
struct WatchedSource {
    name: String,
    queue: mpsc::WeakSender<Event>,
    alarms: Alarms,
}

/// A sink as the health monitor watches it.
struct WatchedSink {
    name: String,
    progress: Arc<SinkProgress>,
    alarms: Alarms,
}

/// Raises and clears `source_paused` (a source's spool queue full for [`PAUSED_AFTER`]) and
/// `sink_failing` (records waiting and no acknowledgement for `failing_after`), with their
/// gauges and one log line per change.
async fn monitor(
    sources: Vec<WatchedSource>,
    sinks: Vec<WatchedSink>,
    failing_after: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    for s in &sources {
        gauge!("sluice_pipeline_source_paused", "source" => s.name.clone()).set(0.0);
    }
    let mut full_since: Vec<Option<std::time::Instant>> = vec![None; sources.len()];
    // Per sink, the last time nothing was waiting for it.
    let start = sluice_flow::now_ms();
    let mut clear_at: Vec<u64> = vec![start; sinks.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for (s, since) in sources.iter().zip(full_since.iter_mut()) {
            let full = s.queue.upgrade().is_some_and(|q| q.capacity() == 0);
            match (full, *since) {
                (true, None) => *since = Some(std::time::Instant::now()),
                (true, Some(t)) if t.elapsed() >= PAUSED_AFTER => {
                    let detail = format!(
                        "the source waits: its spool queue has been full for {} ms (the spool cannot write or keep up)",
                        t.elapsed().as_millis()
                    );
                    if s.alarms.raise(SOURCE_PAUSED, detail) {
                        gauge!("sluice_pipeline_source_paused", "source" => s.name.clone()).set(1.0);
                        tracing::warn!(source = %s.name, "source paused by backpressure: its spool queue is full");
                    }
                }
                (false, _) => {
                    *since = None;
                    if s.alarms.clear(SOURCE_PAUSED) {
                        gauge!("sluice_pipeline_source_paused", "source" => s.name.clone()).set(0.0);
                        tracing::info!(source = %s.name, "source no longer paused: the spool takes its events again");
                    }
                }
                _ => {}
            }
        }
        let now = sluice_flow::now_ms();
        for (s, clear) in sinks.iter().zip(clear_at.iter_mut()) {
            let (handed, acked) = (s.progress.handed.load(Ordering::Relaxed), s.progress.acked.load(Ordering::Relaxed));
            let waiting = handed.saturating_sub(acked);
            gauge!("sluice_pipeline_sink_unacknowledged", "sink" => s.name.clone()).set(waiting as f64);
            if waiting == 0 {
                *clear = now;
            }
            let quiet_ms = now.saturating_sub((*clear).max(s.progress.last_ack_ms.load(Ordering::Relaxed)));
            if waiting > 0 && quiet_ms >= failing_after.as_millis() as u64 {
                let detail = format!(
                    "no record acknowledged for {:.1} s while {waiting} wait (threshold {:.1} s)",
                    quiet_ms as f64 / 1000.0,
                    failing_after.as_secs_f64()
                );
                if s.alarms.raise(SINK_FAILING, detail) {
                    gauge!("sluice_pipeline_sink_failing", "sink" => s.name.clone()).set(1.0);
                    tracing::error!(sink = %s.name, waiting, quiet_ms, "sink failing: no acknowledgement while records wait");
                }
            } else if quiet_ms < failing_after.as_millis() as u64 && s.alarms.clear(SINK_FAILING) {
                gauge!("sluice_pipeline_sink_failing", "sink" => s.name.clone()).set(0.0);
                tracing::info!(sink = %s.name, "sink acknowledges again");
            }
        }
    }
}

/// One input of one sink and its watermark.
struct Mark {
    input: String,
    watermark: Watermark,
}

/// What a feeder reads: one source's spool, its position among the sink's inputs, and the
/// source's alarm board (a spool that cannot be read is that source's alarm).
struct FeederInput {
    spool: Spool,
    sink: String,
    input: String,
    index: u64,
    alarms: Alarms,
    /// Where the ordinals its reads skip are told (to mark them done).
    skips: mpsc::UnboundedSender<Skipped>,
}

/// Ordinals `first..=last` of one input that a feeder's read passed over (damaged records the
/// store skipped, ordinals a recovery never used, or expired ones): no acknowledgement will
/// come for them.
#[derive(Debug)]
struct Skipped {
    input: usize,
    first: u64,
    last: u64,
    /// How many of them are not expired (counted as skipped).
    damaged: u64,
}

/// What a sink's ack collector receives.
struct Inbox {
    /// The sink's acknowledgements.
    acks: mpsc::UnboundedReceiver<Ack>,
    /// The ordinals its feeders' reads skipped.
    skips: mpsc::UnboundedReceiver<Skipped>,
}

/// Tells the ack collector about the ordinals a read from `from` passed over (counted and
/// logged), so that the watermark moves past them. Ordinals below the spool's first one are
/// gone by `max_age` (counted by the keeper), not damaged.
fn report_skipped(feeder: &FeederInput, from: u64, ordinals: impl IntoIterator<Item = u64>, after: u64) {
    let gaps = skipped_by_read(from, ordinals, after);
    if gaps.is_empty() {
        return;
    }
    let kept_from = feeder.spool.first_ordinal(&feeder.input).unwrap_or(0);
    for (first, last) in gaps {
        let damaged_from = first.max(kept_from);
        let mut damaged = 0;
        if damaged_from <= last {
            let n = last - damaged_from + 1;
            damaged = n;
            counter!("sluice_pipeline_spool_skipped_total", "sink" => feeder.sink.clone(), "input" => feeder.input.clone())
                .increment(n);
            tracing::warn!(sink = %feeder.sink, input = %feeder.input, first = damaged_from, last, records = n,
                "spool ordinals skipped by a read (damaged records, or ordinals a recovery never used); the watermark moves past them");
        }
        let _ = feeder.skips.send(Skipped { input: feeder.index as usize, first, last, damaged });
    }
}

async fn feeder(
    source: FeederInput,
    mut next: u64,
    tx: mpsc::Sender<Record>,
    mut dispatched: DispatchMark,
    progress: Arc<SinkProgress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = match source.spool.watch(&source.input) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(input = %source.input, error = %e, "cannot follow the spool");
            return;
        }
    };
    let FeederInput { spool, input, index, alarms, .. } = &source;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (records, after) = match spool.read(input, next, 1024) {
            Ok(r) => {
                if alarms.is_raised(SPOOL_READ_FAILED) && alarms.clear(SPOOL_READ_FAILED) {
                    tracing::info!(input = %input, "spool reads again");
                }
                r
            }
            Err(e) => {
                if alarms.raise(SPOOL_READ_FAILED, format!("spool read failed: {e}")) {
                    tracing::error!(input = %input, error = %e, "spool read failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        report_skipped(&source, next, records.iter().map(|r| r.ordinal), after);
        if records.is_empty() {
            if after > next {
                // Everything this read covered was unreadable: read on from where it ended.
                next = after;
                continue;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        for r in records {
            let ordinal = r.ordinal;
            // The dispatch mark must cover the record before it can reach the sink.
            while let Err(e) = dispatched.cover(ordinal).await {
                counter!("sluice_pipeline_state_errors_total", "input" => input.clone()).increment(1);
                tracing::error!(input = %input, error = %e, "could not save the dispatch mark; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                if *shutdown.borrow() {
                    return;
                }
            }
            let record = Record {
                id: (index << ORDINAL_BITS) | (ordinal & ORDINAL_MASK),
                payload: r.payload,
                received_ms: r.received_ms,
                origin: r.origin,
            };
            // Without waiting when the sink has room (the common case), else until it has.
            let record = match tx.try_send(record) {
                Ok(()) => {
                    progress.handed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(record)) => record,
            };
            tokio::select! {
                sent = tx.send(record) => if sent.is_err() { return },
                _ = shutdown.changed() => return,
            }
            progress.handed.fetch_add(1, Ordering::Relaxed);
        }
        next = after;
    }
}

async fn ack_collector(
    sink: String,
    mut marks: Vec<Mark>,
    inbox: Inbox,
    state_dir: PathBuf,
    (status, progress): (SharedStatus, Arc<SinkProgress>),
    spool: Spool,
    floors: Floors,
) {
    let mut state = SinkState::load(&state_dir, &sink).unwrap_or_default();
    let mut dirty = false;
    // The save in progress and what it saves (the spool may be trimmed below it once saved).
    let mut saving: Option<(JoinHandle<bool>, SinkState)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let Inbox { acks: mut rx, mut skips } = inbox;
    loop {
        tokio::select! {
            Some(skip) = skips.recv() => {
                // Unreadable records a feeder passed over: done, as no ack can come for them.
                if let Some(mark) = marks.get_mut(skip.input) {
                    dirty |= mark.watermark.mark(skip.first, skip.last);
                    if let Some(s) = lock(&status).sinks.get_mut(&sink) {
                        s.skipped += skip.damaged;
                        s.watermarks.insert(mark.input.clone(), mark.watermark.done);
                    }
                }
            }
            ack = rx.recv() => {
                let Some(ack) = ack else { break };
                let (ids, delivered) = match ack {
                    Ack::Delivered(ids) => (ids, true),
                    Ack::DeadLettered(ids) => (ids, false),
                };
                let n = ids.len() as u64;
                progress.acked.fetch_add(n, Ordering::Relaxed);
                progress.last_ack_ms.store(sluice_flow::now_ms(), Ordering::Relaxed);
                for id in ids {
                    let input = (id >> ORDINAL_BITS) as usize;
                    if let Some(mark) = marks.get_mut(input) {
                        dirty |= mark.watermark.ack(id & ORDINAL_MASK);
                    }
                }
                let mut st = lock(&status);
                if let Some(s) = st.sinks.get_mut(&sink) {
                    if delivered { s.delivered += n } else { s.dead_lettered += n }
                    for m in &marks {
                        s.watermarks.insert(m.input.clone(), m.watermark.done);
                    }
                }
                let label = if delivered { "sluice_pipeline_delivered_total" } else { "sluice_pipeline_dead_lettered_total" };
                counter!(label, "sink" => sink.clone()).increment(n);
            }
            _ = tick.tick() => {
                // Records `max_age` deleted before this sink acknowledged them (counted by the
                // keeper): the watermark passes them, or it would wait for them forever.
                let mut skipped = false;
                for m in &mut marks {
                    if let Ok(first) = spool.first_ordinal(&m.input)
                        && m.watermark.skip_to(first.saturating_sub(1))
                    {
                        skipped = true;
                    }
                }
                if skipped {
                    dirty = true;
                    if let Some(s) = lock(&status).sinks.get_mut(&sink) {
                        for m in &marks {
                            s.watermarks.insert(m.input.clone(), m.watermark.done);
                        }
                    }
                }
                // One save at a time, off the async threads (it fsyncs twice); a failed one
                // is tried again on the next tick.
                if saving.as_ref().is_some_and(|(h, _)| h.is_finished())
                    && let Some((h, saved)) = saving.take()
                {
                    if h.await.unwrap_or(false) {
                        raise_floors(&floors, &sink, &saved);
                    } else {
                        dirty = true;
                    }
                }
                if dirty && saving.is_none() {
                    let snapshot = snapshot(&sink, &marks, &mut state);
                    let (name, dir, saved) = (sink.clone(), state_dir.clone(), snapshot.clone());
                    saving = Some((tokio::task::spawn_blocking(move || persist(&name, &snapshot, &dir)), saved));
                    dirty = false;
                }
            }
        }
    }
    if let Some((h, _)) = saving.take() {
        let _ = h.await;
    }
    let snapshot = snapshot(&sink, &marks, &mut state);
    let _ = tokio::task::spawn_blocking(move || persist(&sink, &snapshot, &state_dir)).await;
}

/// Records a saved state as the sink's floor under each input's spool.
fn raise_floors(floors: &Floors, sink: &str, saved: &SinkState) {
    let mut f = lock_floors(floors);
    for (input, &w) in &saved.watermarks {
        if let Some(readers) = f.get_mut(input)
            && let Some(floor) = readers.get_mut(sink)
        {
            *floor = (*floor).max(w);
        }
    }
}

/// The state to save now (and the watermark gauges).
fn snapshot(sink: &str, marks: &[Mark], state: &mut SinkState) -> SinkState {
    for m in marks {
        state.watermarks.insert(m.input.clone(), m.watermark.done);
        gauge!("sluice_pipeline_watermark", "sink" => sink.to_owned(), "input" => m.input.clone())
            .set(m.watermark.done as f64);
    }
    state.clone()
}

/// Saves a sink's state; false (counted and logged) if it could not.
fn persist(sink: &str, state: &SinkState, dir: &Path) -> bool {
    match state.save(dir, sink) {
        Ok(()) => true,
        Err(e) => {
            counter!("sluice_pipeline_state_errors_total", "sink" => sink.to_owned()).increment(1);
            tracing::error!(sink, error = %e, "could not save the sink's watermark; will retry");
            false
        }
    }
}

impl Running {
    /// Stops sources, lets the spool writers finish, stops sinks, saves watermarks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        for t in self.sink_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.shutdown()).await;
    }

    /// Every raised alarm, by component (source names, then sink names).
    pub fn raised_alarms(&self) -> Vec<RaisedAlarm> {
        let mut all = raised_alarms(&self.alarms);
        all.extend(raised_alarms(&self.sink_alarms));
        all
    }

    /// The spool (for health checks: [`Spool::write_failure`]).
    pub fn spool(&self) -> Spool {
        self.spool.clone()
    }

    /// A snapshot of the live counters.
    pub fn status(&self) -> Status {
        status_snapshot(&self.status, &self.reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_flow::{BoxFuture, FlowError};

    /// Emits `count` events numbered after the resume cursor, then idles until shutdown.
    struct Counter {
        count: u64,
        seen_resume: Arc<Mutex<Option<String>>>,
    }

    impl Source for Counter {
        fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<Result<(), FlowError>> {
            Box::pin(async move {
                *self.seen_resume.lock().unwrap_or_else(|p| p.into_inner()) = ctx.resume_cursor.clone();
                let start: u64 = ctx.resume_cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
                for i in start + 1..=start + self.count {
                    let e = Event {
                        payload: Bytes::from(format!("{{\"seq\":{i}}}")),
                        cursor: Some(i.to_string()),
                        received_ms: 0,
                        origin: None,
                    };
                    if ctx.events.send(e).await.is_err() {
                        break;
                    }
                }
                let mut stop = ctx.shutdown.clone();
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            })
        }
    }

    /// Collects payloads; acks only the first `ack_limit` records.
    struct Collect {
        got: Arc<Mutex<Vec<Bytes>>>,
        ack_limit: usize,
    }

    impl Sink for Collect {
        fn run(self: Box<Self>, mut ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
            Box::pin(async move {
                let mut n = 0;
                while let Some(r) = ctx.records.recv().await {
                    self.got.lock().unwrap_or_else(|p| p.into_inner()).push(r.payload.clone());
                    if n < self.ack_limit {
                        let _ = ctx.acks.send(Ack::Delivered(vec![r.id]));
                    }
                    n += 1;
                }
                Ok(())
            })
        }
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn collect(name: &str, ack_limit: usize) -> (SinkSpec, Arc<Mutex<Vec<Bytes>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Box::new(Collect { got: got.clone(), ack_limit });
        (SinkSpec { name: name.into(), inputs: vec!["feed".into()], sink }, got)
    }

    fn counting(count: u64) -> Vec<(String, Box<dyn Source>)> {
        vec![("feed".into(), Box::new(Counter { count, seen_resume: Arc::new(Mutex::new(None)) }))]
    }

    /// Small segments, so that trimming happens within a few hundred events.
    fn small_segments(dir: &Path, max_age: Option<Duration>) -> RuntimeOptions {
        RuntimeOptions {
            data_dir: dir.to_path_buf(),
            spool: SpoolOptions { segment_bytes: 1024, ..SpoolOptions::default() },
            spool_max_age: max_age,
            sink_failing_after: DEFAULT_SINK_FAILING_AFTER,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spool_is_trimmed_only_below_the_slowest_sinks_saved_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = small_segments(dir.path(), None);
        let (fast, fast_got) = collect("fast", usize::MAX);
        let (slow, _) = collect("slow", 100);
        let run = start(&opts, counting(300), vec![fast, slow]).expect("start");
        wait_for(|| fast_got.lock().map(|g| g.len() == 300).unwrap_or(false)).await;
        wait_for(|| run.status().sinks["slow"].watermarks["feed"] == 100).await;
        // The keeper trims once the slow sink's watermark is saved: whole segments below 101.
        wait_for(|| run.spool.first_ordinal("feed").is_ok_and(|f| f > 1)).await;
        tokio::time::sleep(KEEP_INTERVAL * 2).await;
        let first = run.spool.first_ordinal("feed").expect("first");
        assert!(first <= 101, "nothing the slow sink still needs is deleted (first kept: {first})");
        assert!(first > 50, "segments below its watermark are (first kept: {first})");
        assert_eq!(run.status().sources["feed"].expired, 0);
        run.shutdown().await;

        // Restarted, the slow sink gets everything after its watermark from the spool.
        let (slow, slow_got) = collect("slow", usize::MAX);
        let run = start(&opts, counting(0), vec![slow]).expect("restart");
        wait_for(|| slow_got.lock().map(|g| g.len() == 200).unwrap_or(false)).await;
        wait_for(|| run.status().sinks["slow"].watermarks["feed"] == 300).await;
        // Now every segment but the newest goes.
        wait_for(|| run.spool.first_ordinal("feed").is_ok_and(|f| f > 250)).await;
        run.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_no_sink_reads_is_kept_whole_and_max_age_expiry_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = start(&small_segments(dir.path(), None), counting(200), vec![]).expect("start");
        wait_for(|| run.status().sources["feed"].spool_next == 201).await;
        tokio::time::sleep(KEEP_INTERVAL * 2).await;
        assert_eq!(run.spool.first_ordinal("feed").expect("first"), 1, "no reader: nothing is trimmed");
        run.shutdown().await;

        // A sink acknowledges 50 (saved); nothing it still needs goes.
        let (slow, _) = collect("slow", 50);
        let run = start(&small_segments(dir.path(), None), counting(0), vec![slow]).expect("restart");
        wait_for(|| run.status().sinks["slow"].watermarks["feed"] == 50).await;
        tokio::time::sleep(KEEP_INTERVAL * 2).await;
        assert!(run.spool.first_ordinal("feed").expect("first") <= 51);
        run.shutdown().await;

        // With max_age, old segments go even though the sink has not acknowledged them: counted.
        let opts = small_segments(dir.path(), Some(Duration::from_millis(1)));
        let (slow, _) = collect("slow", 0);
        let run = start(&opts, counting(0), vec![slow]).expect("restart");
        wait_for(|| run.spool.first_ordinal("feed").is_ok_and(|f| f > 100)).await;
        let first = run.spool.first_ordinal("feed").expect("first");
        wait_for(|| run.status().sources["feed"].expired == first - 1 - 50).await;
        // The watermark passes what is gone (or it would wait for those acks forever).
        wait_for(|| run.status().sinks["slow"].watermarks["feed"] == first - 1).await;
        run.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sinks_get_the_sources_received_time_and_sources_get_history() {
        type Seen = Arc<Mutex<Option<Vec<(u64, Bytes)>>>>;
        struct Stamped {
            history: Seen,
        }
        impl Source for Stamped {
            fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<Result<(), FlowError>> {
                Box::pin(async move {
                    let h = ctx.history.as_ref().map(|h| h.recent(3, 0));
                    *self.history.lock().unwrap_or_else(|p| p.into_inner()) = h;
                    for i in 1..=5u64 {
                        let e = Event {
                            payload: Bytes::from(format!("e{i}")),
                            cursor: None,
                            received_ms: 1_000 + i,
                            origin: None,
                        };
                        if ctx.events.send(e).await.is_err() {
                            break;
                        }
                    }
                    let mut stop = ctx.shutdown.clone();
                    let _ = stop.wait_for(|s| *s).await;
                    Ok(())
                })
            }
        }
        struct Times(Arc<Mutex<Vec<u64>>>);
        impl Sink for Times {
            fn run(self: Box<Self>, mut ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
                Box::pin(async move {
                    while let Some(r) = ctx.records.recv().await {
                        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(r.received_ms);
                        let _ = ctx.acks.send(Ack::Delivered(vec![r.id]));
                    }
                    Ok(())
                })
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = small_segments(dir.path(), None);
        let history = Arc::new(Mutex::new(None));
        let times = Arc::new(Mutex::new(Vec::new()));
        let sink =
            || SinkSpec { name: "out".into(), inputs: vec!["feed".into()], sink: Box::new(Times(times.clone())) };
        let source = || -> Vec<(String, Box<dyn Source>)> {
            vec![("feed".into(), Box::new(Stamped { history: history.clone() }))]
        };
        let run = start(&opts, source(), vec![sink()]).expect("start");
        wait_for(|| times.lock().map(|t| t.len() == 5).unwrap_or(false)).await;
        assert_eq!(
            *times.lock().expect("times"),
            vec![1_001, 1_002, 1_003, 1_004, 1_005],
            "the socket's time, not the spool's"
        );
        assert_eq!(*history.lock().expect("history"), Some(vec![]), "nothing spooled before the first start");
        run.shutdown().await;
        let run = start(&opts, source(), vec![sink()]).expect("restart");
        wait_for(|| history.lock().map(|h| h.as_ref().is_some_and(|h| !h.is_empty())).unwrap_or(false)).await;
        let want: Vec<(u64, Bytes)> = (3..=5).map(|i| (1_000 + i, Bytes::from(format!("e{i}")))).collect();
        assert_eq!(*history.lock().expect("history"), Some(want), "the newest spooled events, oldest first");
        run.shutdown().await;
    }

    /// Damaged spool records are skipped by reads: the sink gets every intact one, and its
    /// watermark moves over the gap to the end (nothing waits for the missing ordinals).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watermark_moves_past_damaged_spool_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = small_segments(dir.path(), None);
        let run = start(&opts, counting(300), vec![]).expect("start");
        wait_for(|| run.status().sources["feed"].spool_next == 301).await;
        run.shutdown().await;
        // Flip bytes in the middle of a sealed segment.
        let shard = dir.path().join("spool/streams/feed.00000001/000000000000");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&shard)
            .expect("spool shard")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segments.sort();
        assert!(segments.len() > 4, "{segments:?}");
        let victim = &segments[segments.len() / 2];
        let mut bytes = std::fs::read(victim).expect("read segment");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 16] {
            *b ^= 0x5a;
        }
        std::fs::write(victim, &bytes).expect("damage segment");

        let (out, got) = collect("out", usize::MAX);
        let run = start(&opts, counting(0), vec![out]).expect("restart");
        wait_for(|| run.status().sinks["out"].watermarks["feed"] == 300).await;
        let delivered = got.lock().map(|g| g.len() as u64).unwrap_or(0);
        let skipped = run.status().sinks["out"].skipped;
        assert!(skipped > 0 && delivered < 300, "delivered {delivered}, skipped {skipped}");
        assert_eq!(delivered + skipped, 300, "every ordinal delivered or skipped, once");
        run.shutdown().await;
    }

    /// A sink that holds every record until `open`, then acknowledges all of them.
    struct Gate {
        open: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink for Gate {
        fn run(self: Box<Self>, mut ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
            Box::pin(async move {
                let mut held = Vec::new();
                loop {
                    tokio::select! {
                        r = ctx.records.recv() => match r {
                            Some(r) => held.push(r.id),
                            None => return Ok(()),
                        },
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    if self.open.load(Ordering::Relaxed) && !held.is_empty() {
                        let _ = ctx.acks.send(Ack::Delivered(std::mem::take(&mut held)));
                    }
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_that_acknowledges_nothing_past_the_threshold_is_failing_until_it_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts =
            RuntimeOptions { sink_failing_after: Duration::from_millis(600), ..small_segments(dir.path(), None) };
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sink =
            SinkSpec { name: "out".into(), inputs: vec!["feed".into()], sink: Box::new(Gate { open: open.clone() }) };
        let started = std::time::Instant::now();
        let run = start(&opts, counting(10), vec![sink]).expect("start");
        let failing = || run.raised_alarms().iter().any(|a| a.component == "out" && a.alarm == SINK_FAILING);
        wait_for(failing).await;
        assert!(started.elapsed() >= Duration::from_millis(600), "not before the threshold");
        let detail = run.raised_alarms().into_iter().find(|a| a.alarm == SINK_FAILING).map(|a| a.detail);
        assert!(detail.as_deref().is_some_and(|d| d.contains("10 wait")), "{detail:?}");
        open.store(true, Ordering::Relaxed);
        wait_for(|| !failing()).await;
        assert_eq!(run.status().sinks["out"].watermarks["feed"], 10);
        run.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_flow_and_a_restart_resumes_from_spool_and_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RuntimeOptions {
            data_dir: dir.path().to_path_buf(),
            spool: SpoolOptions::default(),
            spool_max_age: None,
            sink_failing_after: DEFAULT_SINK_FAILING_AFTER,
        };
        let resume = Arc::new(Mutex::new(None));
        let got = Arc::new(Mutex::new(Vec::new()));
        let run = start(
            &opts,
            vec![("feed".into(), Box::new(Counter { count: 100, seen_resume: resume.clone() }))],
            vec![SinkSpec {
                name: "out".into(),
                inputs: vec!["feed".into()],
                sink: Box::new(Collect { got: got.clone(), ack_limit: 60 }),
            }],
        )
        .expect("start");
        wait_for(|| got.lock().map(|g| g.len() == 100).unwrap_or(false)).await;
        wait_for(|| run.status().sinks["out"].watermarks["feed"] == 60).await;
        run.shutdown().await;

        // Restart: the source resumes after event 100; the sink gets 61..=100 again, then 101..=110.
        let got2 = Arc::new(Mutex::new(Vec::new()));
        let run = start(
            &opts,
            vec![("feed".into(), Box::new(Counter { count: 10, seen_resume: resume.clone() }))],
            vec![SinkSpec {
                name: "out".into(),
                inputs: vec!["feed".into()],
                sink: Box::new(Collect { got: got2.clone(), ack_limit: usize::MAX }),
            }],
        )
        .expect("restart");
        wait_for(|| got2.lock().map(|g| g.len() == 50).unwrap_or(false)).await;
        assert_eq!(resume.lock().map(|r| r.clone()).unwrap_or_default().as_deref(), Some("100"));
        let seqs: Vec<u64> = got2
            .lock()
            .map(|g| {
                g.iter()
                    .map(|b| {
                        serde_json::from_slice::<serde_json::Value>(b).ok().and_then(|v| v["seq"].as_u64()).unwrap_or(0)
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(seqs, (61..=110).collect::<Vec<u64>>());
        let status = run.status();
        assert_eq!(status.sinks["out"].redelivered, 40, "handed out but unacknowledged before the stop");
        wait_for(|| run.status().sinks["out"].watermarks["feed"] == 110).await;
        run.shutdown().await;
    }
}
