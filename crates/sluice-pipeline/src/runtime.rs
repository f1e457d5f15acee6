//! Running a pipeline: sources → spool → sinks, with acknowledgements flowing back.
//!
//! Per source, one task runs the connection and one writes its events to the spool in batches
//! (each batch is durable before the next is taken). Per sink, one feeder per input reads the
//! spool from the sink's watermark and hands records over in order; one task collects the
//! sink's acknowledgements, advances each input's watermark over contiguous acks only, and
//! saves it. Nothing is dropped: a failing spool write is retried (and counted), a record is
//! only ever forgotten once its sink acknowledged it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge};
use sluice_flow::{Ack, DeadLetters, Event, Record, Sink, SinkContext, Source, SourceContext};
use sluice_storage::{Durability, StorageError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::spool::{DispatchMark, SinkState, Spool, Watermark};

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
    /// Spool durability.
    pub spool_durability: Durability,
    /// Spool retention in hours.
    pub spool_retention_hours: u32,
}

/// A running pipeline.
pub struct Running {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sink_tasks: Vec<JoinHandle<()>>,
    spool: Spool,
    /// Live counters.
    pub status: SharedStatus,
}

fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts sources, spool writers, feeders and sinks.
pub fn start(
    opts: &RuntimeOptions,
    sources: Vec<(String, Box<dyn Source>)>,
    sinks: Vec<SinkSpec>,
) -> Result<Running, StorageError> {
    let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
    let spool = Spool::open(&opts.data_dir.join("spool"), opts.spool_durability, opts.spool_retention_hours, &names)?;
    let dead_dir = opts.data_dir.join("dead-letter");
    let state_dir = opts.data_dir.join("state");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
    let mut tasks = Vec::new();

    for (name, source) in sources {
        let resume = spool.last_cursor(&name)?;
        let next = spool.next_ordinal(&name)?;
        lock(&status)
            .sources
            .insert(name.clone(), SourceStatus { spooled: 0, cursor: resume.clone(), spool_next: next });
        if let Some(c) = &resume {
            tracing::info!(source = %name, cursor = %c, "resuming after the last spooled event");
        }
        let (tx, rx) = mpsc::channel::<Event>(8192);
        let ctx = SourceContext {
            name: name.clone(),
            resume_cursor: resume,
            events: tx,
            dead_letters: DeadLetters::new(&dead_dir, &name),
            shutdown: shutdown_rx.clone(),
            alarms: sluice_flow::Alarms::default(),
            history: None,
        };
        let source_name = name.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = source.run(ctx).await {
                tracing::error!(source = %source_name, error = %e, "source stopped");
            }
        }));
        tasks.push(tokio::spawn(spool_writer(spool.clone(), name, rx, status.clone())));
    }

    let mut sink_tasks = Vec::new();
    for spec in sinks {
        let state =
            SinkState::load(&state_dir, &spec.name).map_err(|e| StorageError::io(state_dir.join(&spec.name), e))?;
        let (rec_tx, rec_rx) = mpsc::channel::<Record>(4096);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Ack>();
        let mut marks = Vec::new();
        let mut sink_status = SinkStatus::default();
        for (i, input) in spec.inputs.iter().enumerate() {
            let done = state.watermarks.get(input).copied().unwrap_or(0);
            let mark = DispatchMark::load(&state_dir, &spec.name, input);
            // Everything up to the reservation may have been handed out before the stop, but
            // nothing past what the spool holds.
            let tip = spool.next_ordinal(input)?.saturating_sub(1);
            sink_status.redelivered += mark.reserved.min(tip).saturating_sub(done);
            sink_status.watermarks.insert(input.clone(), done);
            marks.push(Mark { input: input.clone(), watermark: Watermark::new(done) });
            tasks.push(tokio::spawn(feeder(
                spool.clone(),
                input.clone(),
                i as u64,
                done + 1,
                rec_tx.clone(),
                mark,
                shutdown_rx.clone(),
            )));
        }
        if sink_status.redelivered > 0 {
            counter!("sluice_pipeline_redelivered_total", "sink" => spec.name.clone())
                .increment(sink_status.redelivered);
            tracing::warn!(sink = %spec.name, records = sink_status.redelivered, "records handed out before the last stop were not acknowledged; delivering them again");
        }
        lock(&status).sinks.insert(spec.name.clone(), sink_status);
        drop(rec_tx);
        let ctx = SinkContext {
            name: spec.name.clone(),
            records: rec_rx,
            acks: ack_tx,
            dead_letters: DeadLetters::new(&dead_dir, &spec.name),
            shutdown: shutdown_rx.clone(),
        };
        let sink_name = spec.name.clone();
        let sink = spec.sink;
        let run = tokio::spawn(async move {
            if let Err(e) = sink.run(ctx).await {
                tracing::error!(sink = %sink_name, error = %e, "sink stopped");
            }
        });
        sink_tasks.push(run);
        sink_tasks.push(tokio::spawn(ack_collector(spec.name, marks, ack_rx, state_dir.clone(), status.clone())));
    }
    Ok(Running { shutdown: shutdown_tx, tasks, sink_tasks, spool, status })
}

