//! The contract between the pieces of a pipeline, and nothing else.
//!
//! ```text
//! source ──Event──▶ spool (durable, per source) ──Record──▶ sink ──Ack──▶ spool watermark
//! ```
//!
//! A [`Source`] keeps a connection to a provider and sends [`Event`]s; the pipeline writes them
//! to a durable spool (so a slow sink never stalls the provider) together with the source's
//! cursor, which is how a restart resumes exactly where the spool ends. A [`Sink`] receives
//! [`Record`]s in spool order and answers [`Ack`]s once each record is durably delivered or
//! dead-lettered; the pipeline advances the sink's read watermark only over contiguous acks, so
//! nothing unacknowledged is ever skipped. Anything that cannot be used is written to a
//! [`DeadLetters`] file and counted; nothing is dropped silently.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

/// A boxed, sendable future (sources and sinks are stored as trait objects).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Errors that stop a source or sink for good (everything transient is retried inside).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The component's configuration cannot work (e.g. an unparsable URL).
    #[error("{component}: invalid configuration: {message}")]
    Config {
        /// Component name.
        component: String,
        /// What is wrong.
        message: String,
    },
    /// A failure the component cannot recover from.
    #[error("{component}: {message}")]
    Fatal {
        /// Component name.
        component: String,
        /// What happened.
        message: String,
    },
}

/// One message from a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The message as received (a text frame's UTF-8 bytes, a binary frame, an SSE `data`, or one
    /// NDJSON line without its newline).
    pub payload: Bytes,
    /// The provider's resume position after this message, if the source extracts one.
    pub cursor: Option<String>,
    /// When it arrived, epoch ms.
    pub received_ms: u64,
    /// Where it was read from, for a record a `kinesis` source read from a stream.
    pub origin: Option<Arc<Origin>>,
}

/// Where a record read from a Kinesis stream came from: what a `kinesis` source knows of each
/// user record. It is spooled with the record and handed to the sinks, since Lambda-style
/// handlers and Firehose-style delivery name it (`eventID`, `partitionKey`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The stream's name.
    pub stream: String,
    /// The stream's ARN, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_arn: Option<String>,
    /// `shardId-000000000000`.
    pub shard_id: String,
    /// The Kinesis record's sequence number (of the aggregate, for a KPL user record).
    pub sequence_number: String,
    /// The user record's index inside a KPL aggregate (0 for a plain record).
    #[serde(default)]
    pub sub_sequence_number: u64,
    /// Whether it came out of a KPL aggregate.
    #[serde(default)]
    pub aggregated: bool,
    /// The (user record's) partition key.
    pub partition_key: String,
    /// The user record's explicit hash key, if an aggregate carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_hash_key: Option<String>,
    /// `ApproximateArrivalTimestamp`, epoch ms.
    pub arrival_ms: u64,
}

/// Everything a source is given when it starts.
pub struct SourceContext {
    /// The source's name in the pipeline file.
    pub name: String,
    /// The cursor of the last event already in the spool: resume after it.
    pub resume_cursor: Option<String>,
    /// Where events go. Bounded; the pipeline drains it into the spool in batches, so a send
    /// waits only while the spool's disk is busy, never on a sink.
    pub events: mpsc::Sender<Event>,
    /// Where unusable messages go.
    pub dead_letters: DeadLetters,
    /// Becomes true when the pipeline stops.
    pub shutdown: watch::Receiver<bool>,
    /// The source's alarms (silence, no connection, …); the pipeline's `/health` shows them
    /// and answers 503 while any is raised.
    pub alarms: Alarms,
    /// The newest events already spooled for this source, for state that must survive a
    /// restart (a de-duplication window). `None` where there is no spool (tests).
    pub history: Option<Arc<dyn SpooledHistory>>,
    /// How many of the events this source sent since it started are durably in the spool
    /// (events are spooled in the order they were sent). A source that must not acknowledge
    /// upstream before that (the `kinesis` source's checkpoints) waits on it. `None` where
    /// there is no spool: sent counts as taken.
    pub spooled: Option<watch::Receiver<u64>>,
    /// How many of the events this source sent since it started every sink reading it has
    /// acknowledged (delivered or dead-lettered), in send order. A source whose upstream
    /// forgets what it acknowledged (the `kinesis` source's checkpoints, by default) waits on
    /// it. `None` where there is no spool.
    pub delivered: Option<watch::Receiver<u64>>,
    /// What the source reports about itself for `/health` (see [`SourceReport`]).
    pub report: SourceReport,
}

