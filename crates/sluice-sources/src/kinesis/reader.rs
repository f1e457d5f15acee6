//! Reading one shard: from a KCL checkpoint to the shard's end (or until stopped), with KPL
//! de-aggregation, backoff on throttling, and recovery of expired iterators.
//!
//! The reader never loses its place: it remembers the last user record it handed on as a
//! `(sequence number, sub-sequence number)` and restarts from there (an iterator `AT` that
//! sequence number, dropping every user record at or before the position, as the KCL does)
//! after an expired iterator or any error. What it hands on is what the caller checkpoints.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::backend::{Page, Position, ReadError, StreamBackend, cmp_sequence};

/// Where a shard's reading starts: the KCL's checkpoint values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// `TRIM_HORIZON`: the oldest record kept.
    TrimHorizon,
    /// `LATEST`: what arrives from now on.
    Latest,
    /// `AT_TIMESTAMP`: records that arrived at or after this time (epoch ms).
    AtTimestamp(u64),
    /// After this user record.
    Sequence {
        /// Sequence number of the (possibly aggregated) Kinesis record.
        sequence_number: String,
        /// Index of the user record inside an aggregate (0 for a plain record).
        sub_sequence_number: u64,
    },
    /// `SHARD_END`: the shard was read to its end.
    ShardEnd,
}

/// One user record read from a shard (an aggregate yields several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    /// The shard it came from.
    pub shard_id: Arc<str>,
    /// Its Kinesis record's sequence number.
    pub sequence_number: Arc<str>,
    /// Its index inside a KPL aggregate (0 for a plain record).
    pub sub_sequence_number: u64,
    /// Whether it came out of a KPL aggregate.
    pub aggregated: bool,
    /// Partition key (the user record's, for aggregates).
    pub partition_key: String,
    /// Explicit hash key of an aggregated user record, if it had one.
    pub explicit_hash_key: Option<String>,
    /// Payload.
    pub data: Bytes,
    /// Approximate arrival time, epoch ms.
    pub arrival_ms: u64,
}

impl ShardRecord {
    /// The checkpoint just after this record.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Sequence {
            sequence_number: self.sequence_number.to_string(),
            sub_sequence_number: self.sub_sequence_number,
        }
    }
}

/// What a reader hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardItem {
    /// Records in shard order (never empty), and how far behind the tip the read was.
    Records {
        /// The records.
        records: Vec<ShardRecord>,
        /// `MillisBehindLatest` of the read.
        millis_behind: Option<i64>,
    },
    /// A read found nothing new: the reader is at the tip.
    CaughtUp,
    /// The shard is closed and was read to its end; these are its children.
    End {
        /// Child shard ids (from the last GetRecords; may be empty if the server gave none).
        children: Vec<String>,
    },
}

/// How a reader reads.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// GetRecords `Limit` (1..=10,000).
    pub max_records: u32,
    /// Pause after a read that found nothing new.
    pub idle_between_reads: Duration,
    /// First backoff after a throttled or failed call; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Fan-out: the longest a subscription is kept before subscribing again from its last
    /// continuation. Kinesis ends each after 5 minutes itself; this bound (a little longer)
    /// only renews one that a server or proxy never ends.
    pub subscription_lifetime: Duration,
    /// Fan-out: a subscription that delivers no event for this long is dropped and renewed
    /// (servers send an event, possibly empty, every few seconds).
    pub event_timeout: Duration,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings {
            max_records: 10_000,
            idle_between_reads: Duration::from_millis(250),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            subscription_lifetime: Duration::from_secs(315),
            event_timeout: Duration::from_secs(35),
        }
    }
}

/// Why a reader stopped before the shard's end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReaderStop {
    /// The stop signal fired or the receiver went away.
    #[error("stopped")]
    Stopped,
    /// The stream or shard (or, for fan-out, the consumer) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The backend cannot read this way (fan-out on a backend without it).
    #[error("{0}")]
    Unsupported(String),
}

/// The position a restart reads from, and which user records at it are already done.
pub(super) fn position_of(cp: &Checkpoint) -> Option<Position> {
    match cp {
        Checkpoint::TrimHorizon => Some(Position::TrimHorizon),
        Checkpoint::Latest => Some(Position::Latest),
        Checkpoint::AtTimestamp(ms) => Some(Position::AtTimestamp(*ms)),
        Checkpoint::Sequence { sequence_number, .. } => Some(Position::AtSequence(sequence_number.clone())),
        Checkpoint::ShardEnd => None,
    }
}

/// Whether a user record at `(seq, sub)` is at or before the checkpoint (already done).
fn done(cp: &Checkpoint, seq: &str, sub: u64) -> bool {
    match cp {
        Checkpoint::Sequence { sequence_number, sub_sequence_number } => match cmp_sequence(seq, sequence_number) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => sub <= *sub_sequence_number,
            std::cmp::Ordering::Greater => false,
        },
        _ => false,
    }
}