async fn spool_writer(spool: Spool, source: String, mut rx: mpsc::Receiver<Event>, status: SharedStatus) {
    let mut buf = Vec::with_capacity(2048);
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
            match spool.append(&source, buf.clone()).await {
                Ok(last) => {
                    counter!("sluice_pipeline_spooled_total", "source" => source.clone()).increment(n);
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
                    tracing::error!(source = %source, error = %e, retry_in_ms = backoff.as_millis() as u64, "spool write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        buf.clear();
    }
}

/// One input of one sink and its watermark.
struct Mark {
    input: String,
    watermark: Watermark,
}

async fn feeder(
    spool: Spool,
    input: String,
    index: u64,
    mut next: u64,
    tx: mpsc::Sender<Record>,
    mut dispatched: DispatchMark,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = match spool.watch(&input) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(input = %input, error = %e, "cannot follow the spool");
            return;
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (records, after) = match spool.read(&input, next, 1024) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(input = %input, error = %e, "spool read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if records.is_empty() {
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
                received_ms: r.arrival_ms,
            };
            // Without waiting when the sink has room (the common case), else until it has.
            let record = match tx.try_send(record) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(record)) => record,
            };
            tokio::select! {
                sent = tx.send(record) => if sent.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
        next = after;
    }
}

async fn ack_collector(
    sink: String,
    mut marks: Vec<Mark>,
    mut rx: mpsc::UnboundedReceiver<Ack>,
    state_dir: PathBuf,
    status: SharedStatus,
) {
    let mut state = SinkState::load(&state_dir, &sink).unwrap_or_default();
    let mut dirty = false;
    let mut saving: Option<JoinHandle<bool>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            ack = rx.recv() => {
                let Some(ack) = ack else { break };
                let (ids, delivered) = match ack {
                    Ack::Delivered(ids) => (ids, true),
                    Ack::DeadLettered(ids) => (ids, false),
                };
                let n = ids.len() as u64;
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
                // One save at a time, off the async threads (it fsyncs twice); a failed one
                // is tried again on the next tick.
                if saving.as_ref().is_some_and(|h| h.is_finished())
                    && let Some(h) = saving.take()
                    && !h.await.unwrap_or(false)
                {
                    dirty = true;
                }
                if dirty && saving.is_none() {
                    let snapshot = snapshot(&sink, &marks, &mut state);
                    let (name, dir) = (sink.clone(), state_dir.clone());
                    saving = Some(tokio::task::spawn_blocking(move || persist(&name, &snapshot, &dir)));
                    dirty = false;
                }
            }
        }
    }
    if let Some(h) = saving.take() {
        let _ = h.await;
    }
    let snapshot = snapshot(&sink, &marks, &mut state);
    let _ = tokio::task::spawn_blocking(move || persist(&sink, &snapshot, &state_dir)).await;
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

    /// A snapshot of the live counters.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_flow_and_a_restart_resumes_from_spool_and_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RuntimeOptions {
            data_dir: dir.path().to_path_buf(),
            spool_durability: Durability::Fsync,
            spool_retention_hours: 24,
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
