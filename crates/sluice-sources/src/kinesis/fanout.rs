//! Enhanced fan-out: reading one shard through SubscribeToShard instead of GetRecords.
//!
//! [`ensure_consumer`] registers the stream consumer (or finds the one registered before) and
//! waits until it is `ACTIVE`. [`subscribe_shard`] then reads a shard from a KCL checkpoint as
//! [`super::reader::read_shard`] does, handing on the same [`ShardItem`]s: it subscribes from
//! the checkpoint (`AT_SEQUENCE_NUMBER` of the checkpointed record, dropping the user records at
//! or before it with the reader's own filter), and each time a subscription ends (Kinesis ends
//! them after 5 minutes) or fails, subscribes again `AFTER_SEQUENCE_NUMBER` of the last
//! continuation sequence number it handed on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::backend::{Position, ReadError, StreamBackend};
use super::reader::{
    Checkpoint, ReaderSettings, ReaderStop, ShardItem, count_failure, count_read, pause, position_of, read_labels,
    send, user_records,
};

/// How often a `CREATING` consumer's status is asked for.
const CONSUMER_POLL: Duration = Duration::from_millis(500);

/// Registers the enhanced fan-out consumer `name` on the backend's stream, or finds the one
/// registered before (`ResourceInUseException`), and waits until it is `ACTIVE`; returns its
/// ARN. Gives up with the last error after `wait`.
pub async fn ensure_consumer(backend: &dyn StreamBackend, name: &str, wait: Duration) -> Result<String, ReadError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut registered = false;
    loop {
        let found = if registered {
            backend.describe_consumer(name).await
        } else {
            match backend.register_consumer(name).await {
                Err(ReadError::InUse(_)) => backend.describe_consumer(name).await,
                r => r,
            }
        };
        let last = match found {
            Ok(c) if c.status == "ACTIVE" => return Ok(c.arn),
            Ok(c) => {
                // DELETING: one deregistered a moment ago; register anew once it is gone.
                registered = c.status != "DELETING";
                ReadError::Other(format!("consumer {name} is {} ({})", c.status, c.arn))
            }
            // Deleted meanwhile: register it again.
            Err(ReadError::NotFound(m)) if registered => {
                registered = false;
                ReadError::NotFound(m)
            }
            Err(e @ (ReadError::Unsupported(_) | ReadError::NotFound(_))) => return Err(e),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + CONSUMER_POLL > deadline {
            return Err(ReadError::Other(format!("consumer {name} not ACTIVE after {wait:?}: {last}")));
        }
        tracing::debug!(consumer = name, state = %last, "waiting for the stream consumer to become ACTIVE");
        tokio::time::sleep(CONSUMER_POLL).await;
    }
}

/// Reads `shard` through subscriptions of `consumer_arn` from `from` and sends what it reads
/// to `out`, until the shard's end (`Ok(())` after sending [`ShardItem::End`] with the children
/// of the last event), `stop` turns true, or the receiver is gone. Failed or silent
/// subscriptions are renewed with exponential backoff, counted in
/// `sluice_kinesis_read_throttled_total` / `sluice_kinesis_read_errors_total` with
/// `read="fanout"`, like the polling reader's.
pub async fn subscribe_shard(
    backend: Arc<dyn StreamBackend>,
    consumer_arn: &str,
    shard: &str,
    from: Checkpoint,
    settings: &ReaderSettings,
    out: mpsc::Sender<ShardItem>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ReaderStop> {
    let shard_id: Arc<str> = Arc::from(shard);
    let stream = backend.stream_name().to_owned();
    let labels = read_labels(&stream, shard, "fanout");
    // The last user record handed on: what is at or before it is dropped.
    let mut position = from;
    // Where the next subscription starts: the checkpoint's position, then after the last
    // continuation sequence number.
    let Some(mut at) = position_of(&position) else {
        return send(&out, ShardItem::End { children: Vec::new() }).await;
    };
    let mut backoff = settings.min_backoff;
    loop {
        if *stop.borrow() {
            return Err(ReaderStop::Stopped);
        }
        let failure = match backend.subscribe(consumer_arn, shard, &at).await {
            Ok(mut events) => {
                metrics::counter!("sluice_kinesis_subscriptions_total", &labels).increment(1);
                let lifetime = tokio::time::sleep(settings.subscription_lifetime);
                tokio::pin!(lifetime);
                let mut events_seen = 0u64;
                loop {
                    let next = tokio::select! {
                        n = tokio::time::timeout(settings.event_timeout, events.next()) => n,
                        () = &mut lifetime => break None,
                        _ = stop.wait_for(|s| *s) => return Err(ReaderStop::Stopped),
                    };
                    let page = match next {
                        // The server ended the subscription: subscribe again from where it was.
                        Ok(None) if events_seen > 0 => break None,
                        // Ended at once (a server shutting down, say): back off rather than
                        // subscribe again in a tight loop.
                        Ok(None) => {
                            break Some(ReadError::Other("the subscription ended before its first event".into()));
                        }
                        Ok(Some(Ok(page))) => page,
                        Ok(Some(Err(e))) => break Some(e),
                        Err(_) => {
                            break Some(ReadError::Other(format!(
                                "no event for {:?}; subscribing again",
                                settings.event_timeout
                            )));
                        }
                    };
                    backoff = settings.min_backoff;
                    events_seen += 1;
                    let records = user_records(&shard_id, &page, &position);
                    if let Some(last) = records.last() {
                        position = last.checkpoint();
                    }
                    count_read(&records, page.millis_behind, &labels);
                    if !records.is_empty() {
                        send(&out, ShardItem::Records { records, millis_behind: page.millis_behind }).await?;
                    } else if page.records.is_empty() {
                        send(&out, ShardItem::CaughtUp).await?;
                    }
                    match page.next_iterator {
                        // Kinesis sends an empty continuation with the children at the end.
                        Some(c) if !c.is_empty() => at = Position::AfterSequence(c),
                        _ => return send(&out, ShardItem::End { children: page.child_shards }).await,
                    }
                }
            }
            Err(e) => Some(e),
        };
        let Some(e) = failure else { continue };
        match e {
            ReadError::NotFound(m) => {
                tracing::warn!(stream = %stream, shard, consumer = consumer_arn, error = %m, "subscription refused: not found; the shard is not read");
                return Err(ReaderStop::NotFound(m));
            }
            ReadError::Unsupported(m) => return Err(ReaderStop::Unsupported(m)),
            e => count_failure(&e, &labels, &stream, shard),
        }
        if pause(backoff, &mut stop).await {
            return Err(ReaderStop::Stopped);
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}
