"""The `handler` sink in a running pipeline (issue 11, item 2), with Lambda-style Python handlers
(standard library only):

- a websocket feed through the spool: every record is invoked once, in feed order (origin-less
  records form one pseudo-shard with one key); a poison record is isolated by bisection and
  described in the on-failure file; /health and /metrics count it;
- feed → kinesis sink → the embedded stream → kinesis source → a tumbling-window handler: the
  final states equal sums computed directly from the stream's records and arrival times.
"""

from __future__ import annotations

import base64
import json
import sys
from collections import defaultdict
from datetime import datetime, timezone

from pipeline_helpers import (  # noqa: F401  (fixtures)
    kinesis_sink_toml,
    metric_sum,
    pipeline_factory,
    pipeline_toml,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed

HANDLER = r'''
import base64, json, sys
LOG = sys.argv[1]
for line in sys.stdin:
    event = json.loads(line)
    records = event["Records"]
    seqs = [json.loads(base64.b64decode(r["kinesis"]["data"]))["seq"] for r in records]
    with open(LOG, "a") as f:
        f.write(json.dumps({"seqs": seqs, "ids": [r["eventID"] for r in records]}) + "\n")
    if 37 in seqs:
        print("poison record 37", file=sys.stderr, flush=True)
        out = {"error": {"errorType": "ValueError", "errorMessage": "poison"}}
    else:
        out = {"result": None}
    print(json.dumps(out), flush=True)
'''


def test_a_pipeline_invokes_a_python_handler_with_lambdas_event(tmp_path, ws_feed_factory, pipeline_factory):
    feed = Feed(total=200)
    provider = ws_feed_factory(feed)
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    log = tmp_path / "calls.ndjson"
    data_dir = tmp_path / "data"
    sinks = "\n".join([
        "[sinks.fn]", 'type = "handler"', 'inputs = ["feed"]',
        f'command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(log))}]',
        "batch_size = 32", 'maximum_batching_window = "200ms"', "bisect_batch_on_function_error = true",
        "maximum_retry_attempts = 0", 'destination_on_failure = "on-failure.ndjson"',
    ]) + "\n"
    text = pipeline_toml(data_dir, ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
                         sinks, embedded=False)
    run = pipeline_factory(text, name="handler", expect_embedded=False)
    run.wait_delivered("fn", feed.total - 1, 60, dead_lettered=1)

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    ok = [s for c in calls if 37 not in c["seqs"] for s in c["seqs"]]
    assert ok == [s for s in range(1, feed.total + 1) if s != 37], "every other record once, in feed order"
    with_poison = sum(1 for c in calls if 37 in c["seqs"])
    assert 2 <= with_poison <= 6, f"bisected down to the poison record: {with_poison} invocations"
    assert all(i.startswith("shardId-local:") for c in calls for i in c["ids"])

    failures = [json.loads(line) for line in (data_dir / "on-failure.ndjson").read_text().splitlines()]
    assert len(failures) == 1
    info = failures[0]["KinesisBatchInfo"]
    assert info["batchSize"] == 1 and info["shardId"] == "shardId-local"
    assert failures[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"
    dead = [json.loads(line) for line in (data_dir / "dead-letter" / "fn.ndjson").read_text().splitlines()]
    assert [json.loads(base64.b64decode(d["payload_base64"]))["seq"] for d in dead] == [37]

    samples = run.metrics()
    assert metric_sum(samples, "sluice_handler_on_failure_records_total", sink="fn") == 1
    assert metric_sum(samples, "sluice_handler_invocations_total", sink="fn") == len(calls)
    assert metric_sum(samples, "sluice_handler_records_total", sink="fn", outcome="delivered") == feed.total - 1
    wait_for(lambda: "poison record 37" in run.log_tail(200), 10, "the handler's stderr in sluice's log")


WINDOW_HANDLER = r'''
import base64, json, sys
LOG = sys.argv[1]
for line in sys.stdin:
    event = json.loads(line)
    state = dict(event["state"])
    for r in event["Records"]:
        seq = json.loads(base64.b64decode(r["kinesis"]["data"]))["seq"]
        state["sum"] = state.get("sum", 0) + seq
        state["count"] = state.get("count", 0) + 1
    if event["isFinalInvokeForWindow"]:
        with open(LOG, "a") as f:
            f.write(json.dumps({"shard": event["shardId"], "start": event["window"]["start"], "state": state}) + "\n")
    print(json.dumps({"result": {"state": state}}), flush=True)
'''


def test_tumbling_windows_over_the_embedded_stream_match_the_streams_own_arrival_times(
        tmp_path, ws_feed_factory, pipeline_factory):
    feed = Feed(total=600, rate=300)
    provider = ws_feed_factory(feed)
    script = tmp_path / "window.py"
    script.write_text(WINDOW_HANDLER)
    log = tmp_path / "finals.ndjson"
    sources = ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}") + "\n".join([
        "[sources.race]", 'type = "kinesis"', 'stream_name = "race"', 'application = "windows"',
        'starting_position = "trim_horizon"', 'idle_between_reads = "50ms"',
    ]) + "\n"
    sinks = kinesis_sink_toml("out", ["feed"], "race", extra="shards = 2") + "\n" + "\n".join([
        "[sinks.lb]", 'type = "handler"', 'inputs = ["race"]',
        f'command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(log))}]',
        "batch_size = 50", 'tumbling_window = "1s"',
    ]) + "\n"
    run = pipeline_factory(pipeline_toml(tmp_path / "data", sources, sinks), name="windows")
    run.wait_delivered("lb", feed.total, 60)

    def finals():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    # The last window of each shard closes 1 s after its end with nothing new.
    wait_for(lambda: sum(f["state"].get("count", 0) for f in finals()) >= feed.total, 20, "every window closed",
             details=lambda: f"{finals()}\n{run.log_tail(20)}")

    want = defaultdict(lambda: [0, 0])
    client = run.embedded_client()
    for shard in client.list_shards(StreamName="race")["Shards"]:
        it = client.get_shard_iterator(StreamName="race", ShardId=shard["ShardId"],
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            out = client.get_records(ShardIterator=it, Limit=10000)
            for r in out["Records"]:
                start = datetime.fromtimestamp(int(r["ApproximateArrivalTimestamp"].timestamp()), timezone.utc)
                w = want[(shard["ShardId"], start.strftime("%Y-%m-%dT%H:%M:%SZ"))]
                w[0] += json.loads(r["Data"])["seq"]
                w[1] += 1
            it = out.get("NextShardIterator") if out["Records"] else None
    got = {}
    for f in finals():
        key = (f["shard"], f["start"])
        assert key not in got, f"two final invocations for {key}"
        got[key] = [f["state"].get("sum", 0), f["state"].get("count", 0)]
    assert sum(c for _, c in want.values()) == feed.total
    assert got == dict(want), "final window states equal the sums over the stream's records"
    assert len(got) >= 4, f"the feed spans several windows and both shards: {sorted(got)}"


TRANSFORM = r'''
import base64, json, sys
for line in sys.stdin:
    event = json.loads(line)
    assert event["deliveryStreamArn"].startswith("arn:aws:firehose:") and event["invocationId"], event
    out = []
    for r in event["records"]:
        msg = json.loads(base64.b64decode(r["data"]))
        s = msg["seq"]
        if s % 10 == 0:
            out.append({"recordId": r["recordId"], "result": "Dropped"})
        elif s % 50 == 7:
            out.append({"recordId": r["recordId"], "result": "ProcessingFailed"})
        else:
            msg["fast"] = msg["speed_kph"] > 35
            out.append({"recordId": r["recordId"], "result": "Ok",
                        "data": base64.b64encode(json.dumps(msg).encode()).decode()})
    print(json.dumps({"result": {"records": out}}), flush=True)
'''


def test_a_transforming_handler_feeds_another_sink_like_firehose(tmp_path, ws_feed_factory, pipeline_factory):
    """feed -> handler (transform = true: enrich, drop every 10th, fail 7 mod 50) -> file sink
    reading the handler's output, across a restart."""
    feed = Feed(total=600, rate=600)
    provider = ws_feed_factory(feed)
    script = tmp_path / "enrich.py"
    script.write_text(TRANSFORM)
    data_dir = tmp_path / "data"
    sinks = "\n".join([
        "[sinks.enrich]", 'type = "handler"', 'inputs = ["feed"]', "transform = true",
        f'command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]',
        "batch_size = 50", 'maximum_batching_window = "50ms"',
        "", "[sinks.out]", 'type = "file"', 'inputs = ["enrich"]', 'path = "out"',
    ]) + "\n"
    text = pipeline_toml(data_dir, ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
                         sinks, embedded=False)
    run = pipeline_factory(text, name="transform", expect_embedded=False)
    wait_for(lambda: run.sink("enrich")["delivered"] >= 200, 30, "a third of the feed transformed")
    run.restart(expect_embedded=False)
    kept = [s for s in range(1, feed.total + 1) if s % 10 and s % 50 != 7]
    failed = [s for s in range(1, feed.total + 1) if s % 50 == 7]

    def lines():
        out = []
        for p in sorted((data_dir / "out").glob("*.ndjson*")):
            out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        return out

    wait_for(lambda: len({m["seq"] for m in lines()}) >= len(kept), 60, "every kept record in the file sink")
    run.stop()
    got = lines()
    seqs = [m["seq"] for m in got]
    assert sorted(set(seqs)) == kept, "exactly the records the transform kept reach the next sink"
    assert all(m["fast"] == (m["speed_kph"] > 35) for m in got), "the file holds the transformed records"
    dups = len(seqs) - len(set(seqs))
    dead = [json.loads(line) for line in (data_dir / "dead-letter" / "enrich.ndjson").read_text().splitlines()]
    assert sorted({json.loads(base64.b64decode(d["payload_base64"]))["seq"] for d in dead}) == failed
    assert all(d["reason"] == "processing_failed" for d in dead)
    print(f"transform: {len(kept)} kept, {feed.total // 10} dropped, {len(failed)} failed; "
          f"{dups} lines written twice across the restart")


def test_on_failure_records_can_go_to_another_sink(tmp_path, ws_feed_factory, pipeline_factory):
    """destination_on_failure = "sink:failures": Lambda's on-failure records reach a file sink
    that declares no inputs of its own."""
    feed = Feed(total=120)
    provider = ws_feed_factory(feed)
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    log = tmp_path / "calls.ndjson"
    data_dir = tmp_path / "data"
    sinks = "\n".join([
        "[sinks.fn]", 'type = "handler"', 'inputs = ["feed"]',
        f'command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(log))}]',
        "batch_size = 16", 'maximum_batching_window = "100ms"', "bisect_batch_on_function_error = true",
        "maximum_retry_attempts = 0", 'destination_on_failure = "sink:failures"',
        "", "[sinks.failures]", 'type = "file"', 'path = "failures"',
    ]) + "\n"
    text = pipeline_toml(data_dir, ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
                         sinks, embedded=False)
    run = pipeline_factory(text, name="handler-failures", expect_embedded=False)
    run.wait_delivered("fn", feed.total - 1, 60, dead_lettered=1)
    run.wait_delivered("failures", 1, 30)
    run.stop()
    lines = [json.loads(line) for p in sorted((data_dir / "failures").glob("*.ndjson*"))
             for line in p.read_text().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    info = lines[0]["KinesisBatchInfo"]
    assert info["batchSize"] == 1 and info["shardId"] == "shardId-local"
    assert lines[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"
