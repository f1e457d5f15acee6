"""The `handler` sink in a running pipeline (issue 11, item 2): a websocket feed goes to a
Lambda-style Python handler (standard library only) through the spool. Every record is invoked
once, in feed order (origin-less records form one pseudo-shard with one key); a poison record
is isolated by bisection and described in the on-failure file; /health and /metrics count it.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from pipeline_helpers import (  # noqa: F401  (fixtures)
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
