//! The `s3` sink: Firehose-style delivery of records as objects in S3, an S3-compatible store
//! or a local directory (the `object_store` crate).
//!
//! **Objects.** Records are appended to a buffer per partition, each followed by `delimiter`.
//! A partition is one set of dynamic partition values (`partition_keys`), or the records of
//! one error type. A partition's buffer becomes one object when it holds `buffer_size` bytes
//! or its oldest record has waited `buffer_interval`, whichever comes first (`0s`: whatever
//! arrived together). The key is `<url path>/<evaluated prefix><name>-<version>-YYYY-MM-DD-
//! HH-MM-SS-<uuid><extension>`, every time being the arrival of the oldest record in the
//! object (its `ApproximateArrivalTimestamp` for a `kinesis` source, else when the source
//! received it), UTC, as Firehose names objects. See [`prefix`] for the expressions.
//!
//! **Errors.** A record that lacks a partition key (not JSON, pointer absent, or an object /
//! array there) goes to `error_prefix` with error type `partitioning-failed`, as a JSON line
//! modelled on Firehose's error documents (`attemptsMade`, `arrivalTimestamp`, `errorCode`,
//! `errorMessage`, `attemptEndingTimestamp`, `rawData` base64, and `sequenceNumber` /
//! `subSequenceNumber` / `shardId` when the record came from a stream). So do records of a
//! partition beyond `max_partitions` (`activePartitionExceeded`). Both are acknowledged as
//! dead-lettered, so they are counted apart from delivered ones.
//!
//! **Durability.** A record is acknowledged only after the store confirmed the complete
//! object: S3 answers a PUT (or a completed multipart upload, for objects above 16 MiB) only
//! once the object exists whole, and a local directory gets a staged file that is fsynced and
//! renamed into place. A crash mid-object therefore leaves no partial object; its records were
//! never acknowledged and are delivered again from the spool. Staging files a crash left in a
//! local directory are removed at start. A failing upload is retried with backoff (counted)
//! for `retry_duration`, then its records are dead-lettered.

pub mod config;
pub mod prefix;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use metrics::{counter, gauge};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use sluice_core::json_pointer::{Found, Pointer};
use sluice_flow::{Ack, BoxFuture, DeadLetters, FlowError, Record, Sink, SinkContext};

pub use config::{Compression, S3Config};
use prefix::{Template, Values};

/// Objects larger than this go up as multipart uploads.
const MULTIPART_ABOVE: usize = 16 << 20;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 << 20;
/// Most records taken from the spool at once.
const BATCH: usize = 4096;

/// Checks the config and builds the sink.
pub fn build(name: &str, cfg: S3Config, data_dir: &FsPath) -> Result<Box<dyn Sink>, FlowError> {
    let bad = |m: String| crate::config_error(name, m);
    if cfg.buffer_size == 0 || cfg.buffer_size > 128 << 20 {
        return Err(bad(format!("`buffer_size` must be 1 byte to 128 MiB, not {}", cfg.buffer_size)));
    }
    if cfg.buffer_interval > Duration::from_secs(900) {
        return Err(bad("`buffer_interval` must be 0 to 900 s".into()));
    }
    if cfg.max_partitions == 0 {
        return Err(bad("`max_partitions` must be at least 1".into()));
    }
    let mut pointers = BTreeMap::new();
    for (key, pointer) in &cfg.partition_keys {
        let p = Pointer::parse(pointer).map_err(|e| bad(format!("`partition_keys.{key}`: {e}")))?;
        pointers.insert(key.clone(), p);
    }
    let prefix = Template::parse(&cfg.prefix, &cfg.partition_keys, false).map_err(|e| bad(format!("`prefix`: {e}")))?;
    let error_prefix =
        Template::parse(&cfg.error_prefix, &BTreeMap::new(), true).map_err(|e| bad(format!("`error_prefix`: {e}")))?;
    if !cfg.partition_keys.is_empty() && !prefix.uses_keys() {
        return Err(bad(
            "`partition_keys` are set but `prefix` uses none of them (`!{partitionKeyFromQuery:NAME}`)".into()
        ));
    }
    let object = cfg.name.clone().unwrap_or_else(|| name.to_owned());
    if object.is_empty() || object.contains('/') {
        return Err(bad(format!("`name` {object:?} must be a non-empty object name part without `/`")));
    }
    let target = Target::parse(&cfg, data_dir).map_err(bad)?;
    let extension = cfg.file_extension.clone().unwrap_or_else(|| cfg.compression.extension().to_owned());
    Ok(Box::new(S3Sink {
        name: name.to_owned(),
        layout: Layout { prefix, error_prefix, pointers, object, version: cfg.version, extension },
        target,
        cfg,
    }))
}

