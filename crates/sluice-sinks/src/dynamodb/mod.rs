//! The `dynamodb` sink: every record (a JSON object) becomes an item of one table.
//!
//! **Writes.** Without `version`, records go out in `BatchWriteItem` calls of up to 25 puts, in
//! order; a key seen twice closes the batch first (DynamoDB refuses duplicates in one call), so
//! the later record of a key is always the one kept. Unprocessed items are retried with backoff
//! until written. With `version = "FIELD"`, each record is a conditional `PutItem` that
//! replaces the item only when the stored one has no such field or a lower number there, so
//! the newest version wins whatever the order; an older record is counted as `stale` and
//! acknowledged.
//!
//! **Failures.** Throttling, 5xx and transport errors are retried with backoff (counted in
//! `sluice_dynamodb_sink_retries_total{reason}`), forever: nothing is acknowledged until
//! written. A batch DynamoDB refuses as invalid is written again one item at a time so that
//! only the invalid items are dead-lettered (`rejected`); records that cannot become items at all
//! (not a JSON object, key missing, over 400 KB) are dead-lettered at once with their reason.
//! A missing table is retried too (it may be being created), with an error logged.

mod item;

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use metrics::counter;
use serde::Deserialize;
use sluice_core::json_pointer::Pointer;
use sluice_flow::{Ack, BoxFuture, DeadLetters, FlowError, Record, Sink, SinkContext};

pub use item::{MAX_ITEM_BYTES, Prepared, Unusable, prepare};

