//! The handler sink: invokes a function the way AWS Lambda's Kinesis event source does, with
//! Lambda's event, batching, retries, bisection, partial batch responses, on-failure records,
//! parallelization and tumbling windows.
//!
//! A record flows: the router puts it on its shard's lane (`parallelization_factor` lanes per
//! shard, chosen by partition key) → the lane gathers a batch of that shard (up to
//! `batch_size` records, 6 MB, `maximum_batching_window`, one tumbling window) → `work_batch`
//! invokes the function until every record of the batch is settled ([`retry`] decides what is
//! invoked next) → acknowledgements. A lane starts its next batch only when the previous one is
//! settled, so a shard never advances past a failing record unless the options say so
//! (`maximum_retry_attempts`, `maximum_record_age`).
//!
//! Shards are independent while their queues have room: each lane queues up to 4 × `batch_size`
//! (at least 1,024) records; when a stuck lane's queue is full, the router waits, and so does
//! the input (memory stays bounded; the spool keeps the rest).
//!
//! **The event** is Lambda's Kinesis event, one shard per batch:
//! `{"Records":[{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey","sequenceNumber",
//! "data" (base64),"approximateArrivalTimestamp" (epoch seconds, fractional)},"eventSource":
//! "aws:kinesis","eventVersion":"1.0","eventID":"<shardId>:<sequenceNumber>","eventName":
//! "aws:kinesis:record","invokeIdentityArn","awsRegion","eventSourceARN"}]}`, with `window`
//! `{start,end}`, `state`, `shardId`, `eventSourceARN`, `isFinalInvokeForWindow` and
//! `isWindowTerminatedEarly` added when tumbling windows are on. Records read by a `kinesis`
//! source carry their stream's fields (de-aggregated KPL user records share their aggregate's
//! sequence number, as in the stream). Records without an origin (websocket, SSE, HTTP sources)
//! form one pseudo-shard `shardId-local` of a stream named after the sink: sequence number = the
//! spool record id (increasing), partition key `local` (one key: they stay in spool order at any
//! parallelization), arrival = when the source received them.
//!
//! **The process protocol** (`command`): each process of the pool reads one event per line on
//! stdin (compact JSON, one line) and writes exactly one answer line on stdout before reading
//! the next: `{"result": <what the function returns>}`, or `{"error": <anything>}` when the
//! function raised (a function error; the process stays). stdout is reserved for answers;
//! anything written to stderr is logged by sluice, line by line. A process that exits, answers
//! something else, or does not answer within `timeout` is a function error, and is killed and
//! replaced (a fresh process has 10 s more for its first answer, its start-up). Processes
//! get EOF on stdin when the sink stops. A minimal Python handler:
//!
//! ```text
//! import json, sys
//! for line in sys.stdin:
//!     event = json.loads(line)
//!     try:
//!         out = {"result": handle(event)}
//!     except Exception as e:
//!         out = {"error": {"errorType": type(e).__name__, "errorMessage": str(e)}}
//!     print(json.dumps(out), flush=True)
//! ```
//!
//! **HTTP** (`url`): the event is POSTed as `application/json`; a 2xx answer's body is the
//! result (empty: `null`), any other status is a function error.
//!
//! **Answers.** Without `function_response_types`, any result is success. With
//! `["ReportBatchItemFailures"]`, `{"batchItemFailures":[{"itemIdentifier":"<seq>"}]}` marks
//! failed records: the records before the lowest failed sequence number (the earliest failed
//! record of the batch) are done and the rest is retried (one retry used); an empty or null list, `null` or `{}` is success; anything else
//! (not an object, an entry without a known `itemIdentifier`) fails the whole batch. With
//! tumbling windows the answer must carry `state` (else a function error); it is handed to the
//! next invocation of that shard and window.
//!
//! **Failures.** A function error retries the batch after a backoff (100 ms doubling, at most
//! 10 s); with `bisect_batch_on_function_error` a failing batch of several records is split in
//! halves instead, front half first, without using up a retry. Records that ran out of retries
//! or grew older than `maximum_record_age` go to `destination_on_failure` as one Lambda
//! on-failure record per failed range (`requestContext`, `responseContext`, `version`,
//! `timestamp`, `KinesisBatchInfo`; no data), and their payloads to the pipeline's dead-letter
//! file (reasons `retry_attempts_exhausted`, `record_age_exceeded`); then they are acknowledged
//! as dead-lettered. Delivery is at least once: records invoked when the pipeline stops are
//! invoked again after a restart, and window state is kept in memory only.
//!
//! **Transformation** (`transform = true`, Firehose's record transformation): the function gets
//! Firehose's event, `{"invocationId","deliveryStreamArn","region","sourceKinesisStreamArn"
//! (records from a stream),"records":[{"recordId","approximateArrivalTimestamp" (epoch ms),
//! "data" (base64),"kinesisRecordMetadata":{"shardId","partitionKey","approximateArrivalTimestamp",
//! "sequenceNumber","subsequenceNumber"} (from a stream)}]}`, and must answer
//! `{"records":[{"recordId","result","data"}]}` naming every record of the event once, with
//! `result` `Ok` (`data`, base64, is the transformed record), `Dropped` or `ProcessingFailed`;
//! anything else is a function error (the batch is retried per the options, as Firehose
//! treats a malformed answer). `Ok` records become events of this sink's output, spooled under
//! the sink's name (keeping the input's origin and receive time) before the inputs are
//! acknowledged, so a crash never loses a transformed record (one may be produced twice).
//! `Dropped` records are acknowledged and counted; `ProcessingFailed` ones go to the
//! dead-letter file (reason `processing_failed`) and are acknowledged as dead-lettered.
//!
//! **Windows** (see [`window`]): fixed windows of the arrival time; a final invocation per
//! window and shard with no records and the last state, when a later window's record comes,
//! the input ends, or when 1 s passed both since the window's end and since the lane's last
//! record.
//!
//! Metrics (label `sink`): `sluice_handler_invocations_total`, `_errors_total{kind}` (`raised`,
//! `timeout`, `crashed`, `invalid_response`, `final_invoke`), `_retries_total`,
//! `_bisections_total`, `_on_failure_records_total`, `_records_total{outcome}` (`delivered`,
//! `dead_lettered`), `_final_invocations_total`, `_final_invocations_failed_total`,
//! `_processes_started_total`, histogram `sluice_handler_invocation_seconds`.