/// Turns a page into user records after `cp`, de-aggregating KPL records (one that fails the
/// KCL's checks is passed on whole, as the KCL does).
pub(super) fn user_records(shard: &Arc<str>, page: &Page, cp: &Checkpoint) -> Vec<ShardRecord> {
    let mut out = Vec::with_capacity(page.records.len());
    for r in &page.records {
        let seq: Arc<str> = Arc::from(r.sequence_number.as_str());
        let aggregated = sluice_core::kpl::is_aggregated(&r.data);
        let users = if aggregated { sluice_core::kpl::decode(&r.data, &r.partition_key).ok() } else { None };
        match users {
            Some(users) => {
                for (i, u) in users.into_iter().enumerate() {
                    let sub = i as u64;
                    if done(cp, &seq, sub) {
                        continue;
                    }
                    out.push(ShardRecord {
                        shard_id: shard.clone(),
                        sequence_number: seq.clone(),
                        sub_sequence_number: sub,
                        aggregated: true,
                        partition_key: u.partition_key,
                        explicit_hash_key: u.explicit_hash_key,
                        data: Bytes::from(u.data),
                        arrival_ms: r.arrival_ms,
                    });
                }
            }
            None => {
                if done(cp, &seq, 0) {
                    continue;
                }
                out.push(ShardRecord {
                    shard_id: shard.clone(),
                    sequence_number: seq,
                    sub_sequence_number: 0,
                    aggregated: false,
                    partition_key: r.partition_key.clone(),
                    explicit_hash_key: None,
                    data: r.data.clone(),
                    arrival_ms: r.arrival_ms,
                });
            }
        }
    }
    out
}

/// Reads `shard` from `from` and sends what it reads to `out` until the shard's end
/// (`Ok(())` after sending [`ShardItem::End`]), `stop` turns true, or the receiver is gone.
/// Throttling and transient errors are retried with exponential backoff (counted in
/// `sluice_kinesis_read_throttled_total` / `sluice_kinesis_read_errors_total`); an expired
/// iterator is replaced from the last position handed on.
pub async fn read_shard(
    backend: Arc<dyn StreamBackend>,
    shard: &str,
    from: Checkpoint,
    settings: &ReaderSettings,
    out: mpsc::Sender<ShardItem>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ReaderStop> {
    let shard_id: Arc<str> = Arc::from(shard);
    let stream = backend.stream_name().to_owned();
    let labels = read_labels(&stream, shard, "polling");
    let mut position = from;
    if position == Checkpoint::ShardEnd {
        return send(&out, ShardItem::End { children: Vec::new() }).await;
    }
    let mut iterator: Option<String> = None;
    let mut backoff = settings.min_backoff;
    loop {
        if *stop.borrow() {
            return Err(ReaderStop::Stopped);
        }
        let it = match iterator.take() {
            Some(it) => it,
            None => {
                let Some(at) = position_of(&position) else {
                    return send(&out, ShardItem::End { children: Vec::new() }).await;
                };
                match backend.shard_iterator(shard, &at).await {
                    Ok(it) => it,
                    Err(e) => {
                        if let ReadError::NotFound(m) = e {
                            return Err(ReaderStop::NotFound(m));
                        }
                        count_failure(&e, &labels, &stream, shard);
                        if pause(backoff, &mut stop).await {
                            return Err(ReaderStop::Stopped);
                        }
                        backoff = (backoff * 2).min(settings.max_backoff);
                        continue;
                    }
                }
            }
        };
        match backend.get_records(&it, settings.max_records).await {
            Ok(page) => {
                backoff = settings.min_backoff;
                let records = user_records(&shard_id, &page, &position);
                if let Some(last) = records.last() {
                    position = last.checkpoint();
                }
                count_read(&records, page.millis_behind, &labels);
                let empty = records.is_empty();
                if !empty {
                    send(&out, ShardItem::Records { records, millis_behind: page.millis_behind }).await?;
                }
                match page.next_iterator {
                    None => return send(&out, ShardItem::End { children: page.child_shards }).await,
                    Some(next) => iterator = Some(next),
                }
                if empty && page.records.is_empty() {
                    send(&out, ShardItem::CaughtUp).await?;
                    let mut stopping = stop.clone();
                    tokio::select! {
                        () = backend.idle(shard, settings.idle_between_reads) => {}
                        _ = stopping.wait_for(|s| *s) => return Err(ReaderStop::Stopped),
                    }
                }
            }
            Err(ReadError::ExpiredIterator(m)) => {
                metrics::counter!("sluice_kinesis_iterators_expired_total", &labels).increment(1);
                tracing::info!(stream = %stream, shard, reason = %m, "shard iterator expired; resuming from the last record read");
                // `iterator` stays None: the next turn gets one from `position`.
            }
            Err(ReadError::NotFound(m)) => return Err(ReaderStop::NotFound(m)),
            Err(e) => {
                count_failure(&e, &labels, &stream, shard);
                iterator = Some(it);
                if pause(backoff, &mut stop).await {
                    return Err(ReaderStop::Stopped);
                }
                backoff = (backoff * 2).min(settings.max_backoff);
            }
        }
    }
}

/// The labels of a reader's metrics: `read` tells polling (`"polling"`) from enhanced fan-out
/// (`"fanout"`) under the same metric names.
pub(super) fn read_labels(stream: &str, shard: &str, read: &'static str) -> [(&'static str, String); 3] {
    [("stream", stream.to_owned()), ("shard", shard.to_owned()), ("read", read.to_owned())]
}