/// Writes records as items of a DynamoDB table.
///
/// ```toml
/// [sinks.racers]
/// type = "dynamodb"
/// inputs = ["race"]
/// table = "racers"
/// key = { racer = "/racer" }       # attribute = JSON pointer, the table's key attributes
/// version = "seq"                  # optional: keep the item with the highest `seq`
/// # endpoint = "aws"               # omitted: this pipeline's embedded DynamoDB endpoint
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoConfig {
    /// The table (it must exist).
    pub table: String,
    /// The table's key attributes (partition key, and sort key if it has one), each set from a
    /// JSON pointer into the record (a string or a number there). The record's own fields
    /// become the item's other attributes.
    pub key: std::collections::BTreeMap<String, String>,
    /// A top-level number field of the records: write conditionally, keeping the item with the
    /// highest value. Default: none (every record overwrites, in order).
    #[serde(default)]
    pub version: Option<String>,
    /// `"aws"` for AWS, or a URL (`sluice serve`, moto, DynamoDB Local). Omitted: this
    /// pipeline's embedded endpoint.
    pub endpoint: String,
    /// AWS region. Default: the AWS configuration chain for `"aws"`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Per-request timeout. Default `"10s"`.
    #[serde(default = "default_timeout", with = "sluice_core::duration")]
    pub request_timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Most items per `BatchWriteItem` (DynamoDB's limit).
const BATCH_ITEMS: usize = 25;
/// Conditional puts in flight at once.
const CONDITIONAL_IN_FLIGHT: usize = 16;

/// Checks the config and builds the sink.
pub fn build(name: &str, cfg: DynamoConfig) -> Result<Box<dyn Sink>, FlowError> {
    let bad = |m: String| crate::config_error(name, m);
    if cfg.table.len() < 3 || cfg.table.len() > 255 {
        return Err(bad(format!("`table` {:?} must be 3 to 255 characters", cfg.table)));
    }
    if cfg.key.is_empty() || cfg.key.len() > 2 {
        return Err(bad("`key` must name the table's key attributes: one (partition key) or two".into()));
    }
    let key = cfg
        .key
        .iter()
        .map(|(attr, p)| Pointer::parse(p).map(|p| (attr.clone(), p)).map_err(|e| bad(format!("`key.{attr}`: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(v) = &cfg.version
        && (v.is_empty() || cfg.key.contains_key(v))
    {
        return Err(bad(format!("`version` {v:?} must be a record field other than the key attributes")));
    }
    Ok(Box::new(DynamoSink { name: name.to_owned(), cfg, key }))
}

struct DynamoSink {
    name: String,
    cfg: DynamoConfig,
    key: Vec<(String, Pointer)>,
}

impl Sink for DynamoSink {
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
        Box::pin(run(*self, ctx))
    }
}

/// How a failed call is handled.
enum Failure {
    /// Try the same request again later.
    Retry(&'static str, String),
    /// DynamoDB refused the request as invalid.
    Invalid(String),
    /// The conditional put lost to a newer version.
    Stale,
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> Failure {
    let text = DisplayErrorContext(&e).to_string();
    match e.code() {
        Some("ConditionalCheckFailedException") => Failure::Stale,
        Some("ValidationException" | "SerializationException") => Failure::Invalid(text),
        Some("ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded") => {
            Failure::Retry("throttled", text)
        }
        Some("ResourceNotFoundException") => Failure::Retry("no_table", text),
        _ => Failure::Retry("error", text),
    }
}

struct Writer {
    name: String,
    key_names: Vec<String>,
    table: String,
    client: aws_sdk_dynamodb::Client,
    dead_letters: DeadLetters,
}

impl Writer {
    async fn backoff(&self, attempt: &mut u32, reason: &'static str, detail: &str) {
        *attempt += 1;
        counter!("sluice_dynamodb_sink_retries_total", "sink" => self.name.clone(), "reason" => reason).increment(1);
        let wait = Duration::from_millis(50u64.saturating_mul(1 << (*attempt).min(10))).min(Duration::from_secs(10));
        if reason == "no_table" {
            tracing::error!(sink = %self.name, table = %self.table, retry_in = ?wait, "table not found; retrying");
        } else {
            tracing::warn!(sink = %self.name, reason, error = detail, retry_in = ?wait, "write failed; retrying");
        }
        tokio::time::sleep(wait).await;
    }

    /// Writes one batch of distinct keys; returns the ids written and the ids rejected.
    async fn batch(&self, batch: Vec<(u64, Prepared, bytes::Bytes)>) -> (Vec<u64>, Vec<u64>) {
        let mut pending: Vec<(u64, Prepared, bytes::Bytes)> = batch;
        let mut attempt = 0;
        let mut written = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let requests: Vec<WriteRequest> = pending
                .iter()
                .filter_map(|(_, p, _)| PutRequest::builder().set_item(Some(p.item.clone())).build().ok())
                .map(|put| WriteRequest::builder().put_request(put).build())
                .collect();
            let sent = self.client.batch_write_item().request_items(&self.table, requests).send().await;
            match sent {
                Ok(out) => {
                    let unprocessed: HashSet<Vec<String>> = out
                        .unprocessed_items()
                        .and_then(|m| m.get(&self.table))
                        .into_iter()
                        .flatten()
                        .filter_map(|w| w.put_request())
                        .map(|p| key_of(p.item(), &self.key_names))
                        .collect();
                    let (left, done): (Vec<_>, Vec<_>) =
                        pending.into_iter().partition(|(_, p, _)| unprocessed.contains(&p.key));
                    written.extend(done.into_iter().map(|(id, _, _)| id));
                    pending = left;
                    if !pending.is_empty() {
                        self.backoff(&mut attempt, "unprocessed", &format!("{} unprocessed items", pending.len()))
                            .await;
                    }
                }
                Err(e) => match classify(e) {
                    Failure::Invalid(detail) => {
                        tracing::warn!(sink = %self.name, error = %detail, "batch refused as invalid; writing its items one by one");
                        let mut rejected = Vec::new();
                        for (id, p, payload) in pending {
                            match self.put(&p, None).await {
                                Ok(()) => written.push(id),
                                Err(detail) => {
                                    self.dead_letters.write("rejected", &detail, &payload);
                                    rejected.push(id);
                                }
                            }
                        }
                        return (written, rejected);
                    }
                    Failure::Retry(reason, detail) => self.backoff(&mut attempt, reason, &detail).await,
                    Failure::Stale => self.backoff(&mut attempt, "error", "unexpected condition failure").await,
                },
            }
        }
        (written, Vec::new())
    }

    /// One PutItem (conditional on `version`), retried until DynamoDB answers; `Err` carries
    /// why DynamoDB refused the item.
    async fn put(&self, p: &Prepared, version: Option<&str>) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            let mut req = self.client.put_item().table_name(&self.table).set_item(Some(p.item.clone()));
            if let (Some(field), Some(v)) = (version, &p.version) {
                req = req
                    .condition_expression("attribute_not_exists(#v) OR #v < :v")
                    .expression_attribute_names("#v", field)
                    .expression_attribute_values(":v", AttributeValue::N(v.clone()));
            }
            match req.send().await.map_err(classify) {
                Ok(_) => return Ok(()),
                Err(Failure::Stale) => {
                    counter!("sluice_dynamodb_sink_stale_total", "sink" => self.name.clone()).increment(1);
                    return Ok(());
                }
                Err(Failure::Invalid(detail)) => return Err(detail),
                Err(Failure::Retry(reason, detail)) => self.backoff(&mut attempt, reason, &detail).await,
            }
        }
    }
}

/// The key of an unprocessed item, in the form [`Prepared::key`] has.
fn key_of(item: &std::collections::HashMap<String, AttributeValue>, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| match item.get(n) {
            Some(AttributeValue::S(s)) => format!("S:{s}"),
            Some(AttributeValue::N(v)) => format!("N:{v}"),
            _ => String::new(),
        })
        .collect()
}

async fn run(sink: DynamoSink, ctx: SinkContext) -> Result<(), FlowError> {
    let DynamoSink { name, cfg, key } = sink;
    let SinkContext { mut records, acks, dead_letters, shutdown, .. } = ctx;
    let shared = crate::aws::sdk_config(&cfg.endpoint, cfg.region.clone()).await;
    let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
        .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
        .operation_timeout(cfg.request_timeout)
        .build();
    let conf = aws_sdk_dynamodb::config::Builder::from(&shared)
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    let writer = Writer {
        name: name.clone(),
        key_names: key.iter().map(|(n, _)| n.clone()).collect(),
        table: cfg.table.clone(),
        client: aws_sdk_dynamodb::Client::from_conf(conf),
        dead_letters,
    };
    let stop = crate::file::stopped(shutdown);
    tokio::pin!(stop);
    let mut batch: Vec<Record> = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            n = records.recv_many(&mut batch, 1024) => if n == 0 { return Ok(()) },
        }
        let mut usable = Vec::with_capacity(batch.len());
        let mut unusable_ids = Vec::new();
        for r in batch.drain(..) {
            match prepare(&r.payload, &key, cfg.version.as_deref()) {
                Ok(p) => usable.push((r.id, p, r.payload)),
                Err(Unusable { reason, detail }) => {
                    writer.dead_letters.write(reason, &detail, &r.payload);
                    unusable_ids.push(r.id);
                }
            }
        }
        if !unusable_ids.is_empty() {
            let _ = acks.send(Ack::DeadLettered(unusable_ids));
        }
        let (written, rejected) = tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            done = write_all(&writer, usable, cfg.version.as_deref()) => done,
        };
        counter!("sluice_dynamodb_sink_items_total", "sink" => name.clone()).increment(written.len() as u64);
        if !written.is_empty() {
            let _ = acks.send(Ack::Delivered(written));
        }
        if !rejected.is_empty() {
            let _ = acks.send(Ack::DeadLettered(rejected));
        }
    }
}