use std::path::Path;
use std::sync::Arc;

use sluice_flow::{BoxFuture, FlowError, Sink, SinkContext};
use tokio::sync::Semaphore;

mod config;
pub mod event;
mod function;
mod on_failure;
pub mod retry;
mod sink;
pub mod window;

pub use config::{FunctionResponseType, HandlerConfig};
pub use function::FunctionError;

use event::Identity;
use function::{Function, ProcessPool};
use on_failure::{Destination, FailureFile};

/// Checks the config and builds the sink. Relative `working_dir` and `destination_on_failure`
/// paths are taken relative to `data_dir`.
pub fn build(name: &str, config: HandlerConfig, data_dir: &Path) -> Result<Box<dyn Sink>, FlowError> {
    config.validate().map_err(|m| crate::config_error(name, m))?;
    let function = match (&config.command, &config.url) {
        (Some(command), _) => {
            let working_dir = config.working_dir.as_ref().map(|d| data_dir.join(d));
            Function::Processes(ProcessPool::new(name, command.clone(), working_dir, config.concurrency))
        }
        (None, Some(url)) => {
            let client = reqwest::Client::builder()
                .timeout(config.timeout)
                .build()
                .map_err(|e| crate::config_error(name, format!("cannot build an HTTP client: {e}")))?;
            Function::Http { client, url: url.clone(), permits: Semaphore::new(config.concurrency) }
        }
        (None, None) => return Err(crate::config_error(name, "exactly one of `command` and `url` is required")),
    };
    let id = Identity {
        sink: name.to_owned(),
        region: config.aws_region.clone(),
        invoke_identity_arn: config.invoke_identity_arn.clone(),
        function_arn: config
            .function_arn
            .clone()
            .unwrap_or_else(|| event::default_function_arn(&config.aws_region, name)),
    };
    let failures = match (config.failure_sink(), &config.destination_on_failure) {
        (Some(_), _) => Some(Destination::Output),
        (None, Some(path)) => Some(Destination::File(FailureFile::new(data_dir.join(path)))),
        (None, None) => None,
    };
    Ok(Box::new(HandlerSink { name: name.to_owned(), config, function: Arc::new(function), id, failures }))
}

struct HandlerSink {
    name: String,
    config: HandlerConfig,
    function: Arc<Function>,
    id: Identity,
    failures: Option<Destination>,
}

impl Sink for HandlerSink {
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
        let HandlerSink { name, config, function, id, failures } = *self;
        let shared = sink::Shared {
            name,
            cfg: config,
            function,
            id,
            failures,
            acks: ctx.acks.clone(),
            dead_letters: ctx.dead_letters.clone(),
            output: ctx.output.clone(),
        };
        Box::pin(sink::run(shared, ctx))
    }
}
