//! Group commit: one writer thread turns whatever appends are pending into one write per
//! touched segment, one fdatasync per touched file, one visibility update per shard, then
//! answers every caller.
//!
//! A group runs under the commit gate, which `mutate_catalog` takes to close shards or drop
//! streams: a close therefore happens strictly between two groups, and no append lands after
//! the close returns. Readers never take the gate.

use std::mem;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::segment::MAX_RECORD_BYTES;
use crate::shard_log::{ShardLog, WriterShard};
use crate::store::{Shared, StreamLogs};
use crate::sync::lock;
use crate::{AppendRecord, Appended, Durability};

/// The answer to one append call.
pub(crate) type Reply = oneshot::Sender<Result<Vec<Appended>, StorageError>>;

/// One pending append call.
pub(crate) struct Request {
    pub stream: Arc<StreamLogs>,
    pub records: Vec<AppendRecord>,
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

/// The writer thread's main loop.
pub(crate) fn run_writer(shared: Arc<Shared>) {
    let mut batch = Vec::new();
    let mut touched: Vec<Arc<ShardLog>> = Vec::new();
    while shared.queue.take(&mut batch) {
        commit_group(&shared, &mut batch, &mut touched);
        batch.clear();
        touched.clear();
    }
    STATS.with(|st| {
        let st = st.borrow();
        eprintln!("groups {} records {} sync {:.3}s total {:.3}s", st.0, st.1, st.2, st.3);
    });
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
    let t0 = std::time::Instant::now();
    let gate = lock(&shared.commit_gate);
    let now = crate::now_ms();
    let segment_bytes = shared.cfg.segment_bytes;
    let mut accepted: Vec<(Reply, Vec<Appended>)> = Vec::with_capacity(batch.len());
    let mut spent: Vec<Vec<AppendRecord>> = Vec::with_capacity(batch.len());
    let mut failure: Option<StorageError> = None;

    for Request { stream, records, reply } in batch.drain(..) {
        if failure.is_some() {
            accepted.push((reply, Vec::new()));
            spent.push(records);
            continue;
        }
        if let Err(e) = validate(&stream, &records) {
            let _ = reply.send(Err(e));
            spent.push(records);
            continue;
        }
        match encode_request(&stream, &records, now, segment_bytes, touched) {
            Ok(out) => accepted.push((reply, out)),
            Err(e) => {
                failure = Some(e);
                accepted.push((reply, Vec::new()));
            }
        }
        spent.push(records);
    }

    if failure.is_none() {
        for log in touched.iter() {
            if let Err(e) = lock(&log.writer).write_out() {
                failure = Some(e);
                break;
            }
        }
    }
    let t_w = std::time::Instant::now();
    if failure.is_none() && shared.cfg.durability == Durability::Fsync {
        failure = sync_all(touched).err();
    }

    if let Some(err) = failure {
        tracing::error!(error = %err, "group commit failed; rolled back");
        for log in touched.iter() {
            lock(&log.writer).rollback();
        }
        drop(gate);
        for (reply, _) in accepted {
            let _ = reply.send(Err(err.duplicate()));
        }
        return;
    }

    STATS.with(|st| {
        let mut st = st.borrow_mut();
        st.0 += 1;
        st.2 += t_w.elapsed().as_secs_f64();
        st.3 += t0.elapsed().as_secs_f64();
    });
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
    STATS.with(|st| st.borrow_mut().1 += total);
    metrics::histogram!("sluice_commit_group_records").record(total as f64);
    metrics::counter!("sluice_storage_records_appended_total").increment(total);

    for (log, firsts) in sealed {
        for first in firsts {
            log.seal(first, shared.cfg.durability);
        }
    }
    drop(spent);
}

thread_local! { static STATS: std::cell::RefCell<(u64,u64,f64,f64)> = const { std::cell::RefCell::new((0,0,0.0,0.0)) }; }

/// fdatasyncs every touched shard's files, in parallel when there are several (concurrent
/// fdatasyncs on one filesystem share journal commits and device flushes).
fn sync_all(touched: &[Arc<ShardLog>]) -> Result<(), StorageError> {
    if touched.len() == 1 {
        return lock(&touched[0].writer).sync();
    }
    std::thread::scope(|scope| {
        let (first, rest) = touched.split_first().map_or((None, &[][..]), |(f, r)| (Some(f), r));
        let handles: Vec<_> = rest.iter().map(|log| scope.spawn(move || lock(&log.writer).sync())).collect();
        let mut result = first.map_or(Ok(()), |log| lock(&log.writer).sync());
        for h in handles {
            let r = h.join().unwrap_or_else(|_| Err(StorageError::Corrupt("fsync thread panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}
