//! SubscribeToShard: an `application/vnd.amazon.eventstream` response that pushes records.
//!
//! The first frame is the `initial-response` event (some SDKs block until it arrives), then
//! `SubscribeToShardEvent` frames carry records, the `ContinuationSequenceNumber` to resume
//! from, and `MillisBehindLatest`. New records are pushed as soon as the store commits them
//! (the store's per-shard watch), and an empty event is sent at least every
//! [`HEARTBEAT_MS`] while idle. A subscription ends after `subscription_ms` (5 minutes), at the
//! end of a closed shard (with `ChildShards`), when a newer subscription for the same consumer
//! and shard takes over, or on shutdown. Works over HTTP/2 and over HTTP/1.1 chunked bodies.

use std::convert::Infallible;

use std::time::Duration;

use bytes::Bytes;
use metrics::gauge;
use sluice_core::eventstream::encode_frame;
use sluice_core::{SequenceNumber, ShardId};
use tokio::sync::{mpsc, watch};

use crate::error::ApiError;
use crate::input::{Checker, Fields};
use crate::obj;
use crate::ops::consumers::{find_consumer, parse_consumer_arn};
use crate::ops::records::resolve_position;
use crate::ops::{child_shards_out, find_shard, record_out, shard_id_member};
use crate::state::{Ctx, Shared};
use crate::value::{Format, Out};

/// Longest quiet gap between two events.
pub const HEARTBEAT_MS: u64 = 1_000;
/// Records per event at most.
const EVENT_RECORDS: usize = 10_000;
/// Bytes per event at most.
const EVENT_BYTES: usize = 2 * 1024 * 1024;
/// A new subscription to the same consumer and shard within this time is refused.
const RESUBSCRIBE_MS: u64 = 5_000;

/// Checks the request and starts the subscription; returns the frame stream receiver.
pub fn start(st: &Shared, ctx: &Ctx, f: Fields<'_, '_>) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let mut check = Checker::new();
    let arn = check.required(f.str("ConsumerARN")?, "consumerARN");
    check.length(arn, "consumerARN", 1, 2048);
    let shard = shard_id_member(&f, &mut check, "ShardId", true)?;
    let pos = check.required(f.structure("StartingPosition")?, "startingPosition");
    let (kind, seq, ts) = match pos {
        Some(p) => {
            let kind = check.required(p.str("Type")?, "startingPosition.type");
            check.one_of(
                kind,
                "startingPosition.type",
                &["AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"],
            );
            (kind, p.str("SequenceNumber")?, p.timestamp("Timestamp")?)
        }
        None => (None, None, None),
    };
    check.finish()?;
    let (Some(arn), Some(shard), Some(kind)) = (arn, shard, kind) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    let Some((stream, consumer, secs)) = parse_consumer_arn(arn) else {
        return Err(ApiError::invalid_argument(format!("Invalid ConsumerARN {arn}")));
    };
    let cat = st.store.catalog();
    let meta = st.find(&cat, stream, ctx.now_ms)?;
    let c = find_consumer(st, meta, consumer, Some(secs), ctx.now_ms)?;
    if c.status == "CREATING" && ctx.now_ms < c.status_until_ms {
        return Err(ApiError::in_use(format!("Consumer {consumer} is not ACTIVE yet.")));
    }
    let shard_meta = find_shard(st, meta, &shard)?;
    let position = resolve_position(st, ctx, meta, shard_meta.index, kind, seq, ts)?;
    let key = (arn.to_owned(), shard_meta.index);
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let mut subs = st.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((started, old)) = subs.get(&key) {
            if ctx.now_ms.saturating_sub(*started) < RESUBSCRIBE_MS {
                return Err(ApiError::in_use(format!(
                    "Another active subscription exists for consumer {arn} on shard {}.",
                    ShardId(shard_meta.index)
                )));
            }
            let _ = old.send(true);
        }
        subs.insert(key.clone(), (ctx.now_ms, stop_tx));
    }
    let (tx, rx) = mpsc::channel(4);
    let task = Subscription {
        st: st.clone(),
        format: ctx.format,
        stream: stream.to_owned(),
        tag: meta.tag,
        shard: shard_meta.index,
        position,
        key,
        stop: stop_rx,
        started_ms: ctx.now_ms,
        last: None,
    };
    tokio::spawn(task.run(tx));
    Ok(rx)
}

struct Subscription {
    st: Shared,
    format: Format,
    stream: String,
    tag: u32,
    shard: u32,
    position: u64,
    key: (String, u32),
    stop: watch::Receiver<bool>,
    started_ms: u64,
    last: Option<SequenceNumber>,
}

fn event(format: Format, kind: &str, payload: &[u8]) -> Bytes {
    Bytes::from(encode_frame(
        &[(":event-type", kind), (":content-type", format.content_type()), (":message-type", "event")],
        payload,
    ))
}