/// What a source reports about itself beyond the pipeline's counters (the `kinesis` source:
/// its worker id and the shards it holds, with their checkpoints): a JSON value that `/health`
/// shows under the source as `report`. Cheap to clone; every clone sees the same value.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    inner: Arc<Mutex<Option<serde_json::Value>>>,
}

impl SourceReport {
    /// Replaces the report.
    pub fn set(&self, report: serde_json::Value) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// The current report, if the source made one.
    pub fn get(&self) -> Option<serde_json::Value> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Read access to what a source already spooled.
pub trait SpooledHistory: Send + Sync {
    /// Up to `max` of the newest spooled events that were received at or after `since_ms`
    /// (epoch ms), oldest first, as `(received_ms, payload)`. Blocking (reads the disk).
    fn recent(&self, max: usize, since_ms: u64) -> Vec<(u64, Bytes)>;
}

/// One raised alarm.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alarm {
    /// When it was raised, epoch ms.
    pub since_ms: u64,
    /// What an operator should know (no secrets).
    pub detail: String,
}

/// The alarms one component has raised, by name (`silence`, `no_connection`, `spool_blocked`).
/// Cheap to clone; every clone sees the same board.
#[derive(Debug, Clone, Default)]
pub struct Alarms {
    inner: Arc<Mutex<BTreeMap<String, Alarm>>>,
}

impl Alarms {
    fn board(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Alarm>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises `alarm` (keeping the original time if it is already up); true if it was not up.
    pub fn raise(&self, alarm: &str, detail: impl Into<String>) -> bool {
        let mut board = self.board();
        match board.get_mut(alarm) {
            Some(a) => {
                a.detail = detail.into();
                false
            }
            None => {
                board.insert(alarm.to_owned(), Alarm { since_ms: now_ms(), detail: detail.into() });
                true
            }
        }
    }

    /// Clears `alarm`; true if it was up.
    pub fn clear(&self, alarm: &str) -> bool {
        self.board().remove(alarm).is_some()
    }

    /// Whether `alarm` is up.
    pub fn is_raised(&self, alarm: &str) -> bool {
        self.board().contains_key(alarm)
    }

    /// Every raised alarm.
    pub fn snapshot(&self) -> BTreeMap<String, Alarm> {
        self.board().clone()
    }
}

/// A connection to a provider (WebSocket, SSE, streaming HTTP …).
pub trait Source: Send {
    /// Runs until shutdown, reconnecting as needed; returns only on shutdown or a fatal error.
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<Result<(), FlowError>>;
}

/// One spooled event handed to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Opaque id, echoed in [`Ack`]s. Ids of one input increase in spool order.
    pub id: u64,
    /// The event's payload.
    pub payload: Bytes,
    /// When the source received it, epoch ms (for end-to-end latency).
    pub received_ms: u64,
    /// Where the source read it from, if it came from a stream (see [`Origin`]).
    pub origin: Option<Arc<Origin>>,
}

/// A sink's answer about records it is done with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Durably delivered.
    Delivered(Vec<u64>),
    /// Could never be delivered; written to the dead-letter file (and counted) instead.
    DeadLettered(Vec<u64>),
}

/// Everything a sink is given when it starts.
pub struct SinkContext {
    /// The sink's name in the pipeline file.
    pub name: String,
    /// Records in spool order (per input). Closed when the pipeline stops.
    pub records: mpsc::Receiver<Record>,
    /// Where acknowledgements go. Every record received must eventually be acked (delivered
    /// or dead-lettered) unless the pipeline stops first; unacked records are delivered again
    /// after a restart.
    pub acks: mpsc::UnboundedSender<Ack>,
    /// Where undeliverable records go.
    pub dead_letters: DeadLetters,
    /// Becomes true when the pipeline stops.
    pub shutdown: watch::Receiver<bool>,
    /// For a sink whose output other sinks read (a transforming `handler`): where its events
    /// go. `None` for every other sink.
    pub output: Option<Output>,
}

/// Where a sink that produces events (a transforming `handler`) sends them: they are spooled
/// under the sink's name, and sinks naming it in `inputs` read them like a source's events.
/// Cheap to clone; every clone feeds the same spool stream, in the order of `emit` calls.
#[derive(Clone)]
pub struct Output {
    tx: mpsc::Sender<Event>,
    spooled: watch::Receiver<u64>,
    sent: Arc<tokio::sync::Mutex<u64>>,
}

