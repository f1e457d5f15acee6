//! The handler sink against real Python handler processes (standard library only): the event's
//! fields, bisection of a poison record, partial batch responses, parallelization with per-key
//! order, tumbling windows, crashes and timeouts, record age.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_flow::{Ack, DeadLetters, Origin, Record, SinkContext};
use tokio::sync::{mpsc, watch};

/// The JSON-lines protocol loop every test handler shares; each test adds `handle(event)`.
/// `LOG` (argv[1]) gets one JSON line per invocation, written by the handler itself.
const PRELUDE: &str = r#"
import base64, json, os, sys, time
LOG = sys.argv[1]
def log(entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
def main(handle):
    for line in sys.stdin:
        event = json.loads(line)
        try:
            out = {"result": handle(event)}
        except Exception as e:
            out = {"error": {"errorType": type(e).__name__, "errorMessage": str(e)}}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
def payloads(event):
    return [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
def seqs(event):
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
"#;

struct Fixture {
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Fixture {
    /// A temp dir with `handler.py` = prelude + `body` (which must call `main(handle)`).
    fn new(body: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("handler.py"), format!("{PRELUDE}\n{body}\n")).expect("write handler");
        let log = dir.path().join("calls.ndjson");
        Fixture { dir, log }
    }

    /// A sink config: the handler command plus `extra` TOML lines.
    fn config(&self, extra: &str) -> String {
        format!(
            "command = [\"python3\", {:?}, {:?}]\n{extra}\n",
            self.dir.path().join("handler.py").display().to_string(),
            self.log.display().to_string()
        )
    }

    /// The handler's log lines.
    fn calls(&self) -> Vec<Value> {
        read_ndjson(&self.log)
    }
}

fn read_ndjson(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect(),
        Err(_) => Vec::new(),
    }
}

/// A record read from `shard` of stream `race` with sequence number `seq`.
fn stream_record(id: u64, shard: u32, seq: &str, key: &str, arrival_ms: u64, payload: Value) -> Record {
    Record {
        id,
        payload: payload.to_string().into(),
        received_ms: arrival_ms + 5,
        origin: Some(Arc::new(Origin {
            stream: "race".into(),
            stream_arn: Some("arn:aws:kinesis:us-east-1:123456789012:stream/race".into()),
            shard_id: format!("shardId-{shard:012}"),
            sequence_number: seq.into(),
            sub_sequence_number: 0,
            aggregated: false,
            partition_key: key.into(),
            explicit_hash_key: None,
            arrival_ms,
        })),
    }
}

/// A Kinesis-like 56-digit sequence number, increasing with `n`.
fn seq(n: u64) -> String {
    format!("4959033827149025660855969253836157109592157598913{n:07}")
}

struct Outcome {
    delivered: Vec<u64>,
    dead: Vec<u64>,
    elapsed: Duration,
}

/// Builds the sink through the registry, feeds it every record (then closes its input), and
/// waits until it has finished.
async fn run_sink(name: &str, config: &str, records: Vec<Record>, data_dir: &Path) -> Outcome {
    let table: toml::Table = toml::from_str(config).expect("toml");
    let sink = sluice_sinks::build("handler", name, table, &sluice_sinks::BuildEnv::new(data_dir)).expect("build");
    let (tx, rx) = mpsc::channel(records.len().max(1));
    for r in records {
        tx.try_send(r).expect("room for every record");
    }
    drop(tx);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let ctx = SinkContext {
        name: name.to_owned(),
        records: rx,
        acks: ack_tx,
        dead_letters: DeadLetters::new(data_dir, name),
        shutdown: stop_rx,
        output: None,
    };
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), sink.run(ctx))
        .await
        .expect("sink finished in time")
        .expect("sink ran");
    let elapsed = started.elapsed();
    let mut out = Outcome { delivered: Vec::new(), dead: Vec::new(), elapsed };
    while let Ok(a) = ack_rx.try_recv() {
        match a {
            Ack::Delivered(ids) => out.delivered.extend(ids),
            Ack::DeadLettered(ids) => out.dead.extend(ids),
        }
    }
    out.delivered.sort_unstable();
    out.dead.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_has_every_documented_lambda_field() {
    let fx = Fixture::new(
        r#"
RECORD_KEYS = {"kinesis", "eventSource", "eventVersion", "eventID", "eventName", "invokeIdentityArn", "awsRegion", "eventSourceARN"}
KINESIS_KEYS = {"kinesisSchemaVersion", "partitionKey", "sequenceNumber", "data", "approximateArrivalTimestamp"}
def handle(event):
    problems = []
    if set(event) != {"Records"}:
        problems.append("event keys %s" % sorted(event))
    shards = set()
    for r in event["Records"]:
        k = r["kinesis"]
        if set(r) != RECORD_KEYS: problems.append("record keys %s" % sorted(r))
        if set(k) != KINESIS_KEYS: problems.append("kinesis keys %s" % sorted(k))
        if (r["eventSource"], r["eventVersion"], r["eventName"], k["kinesisSchemaVersion"]) != ("aws:kinesis", "1.0", "aws:kinesis:record", "1.0"):
            problems.append("constants %s" % r)
        shard = r["eventID"].split(":")[0]
        shards.add(shard)
        if r["eventID"] != shard + ":" + k["sequenceNumber"]: problems.append("eventID %s" % r["eventID"])
        if not shard.startswith("shardId-"): problems.append("shard %s" % shard)
        if not isinstance(k["approximateArrivalTimestamp"], float): problems.append("arrival not a float")
        if not r["eventSourceARN"].startswith("arn:aws:kinesis:"): problems.append("arn %s" % r["eventSourceARN"])
        if r["awsRegion"] != "eu-west-1" or not r["invokeIdentityArn"].startswith("arn:aws:iam::"): problems.append("identity")
        p = json.loads(base64.b64decode(k["data"], validate=True))
        if p["key"] != k["partitionKey"] or abs(p["arrival"] / 1000.0 - k["approximateArrivalTimestamp"]) > 1e-6:
            problems.append("payload %s vs %s" % (p, k))
    log({"problems": problems, "shards": sorted(shards), "ids": [p["id"] for p in payloads(event)]})
    return None
main(handle)
"#,
    );
    let base = sluice_flow::now_ms() - 10_000;
    let mut records: Vec<Record> = (0..250u64)
        .map(|i| {
            let shard = (i % 2) as u32;
            let key = format!("k{}", i % 7);
            let p = serde_json::json!({"id": i, "key": key, "arrival": base + i});
            stream_record(i, shard, &seq(i), &key, base + i, p)
        })
        .collect();
    // Records of a websocket source: no origin, their own pseudo-shard.
    for i in 250..300u64 {
        let p = serde_json::json!({"id": i, "key": "local", "arrival": base + i});
        records.push(Record { id: i, payload: p.to_string().into(), received_ms: base + i, origin: None });
    }
    let out =
        run_sink("fields", &fx.config("batch_size = 100\naws_region = \"eu-west-1\""), records, fx.dir.path()).await;
    assert_eq!(out.delivered, (0..300).collect::<Vec<_>>());
    assert!(out.dead.is_empty());
    let calls = fx.calls();
    let problems: Vec<&Value> = calls.iter().flat_map(|c| c["problems"].as_array().expect("list")).collect();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(calls.iter().all(|c| c["shards"].as_array().is_some_and(|s| s.len() == 1)), "one shard per batch");
    let mut seen: Vec<u64> =
        calls.iter().flat_map(|c| c["ids"].as_array().expect("ids").iter().filter_map(Value::as_u64)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..300).collect::<Vec<_>>(), "every record invoked exactly once");
    let shards: BTreeSet<&str> = calls.iter().filter_map(|c| c["shards"][0].as_str()).collect();
    assert_eq!(shards, BTreeSet::from(["shardId-000000000000", "shardId-000000000001", "shardId-local"]));
    eprintln!("event fields: {} invocations, 300 records, 0 problems, shards {shards:?}", calls.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisection_isolates_a_poison_record_and_sends_it_to_the_on_failure_file() {
    common::install_metrics();
    let fx = Fixture::new(
        r#"
def handle(event):
    ps = payloads(event)
    poisoned = any(p.get("poison") for p in ps)
    log({"seqs": seqs(event), "ok": not poisoned})
    if poisoned:
        raise ValueError("poison record")
    return {}
main(handle)
"#,
    );
    let n = 16u64;
    let poison = 11u64;
    let base = sluice_flow::now_ms() - 1_000;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            stream_record(i, 3, &seq(i), &format!("k{i}"), base + i, serde_json::json!({"i": i, "poison": i == poison}))
        })
        .collect();
    let cfg = fx.config(
        "batch_size = 16\nmaximum_batching_window = \"5s\"\nbisect_batch_on_function_error = true\nmaximum_retry_attempts = 0\ndestination_on_failure = \"failures/on-failure.ndjson\"",
    );
    let out = run_sink("bisect", &cfg, records, fx.dir.path()).await;
    assert_eq!(out.dead, vec![poison]);
    assert_eq!(out.delivered, (0..n).filter(|i| *i != poison).collect::<Vec<_>>());

    let calls = fx.calls();
    let poison_seq = seq(poison);
    let with_poison =
        calls.iter().filter(|c| c["seqs"].as_array().is_some_and(|s| s.iter().any(|x| x == &poison_seq))).count();
    let log2 = (n as f64).log2().ceil() as usize;
    assert_eq!(with_poison, log2 + 1, "isolated in ⌈log2(16)⌉+1 invocations: {calls:?}");
    assert_eq!(calls[0]["seqs"].as_array().map(Vec::len), Some(16), "the first invocation had the whole batch");
    // Every other record was in exactly one successful invocation.
    let mut ok: Vec<&str> = calls
        .iter()
        .filter(|c| c["ok"] == true)
        .flat_map(|c| c["seqs"].as_array().expect("seqs").iter().filter_map(Value::as_str))
        .collect();
    ok.sort_unstable();
    let mut want: Vec<String> = (0..n).filter(|i| *i != poison).map(seq).collect();
    want.sort_unstable();
    assert_eq!(ok, want.iter().map(String::as_str).collect::<Vec<_>>());

    let failures = read_ndjson(&fx.dir.path().join("failures/on-failure.ndjson"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = &failures[0];
    let info = &f["KinesisBatchInfo"];
    assert_eq!(info["shardId"], "shardId-000000000003");
    assert_eq!(
        (info["startSequenceNumber"].as_str(), info["endSequenceNumber"].as_str()),
        (Some(&*poison_seq), Some(&*poison_seq))
    );
    assert_eq!(info["batchSize"], 1);
    assert_eq!(info["streamArn"], "arn:aws:kinesis:us-east-1:123456789012:stream/race");
    assert!(info["approximateArrivalOfFirstRecord"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24));
    assert_eq!(f["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(f["requestContext"]["approximateInvokeCount"], (log2 + 1) as u64);
    assert_eq!(f["responseContext"]["functionError"], "Unhandled");
    assert_eq!(f["version"], "1.0");
    assert!(f["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(read_ndjson(&fx.dir.path().join("bisect.ndjson")).len(), 1, "the payload is in the dead-letter file");
    assert_eq!(common::counter("sluice_handler_bisections_total", "bisect"), log2 as u64);
    assert_eq!(common::counter("sluice_handler_on_failure_records_total", "bisect"), 1);
    assert_eq!(common::counter("sluice_handler_invocations_total", "bisect"), calls.len() as u64);
    eprintln!(
        "bisect: {} invocations, {with_poison} with the poison record, 15 delivered, 1 on-failure record",
        calls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_item_failures_retry_from_the_lowest_failed_sequence_number() {
    common::install_metrics();
    let fx = Fixture::new(
        r#"
calls = 0
def handle(event):
    global calls
    calls += 1
    s = seqs(event)
    log({"seqs": s})
    if calls == 1:
        # Unordered, with a duplicate: the lowest one counts.
        return {"batchItemFailures": [{"itemIdentifier": s[6]}, {"itemIdentifier": s[3]}, {"itemIdentifier": s[6]}]}
    if calls == 2:
        return {"batchItemFailures": [{"itemIdentifier": "not-in-the-batch"}]}
    return {"batchItemFailures": []}
main(handle)
"#,
    );
    let base = sluice_flow::now_ms();
    let records: Vec<Record> =
        (0..10u64).map(|i| stream_record(i, 0, &seq(i * 1000), "k", base + i, serde_json::json!({"i": i}))).collect();
    let cfg = fx.config(
        "batch_size = 10\nmaximum_batching_window = \"5s\"\nfunction_response_types = [\"ReportBatchItemFailures\"]\nconcurrency = 1",
    );
    let out = run_sink("partial", &cfg, records, fx.dir.path()).await;
    assert_eq!(out.delivered, (0..10).collect::<Vec<_>>());
    let calls: Vec<Vec<String>> = fx
        .calls()
        .iter()
        .map(|c| c["seqs"].as_array().expect("seqs").iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .collect();
    let from = |k: u64| (k..10).map(|i| seq(i * 1000)).collect::<Vec<_>>();
    // 1: all ten, 3 and 6 failed → 2: from 3 on, answer invalid → 3: the same seven again.
    assert_eq!(calls, vec![from(0), from(3), from(3)]);
    assert_eq!(common::counter("sluice_handler_retries_total", "partial"), 2);
    assert_eq!(common::counter("sluice_handler_errors_total", "partial"), 1, "the invalid answer");
    eprintln!("partial: invocations with 10, 7, 7 records; 2 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelization_keeps_each_keys_order_and_is_faster() {
    let fx = Fixture::new(
        r#"
def handle(event):
    start = time.time()
    time.sleep(0.05)
    log({"keys": [r["kinesis"]["partitionKey"] for r in event["Records"]], "n": [p["n"] for p in payloads(event)], "start": start, "end": time.time()})
    return None
main(handle)
"#,
    );
    let keys = 16u64;
    let per_key = 25u64;
    let base = sluice_flow::now_ms();
    let records = || -> Vec<Record> {
        (0..keys * per_key)
            .map(|i| {
                let key = format!("racer-{}", i % keys);
                stream_record(i, 0, &seq(i), &key, base + i, serde_json::json!({"n": i / keys}))
            })
            .collect()
    };
    let mut times = Vec::new();
    for factor in [1u32, 4] {
        let _ = std::fs::remove_file(&fx.log);
        let cfg = fx.config(&format!("batch_size = 10\nparallelization_factor = {factor}\nconcurrency = 10"));
        let out = run_sink(&format!("par{factor}"), &cfg, records(), fx.dir.path()).await;
        assert_eq!(out.delivered.len() as u64, keys * per_key);
        let calls = fx.calls();
        // Per key, in the order invocations finished: every record once, in input order.
        let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut spans: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for c in &calls {
            let (ks, ns) = (c["keys"].as_array().expect("keys"), c["n"].as_array().expect("n"));
            for (k, n) in ks.iter().zip(ns) {
                by_key.entry(k.as_str().expect("key").to_owned()).or_default().push(n.as_u64().expect("n"));
            }
            let span = (c["start"].as_f64().expect("start"), c["end"].as_f64().expect("end"));
            for k in ks.iter().filter_map(Value::as_str).collect::<BTreeSet<_>>() {
                spans.entry(k.to_owned()).or_default().push(span);
            }
        }
        assert_eq!(by_key.len() as u64, keys);
        for (k, ns) in &by_key {
            assert_eq!(ns, &(0..per_key).collect::<Vec<_>>(), "factor {factor}: key {k} in order, each once");
        }
        for (k, s) in &mut spans {
            s.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(s.windows(2).all(|w| w[0].1 <= w[1].0), "factor {factor}: key {k} invoked concurrently: {s:?}");
        }
        times.push((factor, calls.len(), out.elapsed));
    }
    eprintln!("parallelization (400 records, 16 keys, batch 10, 50 ms handler): {times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_window_sums_match_a_direct_computation() {
    let fx = Fixture::new(
        r#"
def handle(event):
    state = dict(event["state"])
    if event["isFinalInvokeForWindow"]:
        log({"final": True, "shard": event["shardId"], "start": event["window"]["start"], "state": state,
             "early": event["isWindowTerminatedEarly"], "records": len(event["Records"])})
        return {"state": {}}
    bad = []
    for r, p in zip(event["Records"], payloads(event)):
        if r["eventID"].split(":")[0] != event["shardId"]:
            bad.append("shard")
        if r["eventSourceARN"] != event["eventSourceARN"]:
            bad.append("arn")
        state["sum"] = state.get("sum", 0) + p["v"]
        state["count"] = state.get("count", 0) + 1
    log({"final": False, "shard": event["shardId"], "start": event["window"]["start"], "end": event["window"]["end"],
         "arrivals": [r["kinesis"]["approximateArrivalTimestamp"] for r in event["Records"]], "bad": bad})
    return {"state": state, "batchItemFailures": []}
main(handle)
"#,
    );
    // Three 1 s windows, in the recent past, two shards.
    let start = (sluice_flow::now_ms() / 1000 - 5) * 1000;
    let records: Vec<Record> = (0..600u64)
        .map(|i| {
            let arrival = start + i * 5;
            let v = (i * 7919) % 101;
            stream_record(i, (i % 2) as u32, &seq(i), &format!("k{}", i % 5), arrival, serde_json::json!({"v": v}))
        })
        .collect();
    let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for r in &records {
        let o = r.origin.as_ref().expect("origin");
        let window = sluice_sinks::handler::event::iso8601(o.arrival_ms / 1000 * 1000, false);
        let v: Value = serde_json::from_slice(&r.payload).expect("json");
        let e = want.entry((o.shard_id.clone(), window)).or_default();
        e.0 += v["v"].as_u64().expect("v");
        e.1 += 1;
    }
    let cfg =
        fx.config("batch_size = 40\ntumbling_window = \"1s\"\nfunction_response_types = [\"ReportBatchItemFailures\"]");
    let out = run_sink("windows", &cfg, records, fx.dir.path()).await;
    assert_eq!(out.delivered, (0..600).collect::<Vec<_>>());
    let calls = fx.calls();
    let mut got: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut finals = 0;
    for c in calls.iter().filter(|c| c["final"] == true) {
        finals += 1;
        assert_eq!((c["early"].as_bool(), c["records"].as_u64()), (Some(false), Some(0)));
        let key = (c["shard"].as_str().expect("shard").to_owned(), c["start"].as_str().expect("start").to_owned());
        let sums = (c["state"]["sum"].as_u64().expect("sum"), c["state"]["count"].as_u64().expect("count"));
        assert!(got.insert(key.clone(), sums).is_none(), "a second final invoke for {key:?}");
    }
    assert_eq!(got, want, "final states equal the direct sums, once per window and shard");
    for c in calls.iter().filter(|c| c["final"] == false) {
        assert_eq!(c["bad"], serde_json::json!([]));
        let (ws, we) = (c["start"].as_str().expect("start"), c["end"].as_str().expect("end"));
        for a in c["arrivals"].as_array().expect("arrivals") {
            let ms = (a.as_f64().expect("arrival") * 1000.0).round() as u64;
            let w = sluice_sinks::handler::event::iso8601(ms / 1000 * 1000, false);
            assert!(w.as_str() == ws && ws < we, "record at {ms} in window {ws}..{we}");
        }
    }
    eprintln!("windows: {} windows x shards, {finals} final invokes, {} invocations in all", want.len(), calls.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_or_hanging_handler_is_retried_and_counted() {
    common::install_metrics();
    let fx = Fixture::new(
        r#"
def handle(event):
    # The call count lives in the log, since crashed processes forget.
    try:
        with open(LOG) as f:
            n = sum(1 for _ in f) + 1
    except FileNotFoundError:
        n = 1
    log({"call": n, "pid": os.getpid(), "seqs": seqs(event)})
    if n == 2:
        os._exit(3)
    if n == 4:
        time.sleep(30)
    return None
main(handle)
"#,
    );
    let base = sluice_flow::now_ms();
    let records: Vec<Record> =
        (0..15u64).map(|i| stream_record(i, 0, &seq(i), "k", base + i, serde_json::json!({"i": i}))).collect();
    // Three batches of five. Call 2 (batch 2) crashes; call 4 (batch 3, on a process that already
    // answered, so without the start-up allowance) hangs past the timeout.
    let cfg = fx.config("batch_size = 5\nmaximum_batching_window = \"5s\"\ntimeout = \"500ms\"\nconcurrency = 1");
    let out = run_sink("crashy", &cfg, records, fx.dir.path()).await;
    assert_eq!(out.delivered, (0..15).collect::<Vec<_>>());
    let calls = fx.calls();
    assert_eq!(calls.len(), 5, "{calls:?}");
    let batch = |k: u64| Value::from((k * 5..k * 5 + 5).map(seq).collect::<Vec<_>>());
    let seqs: Vec<&Value> = calls.iter().map(|c| &c["seqs"]).collect();
    assert_eq!(seqs, vec![&batch(0), &batch(1), &batch(1), &batch(2), &batch(2)], "each failed batch again, whole");
    let pids: Vec<u64> = calls.iter().filter_map(|c| c["pid"].as_u64()).collect();
    assert!(pids[0] == pids[1] && pids[1] != pids[2] && pids[2] == pids[3] && pids[3] != pids[4], "{pids:?}");
    assert_eq!(common::counter("sluice_handler_errors_total", "crashy"), 2);
    assert_eq!(common::counter("sluice_handler_retries_total", "crashy"), 2);
    assert_eq!(common::counter("sluice_handler_processes_started_total", "crashy"), 3);
    eprintln!("crash/timeout: 5 invocations (ok, crash, ok, timeout, ok), 2 errors, 2 retries, 3 processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_record_age_are_bounded_by_the_options() {
    let fx = Fixture::new(
        r#"
def handle(event):
    log({"seqs": seqs(event)})
    raise RuntimeError("always")
main(handle)
"#,
    );
    let now = sluice_flow::now_ms();
    // Two hours old: past maximum_record_age, never invoked.
    let mut records: Vec<Record> =
        (0..3u64).map(|i| stream_record(i, 0, &seq(i), "k", now - 7_200_000, serde_json::json!({"i": i}))).collect();
    // Fresh, on another shard: invoked 1 + 2 retries, then failed for good.
    records.extend((3..6u64).map(|i| stream_record(i, 1, &seq(i), "k", now, serde_json::json!({"i": i}))));
    let cfg = fx.config(
        "batch_size = 10\nmaximum_batching_window = \"2s\"\nmaximum_retry_attempts = 2\nmaximum_record_age = 60\ndestination_on_failure = \"failed.ndjson\"",
    );
    let out = run_sink("bounded", &cfg, records, fx.dir.path()).await;
    assert_eq!(out.dead, (0..6).collect::<Vec<_>>());
    assert!(out.delivered.is_empty());
    assert_eq!(fx.calls().len(), 3, "only the fresh batch was invoked, 1 + 2 retries");
    let failures = read_ndjson(&fx.dir.path().join("failed.ndjson"));
    let mut conditions: Vec<(String, u64, u64)> = failures
        .iter()
        .map(|f| {
            (
                f["requestContext"]["condition"].as_str().expect("condition").to_owned(),
                f["KinesisBatchInfo"]["batchSize"].as_u64().expect("size"),
                f["requestContext"]["approximateInvokeCount"].as_u64().expect("count"),
            )
        })
        .collect();
    conditions.sort();
    assert_eq!(conditions, vec![("RecordAgeExceeded".to_owned(), 3, 0), ("RetryAttemptsExhausted".to_owned(), 3, 3)]);
}

#[test]
fn bad_options_are_refused_by_name() {
    let build = |text: &str| {
        let table: toml::Table = toml::from_str(text).expect("toml");
        sluice_sinks::build("handler", "h", table, &sluice_sinks::BuildEnv::new(Path::new("/tmp")))
            .err()
            .map(|e| e.to_string())
    };
    assert!(build("command = [\"python3\"]\nparallelization_factor = 0").is_some_and(|e| {
        e.contains("parallelization_factor must") || e.contains("`parallelization_factor` must be 1..=10")
    }));
    assert!(build("url = \"http://127.0.0.1:9\"\nbatch_size = 100").is_none());
}

/// An HTTP function: Python's `http.server` on a loopback port; its first answer is a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_function_gets_the_event_and_a_non_2xx_answer_is_a_function_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = r#"
import json, sys, http.server
LOG, PORT_FILE = sys.argv[1], sys.argv[2]
calls = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global calls
        calls += 1
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(LOG, "a") as f:
            f.write(json.dumps({"n": len(event["Records"]), "type": self.headers["Content-Type"]}) + "\n")
        status, body = (500, b"boom") if calls == 1 else (200, b"")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os; os.rename(PORT_FILE + ".tmp", PORT_FILE)
srv.serve_forever()
"#;
    std::fs::write(dir.path().join("server.py"), server).expect("write");
    let (log, port_file) = (dir.path().join("calls.ndjson"), dir.path().join("port"));
    let mut child = tokio::process::Command::new("python3")
        .arg(dir.path().join("server.py"))
        .arg(&log)
        .arg(&port_file)
        .kill_on_drop(true)
        .spawn()
        .expect("start python3");
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p;
        }
        assert!(Instant::now() < deadline, "the HTTP handler did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let base = sluice_flow::now_ms();
    let records: Vec<Record> =
        (0..7u64).map(|i| stream_record(i, 0, &seq(i), "k", base + i, serde_json::json!({"i": i}))).collect();
    let cfg = format!("url = \"http://127.0.0.1:{port}/invoke\"\nbatch_size = 7\nmaximum_batching_window = \"5s\"");
    let out = run_sink("http", &cfg, records, dir.path()).await;
    let _ = child.kill().await;
    assert_eq!(out.delivered, (0..7).collect::<Vec<_>>());
    let calls = read_ndjson(&log);
    assert_eq!(calls, vec![serde_json::json!({"n": 7, "type": "application/json"}); 2], "the 500 was retried once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_sink_promptly_without_acknowledging_unfinished_records() {
    let fx = Fixture::new(
        r#"
def handle(event):
    log({"pid": os.getpid()})
    time.sleep(30)
main(handle)
"#,
    );
    let cfg = fx.config("timeout = \"60s\"");
    let table: toml::Table = toml::from_str(&cfg).expect("toml");
    let sink =
        sluice_sinks::build("handler", "stopped", table, &sluice_sinks::BuildEnv::new(fx.dir.path())).expect("build");
    let (tx, rx) = mpsc::channel(16);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = SinkContext {
        name: "stopped".into(),
        records: rx,
        acks: ack_tx,
        dead_letters: DeadLetters::new(fx.dir.path(), "stopped"),
        shutdown: stop_rx,
        output: None,
    };
    let task = tokio::spawn(sink.run(ctx));
    tx.send(stream_record(0, 0, &seq(0), "k", sluice_flow::now_ms(), serde_json::json!({}))).await.expect("send");
    let deadline = Instant::now() + Duration::from_secs(15);
    let pid = loop {
        if let Some(p) = fx.calls().first().and_then(|c| c["pid"].as_u64()) {
            break p;
        }
        assert!(Instant::now() < deadline, "the handler was not invoked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stopped in time").expect("join").expect("run");
    assert!(ack_rx.try_recv().is_err(), "nothing acknowledged");
    // The busy process was killed with the sink's lane (it may linger as a zombie until reaped).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
            break;
        }
        assert!(Instant::now() < deadline, "handler process {pid} still running: {stat}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
}
