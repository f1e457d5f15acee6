//! Load generator for Kinesis-Data-Streams-compatible servers (sluice, kinesalite, …).
//!
//! Speaks the Kinesis JSON protocol (`POST /` with `X-Amz-Target: Kinesis_20131202.<Op>`)
//! over persistent HTTP/1.1 connections, one per simulated client, and measures
//! PutRecords and GetRecords throughput, request latency (HdrHistogram) and,
//! optionally, the server's peak resident memory.
//!
//! The generator shares the machine with the server, so it is built to spend little
//! CPU: PutRecords bodies are encoded up front and reused, and GetRecords responses are
//! parsed with borrowed serde types that count records and payload bytes without
//! decoding anything. Malformed or error responses are counted, never panicked on.

mod client;
mod proto;
mod report;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Uri;
use serde::Serialize;

use client::{CallError, Headers, Kinesis, Op};

pub use report::{print_report, render_table};

/// Largest GetRecords page the Kinesis API allows; the get workload always asks for it.
const GET_LIMIT: u32 = 10_000;
/// Upper bound on memory spent on pre-encoded PutRecords bodies.
const BODY_POOL_BYTES: usize = 64 << 20;

/// Command-line options of `sluice bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the Kinesis-compatible server (must be a loopback address unless
    /// --allow-remote is given).
    #[arg(long, default_value = "http://127.0.0.1:4567")]
    pub endpoint: String,

    /// Stream to write to and read from.
    #[arg(long, default_value = "bench")]
    pub stream: String,

    /// Shard count used when --create has to create the stream.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,

    /// Concurrent clients, each with its own persistent connection. The get workload
    /// uses at most one client per shard.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,

    /// How long each workload runs: `10s`, `500ms`, `2m`, `1m 30s` (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = sluice_core::duration::parse)]
    pub duration: Duration,

    /// Which workload(s) to run; `all` runs put-500x100, put-50x1k, then get.
    #[arg(long, value_enum, default_value_t = Workload::All)]
    pub workload: Workload,

    /// Override the payload size in bytes of put workloads (and of records put to fill
    /// the stream before the get workload).
    #[arg(long)]
    pub record_size: Option<usize>,

    /// Override the records per PutRecords request of put workloads (1..=500).
    #[arg(long)]
    pub batch: Option<usize>,

    /// Create the stream (with --shards shards) if it does not exist, and wait until it
    /// is ACTIVE.
    #[arg(long)]
    pub create: bool,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// PID of the server process; its peak VmRSS during each workload is reported.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Before the get workload, put records until the stream holds at least this many.
    #[arg(long, default_value_t = 50_000)]
    pub get_min_records: u64,

    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = sluice_core::duration::parse)]
    pub timeout: Duration,

    /// Allow an endpoint that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// A workload selection for `--workload`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// PutRecords, 500 records of 100 bytes per request.
    #[value(name = "put-500x100")]
    Put500x100,
    /// PutRecords, 50 records of 1 KiB per request.
    #[value(name = "put-50x1k")]
    Put50x1k,
    /// GetRecords(Limit 10000) loops from TRIM_HORIZON, one client per shard(s).
    #[value(name = "get")]
    Get,
    /// All of the above in order.
    #[value(name = "all")]
    All,
}

/// Results of a whole `run`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The endpoint measured.
    pub endpoint: String,
    /// The stream used.
    pub stream: String,
    /// Shards the stream had.
    pub shards: usize,
    /// Requested duration per workload, in seconds.
    pub duration_secs: f64,
    /// Server PID whose RSS was sampled, if any.
    pub server_pid: Option<u32>,
    /// One entry per workload run, in order.
    pub workloads: Vec<WorkloadReport>,
}

