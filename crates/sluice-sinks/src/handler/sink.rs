//! The run loop: records are routed to shard lanes; each lane gathers batches and works each
//! one to the end (invoke, retry, bisect, on-failure) before the next, so its shard never
//! advances past an unsettled record.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_flow::{Ack, DeadLetters, Event, FlowError, Output, SinkContext};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::config::{HandlerConfig, MAX_EVENT_BYTES};
use super::event::{self, Identity, Item, Transformed, WindowFields};
use super::function::Function;
use super::on_failure::{self, Destination};
use super::retry::{BatchPlan, Condition, Next, Outcome, Settled, backoff_ms};
use super::window::ShardWindow;

/// How long after its end, and after the lane's last record, an idle window waits before its
/// final invocation.
const WINDOW_GRACE_MS: u64 = 1_000;

/// What every lane shares.
pub(super) struct Shared {
    pub name: String,
    pub cfg: HandlerConfig,
    pub function: Arc<Function>,
    pub id: Identity,
    pub failures: Option<Destination>,
    pub acks: mpsc::UnboundedSender<Ack>,
    pub dead_letters: DeadLetters,
    /// Where a transformation's `Ok` records go (`transform` only).
    pub output: Option<Output>,
}

/// Records queued per lane before the router waits (bounded memory when a shard is stuck).
fn lane_capacity(cfg: &HandlerConfig) -> usize {
    (cfg.batch_size * 4).max(1024)
}