/// Where the objects go, before connecting.
#[derive(Debug)]
enum Target {
    Local(PathBuf),
    S3 { bucket: String, root: String },
}

impl Target {
    fn parse(cfg: &S3Config, data_dir: &FsPath) -> Result<Target, String> {
        if let Some(rest) = cfg.url.strip_prefix("s3://") {
            let (bucket, root) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`url` {:?} names no bucket", cfg.url));
            }
            return Ok(Target::S3 { bucket: bucket.to_owned(), root: root.trim_matches('/').to_owned() });
        }
        if cfg.endpoint.is_some() {
            return Err("`endpoint` applies to `s3://` URLs only".into());
        }
        let path = match cfg.url.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(_) => return Err(format!("`url` {:?}: a file URL needs an absolute path (file:///dir)", cfg.url)),
            None if cfg.url.contains("://") => {
                return Err(format!("`url` {:?}: use s3://bucket/prefix, file:///dir or a directory", cfg.url));
            }
            None if cfg.url.is_empty() => return Err("`url` is empty".into()),
            None => data_dir.join(&cfg.url),
        };
        Ok(Target::Local(path))
    }

    /// Connects (for S3: builds the client; nothing is sent yet) and returns the store and the
    /// key prefix every object gets.
    fn open(&self, cfg: &S3Config) -> Result<(Arc<dyn ObjectStore>, String), String> {
        match self {
            Target::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| format!("cannot use {}: {e}", dir.display()))?
                    .with_fsync(true);
                Ok((Arc::new(fs), String::new()))
            }
            Target::S3 { bucket, root } => {
                let region = cfg
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into());
                // Our own retry loop counts and spans `retry_duration`; the client retries
                // only briefly so that failures surface to it.
                let retry =
                    RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(30), ..Default::default() };
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_region(region).with_retry(retry);
                if let Some(endpoint) = &cfg.endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                let store = b.build().map_err(|e| format!("cannot set up S3 for bucket {bucket:?}: {e}"))?;
                let root = if root.is_empty() { String::new() } else { format!("{root}/") };
                Ok((Arc::new(store), root))
            }
        }
    }
}

/// How keys are formed.
struct Layout {
    prefix: Template,
    error_prefix: Template,
    pointers: BTreeMap<String, Pointer>,
    object: String,
    version: u32,
    extension: String,
}

struct S3Sink {
    name: String,
    cfg: S3Config,
    layout: Layout,
    target: Target,
}

impl Sink for S3Sink {
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
        Box::pin(run(*self, ctx))
    }
}

/// Which buffer a record joins: its partition values, or an error type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PartitionId {
    Keys(Vec<String>),
    Error(&'static str),
}

/// One partition's records waiting to become an object.
struct Buffer {
    ids: Vec<u64>,
    data: Vec<u8>,
    oldest_ms: u64,
    since: Instant,
    keys: BTreeMap<String, String>,
}

impl Buffer {
    fn new(keys: BTreeMap<String, String>) -> Buffer {
        Buffer { ids: Vec::new(), data: Vec::new(), oldest_ms: u64::MAX, since: Instant::now(), keys }
    }
}