/// Results of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// Workload name, e.g. `put-500x100` or `get`.
    pub workload: String,
    /// Clients (connections) used.
    pub clients: usize,
    /// Records per PutRecords request (put workloads).
    pub batch: Option<usize>,
    /// Payload bytes per record (put workloads).
    pub record_size: Option<usize>,
    /// Wall time from the first request to the last response, in seconds.
    pub elapsed_secs: f64,
    /// Successful (2xx, well-formed) PutRecords / GetRecords requests.
    pub requests: u64,
    /// Records acknowledged (put) or received (get).
    pub records: u64,
    /// Payload bytes of those records.
    pub payload_bytes: u64,
    /// Records a PutRecords response reported as failed (`FailedRecordCount`).
    pub failed_records: u64,
    /// Requests answered with a non-2xx status.
    pub http_errors: u64,
    /// Requests that failed to connect, send, receive or timed out.
    pub transport_errors: u64,
    /// 2xx responses whose body could not be understood.
    pub bad_responses: u64,
    /// `http_errors + transport_errors + bad_responses`.
    pub errors: u64,
    /// First error seen, for diagnosis.
    pub first_error: Option<String>,
    /// Records per second.
    pub records_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Successful requests per second.
    pub requests_per_sec: f64,
    /// Median request latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile request latency in milliseconds.
    pub p99_ms: f64,
    /// 99.9th-percentile request latency in milliseconds.
    pub p999_ms: f64,
    /// Slowest request in milliseconds.
    pub max_ms: f64,
    /// Peak server VmRSS in MiB sampled during the workload (with --server-pid).
    pub server_rss_peak_mib: Option<f64>,
}

/// Runs the selected workloads and returns their measurements.
///
/// Progress goes to stderr; nothing is printed to stdout (see [`print_report`]).
/// Errors are returned only for setup failures (bad arguments, stream missing or not
/// becoming ACTIVE, server unreachable during setup); errors during a workload are
/// counted in the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    validate(&args)?;
    let uri = parse_endpoint(&args.endpoint, args.allow_remote)?;
    let headers = Headers::new();
    let ctl = Kinesis::new(uri.clone(), headers.clone(), args.timeout);
    let shards = ensure_stream(&ctl, &args).await?;
    let ctx = Ctx { uri, headers, stream: Arc::from(args.stream.as_str()), args: args.clone() };

    let plan: &[Workload] = match args.workload {
        Workload::All => &[Workload::Put500x100, Workload::Put50x1k, Workload::Get],
        ref w => std::slice::from_ref(w),
    };
    let mut workloads = Vec::new();
    for w in plan {
        let report = match w {
            Workload::Put500x100 => {
                let (batch, size) = ctx.put_shape(500, 100);
                ctx.put_phase("put-500x100", batch, size).await?
            }
            Workload::Put50x1k => {
                let (batch, size) = ctx.put_shape(50, 1024);
                ctx.put_phase("put-50x1k", batch, size).await?
            }
            Workload::Get | Workload::All => ctx.get_phase(&ctl, &shards).await?,
        };
        eprintln!(
            "sluice-bench: {} done: {:.0} rec/s, p99 {:.2} ms, {} errors",
            report.workload, report.records_per_sec, report.p99_ms, report.errors
        );
        workloads.push(report);
    }
    Ok(BenchReport {
        endpoint: args.endpoint.clone(),
        stream: args.stream.clone(),
        shards: shards.len(),
        duration_secs: args.duration.as_secs_f64(),
        server_pid: args.server_pid,
        workloads,
    })
}

/// Runs the benchmark and prints the report (table, or JSON with `--json`) to stdout.
pub async fn run_and_print(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let json = args.json;
    let report = run(args).await?;
    print_report(&report, json)?;
    Ok(report)
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if args.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if let Some(b) = args.batch
        && !(1..=500).contains(&b)
    {
        bail!("--batch must be within 1..=500 (the PutRecords limit)");
    }
    if let Some(s) = args.record_size
        && !(1..=1 << 20).contains(&s)
    {
        bail!("--record-size must be within 1..=1048576 bytes");
    }
    let batch = args.batch.unwrap_or(500);
    let size = args.record_size.unwrap_or(1024);
    if batch * size > 5 << 20 {
        bail!("--batch x --record-size exceeds the 5 MiB PutRecords request limit");
    }
    Ok(())
}

