//! Group commit: one writer thread turns whatever appends are pending into one write per
//! touched segment, one fdatasync per touched file, one visibility update per shard, then
//! answers every caller.
//!
//! A group runs under the commit gate, which `mutate_catalog` takes to close shards or drop
//! streams: a close therefore happens strictly between two groups, and no append lands after
//! the close returns. Readers never take the gate.

use std::fs::File;
use std::mem;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::segment::MAX_RECORD_BYTES;
use crate::shard_log::{ShardLog, WriterShard};
use crate::store::{Shared, StreamLogs};
use crate::sync::lock;
use crate::{AppendRecord, Appended, Durability};

/// The answer to one append call: per part, where its records landed.
pub(crate) type Reply = oneshot::Sender<Result<Vec<Vec<Appended>>, StorageError>>;

/// One pending append call: records for one or more streams, and the cursors committed with
/// them. All of it lands in the same group, or none of it.
pub(crate) struct Request {
    pub parts: Vec<(Arc<StreamLogs>, Vec<AppendRecord>)>,
    pub cursors: Vec<(String, String)>,
    pub reply: Reply,
}

struct QueueState {
    pending: Vec<Request>,
    closed: bool,
}

/// The pending-append queue shared by callers and the writer thread.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

impl Queue {
    pub(crate) fn new() -> Queue {
        Queue { state: Mutex::new(QueueState { pending: Vec::new(), closed: false }), cv: Condvar::new() }
    }