impl Output {
    /// An output feeding `tx`, whose writer counts what it spooled (since this start) on
    /// `spooled`.
    pub fn new(tx: mpsc::Sender<Event>, spooled: watch::Receiver<u64>) -> Output {
        Output { tx, spooled, sent: Arc::new(tokio::sync::Mutex::new(0)) }
    }

    /// Sends `events` and returns once the spool holds them durably, so the records they came
    /// from may be acknowledged. `Err` when the pipeline is stopping (nothing may be
    /// acknowledged then; the inputs are delivered again after a restart).
    pub async fn emit(&self, events: Vec<Event>) -> Result<(), OutputClosed> {
        let target = {
            let mut sent = self.sent.lock().await;
            for e in events {
                self.tx.send(e).await.map_err(|_| OutputClosed)?;
                *sent += 1;
            }
            *sent
        };
        let mut spooled = self.spooled.clone();
        spooled.wait_for(|n| *n >= target).await.map(|_| ()).map_err(|_| OutputClosed)
    }
}

/// The pipeline stopped before an [`Output`] took the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline is stopping: the output takes no more events")]
pub struct OutputClosed;

/// A destination (Kinesis, files, stdout …).
pub trait Sink: Send {
    /// Runs until `records` closes or shutdown; returns only then or on a fatal error.
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>>;
}

/// Appends unusable messages to `<dir>/<component>.ndjson` as one JSON object per line
/// (`{"ts_ms", "component", "reason", "detail", "payload_base64"}`) and counts them in
/// `sluice_dead_letters_total{component, reason}`. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<DeadLettersInner>,
}

struct DeadLettersInner {
    component: String,
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl DeadLetters {
    /// Dead letters of `component` under `dir` (the file is created on first use).
    pub fn new(dir: &Path, component: &str) -> DeadLetters {
        DeadLetters {
            inner: Arc::new(DeadLettersInner {
                component: component.to_owned(),
                path: dir.join(format!("{component}.ndjson")),
                file: Mutex::new(None),
            }),
        }
    }

    /// The file they go to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records one unusable payload with a short machine-friendly `reason` (a metric label,
    /// e.g. `too_large`, `invalid_json`, `rejected`) and a human `detail`. The line is written
    /// and fsynced before this returns; a failure to write is logged and counted separately
    /// (`sluice_dead_letter_write_errors_total`), never panics.
    pub fn write(&self, reason: &str, detail: &str, payload: &[u8]) {
        use base64::Engine;
        metrics::counter!("sluice_dead_letters_total", "component" => self.inner.component.clone(), "reason" => reason.to_owned())
            .increment(1);
        tracing::warn!(component = %self.inner.component, reason, detail, bytes = payload.len(), "dead-lettered");
        let line = serde_json::json!({
            "ts_ms": now_ms(),
            "component": self.inner.component,
            "reason": reason,
            "detail": detail,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
        });
        let result = (|| -> std::io::Result<()> {
            let mut guard = self.inner.file.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                if let Some(parent) = self.inner.path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                *guard = Some(std::fs::OpenOptions::new().create(true).append(true).open(&self.inner.path)?);
            }
            if let Some(f) = guard.as_mut() {
                let mut buf = line.to_string().into_bytes();
                buf.push(b'\n');
                f.write_all(&buf)?;
                f.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            metrics::counter!("sluice_dead_letter_write_errors_total", "component" => self.inner.component.clone())
                .increment(1);
            tracing::error!(component = %self.inner.component, path = %self.inner.path.display(), error = %e, "could not write a dead letter");
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_are_written_as_ndjson() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = DeadLetters::new(dir.path(), "feed");
        dl.write("invalid_json", "expected value at line 1", b"\xff{oops");
        dl.write("too_large", "2000000 bytes", b"x");
        let text = std::fs::read_to_string(dl.path()).expect("read");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "invalid_json");
        assert_eq!(lines[0]["payload_base64"], "/3tvb3Bz");
        assert_eq!(lines[1]["component"], "feed");
    }

    #[test]
    fn alarms_raise_once_and_clear() {
        let a = Alarms::default();
        let b = a.clone();
        assert!(a.raise("silence", "no data for 2s"));
        assert!(!b.raise("silence", "no data for 3s"));
        assert_eq!(b.snapshot()["silence"].detail, "no data for 3s");
        assert!(a.is_raised("silence"));
        assert!(b.clear("silence"));
        assert!(!a.clear("silence"));
        assert!(a.snapshot().is_empty());
    }
}