/// Writes records in order: batches of distinct keys, or conditional puts.
async fn write_all(
    w: &Writer,
    records: Vec<(u64, Prepared, bytes::Bytes)>,
    version: Option<&str>,
) -> (Vec<u64>, Vec<u64>) {
    let (mut written, mut rejected) = (Vec::new(), Vec::new());
    if let Some(field) = version {
        use futures_util::StreamExt;
        let results: Vec<_> = futures_util::stream::iter(records)
            .map(|(id, p, payload)| async move { (id, payload, w.put(&p, Some(field)).await) })
            .buffer_unordered(CONDITIONAL_IN_FLIGHT)
            .collect()
            .await;
        for (id, payload, r) in results {
            match r {
                Ok(()) => written.push(id),
                Err(detail) => {
                    w.dead_letters.write("rejected", &detail, &payload);
                    rejected.push(id);
                }
            }
        }
        return (written, rejected);
    }
    let mut batch: Vec<(u64, Prepared, bytes::Bytes)> = Vec::with_capacity(BATCH_ITEMS);
    let mut keys = HashSet::new();
    for rec in records {
        if batch.len() == BATCH_ITEMS || keys.contains(&rec.1.key) {
            let (ok, no) = w.batch(std::mem::take(&mut batch)).await;
            written.extend(ok);
            rejected.extend(no);
            keys.clear();
        }
        keys.insert(rec.1.key.clone());
        batch.push(rec);
    }
    if !batch.is_empty() {
        let (ok, no) = w.batch(batch).await;
        written.extend(ok);
        rejected.extend(no);
    }
    (written, rejected)
}
