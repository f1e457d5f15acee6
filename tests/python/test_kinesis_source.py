"""The `kinesis` source in `sluice run` (issue 10, first part): a pipeline reads a stream that
`sluice serve` holds, with its KCL lease table on the same server, into a file sink; a
graceful stop checkpoints what was spooled, and a restart reads only what came after.
"""

from __future__ import annotations

import json
import time
import subprocess
from pathlib import Path

import boto3
from botocore.config import Config

from conftest import sluice_bin

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


def archived(path: Path) -> list[dict]:
    out = []
    # Files being written carry a `.part` suffix; their complete lines count too.
    for f in sorted(path.glob("*.ndjson*")):
        text = f.read_text("utf-8")
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def put(client, stream, start, end):
    for s in range(start, end, 250):
        recs = [{"Data": json.dumps({"i": i}).encode(), "PartitionKey": f"k{i}"} for i in range(s, min(end, s + 250))]
        assert client.put_records(StreamName=stream, Records=recs)["FailedRecordCount"] == 0


def test_a_pipeline_reads_a_stream_with_leases_and_resumes_from_its_checkpoints(server, kinesis, tmp_path, pipeline_factory):
    kinesis.create_stream(StreamName="src", ShardCount=2)
    put(kinesis, "src", 0, 300)
    archive = tmp_path / "archive"
    source = "\n".join([
        "[sources.in]", 'type = "kinesis"', 'stream_name = "src"', f'endpoint = "{server.url}"',
        'application = "copier"', 'starting_position = "trim_horizon"', 'failover_time = "2s"',
        'checkpoint_interval = "200ms"', 'idle_between_reads = "50ms"',
    ]) + "\n"
    sinks = "\n".join(["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"']) + "\n"
    run = pipeline_factory(pipeline_toml(tmp_path / "data", source, sinks, embedded=False), expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 300, 60, "300 records in the archive",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    assert sorted(r["i"] for r in archived(archive)) == list(range(300))

    # The lease table is a KCL table on the same server: one item per shard, checkpointed.
    ddb = boto3.client("dynamodb", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test",
                       config=Config(retries={"total_max_attempts": 1}))
    def checkpointed():
        items = ddb.scan(TableName="copier")["Items"]
        return len(items) == 2 and all(i["checkpoint"]["S"].isdigit() for i in items) and items
    items = wait_for(checkpointed, 30, "both leases checkpointed at sequence numbers")
    assert {i["leaseKey"]["S"] for i in items} == {"shardId-000000000000", "shardId-000000000001"}
    assert all(i["leaseOwner"]["S"] for i in items)
    # /health shows the worker, its leases and each shard's checkpoint, as the table holds them.
    table = {i["leaseKey"]["S"]: f'{i["checkpoint"]["S"]}:{i["checkpointSubSequenceNumber"]["N"]}' for i in items}

    def reported():
        r = run.source("in").get("report") or {}
        shards = r.get("shards", {})
        return r.get("leases_held") == 2 and {s: v.get("checkpoint") for s, v in shards.items()} == table and r
    report = wait_for(reported, 10, "/health reporting both leases at the table's checkpoints",
                      details=lambda: f"{run.source('in')} vs {table}")
    assert report["worker"] == items[0]["leaseOwner"]["S"] and report["application"] == "copier"
    assert sum(s["read"] for s in report["shards"].values()) == 300

    run.stop()
    put(kinesis, "src", 300, 350)
    run.start(expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 350, 60, "the 50 new records",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    got = sorted(r["i"] for r in archived(archive))
    assert got == list(range(350)), f"{len(got)} records, {len(got) - len(set(got))} duplicates"


def test_stream_to_stream_on_the_embedded_default(tmp_path, ws_feed_factory, pipeline_factory):
    """One pipeline: a websocket feed into its embedded stream. Another process: a `kinesis`
    source reading that stream (leases on the same embedded server) into a file."""
    feed = Feed(total=400)
    provider = ws_feed_factory(feed)
    produce = pipeline_toml(
        tmp_path / "produce",
        ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
        kinesis_sink_toml("out", ["feed"], "race"),
    )
    producer = pipeline_factory(produce, name="produce")
    archive = tmp_path / "archive"
    source = "\n".join([
        "[sources.in]", 'type = "kinesis"', 'stream_name = "race"', f'endpoint = "{producer.embedded_url}"',
        'application = "archiver"', 'starting_position = "trim_horizon"', 'idle_between_reads = "50ms"',
        'checkpoint_interval = "200ms"',
    ]) + "\n"
    sinks = "\n".join(["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"']) + "\n"
    consumer = pipeline_factory(pipeline_toml(tmp_path / "consume", source, sinks, embedded=False),
                                name="consume", expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= feed.total, 90, f"{feed.total} events archived",
             details=lambda: f"{len(archived(archive))} so far\n{consumer.log_tail(20)}")
    got = archived(archive)
    assert sorted(json.dumps(r, separators=(",", ":")) for r in got) == sorted(
        json.dumps(json.loads(feed.payload(s)), separators=(",", ":")) for s in range(1, feed.total + 1)
    )


def test_the_stream_to_stream_example_files_are_valid():
    root = Path(__file__).resolve().parents[2] / "examples" / "stream-to-stream"
    for name in ("produce.toml", "consume.toml"):
        r = subprocess.run([sluice_bin(), "validate", str(root / name)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_kinesis_source_without_endpoint_reads_its_own_embedded_stream(tmp_path, ws_feed_factory, pipeline_factory):
    feed = Feed(total=200)
    provider = ws_feed_factory(feed)
    archive = tmp_path / "archive"
    sources = ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}") + "\n".join([
        "[sources.in]", 'type = "kinesis"', 'stream_name = "race"', 'application = "self"',
        'starting_position = "trim_horizon"', 'idle_between_reads = "50ms"',
    ]) + "\n"
    sinks = kinesis_sink_toml("out", ["feed"], "race") + "\n" + "\n".join(
        ["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"']) + "\n"
    run = pipeline_factory(pipeline_toml(tmp_path / "data", sources, sinks))
    wait_for(lambda: len(archived(archive)) >= feed.total, 90, f"{feed.total} events archived",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    assert sorted(r["seq"] for r in archived(archive)) == list(range(1, feed.total + 1))
    # Read in-process: no GetRecords request reached the embedded server over HTTP, yet the
    # stream counted the records read.
    samples = run.metrics()
    assert metric_sum(samples, "sluice_requests_total", operation="GetRecords") == 0
    assert metric_sum(samples, "sluice_records_out_total", stream="race") >= feed.total


def consumer_toml(tmp_path, name, endpoint, application, extra=()):
    archive = tmp_path / f"archive-{name}"
    source = "\n".join([
        "[sources.in]", 'type = "kinesis"', 'stream_name = "src"', f'endpoint = "{endpoint}"',
        f'application = "{application}"', f'worker_id = "{name}"', 'starting_position = "trim_horizon"',
        'failover_time = "2s"', 'checkpoint_interval = "200ms"', 'idle_between_reads = "50ms"', *extra,
    ]) + "\n"
    sinks = "\n".join(["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"']) + "\n"
    return pipeline_toml(tmp_path / f"data-{name}", source, sinks, embedded=False), archive


def test_kill_9_of_a_worker_loses_nothing(server, kinesis, tmp_path, pipeline_factory):
    kinesis.create_stream(StreamName="src", ShardCount=4)
    put(kinesis, "src", 0, 400)
    text_a, arch_a = consumer_toml(tmp_path, "a", server.url, "app")
    text_b, arch_b = consumer_toml(tmp_path, "b", server.url, "app")
    a = pipeline_factory(text_a, name="a", expect_embedded=False)
    b = pipeline_factory(text_b, name="b", expect_embedded=False)

    def union():
        return {r["i"] for r in archived(arch_a) + archived(arch_b)}

    wait_for(lambda: len(union()) == 400, 60, "the first 400 records")
    ddb = boto3.client("dynamodb", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")

    def table():
        return {i["leaseKey"]["S"]: (i.get("leaseOwner", {}).get("S"), i["checkpoint"]["S"])
                for i in ddb.scan(TableName="app", ConsistentRead=True)["Items"]}

    def settled():
        t = table()
        owners = sorted(o for o, _ in t.values())
        return len(t) == 4 and owners == ["a", "a", "b", "b"] and all(c.isdigit() for _, c in t.values())

    # Balanced (2 + 2) and every shard checkpointed. b stole two leases from a at start: a
    # handed each over with its last spooled position, so b read nothing twice.
    wait_for(settled, 30, "2 + 2 leases, all checkpointed", details=lambda: str(table()))
    dups_before = len(archived(arch_a) + archived(arch_b)) - len(union())
    assert dups_before == 0, f"{dups_before} records read twice after the steals at start"
    a.kill()
    put(kinesis, "src", 400, 800)
    # b takes a's leases once they expire (failover_time 2 s, a scan every 4 s) and reads them
    # from a's last checkpoint.
    wait_for(lambda: len(union()) == 800, 60, "every record after the kill",
             details=lambda: f"{len(union())} of 800\n{b.log_tail(20)}")
    got = [r["i"] for r in archived(arch_a) + archived(arch_b)]
    dups = len(got) - len(set(got))
    print(f"a read {len(archived(arch_a))}, b read {len(archived(arch_b))}, "
          f"duplicates {dups_before} before the kill (leases stolen and handed over), "
          f"{dups - dups_before} after it")
    assert set(got) == set(range(800))
    # a had checkpointed everything it read: b resumes a's shards exactly there.
    assert dups - dups_before == 0


def test_a_split_while_reading_keeps_per_key_order_and_cleans_up_the_parent(server, kinesis, tmp_path, pipeline_factory):
    kinesis.create_stream(StreamName="src", ShardCount=1)
    keys = [f"k{j}" for j in range(10)]

    def put_keyed(start, end):
        recs = [{"Data": json.dumps({"i": i, "k": keys[i % 10]}).encode(), "PartitionKey": keys[i % 10]}
                for i in range(start, end)]
        for s in range(0, len(recs), 250):
            assert kinesis.put_records(StreamName="src", Records=recs[s:s + 250])["FailedRecordCount"] == 0

    put_keyed(0, 300)
    text, archive = consumer_toml(tmp_path, "r", server.url, "resharder")
    run = pipeline_factory(text, name="r", expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 300, 60, "the records before the split")
    kinesis.split_shard(StreamName="src", ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
    put_keyed(300, 600)
    wait_for(lambda: len(archived(archive)) >= 600, 90, "the records after the split",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    got = archived(archive)
    assert sorted(r["i"] for r in got) == list(range(600))
    for k in keys:
        order = [r["i"] for r in got if r["k"] == k]
        assert order == sorted(order), f"key {k} out of order across the split"
    ddb = boto3.client("dynamodb", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")

    def leases():
        return {i["leaseKey"]["S"]: i["checkpoint"]["S"] for i in ddb.scan(TableName="resharder")["Items"]}

    wait_for(lambda: "shardId-000000000000" not in leases(), 60, "the parent's lease deleted",
             details=lambda: str(leases()))
    assert set(leases()) == {"shardId-000000000001", "shardId-000000000002"}


def test_sigterm_hands_a_workers_shards_over_at_once(server, kinesis, tmp_path, pipeline_factory):
    kinesis.create_stream(StreamName="src", ShardCount=4)
    put(kinesis, "src", 0, 200)
    text_a, arch_a = consumer_toml(tmp_path, "a", server.url, "handoff")
    text_b, arch_b = consumer_toml(tmp_path, "b", server.url, "handoff")
    a = pipeline_factory(text_a, name="a", expect_embedded=False)
    pipeline_factory(text_b, name="b", expect_embedded=False)
    ddb = boto3.client("dynamodb", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")

    def owners():
        return sorted(i.get("leaseOwner", {}).get("S", "") for i in ddb.scan(TableName="handoff", ConsistentRead=True)["Items"])

    wait_for(lambda: owners() == ["a", "a", "b", "b"], 30, "2 + 2 leases", details=lambda: str(owners()))
    wait_for(lambda: len({r["i"] for r in archived(arch_a) + archived(arch_b)}) == 200, 30, "the first 200 records")
    dups_before = len(archived(arch_a) + archived(arch_b)) - 200
    a.stop()
    started = time.monotonic()
    wait_for(lambda: owners() == ["b", "b", "b", "b"], 10, "b holding every lease", details=lambda: str(owners()))
    print(f"handoff after SIGTERM: {time.monotonic() - started:.2f} s (failover_time 2 s)")
    put(kinesis, "src", 200, 300)
    wait_for(lambda: len({r["i"] for r in archived(arch_a) + archived(arch_b)}) == 300, 30, "the records after it")
    got = [r["i"] for r in archived(arch_a) + archived(arch_b)]
    assert set(got) == set(range(300))
    # a checkpointed everything it had spooled before releasing: nothing is read twice.
    assert len(got) - 300 == dups_before


def test_a_missing_stream_is_an_alarm_until_it_exists(server, kinesis, tmp_path, pipeline_factory):
    text, archive = consumer_toml(tmp_path, "w", server.url, "late")
    run = pipeline_factory(text, name="w", expect_embedded=False, expect_healthy=False)

    def health():
        code, body = run.health_response()
        return code, body or {}

    wait_for(lambda: health()[0] == 503 and any(a["alarm"] == "stream_unavailable" for a in health()[1].get("alarms", [])),
             30, "/health 503 with stream_unavailable", details=lambda: str(health()))
    kinesis.create_stream(StreamName="src", ShardCount=1)
    put(kinesis, "src", 0, 20)
    wait_for(lambda: len(archived(archive)) == 20, 60, "the records once the stream exists",
             details=lambda: f"{health()}\n{run.log_tail(10)}")
    assert health()[0] == 200