impl Subscription {
    async fn run(mut self, tx: mpsc::Sender<Bytes>) {
        gauge!("sluice_subscriptions").increment(1.0);
        let initial = match self.format {
            Format::Json => b"{}".to_vec(),
            Format::Cbor => Out::Map(vec![]).encode(Format::Cbor),
        };
        if tx.send(event(self.format, "initial-response", &initial)).await.is_ok()
            && let Err(e) = self.pump(&tx).await
        {
            let frame = encode_frame(
                &[
                    (":exception-type", e.kind),
                    (":content-type", self.format.content_type()),
                    (":message-type", "exception"),
                ],
                &obj![("message", e.message.clone())].encode(self.format),
            );
            let _ = tx.send(Bytes::from(frame)).await;
        }
        let mut subs = self.st.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if subs.get(&self.key).is_some_and(|(started, _)| *started == self.started_ms) {
            subs.remove(&self.key);
        }
        gauge!("sluice_subscriptions").decrement(1.0);
    }

    async fn pump(&mut self, tx: &mpsc::Sender<Bytes>) -> Result<(), ApiError> {
        let st = self.st.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(st.config.subscription_ms);
        let mut commits = st.store.watch(&self.stream, self.tag, self.shard)?;
        let mut shutdown = st.shutdown.clone();
        loop {
            if *self.stop.borrow() || *shutdown.borrow() || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            let cat = st.store.catalog();
            let meta = match cat.streams.get(&self.stream) {
                Some(m) if m.tag == self.tag => m,
                _ => return Err(st.stream_not_found(&self.stream)),
            };
            let closed = meta.shard(self.shard).is_some_and(|s| s.closed_ms.is_some());
            let created = meta.shard(self.shard).map_or(0, |s| s.created_ms);
            let mut batch =
                st.store.read(&self.stream, self.tag, self.shard, self.position, EVENT_RECORDS, EVENT_BYTES)?;
            // As GetRecords: nothing past the retention period, even inside a kept segment.
            let cutoff = sluice_core::now_ms().saturating_sub(u64::from(meta.retention_hours) * 3_600_000);
            if batch.records.first().is_some_and(|r| r.arrival_ms < cutoff) {
                let from = st.store.seek_timestamp(&self.stream, self.tag, self.shard, cutoff)?.max(self.position);
                batch = st.store.read(&self.stream, self.tag, self.shard, from, EVENT_RECORDS, EVENT_BYTES)?;
                batch.records.retain(|r| r.arrival_ms >= cutoff);
            }
            let caught_up = batch.next_ordinal >= batch.tip.next_ordinal;
            let at_end = caught_up && closed;
            let now = sluice_core::now_ms();
            let behind =
                if caught_up { 0 } else { batch.records.last().map_or(0, |r| now.saturating_sub(r.arrival_ms)) };
            let n = batch.records.len();
            let bytes: usize = batch.records.iter().map(|r| r.data.len()).sum();
            let last = batch.records.last().map(|r| SequenceNumber {
                stream_tag: self.tag,
                shard: self.shard,
                ordinal: r.ordinal,
                arrival_ms: r.arrival_ms,
            });
            let records: Vec<Out> =
                batch.records.into_iter().map(|r| record_out(self.tag, self.shard, r, None)).collect();
            self.position = batch.next_ordinal;
            if let Some(seq) = last {
                self.last = Some(seq);
            }
            // The last record delivered; before any, a number just below the start position.
            let continuation = self.last.unwrap_or(SequenceNumber {
                stream_tag: self.tag,
                shard: self.shard,
                ordinal: self.position.saturating_sub(1),
                arrival_ms: created,
            });
            let payload = obj![
                ("Records", Out::List(records)),
                ("ContinuationSequenceNumber", (!at_end).then(|| continuation.to_string())),
                ("MillisBehindLatest", behind as i64),
                ("ChildShards", if at_end { child_shards_out(meta, self.shard) } else { Out::Null }),
            ];
            if tx.send(event(self.format, "SubscribeToShardEvent", &payload.encode(self.format))).await.is_err() {
                return Ok(()); // the client went away
            }
            metrics::counter!("sluice_records_out_total", "stream" => self.stream.clone()).increment(n as u64);
            metrics::counter!("sluice_bytes_out_total", "stream" => self.stream.clone()).increment(bytes as u64);
            if at_end {
                return Ok(());
            }
            if caught_up {
                let wait = tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS));
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = wait => {}
                    _ = self.stop.changed() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

/// The response body: frames from the subscription task.
pub fn body(rx: mpsc::Receiver<Bytes>) -> axum::body::Body {
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx)) },
        );
    axum::body::Body::from_stream(stream)
}