/// The arrival time Firehose would see: the stream's, else when the source received it.
fn arrival_ms(r: &Record) -> u64 {
    r.origin.as_ref().map_or(r.received_ms, |o| o.arrival_ms)
}

/// The record's partition values, or why it has none.
fn partition_values(pointers: &BTreeMap<String, Pointer>, payload: &[u8]) -> Result<Vec<String>, String> {
    pointers
        .iter()
        .map(|(name, p)| match p.find(payload) {
            Ok(Some(found @ (Found::Str(_) | Found::Number(_)))) => Ok(found.scalar_text().unwrap_or("").to_owned()),
            Ok(Some(Found::Bool(b))) => Ok(b.to_string()),
            Ok(Some(_)) => Err(format!("partition key {name} ({p}) is null, an object or an array")),
            Ok(None) => Err(format!("partition key {name} ({p}) is missing")),
            Err(e) => Err(format!("record is not JSON: {e}")),
        })
        .collect()
}

/// Firehose-like error document for a record that goes to the error prefix.
fn error_line(r: &Record, code: &str, message: &str) -> Vec<u8> {
    let now = sluice_flow::now_ms();
    let mut doc = serde_json::json!({
        "attemptsMade": 1,
        "arrivalTimestamp": arrival_ms(r),
        "errorCode": code,
        "errorMessage": message,
        "attemptEndingTimestamp": now,
        "rawData": base64::engine::general_purpose::STANDARD.encode(&r.payload),
    });
    if let (Some(o), Some(map)) = (&r.origin, doc.as_object_mut()) {
        map.insert("shardId".into(), o.shard_id.clone().into());
        map.insert("sequenceNumber".into(), o.sequence_number.clone().into());
        map.insert("subSequenceNumber".into(), o.sub_sequence_number.into());
    }
    let mut line = doc.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The sink's working state.
struct Batcher<'a> {
    name: &'a str,
    cfg: &'a S3Config,
    layout: &'a Layout,
    buffers: HashMap<PartitionId, Buffer>,
    buffered_records: usize,
}

impl Batcher<'_> {
    fn add(&mut self, r: &Record) {
        let id = if self.layout.pointers.is_empty() {
            PartitionId::Keys(Vec::new())
        } else {
            match partition_values(&self.layout.pointers, &r.payload) {
                Ok(values) => PartitionId::Keys(values),
                Err(message) => {
                    return self.add_error(
                        r,
                        "partitioning-failed",
                        "DynamicPartitioning.MetadataExtractionFailed",
                        &message,
                    );
                }
            }
        };
        // Counted only for a partition not buffered yet: this runs once per record.
        if !self.buffers.contains_key(&id)
            && self.buffers.keys().filter(|k| matches!(k, PartitionId::Keys(_))).count() >= self.cfg.max_partitions
        {
            let message = format!("more than {} partitions buffered at once", self.cfg.max_partitions);
            return self.add_error(
                r,
                "activePartitionExceeded",
                "DynamicPartitioning.ActivePartitionsLimitExceeded",
                &message,
            );
        }
        let keys = match &id {
            PartitionId::Keys(values) => self.layout.pointers.keys().cloned().zip(values.iter().cloned()).collect(),
            PartitionId::Error(_) => BTreeMap::new(),
        };
        let b = self.buffers.entry(id).or_insert_with(|| Buffer::new(keys));
        push(b, r, &r.payload, self.cfg.delimiter.as_bytes());
        self.buffered_records += 1;
    }

    fn add_error(&mut self, r: &Record, error_type: &'static str, code: &str, message: &str) {
        counter!("sluice_s3_error_records_total", "sink" => self.name.to_owned(), "type" => error_type).increment(1);
        tracing::warn!(sink = %self.name, error_type, message, "record goes to the error prefix");
        let line = error_line(r, code, message);
        let b = self.buffers.entry(PartitionId::Error(error_type)).or_insert_with(|| Buffer::new(BTreeMap::new()));
        push(b, r, &line, b"");
        self.buffered_records += 1;
    }

    /// Partitions due for delivery now; all of them when `all`.
    fn due(&self, all: bool) -> Vec<PartitionId> {
        let interval = self.cfg.buffer_interval;
        self.buffers
            .iter()
            .filter(|(_, b)| {
                !b.ids.is_empty()
                    && (all || b.data.len() as u64 >= self.cfg.buffer_size || b.since.elapsed() >= interval)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// When the next partition falls due by time.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.buffers
            .values()
            .filter(|b| !b.ids.is_empty())
            .map(|b| tokio::time::Instant::from_std(b.since + self.cfg.buffer_interval))
            .min()
    }
}

fn push(b: &mut Buffer, r: &Record, bytes: &[u8], delimiter: &[u8]) {
    if b.ids.is_empty() {
        b.since = Instant::now();
    }
    b.ids.push(r.id);
    b.oldest_ms = b.oldest_ms.min(arrival_ms(r));
    b.data.extend_from_slice(bytes);
    b.data.extend_from_slice(delimiter);
}

fn compress(data: Vec<u8>, how: Compression) -> std::io::Result<Vec<u8>> {
    match how {
        Compression::None => Ok(data),
        Compression::Gzip => {
            let mut e =
                flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::default());
            e.write_all(&data)?;
            e.finish()
        }
        Compression::Zstd => zstd::bulk::compress(&data, 3),
    }
}