    /// Enqueues a request; refused once the queue is closed.
    pub(crate) fn push(&self, req: Request) -> Result<(), StorageError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(StorageError::ShuttingDown);
        }
        let was_empty = st.pending.is_empty();
        st.pending.push(req);
        drop(st);
        if was_empty {
            self.cv.notify_one();
        }
        Ok(())
    }

    /// Refuses new requests; the writer drains what is pending and exits.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_all();
    }

    /// Waits up to `linger` for more requests to join `into` (so that at low rates one fsync
    /// covers several appends); returns early once enough records are pending. A group that
    /// is already large does not wait: at high rates the fsync itself gathers the next group.
    fn linger(&self, into: &mut Vec<Request>, linger: std::time::Duration) {
        const ENOUGH: usize = 256;
        let count =
            |reqs: &[Request]| reqs.iter().map(|r| r.parts.iter().map(|p| p.1.len()).sum::<usize>()).sum::<usize>();
        let mut have = count(into);
        if have >= ENOUGH {
            return;
        }
        let deadline = Instant::now() + linger;
        let mut st = lock(&self.state);
        loop {
            if !st.pending.is_empty() {
                have += count(&st.pending);
                into.append(&mut st.pending);
                if have >= ENOUGH {
                    return;
                }
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return;
            }
            st = self.cv.wait_timeout(st, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Waits for work; `None` once closed and drained.
    fn take(&self, into: &mut Vec<Request>) -> bool {
        let mut st = lock(&self.state);
        loop {
            if !st.pending.is_empty() {
                mem::swap(&mut st.pending, into);
                return true;
            }
            if st.closed {
                return false;
            }
            st = self.cv.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// One fdatasync to perform.
pub(crate) struct SyncJob {
    pub file: Arc<File>,
    pub path: Arc<Path>,
}

impl SyncJob {
    fn run(&self) -> Result<(), StorageError> {
        let t = Instant::now();
        self.file.sync_data().map_err(|e| StorageError::io(&self.path, e))?;
        metrics::histogram!("sluice_fsync_seconds").record(t.elapsed().as_secs_f64());
        Ok(())
    }
}

struct PoolState {
    jobs: Vec<SyncJob>,
    /// Jobs handed out but not finished, plus jobs not handed out.
    pending: usize,
    error: Option<StorageError>,
    stop: bool,
}

/// A few threads that run a group's fdatasyncs concurrently: concurrent syncs of files on one
/// filesystem share journal commits and device flushes, so syncing N shards costs about one
/// flush instead of N.
pub(crate) struct SyncPool {
    state: Mutex<PoolState>,
    work_cv: Condvar,
    done_cv: Condvar,
}

/// Helper threads in the pool (the commit thread itself also syncs).
pub(crate) const SYNC_HELPERS: usize = 3;

impl SyncPool {
    pub(crate) fn new() -> SyncPool {
        SyncPool {
            state: Mutex::new(PoolState { jobs: Vec::new(), pending: 0, error: None, stop: false }),
            work_cv: Condvar::new(),
            done_cv: Condvar::new(),
        }
    }

    fn finish(&self, st: &mut PoolState, r: Result<(), StorageError>) {
        if let Err(e) = r
            && st.error.is_none()
        {
            st.error = Some(e);
        }
        st.pending -= 1;
        if st.pending == 0 {
            self.done_cv.notify_all();
        }
    }

    /// Runs all jobs (the caller helps) and returns the first error.
    pub(crate) fn run(&self, jobs: Vec<SyncJob>) -> Result<(), StorageError> {
        if jobs.len() <= 1 {
            return jobs.first().map_or(Ok(()), SyncJob::run);
        }
        let mut st = lock(&self.state);
        st.pending = jobs.len();
        st.jobs = jobs;
        st.error = None;
        self.work_cv.notify_all();
        while let Some(job) = st.jobs.pop() {
            drop(st);
            let r = job.run();
            st = lock(&self.state);
            self.finish(&mut st, r);
        }
        while st.pending > 0 {
            st = self.done_cv.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        st.error.take().map_or(Ok(()), Err)
    }

    /// A helper thread's loop.
    pub(crate) fn work(&self) {
        let mut st = lock(&self.state);
        loop {
            if let Some(job) = st.jobs.pop() {
                drop(st);
                let r = job.run();
                st = lock(&self.state);
                self.finish(&mut st, r);
            } else if st.stop {
                return;
            } else {
                st = self.work_cv.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stop = true;
        self.work_cv.notify_all();
    }
}

/// The writer thread's main loop.
pub(crate) fn run_writer(shared: Arc<Shared>) {
    let mut batch = Vec::new();
    let mut touched: Vec<Arc<ShardLog>> = Vec::new();
    while shared.queue.take(&mut batch) {
        if !shared.cfg.linger.is_zero() {
            shared.queue.linger(&mut batch, shared.cfg.linger);
        }
        commit_group(&shared, &mut batch, &mut touched);
        batch.clear();
        touched.clear();
    }
    // A clean stop leaves nothing for recovery to redo.
    checkpoint(&shared);
    tracing::debug!("commit thread stopped");
}

fn validate(stream: &StreamLogs, records: &[AppendRecord]) -> Result<(), StorageError> {
    if stream.deleted.load(Ordering::Acquire) {
        return Err(StorageError::NoSuchStream);
    }
    for r in records {
        match stream.shards.get(&r.shard) {
            Some(log) if !log.is_closed() => {}
            _ => return Err(StorageError::ShardClosed { shard: r.shard }),
        }
        let size = r.partition_key.len() + r.data.len();
        if size > MAX_RECORD_BYTES {
            return Err(StorageError::RecordTooLarge { size });
        }
    }
    Ok(())
}

/// Encodes one request's records into the shards' group buffers.
fn encode_request(
    stream: &StreamLogs,
    records: &[AppendRecord],
    now_ms: u64,
    segment_bytes: u64,
    touched: &mut Vec<Arc<ShardLog>>,
) -> Result<Vec<Appended>, StorageError> {
    let mut out = Vec::with_capacity(records.len());
    let mut cur: Option<(u32, MutexGuard<'_, WriterShard>)> = None;
    for rec in records {
        if !matches!(&cur, Some((shard, _)) if *shard == rec.shard) {
            let Some(log) = stream.shards.get(&rec.shard) else {
                return Err(StorageError::ShardClosed { shard: rec.shard });
            };
            let mut ws = lock(&log.writer);
            if !ws.in_group {
                ws.begin_group();
                touched.push(log.clone());
            }
            cur = Some((rec.shard, ws));
        }
        if let Some((_, ws)) = cur.as_mut() {
            out.push(ws.append(rec, now_ms, segment_bytes)?);
        }
    }
    Ok(out)
}

fn commit_group(shared: &Shared, batch: &mut Vec<Request>, touched: &mut Vec<Arc<ShardLog>>) {
    let gate = lock(&shared.commit_gate);
    let now = crate::now_ms();
    let segment_bytes = shared.cfg.segment_bytes;
    let mut accepted: Vec<(Reply, Vec<Vec<Appended>>)> = Vec::with_capacity(batch.len());
    let mut spent: Vec<Vec<(Arc<StreamLogs>, Vec<AppendRecord>)>> = Vec::with_capacity(batch.len());
    let mut cursors: Vec<(String, String)> = Vec::new();
    let mut failure: Option<StorageError> = None;

    for Request { parts, cursors: cs, reply } in batch.drain(..) {
        if failure.is_some() {
            accepted.push((reply, Vec::new()));
            spent.push(parts);
            continue;
        }
        if let Err(e) = parts.iter().try_for_each(|(stream, records)| validate(stream, records)) {
            let _ = reply.send(Err(e));
            spent.push(parts);
            continue;
        }
        let mut outs = Vec::with_capacity(parts.len());
        for (stream, records) in &parts {
            match encode_request(stream, records, now, segment_bytes, touched) {
                Ok(out) => outs.push(out),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            cursors.extend(cs);
        }
        accepted.push((reply, outs));
        spent.push(parts);
    }

    // The journal record first, then the segments: a process killed in between leaves the
    // whole record, from which recovery rewrites the segments (see the `journal` module).
    let mut journal = lock(&shared.journal);
    let journal_before = journal.len();
    let mut journal_written = false;
    if failure.is_none() {
        journal.begin();
        for log in touched.iter() {
            lock(&log.writer).journal_into(&mut journal);
        }
        match journal.write(&cursors) {
            Ok(()) => journal_written = true,
            Err(e) => failure = Some(e),
        }
    }
    if failure.is_none() {
        for log in touched.iter() {
            if let Err(e) = lock(&log.writer).write_out() {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() && shared.cfg.durability == Durability::Fsync {
        let mut jobs = vec![journal.sync_job()];
        let prepared: Result<(), StorageError> =
            touched.iter().try_for_each(|log| lock(&log.writer).meta_sync_jobs(&mut jobs));
        failure = prepared.and_then(|()| shared.sync_pool.run(jobs)).err();
    }

    if let Some(err) = failure {
        if journal_written {
            journal.unwrite(journal_before);
        }
        // What the group needed: its bytes in the journal and again in the segments. The
        // disk counts as writable again only once that much fits (see `Store::write_failure`).
        shared.failed_group_bytes.store(journal.record_len().saturating_mul(2), Ordering::Release);
        drop(journal);
        tracing::error!(error = %err, "group commit failed; rolled back");
        *lock(&shared.write_failure) = Some(err.to_string());
        shared.write_failing.store(true, Ordering::Release);
        for log in touched.iter() {
            lock(&log.writer).rollback();
        }
        drop(gate);
        for (reply, _) in accepted {
            let _ = reply.send(Err(err.duplicate()));
        }
        return;
    }

    if !cursors.is_empty() {
        let mut map = lock(&shared.cursors);
        for (name, cursor) in &cursors {
            map.insert(name.clone(), cursor.clone());
        }
        journal.cursors.extend(cursors);
    }
    let checkpoint_due = journal.checkpoint_due();
    drop(journal);
    if shared.write_failing.load(Ordering::Relaxed) {
        shared.write_failing.store(false, Ordering::Release);
        tracing::info!("group commits succeed again");
    }
    let mut sealed: Vec<(Arc<ShardLog>, Vec<u64>)> = Vec::new();
    let mut total = 0u64;
    for log in touched.iter() {
        let (s, n) = lock(&log.writer).publish(log);
        total += n;
        if !s.is_empty() {
            sealed.push((log.clone(), s));
        }
    }
    drop(gate);

    for (reply, out) in accepted {
        let _ = reply.send(Ok(out));
    }
    metrics::histogram!("sluice_commit_group_records").record(total as f64);
    metrics::counter!("sluice_storage_records_appended_total").increment(total);

    for (log, firsts) in sealed {
        for first in firsts {
            log.seal(first);
        }
    }
    drop(spent);
    if checkpoint_due {
        checkpoint(shared);
    }
}

/// Syncs the segments written since the last checkpoint and starts a new journal generation
/// (between two groups). A failure is logged; the journal keeps growing and the next group
/// tries again.
pub(crate) fn checkpoint(shared: &Shared) {
    let _gate = lock(&shared.commit_gate);
    let sync = shared.cfg.durability == Durability::Fsync;
    if let Err(e) = lock(&shared.journal).checkpoint(&shared.sync_pool, sync) {
        tracing::error!(error = %e, "journal checkpoint failed; will retry");
    }
}
