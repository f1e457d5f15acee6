"""The `s3` sink of `sluice run`, Firehose-style: moto's S3 as the third-party store, and a
local directory through kill -9."""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from collections import Counter
from pathlib import Path

import boto3
from botocore.config import Config

from pipeline_helpers import (  # noqa: F401  (fixtures)
    metric_sum,
    moto_server,
    pipeline_factory,
    pipeline_toml,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed

# <prefix>YYYY/MM/DD/HH/<name>-<version>-YYYY-MM-DD-HH-MM-SS-<uuid>.gz
KEY_RE = re.compile(
    r"^(?P<prefix>.*?)(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/"
    r"(?P<name>[a-z]+)-1-(?P=y)-(?P=m)-(?P=d)-(?P=h)-\d{2}-\d{2}-"
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}(?P<ext>\.gz)?$"
)


def s3_client(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


def s3_sink_toml(name, inputs, url, extra=""):
    return "\n".join([f"[sinks.{name}]", 'type = "s3"', f"inputs = {json.dumps(inputs)}", f'url = "{url}"',
                      extra.strip()]) + "\n"


def seqs_in(lines):
    return [json.loads(line)["seq"] for line in lines if line.strip()]


def test_moto_s3_gets_firehose_keys_and_gzip_objects_holding_exactly_the_input(
    tmp_path, moto_server, ws_feed_factory, pipeline_factory
):
    s3 = s3_client(moto_server)
    s3.create_bucket(Bucket="lake")
    feed = Feed(3000, rate=3000)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        s3_sink_toml("archive", ["race"], "s3://lake/raw", f"""
endpoint = "{moto_server}"
compression = "gzip"
buffer_size = "64KiB"
buffer_interval = "1s"
"""),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    run.wait_delivered("archive", feed.total, timeout=60)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake")
            for o in page.get("Contents", [])]
    assert keys, "no objects in the bucket"
    bad = [k for k in keys if not (m := KEY_RE.match(k)) or m["prefix"] != "raw/" or m["name"] != "archive"
           or m["ext"] != ".gz"]
    assert not bad, f"keys not in Firehose's layout: {bad[:3]}"
    seqs = []
    for k in keys:
        body = s3.get_object(Bucket="lake", Key=k)["Body"].read()
        seqs += seqs_in(gzip.decompress(body).decode().split("\n"))
    counts = Counter(seqs)
    missing = set(range(1, feed.total + 1)) - set(counts)
    dups = {s: c for s, c in counts.items() if c > 1}
    assert not missing and not dups, f"{len(missing)} missing (e.g. {sorted(missing)[:5]}), {len(dups)} duplicated"
    # 64 KiB of ~110-byte lines per object: several objects, none far above the size hint.
    sizes = [s3.head_object(Bucket="lake", Key=k)["ContentLength"] for k in keys]
    assert len(keys) >= 3, f"buffer_size 64KiB should have cut several objects, got {len(keys)}"
    assert metric_sum(run.metrics(), "sluice_s3_objects_total", sink="archive") == len(keys)
    print(f"moto: {feed.total} records in {len(keys)} gzip objects, sizes {min(sizes)}..{max(sizes)} bytes")


def test_dynamic_partitions_and_the_error_prefix(tmp_path, ws_feed_factory, pipeline_factory):
    """Records partitioned by /racer; records without it land under the error prefix."""
    lake = tmp_path / "lake"
    feed = Feed(400, rate=None, racers=4)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, None, cursor=None, idle_timeout="5s"),
        s3_sink_toml("archive", ["race"], f"file://{lake}", """
prefix = "racer=!{partitionKeyFromQuery:racer}/!{timestamp:yyyy/MM/dd}/"
partition_keys = { racer = "/racer" }
buffer_interval = "0s"
"""),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    run.wait_delivered("archive", feed.total, timeout=30)
    files = [p for p in lake.rglob("*") if p.is_file()]
    by_racer = Counter()
    for p in files:
        rel = p.relative_to(lake).as_posix()
        m = re.match(r"^racer=(r\d)/\d{4}/\d{2}/\d{2}/archive-1-", rel)
        assert m, f"unexpected key {rel}"
        for s in seqs_in(p.read_text().split("\n")):
            assert feed.racer(s) == m[1], f"seq {s} of {feed.racer(s)} filed under {m[1]}"
            by_racer[m[1]] += 1
    assert sum(by_racer.values()) == feed.total and len(by_racer) == 4, by_racer
    assert not [p for p in lake.rglob("*#*")], "staging files left visible"