fn parse_endpoint(endpoint: &str, allow_remote: bool) -> anyhow::Result<Uri> {
    let uri: Uri = endpoint.parse().with_context(|| format!("invalid --endpoint {endpoint:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--endpoint must be an http:// URL (got {endpoint:?})");
    }
    let host = uri.host().context("--endpoint has no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        bail!("--endpoint host {host} is not a loopback address (pass --allow-remote to insist)");
    }
    // Kinesis is served at "/"; normalise so every request targets it.
    let authority = uri.authority().context("--endpoint has no authority")?;
    Ok(Uri::builder().scheme("http").authority(authority.as_str()).path_and_query("/").build()?)
}

/// Makes sure the stream exists and is ACTIVE; returns its shard ids.
async fn ensure_stream(ctl: &Kinesis, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let name = args.stream.as_str();
    let describe = Bytes::from(serde_json::to_vec(&serde_json::json!({ "StreamName": name }))?);
    let mut created = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match ctl.call(Op::DescribeStreamSummary, describe.clone()).await {
            Ok(body) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|_| proto::bad_response("DescribeStreamSummary", &body))?;
                let summary = &v["StreamDescriptionSummary"];
                let status = summary["StreamStatus"].as_str().unwrap_or("");
                if status == "ACTIVE" {
                    if let Some(open) = summary["OpenShardCount"].as_u64()
                        && open != u64::from(args.shards)
                        && !created
                    {
                        eprintln!(
                            "sluice-bench: stream {name} exists with {open} open shards \
                             (--shards {} ignored)",
                            args.shards
                        );
                    }
                    break;
                }
                if status.is_empty() {
                    return Err(proto::bad_response("DescribeStreamSummary", &body));
                }
            }
            Err(e) if e.kind() == Some("ResourceNotFoundException") && !created => {
                if !args.create {
                    bail!("stream {name} does not exist (pass --create to create it)");
                }
                let body = serde_json::to_vec(&serde_json::json!({ "StreamName": name, "ShardCount": args.shards }))?;
                match ctl.call(Op::CreateStream, Bytes::from(body)).await {
                    Ok(_) => eprintln!("sluice-bench: created stream {name} with {} shards", args.shards),
                    // Someone else created it meanwhile: fine.
                    Err(e) if e.kind() == Some("ResourceInUseException") => {}
                    Err(e) => return Err(e).context("CreateStream failed"),
                }
                created = true;
            }
            Err(e) if e.kind() == Some("ResourceNotFoundException") => {}
            Err(e) => {
                return Err(e).with_context(|| format!("DescribeStreamSummary of {name} at {} failed", args.endpoint));
            }
        }
        if Instant::now() > deadline {
            bail!("stream {name} did not become ACTIVE within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    list_shards(ctl, name).await
}

async fn list_shards(ctl: &Kinesis, name: &str) -> anyhow::Result<Vec<String>> {
    let mut shards = Vec::new();
    let mut req = serde_json::json!({ "StreamName": name });
    loop {
        let body =
            ctl.call(Op::ListShards, Bytes::from(serde_json::to_vec(&req)?)).await.context("ListShards failed")?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| proto::bad_response("ListShards", &body))?;
        let page = v["Shards"].as_array().ok_or_else(|| proto::bad_response("ListShards", &body))?;
        for s in page {
            let id = s["ShardId"].as_str().ok_or_else(|| proto::bad_response("ListShards", &body))?;
            shards.push(id.to_string());
        }
        match v["NextToken"].as_str() {
            Some(tok) if !page.is_empty() => req = serde_json::json!({ "NextToken": tok }),
            _ => break,
        }
    }
    if shards.is_empty() {
        bail!("stream {name} has no shards");
    }
    Ok(shards)
}

/// Everything the phases share.
struct Ctx {
    uri: Uri,
    headers: Headers,
    stream: Arc<str>,
    args: BenchArgs,
}