/// Counts records and bytes handed on, and sets how far behind the tip the read was.
pub(super) fn count_read(records: &[ShardRecord], millis_behind: Option<i64>, labels: &[(&'static str, String)]) {
    if !records.is_empty() {
        metrics::counter!("sluice_kinesis_records_read_total", labels).increment(records.len() as u64);
        let bytes: usize = records.iter().map(|r| r.data.len()).sum();
        metrics::counter!("sluice_kinesis_bytes_read_total", labels).increment(bytes as u64);
    }
    if let Some(ms) = millis_behind {
        metrics::gauge!("sluice_kinesis_millis_behind_latest", labels).set(ms as f64);
    }
}

/// Sleeps `d`; true if `stop` fired meanwhile.
pub(super) async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

pub(super) fn count_failure(e: &ReadError, labels: &[(&'static str, String)], stream: &str, shard: &str) {
    match e {
        ReadError::Throttled(_) => {
            metrics::counter!("sluice_kinesis_read_throttled_total", labels).increment(1);
            tracing::debug!(stream, shard, error = %e, "read throttled; backing off");
        }
        _ => {
            metrics::counter!("sluice_kinesis_read_errors_total", labels).increment(1);
            tracing::warn!(stream, shard, error = %e, "read failed; retrying with backoff");
        }
    }
}

pub(super) async fn send(out: &mpsc::Sender<ShardItem>, item: ShardItem) -> Result<(), ReaderStop> {
    out.send(item).await.map_err(|_| ReaderStop::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::backend::Fetched;

    fn page(records: Vec<(&str, Vec<u8>)>) -> Page {
        Page {
            records: records
                .into_iter()
                .map(|(seq, data)| Fetched {
                    sequence_number: seq.into(),
                    partition_key: "outer".into(),
                    data: Bytes::from(data),
                    arrival_ms: 7,
                })
                .collect(),
            next_iterator: Some("it".into()),
            millis_behind: Some(0),
            child_shards: Vec::new(),
        }
    }

    #[test]
    fn aggregates_are_split_and_the_checkpoint_drops_what_is_done() {
        use sluice_core::kpl::{UserRecord, encode};
        let agg = encode(&[
            UserRecord::new("a", b"1".to_vec()),
            UserRecord::new("b", b"2".to_vec()),
            UserRecord::new("c", b"3".to_vec()),
        ]);
        let p = page(vec![("100", b"plain".to_vec()), ("101", agg), ("102", b"last".to_vec())]);
        let shard: Arc<str> = Arc::from("shardId-000000000000");
        let all = user_records(&shard, &p, &Checkpoint::TrimHorizon);
        let keys: Vec<(String, u64, String)> = all
            .iter()
            .map(|r| (r.sequence_number.to_string(), r.sub_sequence_number, r.partition_key.clone()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("100".into(), 0, "outer".into()),
                ("101".into(), 0, "a".into()),
                ("101".into(), 1, "b".into()),
                ("101".into(), 2, "c".into()),
                ("102".into(), 0, "outer".into()),
            ]
        );
        let cp = Checkpoint::Sequence { sequence_number: "101".into(), sub_sequence_number: 1 };
        let rest = user_records(&shard, &p, &cp);
        assert_eq!(
            rest.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            vec![Bytes::from_static(b"3"), Bytes::from_static(b"last")]
        );
        // A plain record at the checkpoint is done too.
        let cp = Checkpoint::Sequence { sequence_number: "100".into(), sub_sequence_number: 0 };
        assert_eq!(user_records(&shard, &p, &cp).len(), 4);
    }

    #[test]
    fn a_damaged_aggregate_is_passed_on_whole() {
        use sluice_core::kpl::{UserRecord, encode};
        let mut agg = encode(&[UserRecord::new("a", b"1".to_vec())]);
        let n = agg.len();
        agg[n - 1] ^= 0xff; // the MD5 no longer matches
        let p = page(vec![("5", agg.clone())]);
        let got = user_records(&Arc::from("s"), &p, &Checkpoint::TrimHorizon);
        assert_eq!(got.len(), 1);
        assert!(!got[0].aggregated);
        assert_eq!(got[0].data, Bytes::from(agg));
    }
}