def test_records_without_the_partition_key_go_to_the_error_prefix(tmp_path, ws_feed_factory, pipeline_factory):
    lake = tmp_path / "lake"
    feed = Feed(300, rate=None, racers=3)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, None, cursor=None, idle_timeout="5s"),
        s3_sink_toml("archive", ["race"], f"file://{lake}", """
prefix = "speed=!{partitionKeyFromQuery:pad}/"
partition_keys = { pad = "/pad" }
error_prefix = "failed/!{firehose:error-output-type}/"
buffer_interval = "0s"
"""),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    # No record has /pad: every one is dead-lettered to the error prefix, none lost.
    run.wait_delivered("archive", 0, timeout=30, dead_lettered=feed.total)
    files = [p for p in lake.rglob("*") if p.is_file()]
    assert files and all(p.relative_to(lake).as_posix().startswith("failed/partitioning-failed/") for p in files)
    docs = [json.loads(line) for p in files for line in p.read_text().splitlines() if line]
    assert len(docs) == feed.total
    assert {d["errorCode"] for d in docs} == {"DynamicPartitioning.MetadataExtractionFailed"}
    got = sorted(json.loads(base64.b64decode(d["rawData"]))["seq"] for d in docs)
    assert got == list(range(1, feed.total + 1))
    assert metric_sum(run.metrics(), "sluice_s3_error_records_total", sink="archive", type="partitioning-failed") == feed.total


def test_kill_9_mid_object_leaves_no_partial_object_and_loses_nothing(tmp_path, ws_feed_factory, pipeline_factory):
    lake = tmp_path / "lake"
    feed = Feed(20000, rate=4000, pad=200)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        s3_sink_toml("archive", ["race"], f"file://{lake}", """
compression = "gzip"
buffer_size = "256KiB"
buffer_interval = "2s"
"""),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    kills = 0
    deadline = time.monotonic() + 90
    while kills < 3 and time.monotonic() < deadline:
        wait_for(lambda: any(lake.rglob("*.gz")) and run.sink("archive")["delivered"] > 0, 30, "a first object")
        time.sleep(0.3 + 0.4 * kills)
        run.kill()
        kills += 1
        run.start(expect_embedded=False)

    def complete():
        seqs = set()
        for p in lake.rglob("*.gz"):
            seqs.update(seqs_in(gzip.decompress(p.read_bytes()).decode().split("\n")))
        return len(seqs) == feed.total

    wait_for(complete, 90, "every record in some object", interval=0.5)
    run.stop()
    visible = [p for p in lake.rglob("*") if p.is_file()]
    partial = [p for p in visible if not p.name.endswith(".gz")]
    assert not partial, f"partial or staging files visible: {partial[:3]}"
    counts = Counter()
    for p in visible:
        counts.update(seqs_in(gzip.decompress(p.read_bytes()).decode().split("\n")))  # each object whole
    missing = set(range(1, feed.total + 1)) - set(counts)
    dups = sum(c - 1 for c in counts.values() if c > 1)
    assert not missing, f"{len(missing)} records missing after {kills} kill -9"
    print(f"kill -9 x{kills}: {feed.total} records in {len(visible)} objects, nothing missing, "
          f"{dups} delivered twice (at-least-once: objects written but not yet acknowledged)")


def test_failed_uploads_are_retried_and_counted_until_the_bucket_exists(
    tmp_path, moto_server, ws_feed_factory, pipeline_factory
):
    s3 = s3_client(moto_server)
    feed = Feed(500, rate=None)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, None, cursor=None, idle_timeout="5s"),
        s3_sink_toml("archive", ["race"], "s3://late-bucket", f"""
endpoint = "{moto_server}"
buffer_interval = "0s"
"""),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    wait_for(lambda: metric_sum(run.metrics(), "sluice_s3_upload_errors_total", sink="archive") >= 2, 30,
             "uploads to a missing bucket to fail and be counted")
    assert run.sink("archive")["delivered"] == 0
    s3.create_bucket(Bucket="late-bucket")
    run.wait_delivered("archive", feed.total, timeout=60)
    seqs = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="late-bucket"):
        for o in page.get("Contents", []):
            seqs += seqs_in(s3.get_object(Bucket="late-bucket", Key=o["Key"])["Body"].read().decode().split("\n"))
    assert sorted(seqs) == list(range(1, feed.total + 1))


def test_uploads_failing_past_retry_duration_are_dead_lettered_and_counted(
    tmp_path, moto_server, ws_feed_factory, pipeline_factory
):
    feed = Feed(200, rate=None)
    provider = ws_feed_factory(feed)
    data_dir = tmp_path / "data"
    text = pipeline_toml(
        data_dir,
        ws_source_toml("race", provider.url, None, cursor=None, idle_timeout="5s"),
        s3_sink_toml("archive", ["race"], "s3://no-such-bucket", f"""
endpoint = "{moto_server}"
buffer_interval = "0s"
retry_duration = "1s"
"""),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False, expect_healthy=False)
    run.wait_delivered("archive", 0, timeout=60, dead_lettered=feed.total)
    samples = run.metrics()
    assert metric_sum(samples, "sluice_s3_expired_records_total", sink="archive") == feed.total
    assert metric_sum(samples, "sluice_s3_upload_errors_total", sink="archive") >= 2
    dead = [json.loads(line) for line in (data_dir / "dead-letter" / "archive.ndjson").read_text().splitlines()]
    assert dead and all(d["reason"] == "upload_failed" for d in dead)
    # The dead letters hold the objects that could not be stored: every record is in one of them.
    seqs = sorted(s for d in dead for s in seqs_in(base64.b64decode(d["payload_base64"]).decode().split("\n")))
    assert seqs == list(range(1, feed.total + 1))