impl Ctx {
    fn client(&self) -> Kinesis {
        Kinesis::new(self.uri.clone(), self.headers.clone(), self.args.timeout)
    }

    fn put_shape(&self, batch: usize, size: usize) -> (usize, usize) {
        (self.args.batch.unwrap_or(batch), self.args.record_size.unwrap_or(size))
    }

    /// Pre-encodes a pool of distinct PutRecords bodies.
    fn bodies(&self, batch: usize, size: usize) -> anyhow::Result<Arc<Vec<Bytes>>> {
        let approx = batch * (size * 4 / 3 + 64) + 64;
        let n = (BODY_POOL_BYTES / approx).clamp(2, 16);
        let bodies =
            (0..n).map(|_| proto::put_records_body(&self.stream, batch, size)).collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(bodies))
    }

    async fn put_phase(&self, name: &str, batch: usize, size: usize) -> anyhow::Result<WorkloadReport> {
        eprintln!(
            "sluice-bench: {name}: {} clients x PutRecords({batch} x {size} B) for {:.1}s",
            self.args.clients,
            self.args.duration.as_secs_f64()
        );
        let bodies = self.bodies(batch, size)?;
        let rss = RssSampler::start(self.args.server_pid);
        let (stats, elapsed) = self.run_puts(&bodies, batch, size, self.args.duration, None).await?;
        let rss = rss.finish().await;
        Ok(stats.report(name, self.args.clients, Some(batch), Some(size), elapsed, rss))
    }

    async fn run_puts(
        &self,
        bodies: &Arc<Vec<Bytes>>,
        batch: usize,
        size: usize,
        duration: Duration,
        budget: Option<Arc<AtomicI64>>,
    ) -> anyhow::Result<(Stats, Duration)> {
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::with_capacity(self.args.clients);
        for i in 0..self.args.clients {
            let w = PutWorker {
                k: self.client(),
                bodies: bodies.clone(),
                next: i * bodies.len() / self.args.clients,
                batch: batch as u64,
                size: size as u64,
                deadline,
                budget: budget.clone(),
                stats: Stats::new()?,
            };
            tasks.push(tokio::spawn(w.run()));
        }
        let stats = join_all(tasks).await?;
        Ok((stats, start.elapsed()))
    }

    async fn get_phase(&self, ctl: &Kinesis, shards: &[String]) -> anyhow::Result<WorkloadReport> {
        self.ensure_data(ctl, shards).await?;
        let clients = self.args.clients.min(shards.len());
        eprintln!(
            "sluice-bench: get: {clients} clients x GetRecords(Limit {GET_LIMIT}) over {} shards for {:.1}s",
            shards.len(),
            self.args.duration.as_secs_f64()
        );
        let rss = RssSampler::start(self.args.server_pid);
        let start = Instant::now();
        let deadline = start + self.args.duration;
        let mut tasks = Vec::with_capacity(clients);
        for c in 0..clients {
            let owned: Vec<String> = shards.iter().skip(c).step_by(clients).cloned().collect();
            let w = GetWorker {
                k: self.client(),
                stream: self.stream.clone(),
                shards: owned,
                deadline,
                stats: Stats::new()?,
            };
            tasks.push(tokio::spawn(w.run()));
        }
        let stats = join_all(tasks).await?;
        let elapsed = start.elapsed();
        let rss = rss.finish().await;
        Ok(stats.report("get", clients, None, None, elapsed, rss))
    }

    /// Puts records until the stream holds at least `--get-min-records`.
    async fn ensure_data(&self, ctl: &Kinesis, shards: &[String]) -> anyhow::Result<()> {
        let want = self.args.get_min_records;
        let have = count_records(ctl, &self.stream, shards, want).await?;
        if have >= want {
            return Ok(());
        }
        let (batch, size) = self.put_shape(500, 100);
        let missing = want - have;
        eprintln!("sluice-bench: get: stream holds {have} records, putting {missing} more");
        let bodies = self.bodies(batch, size)?;
        let budget = Arc::new(AtomicI64::new(i64::try_from(missing).unwrap_or(i64::MAX)));
        let (stats, _) = self.run_puts(&bodies, batch, size, Duration::from_secs(300), Some(budget)).await?;
        if stats.records < missing {
            bail!(
                "could not fill the stream for the get workload: {} of {missing} records acked{}",
                stats.records,
                stats.first_error.map(|e| format!(" (first error: {e})")).unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// Counts records from TRIM_HORIZON across shards, stopping once `want` are seen.
async fn count_records(k: &Kinesis, stream: &str, shards: &[String], want: u64) -> anyhow::Result<u64> {
    let mut total = 0;
    for shard in shards {
        let body = k
            .call(Op::GetShardIterator, proto::trim_horizon_body(stream, shard)?)
            .await
            .context("GetShardIterator failed")?;
        let mut it =
            proto::parse_shard_iterator(&body).ok_or_else(|| proto::bad_response("GetShardIterator", &body))?;
        loop {
            let body =
                k.call(Op::GetRecords, proto::get_records_body(&it, GET_LIMIT)?).await.context("GetRecords failed")?;
            let out = proto::parse_get_records(&body).ok_or_else(|| proto::bad_response("GetRecords", &body))?;
            total += out.records;
            match out.next {
                Some(next) if out.records > 0 && total < want => it = next,
                _ => break,
            }
        }
        if total >= want {
            break;
        }
    }
    Ok(total)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Stats>>) -> anyhow::Result<Stats> {
    let mut total = Stats::new()?;
    for t in tasks {
        let s = t.await.context("benchmark client task failed")?;
        total.merge(s)?;
    }
    Ok(total)
}

/// Counters of one client (or, merged, of a workload).
struct Stats {
    requests: u64,
    records: u64,
    bytes: u64,
    failed_records: u64,
    http_errors: u64,
    transport_errors: u64,
    bad_responses: u64,
    first_error: Option<String>,
    /// Latency of successful requests in microseconds.
    hist: Histogram<u64>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            requests: 0,
            records: 0,
            bytes: 0,
            failed_records: 0,
            http_errors: 0,
            transport_errors: 0,
            bad_responses: 0,
            first_error: None,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }

    fn latency(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    /// Counts a failed call; returns true if the caller should back off briefly.
    fn call_error(&mut self, op: Op, e: CallError) -> bool {
        let backoff = match e {
            CallError::Status { .. } => {
                self.http_errors += 1;
                false
            }
            CallError::Transport(_) | CallError::Timeout => {
                self.transport_errors += 1;
                true
            }
        };
        if self.first_error.is_none() {
            self.first_error = Some(format!("{op:?}: {e}"));
        }
        backoff
    }

    fn bad_response(&mut self, op: Op, body: &[u8]) {
        self.bad_responses += 1;
        if self.first_error.is_none() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            self.first_error = Some(format!("{op:?}: unexpected response: {text}"));
        }
    }

    fn merge(&mut self, o: Stats) -> anyhow::Result<()> {
        self.requests += o.requests;
        self.records += o.records;
        self.bytes += o.bytes;
        self.failed_records += o.failed_records;
        self.http_errors += o.http_errors;
        self.transport_errors += o.transport_errors;
        self.bad_responses += o.bad_responses;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.hist.add(&o.hist)?;
        Ok(())
    }

    fn report(
        self,
        name: &str,
        clients: usize,
        batch: Option<usize>,
        record_size: Option<usize>,
        elapsed: Duration,
        server_rss_peak_mib: Option<f64>,
    ) -> WorkloadReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| {
            if self.hist.is_empty() { 0.0 } else { self.hist.value_at_quantile(q) as f64 / 1000.0 }
        };
        WorkloadReport {
            workload: name.to_string(),
            clients,
            batch,
            record_size,
            elapsed_secs: secs,
            requests: self.requests,
            records: self.records,
            payload_bytes: self.bytes,
            failed_records: self.failed_records,
            http_errors: self.http_errors,
            transport_errors: self.transport_errors,
            bad_responses: self.bad_responses,
            errors: self.http_errors + self.transport_errors + self.bad_responses,
            first_error: self.first_error.clone(),
            records_per_sec: self.records as f64 / secs,
            mb_per_sec: self.bytes as f64 / secs / 1e6,
            requests_per_sec: self.requests as f64 / secs,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if self.hist.is_empty() { 0.0 } else { self.hist.max() as f64 / 1000.0 },
            server_rss_peak_mib,
        }
    }
}

/// One PutRecords client.
struct PutWorker {
    k: Kinesis,
    bodies: Arc<Vec<Bytes>>,
    next: usize,
    batch: u64,
    size: u64,
    deadline: Instant,
    /// Records still to put (fill mode); `None` runs until the deadline.
    budget: Option<Arc<AtomicI64>>,
    stats: Stats,
}

impl PutWorker {
    async fn run(mut self) -> Stats {
        let batch_i = i64::try_from(self.batch).unwrap_or(i64::MAX);
        while Instant::now() < self.deadline {
            if let Some(b) = &self.budget
                && b.fetch_sub(batch_i, Ordering::Relaxed) <= 0
            {
                break;
            }
            let body = self.bodies[self.next % self.bodies.len()].clone();
            self.next = self.next.wrapping_add(1);
            let t0 = Instant::now();
            let result = self.k.call(Op::PutRecords, body).await;
            let elapsed = t0.elapsed();
            let mut acked = 0;
            match result {
                Ok(resp) => match proto::parse_put_records(&resp) {
                    Some(o) if o.entries == self.batch && o.failed <= self.batch => {
                        self.stats.requests += 1;
                        self.stats.latency(elapsed);
                        acked = self.batch - o.failed;
                        self.stats.records += acked;
                        self.stats.bytes += acked * self.size;
                        self.stats.failed_records += o.failed;
                    }
                    _ => self.stats.bad_response(Op::PutRecords, &resp),
                },
                Err(e) => {
                    if self.stats.call_error(Op::PutRecords, e) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            if let Some(b) = &self.budget {
                // Give back what was not stored so fill mode puts exactly enough.
                let unstored = i64::try_from(self.batch - acked).unwrap_or(0);
                b.fetch_add(unstored, Ordering::Relaxed);
            }
        }
        self.stats
    }
}

/// One GetRecords client, owning one or more shards.
struct GetWorker {
    k: Kinesis,
    stream: Arc<str>,
    shards: Vec<String>,
    deadline: Instant,
    stats: Stats,
}

impl GetWorker {
    async fn run(mut self) -> Stats {
        let mut iters: Vec<Option<String>> = vec![None; self.shards.len()];
        let mut turn = 0usize;
        while Instant::now() < self.deadline && !self.shards.is_empty() {
            let s = turn % self.shards.len();
            turn = turn.wrapping_add(1);
            let it = match iters[s].take() {
                Some(it) => it,
                None => match self.trim_horizon(s).await {
                    Some(it) => it,
                    None => continue,
                },
            };
            let Ok(body) = proto::get_records_body(&it, GET_LIMIT) else {
                continue;
            };
            let t0 = Instant::now();
            let result = self.k.call(Op::GetRecords, body).await;
            let elapsed = t0.elapsed();
            match result {
                Ok(resp) => match proto::parse_get_records(&resp) {
                    Some(o) => {
                        self.stats.requests += 1;
                        self.stats.latency(elapsed);
                        self.stats.records += o.records;
                        self.stats.bytes += o.payload_bytes;
                        // At the tip (nothing new) or shard closed: restart from TRIM_HORIZON.
                        if o.records > 0 {
                            iters[s] = o.next;
                        }
                    }
                    None => self.stats.bad_response(Op::GetRecords, &resp),
                },
                Err(e) => {
                    if self.stats.call_error(Op::GetRecords, e) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        self.stats
    }

    async fn trim_horizon(&mut self, s: usize) -> Option<String> {
        let body = proto::trim_horizon_body(&self.stream, &self.shards[s]).ok()?;
        match self.k.call(Op::GetShardIterator, body).await {
            Ok(resp) => {
                let it = proto::parse_shard_iterator(&resp);
                if it.is_none() {
                    self.stats.bad_response(Op::GetShardIterator, &resp);
                }
                it
            }
            Err(e) => {
                if self.stats.call_error(Op::GetShardIterator, e) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None
            }
        }
    }
}

/// Samples a process's VmRSS every 100 ms and keeps the peak.
struct RssSampler {
    inner: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Option<u64>>)>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let Some(pid) = pid else {
            return RssSampler { inner: None };
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let path = format!("/proc/{pid}/status");
            let mut peak: Option<u64> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                if let Some(kb) = read_vm_rss_kib(&path) {
                    peak = Some(peak.map_or(kb, |p| p.max(kb)));
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut rx => break,
                }
            }
            if let Some(kb) = read_vm_rss_kib(&path) {
                peak = Some(peak.map_or(kb, |p| p.max(kb)));
            }
            peak
        });
        RssSampler { inner: Some((tx, handle)) }
    }

    /// Stops sampling; the peak in MiB, if the process could be read.
    async fn finish(self) -> Option<f64> {
        let (tx, handle) = self.inner?;
        let _ = tx.send(());
        let kib = handle.await.ok().flatten();
        if kib.is_none() {
            eprintln!("sluice-bench: warning: could not read VmRSS of the server process");
        }
        kib.map(|k| k as f64 / 1024.0)
    }
}

fn read_vm_rss_kib(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    parse_vm_rss_kib(&status)
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn duration_flags_use_the_core_grammar() {
        let cli = Cli::try_parse_from(["x", "--duration", "1m 30s", "--timeout", "2.5"]).unwrap();
        assert_eq!(cli.args.duration, Duration::from_secs(90));
        assert_eq!(cli.args.timeout, Duration::from_millis(2500));
        let err = Cli::try_parse_from(["x", "--duration", "soon"]).err().unwrap().to_string();
        assert!(err.contains(r#"invalid duration "soon""#), "{err}");
    }

    #[test]
    fn args_defaults_and_workloads() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.args.endpoint, "http://127.0.0.1:4567");
        assert_eq!(cli.args.clients, 8);
        assert_eq!(cli.args.shards, 4);
        assert_eq!(cli.args.workload, Workload::All);
        assert_eq!(cli.args.duration, Duration::from_secs(10));
        let cli = Cli::try_parse_from(["x", "--workload", "put-50x1k", "--duration", "3s"]).unwrap();
        assert_eq!(cli.args.workload, Workload::Put50x1k);
        assert_eq!(cli.args.duration, Duration::from_secs(3));
        assert!(Cli::try_parse_from(["x", "--workload", "nope"]).is_err());
    }

    #[test]
    fn endpoints() {
        let u = parse_endpoint("http://127.0.0.1:4567", false).unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:4567/");
        assert!(parse_endpoint("http://localhost:1/x", false).is_ok());
        assert!(parse_endpoint("http://[::1]:1", false).is_ok());
        assert!(parse_endpoint("http://10.0.0.1:1", false).is_err());
        assert!(parse_endpoint("http://10.0.0.1:1", true).is_ok());
        assert!(parse_endpoint("https://127.0.0.1:1", false).is_err());
    }

    #[test]
    fn vm_rss() {
        let s = "Name:\tnode\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss_kib(s), Some(12345));
        assert_eq!(parse_vm_rss_kib("garbage"), None);
        let own = format!("/proc/{}/status", std::process::id());
        assert!(read_vm_rss_kib(&own).is_some_and(|k| k > 0));
    }

    #[test]
    fn validation() {
        let mut a = Cli::try_parse_from(["x"]).unwrap().args;
        assert!(validate(&a).is_ok());
        a.batch = Some(501);
        assert!(validate(&a).is_err());
        a.batch = Some(500);
        a.record_size = Some(20_000);
        assert!(validate(&a).is_err());
    }
}