async fn upload(store: &dyn ObjectStore, key: &Path, body: Bytes) -> object_store::Result<()> {
    if body.len() <= MULTIPART_ABOVE {
        store.put(key, PutPayload::from(body)).await?;
        return Ok(());
    }
    let mut w = WriteMultipart::new_with_chunk_size(store.put_multipart(key).await?, PART_BYTES);
    w.put(body);
    w.finish().await?;
    Ok(())
}

/// Removes staging files (`<object>#<n>`) of this sink that a crash left in a local directory.
fn remove_stale_staging(dir: &FsPath, object: &str) -> usize {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with(&format!("{object}-"))
                        && name.contains('#')
                        && std::fs::remove_file(&path).is_ok()
                    {
                        removed += 1;
                    }
                }
                Err(_) => {}
            }
        }
    }
    removed
}

async fn run(sink: S3Sink, ctx: SinkContext) -> Result<(), FlowError> {
    let S3Sink { name, cfg, layout, target } = sink;
    let SinkContext { mut records, acks, shutdown, dead_letters, .. } = ctx;
    let fatal = |message: String| FlowError::Fatal { component: name.clone(), message };
    let (store, root) = target.open(&cfg).map_err(fatal)?;
    if let Target::Local(dir) = &target {
        let removed = remove_stale_staging(dir, &layout.object);
        if removed > 0 {
            tracing::info!(sink = %name, files = removed, "removed partial uploads an earlier run left");
        }
    }
    let stop = crate::file::stopped(shutdown);
    tokio::pin!(stop);
    let mut b = Batcher { name: &name, cfg: &cfg, layout: &layout, buffers: HashMap::new(), buffered_records: 0 };
    let mut batch = Vec::with_capacity(BATCH);
    // Buffered data is bounded: past this the sink stops reading until objects go out.
    let hold_limit = (cfg.buffer_size as usize).saturating_mul(4).max(64 << 20);
    let mut stopping = false;
    loop {
        let held: usize = b.buffers.values().map(|x| x.data.len()).sum();
        let deadline = b.next_deadline();
        tokio::select! {
            biased;
            _ = &mut stop, if !stopping => stopping = true,
            n = records.recv_many(&mut batch, BATCH), if !stopping && held < hold_limit => {
                if n == 0 {
                    stopping = true;
                }
                for r in batch.drain(..) {
                    b.add(&r);
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {}
            // Over the hold limit with nothing due yet: deliver the fullest partition now.
            _ = std::future::ready(()), if held >= hold_limit => {}
        }
        let mut due = b.due(stopping || cfg.buffer_interval.is_zero());
        if due.is_empty() && held >= hold_limit {
            due.extend(b.buffers.iter().max_by_key(|(_, x)| x.data.len()).map(|(id, _)| id.clone()));
        }
        gauge!("sluice_s3_buffered_records", "sink" => name.clone()).set(b.buffered_records as f64);
        for id in due {
            let Some(buffer) = b.buffers.remove(&id) else { continue };
            b.buffered_records -= buffer.ids.len();
            let delivered =
                deliver(&name, &cfg, &layout, store.as_ref(), &root, &id, buffer, &dead_letters, &mut stop, stopping)
                    .await;
            match delivered {
                Some(ack) => {
                    let _ = acks.send(ack);
                }
                // Stopping while a delivery still failed: its records stay unacknowledged and
                // are delivered again after a restart.
                None => return Ok(()),
            }
        }
        if stopping && b.buffers.values().all(|x| x.ids.is_empty()) {
            return Ok(());
        }
    }
}

/// Uploads one partition's object, retrying for `retry_duration`; the ack to send, or `None`
/// when the pipeline stopped first.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    name: &str,
    cfg: &S3Config,
    layout: &Layout,
    store: &dyn ObjectStore,
    root: &str,
    id: &PartitionId,
    buffer: Buffer,
    dead_letters: &DeadLetters,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    stopping: bool,
) -> Option<Ack> {
    let Buffer { ids, data, oldest_ms, keys, .. } = buffer;
    let (template, error_type) = match id {
        PartitionId::Keys(_) => (&layout.prefix, None),
        PartitionId::Error(t) => (&layout.error_prefix, Some(*t)),
    };
    let prefix = template.eval(&Values { oldest_ms, keys: &keys, error_type });
    let object = prefix::object_name(&layout.object, layout.version, oldest_ms);
    let key = Path::from(format!("{root}{prefix}{object}{}", layout.extension));
    let raw_bytes = data.len();
    let how = cfg.compression;
    let body = match tokio::task::spawn_blocking(move || compress(data, how)).await {
        Ok(Ok(body)) => Bytes::from(body),
        Ok(Err(e)) => {
            tracing::error!(sink = %name, error = %e, "could not compress an object; its records are dead-lettered");
            dead_letters.write("compress_failed", &e.to_string(), b"");
            return Some(Ack::DeadLettered(ids));
        }
        Err(e) => {
            tracing::error!(sink = %name, error = %e, "compression task failed");
            return None;
        }
    };
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match upload(store, &key, body.clone()).await {
            Ok(()) => {
                counter!("sluice_s3_objects_total", "sink" => name.to_owned()).increment(1);
                counter!("sluice_s3_bytes_total", "sink" => name.to_owned()).increment(body.len() as u64);
                counter!("sluice_s3_records_total", "sink" => name.to_owned()).increment(ids.len() as u64);
                tracing::debug!(sink = %name, key = %key, records = ids.len(), bytes = body.len(), raw_bytes, "object delivered");
                return Some(match id {
                    PartitionId::Keys(_) => Ack::Delivered(ids),
                    PartitionId::Error(_) => Ack::DeadLettered(ids),
                });
            }
            Err(e) => {
                counter!("sluice_s3_upload_errors_total", "sink" => name.to_owned()).increment(1);
                if started.elapsed() >= cfg.retry_duration {
                    tracing::error!(sink = %name, key = %key, records = ids.len(), attempts = attempt, error = %e,
                        "upload failed for longer than retry_duration; its records are dead-lettered");
                    counter!("sluice_s3_expired_records_total", "sink" => name.to_owned()).increment(ids.len() as u64);
                    dead_letters.write("upload_failed", &format!("{key}: {e}"), &body);
                    return Some(Ack::DeadLettered(ids));
                }
                let wait =
                    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(8))).min(Duration::from_secs(60));
                tracing::warn!(sink = %name, key = %key, attempt, error = %e, retry_in = ?wait, "upload failed; retrying");
                if stopping {
                    return None;
                }
                tokio::select! {
                    _ = stop.as_mut() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