/// Which of a shard's `factor` lanes a partition key belongs to. Stable, so a key always has
/// the same lane and its records are invoked in order, one batch at a time.
fn lane_of(partition_key: &str, factor: u32) -> u32 {
    if factor <= 1 {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    partition_key.hash(&mut h);
    (h.finish() % u64::from(factor)) as u32
}

pub(super) async fn run(shared: Shared, ctx: SinkContext) -> Result<(), FlowError> {
    let SinkContext { mut records, shutdown, .. } = ctx;
    let shared = Arc::new(shared);
    let stop = crate::file::stopped(shutdown);
    tokio::pin!(stop);
    let mut lanes: HashMap<(Arc<str>, u32), mpsc::Sender<Item>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut stopped = false;
    'route: loop {
        let record = tokio::select! {
            biased;
            _ = &mut stop => { stopped = true; break 'route }
            r = records.recv() => match r { Some(r) => r, None => break 'route },
        };
        let item = Item::new(record, &shared.id);
        let key = (item.shard_id.clone(), lane_of(&item.partition_key, shared.cfg.parallelization_factor));
        let lane = lanes.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(lane_capacity(&shared.cfg));
            tracing::debug!(sink = %shared.name, shard = %key.0, lane = key.1, "new shard lane");
            tasks.spawn(lane(shared.clone(), key.0.clone(), rx));
            tx
        });
        tokio::select! {
            biased;
            _ = &mut stop => { stopped = true; break 'route }
            sent = lane.send(item) => if sent.is_err() {
                return Err(FlowError::Fatal { component: shared.name.clone(), message: "a shard lane ended early".into() });
            },
        }
    }
    // Input closed: let every lane finish its queue (and its windows); a stop cuts this short,
    // leaving unacknowledged records to be delivered again after a restart.
    drop(lanes);
    if !stopped {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                done = tasks.join_next() => match done {
                    None => break,
                    Some(Err(e)) if e.is_panic() => {
                        return Err(FlowError::Fatal { component: shared.name.clone(), message: format!("a shard lane panicked: {e}") });
                    }
                    Some(_) => {}
                },
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Function::Processes(pool) = &*shared.function {
        pool.shutdown().await;
    }
    Ok(())
}

/// One lane of one shard: batches in order, each worked to the end before the next.
async fn lane(shared: Arc<Shared>, shard: Arc<str>, mut rx: mpsc::Receiver<Item>) {
    let cfg = &shared.cfg;
    let mut window = (!cfg.tumbling_window.is_zero()).then(|| ShardWindow::new(cfg.tumbling_window.as_millis() as u64));
    let mut held: Option<Item> = None;
    let mut stream_arn: Arc<str> = Arc::from("");
    let mut last_record_ms = 0u64;
    loop {
        let first = match held.take() {
            Some(i) => i,
            None => {
                // Close an idle window only once no record came for a grace period as well:
                // a lane catching up on old records must not end a window between two batches.
                let due = window
                    .as_ref()
                    .and_then(|w| w.due_ms(WINDOW_GRACE_MS))
                    .map(|d| d.max(last_record_ms + WINDOW_GRACE_MS));
                tokio::select! {
                    biased;
                    r = rx.recv() => match r {
                        Some(i) => i,
                        None => {
                            if let Some(fin) = window.as_mut().and_then(ShardWindow::close) {
                                final_invoke(&shared, &shard, &stream_arn, fin).await;
                            }
                            return;
                        }
                    },
                    _ = sleep_until_epoch_ms(due.unwrap_or(0)), if due.is_some() => {
                        if let Some(fin) = window.as_mut().and_then(ShardWindow::close) {
                            final_invoke(&shared, &shard, &stream_arn, fin).await;
                        }
                        continue;
                    }
                }
            }
        };
        last_record_ms = sluice_flow::now_ms();
        stream_arn = first.stream_arn.clone();
        let window_start = window.as_ref().map(|w| w.place(first.arrival_ms));
        if let (Some(w), Some(start)) = (window.as_mut(), window_start)
            && let Some(fin) = w.enter(start)
        {
            final_invoke(&shared, &shard, &stream_arn, fin).await;
        }
        let mut bytes = first.event_bytes();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + cfg.maximum_batching_window;
        while batch.len() < cfg.batch_size {
            let next = match rx.try_recv() {
                Ok(i) => Some(i),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if tokio::time::Instant::now() >= deadline => None,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    r = rx.recv() => r,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
            };
            let Some(item) = next else { break };
            let other_window = match (&window, window_start) {
                (Some(w), Some(start)) => w.place(item.arrival_ms) != start,
                _ => false,
            };
            if other_window || bytes + item.event_bytes() > MAX_EVENT_BYTES {
                held = Some(item);
                break;
            }
            last_record_ms = sluice_flow::now_ms();
            bytes += item.event_bytes();
            batch.push(item);
        }
        work_batch(&shared, &shard, &batch, window.as_mut()).await;
    }
}

async fn sleep_until_epoch_ms(due_ms: u64) {
    let wait = due_ms.saturating_sub(sluice_flow::now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Invokes `batch` until every record is settled (delivered or failed for good).
async fn work_batch(shared: &Shared, shard: &str, batch: &[Item], mut window: Option<&mut ShardWindow>) {
    let cfg = &shared.cfg;
    let mut plan = BatchPlan::new(batch.len(), cfg.retry_limit(), cfg.bisect_batch_on_function_error);
    let mut retry_in_row = 0u32;
    let stream_arn = batch.first().map(|i| i.stream_arn.clone()).unwrap_or_else(|| Arc::from(""));
    while let Some(range) = plan.current() {
        if let Some(max_age) = cfg.record_age_limit_ms() {
            let now = sluice_flow::now_ms();
            let expired =
                batch[range.clone()].iter().take_while(|i| now.saturating_sub(i.arrival_ms) > max_age).count();
            if let Some(s) = plan.expire_front(expired) {
                settle(shared, batch, s).await;
                continue;
            }
        }
        let items = &batch[range.clone()];
        let fields = window.as_deref().and_then(ShardWindow::fields);
        let mut transformed = None;
        let outcome = match invoke(shared, shard, &stream_arn, items, fields.as_ref()).await {
            Err(message) => {
                tracing::warn!(sink = %shared.name, shard, records = items.len(), first = %items[0].sequence_number, error = %message, "function error");
                Outcome::Failed
            }
            Ok(answer) => {
                transformed = answer.transformed.map(|t| (range.clone(), t));
                if let (Some(w), Some(state)) = (window.as_deref_mut(), answer.state)
                    && let Some(early) = w.update(state)
                {
                    final_invoke(shared, shard, &stream_arn, early).await;
                }
                match answer.first_failed {
                    None => Outcome::Success,
                    Some(k) => {
                        tracing::info!(sink = %shared.name, shard, from = %items[k].sequence_number, "partial batch failure: retrying from the lowest failed sequence number");
                        Outcome::Partial { first_failed: k }
                    }
                }
            }
        };
        let (settled, next) = plan.record(outcome);
        for s in settled {
            match (&s, transformed.take()) {
                (Settled::Delivered(done), Some((invoked, results))) if *done == invoked => {
                    if !settle_transformed(shared, &batch[invoked], results).await {
                        return; // stopping: nothing more is acknowledged
                    }
                }
                _ => settle(shared, batch, s).await,
            }
        }
        match next {
            Next::Fresh => retry_in_row = 0,
            Next::Bisected => {
                retry_in_row = 0;
                metrics::counter!("sluice_handler_bisections_total", "sink" => shared.name.clone()).increment(1);
            }
            Next::Retry => {
                retry_in_row += 1;
                metrics::counter!("sluice_handler_retries_total", "sink" => shared.name.clone()).increment(1);
                tokio::time::sleep(Duration::from_millis(backoff_ms(retry_in_row))).await;
            }
        }
    }
}

/// One invocation with `items`; `Err` is a function error, counted by kind.
async fn invoke(
    shared: &Shared,
    shard: &str,
    stream_arn: &str,
    items: &[Item],
    window: Option<&WindowFields>,
) -> Result<event::Answer, String> {
    let cfg = &shared.cfg;
    let body = if cfg.transform {
        serde_json::to_vec(&event::transform_event(items, &shared.id, &uuid::Uuid::new_v4().to_string()))
    } else {
        event::event_bytes(items, &shared.id, shard, stream_arn, window)
    }
    .map_err(|e| e.to_string())?;
    metrics::counter!("sluice_handler_invocations_total", "sink" => shared.name.clone()).increment(1);
    let started = Instant::now();
    let result = shared.function.invoke(body, cfg.timeout).await;
    metrics::histogram!("sluice_handler_invocation_seconds", "sink" => shared.name.clone())
        .record(started.elapsed().as_secs_f64());
    let error = |kind: &'static str| {
        metrics::counter!("sluice_handler_errors_total", "sink" => shared.name.clone(), "kind" => kind).increment(1);
    };
    match result {
        Err(e) => {
            error(e.kind());
            Err(e.to_string())
        }
        Ok(value) if cfg.transform => match event::read_transform(&value, items) {
            Ok(t) => Ok(event::Answer { first_failed: None, state: None, transformed: Some(t) }),
            Err(m) => {
                error("invalid_response");
                Err(format!("invalid answer: {m}"))
            }
        },
        Ok(value) => event::read_answer(&value, items, cfg.reports_item_failures(), window.is_some()).map_err(|m| {
            error("invalid_response");
            format!("invalid answer: {m}")
        }),
    }
}

/// The final invocation of a window, retried like a batch (by `maximum_retry_attempts`); its
/// records are already acknowledged, so a final invocation that keeps failing is logged and
/// counted, and the window's state is dropped.
async fn final_invoke(shared: &Shared, shard: &str, stream_arn: &str, fields: WindowFields) {
    let mut retries = 0u32;
    loop {
        metrics::counter!("sluice_handler_final_invocations_total", "sink" => shared.name.clone()).increment(1);
        let result = match event::event_bytes(&[], &shared.id, shard, stream_arn, Some(&fields)) {
            Ok(body) => {
                metrics::counter!("sluice_handler_invocations_total", "sink" => shared.name.clone()).increment(1);
                shared.function.invoke(body, shared.cfg.timeout).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let Err(error) = result else { return };
        metrics::counter!("sluice_handler_errors_total", "sink" => shared.name.clone(), "kind" => "final_invoke")
            .increment(1);
        retries += 1;
        if shared.cfg.retry_limit().is_some_and(|l| retries > l) {
            metrics::counter!("sluice_handler_final_invocations_failed_total", "sink" => shared.name.clone())
                .increment(1);
            tracing::error!(sink = %shared.name, shard, window_start = %event::iso8601(fields.start_ms, false), %error, "final window invocation failed for good; its state is dropped");
            return;
        }
        metrics::counter!("sluice_handler_retries_total", "sink" => shared.name.clone()).increment(1);
        tracing::warn!(sink = %shared.name, shard, %error, "final window invocation failed; retrying");
        tokio::time::sleep(Duration::from_millis(backoff_ms(retries))).await;
    }
}

/// Settles a transformed batch: the `Ok` records' new payloads are spooled as this sink's
/// output first, then the inputs are acknowledged (`Ok` and `Dropped` as delivered,
/// `ProcessingFailed` dead-lettered). False when the pipeline stopped before the output took
/// them (nothing is acknowledged then).
async fn settle_transformed(shared: &Shared, items: &[Item], results: Vec<Transformed>) -> bool {
    let count = |outcome: &'static str, n: usize| {
        metrics::counter!("sluice_handler_records_total", "sink" => shared.name.clone(), "outcome" => outcome)
            .increment(n as u64);
    };
    let mut events = Vec::new();
    let (mut delivered, mut failed) = (Vec::new(), Vec::new());
    let mut dropped = 0;
    for (item, result) in items.iter().zip(results) {
        match result {
            Transformed::Ok(payload) => {
                events.push(Event {
                    payload,
                    cursor: None,
                    received_ms: item.record.received_ms,
                    origin: item.record.origin.clone(),
                });
                delivered.push(item.record.id);
            }
            Transformed::Dropped => {
                dropped += 1;
                delivered.push(item.record.id);
            }
            Transformed::Failed => failed.push(item),
        }
    }
    let produced = events.len();
    if !events.is_empty() {
        let Some(output) = &shared.output else {
            // The pipeline file check makes every transform read by some sink.
            tracing::error!(sink = %shared.name, records = produced, "no sink reads this transform's output; its records are not acknowledged");
            return false;
        };
        if output.emit(events).await.is_err() {
            return false;
        }
    }
    count("transformed", produced);
    count("dropped", dropped);
    count("processing_failed", failed.len());
    if !failed.is_empty() {
        tracing::warn!(sink = %shared.name, records = failed.len(), first = %failed[0].sequence_number, "records the transformation could not process (ProcessingFailed)");
        dead_letter(shared, failed.iter().copied(), "processing_failed").await;
        let _ = shared.acks.send(Ack::DeadLettered(failed.iter().map(|i| i.record.id).collect()));
    }
    if !delivered.is_empty() {
        let _ = shared.acks.send(Ack::Delivered(delivered));
    }
    true
}

/// Writes the payloads of `items` to the dead-letter file (fsynced, off the async threads),
/// each with its `eventID` as detail.
async fn dead_letter<'a>(shared: &Shared, items: impl IntoIterator<Item = &'a Item>, reason: &'static str) {
    let dead = shared.dead_letters.clone();
    let payloads: Vec<(String, bytes::Bytes)> = items
        .into_iter()
        .map(|i| (format!("{}:{}", i.shard_id, i.sequence_number), i.record.payload.clone()))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for (event_id, payload) in payloads {
            dead.write(reason, &event_id, &payload);
        }
    })
    .await;
}

/// Acknowledges settled records: delivered, or described at the on-failure destination, written
/// to the dead-letter file and acknowledged as dead-lettered.
async fn settle(shared: &Shared, batch: &[Item], settled: Settled) {
    match settled {
        Settled::Delivered(range) => {
            let ids: Vec<u64> = batch[range].iter().map(|i| i.record.id).collect();
            metrics::counter!("sluice_handler_records_total", "sink" => shared.name.clone(), "outcome" => "delivered")
                .increment(ids.len() as u64);
            let _ = shared.acks.send(Ack::Delivered(ids));
        }
        Settled::Failed { range, condition, invokes } => {
            let items = &batch[range];
            let record = on_failure::record(items, &shared.id, condition, invokes, sluice_flow::now_ms());
            tracing::warn!(sink = %shared.name, shard = %items[0].shard_id, records = items.len(), first = %items[0].sequence_number, last = %items[items.len() - 1].sequence_number, condition = condition.as_str(), "records failed for good");
            // Nothing is acknowledged before its failure is on disk.
            match &shared.failures {
                Some(Destination::File(file)) => {
                    let mut attempt = 0u32;
                    while let Err(e) = file.append(&record).await {
                        attempt += 1;
                        tracing::error!(sink = %shared.name, path = %file.path().display(), error = %e, "could not write an on-failure record; retrying");
                        tokio::time::sleep(Duration::from_millis(backoff_ms(attempt))).await;
                    }
                }
                Some(Destination::Output) => {
                    let Some(output) = &shared.output else {
                        tracing::error!(sink = %shared.name, "the on-failure sink does not read this sink; records not acknowledged");
                        return;
                    };
                    let event = Event {
                        payload: bytes::Bytes::from(record.to_string()),
                        cursor: None,
                        received_ms: sluice_flow::now_ms(),
                        origin: None,
                    };
                    if output.emit(vec![event]).await.is_err() {
                        return; // stopping: the records are invoked again after a restart
                    }
                }
                None => {}
            }
            metrics::counter!("sluice_handler_on_failure_records_total", "sink" => shared.name.clone()).increment(1);
            let reason = match condition {
                Condition::RetryAttemptsExhausted => "retry_attempts_exhausted",
                Condition::RecordAgeExceeded => "record_age_exceeded",
            };
            dead_letter(shared, items, reason).await;
            let ids: Vec<u64> = items.iter().map(|i| i.record.id).collect();
            metrics::counter!("sluice_handler_records_total", "sink" => shared.name.clone(), "outcome" => "dead_lettered")
                .increment(ids.len() as u64);
            let _ = shared.acks.send(Ack::DeadLettered(ids));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_has_the_same_lane() {
        for key in ["a", "racer-7", ""] {
            assert_eq!(lane_of(key, 4), lane_of(key, 4));
            assert!(lane_of(key, 4) < 4);
            assert_eq!(lane_of(key, 1), 0);
        }
        let used: std::collections::HashSet<u32> = (0..100).map(|i| lane_of(&format!("k{i}"), 4)).collect();
        assert_eq!(used.len(), 4, "keys spread over every lane");
    }
}
