"""Operational surface: /health, /metrics, signals, --transition-ms."""

import re
import signal
import time

import pytest
import requests

from sluice_helpers import create_stream, unique_name

SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})?\s+(?P<value>\S+)(\s+\d+)?$")


def parse_metrics(text):
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line.strip())
        assert m, f"not a Prometheus sample line: {line!r}"
        samples.append((m.group("name"), m.group("labels") or "", float(m.group("value"))))
    return samples


def test_health(server):
    r = requests.get(server.url + "/health", timeout=5)
    assert r.status_code == 200


def test_metrics(server):
    c = server.client()
    name = create_stream(c, shards=2)
    for i in range(3):
        c.put_record(StreamName=name, Data=b"x" * 10, PartitionKey=f"k{i}")
    c.put_records(StreamName=name, Records=[{"Data": b"y" * 10, "PartitionKey": f"p{i}"}
                                            for i in range(7)])
    c.put_records(StreamName=name, Records=[{"Data": b"z", "PartitionKey": "q"}])
    r = requests.get(server.url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    samples = parse_metrics(r.text)
    assert samples, "no samples in /metrics"

    def with_op(op):
        return [s for s in samples if re.search(r'="%s"' % op, s[1])]

    put_records = with_op("PutRecords")
    assert put_records, f"no sample labelled with operation PutRecords:\n{r.text[:3000]}"
    assert max(v for _, _, v in put_records) >= 2, put_records
    assert with_op("PutRecord"), "no sample labelled with operation PutRecord"
    assert with_op("CreateStream"), "no sample labelled with operation CreateStream"

    # a records-in counter: some metric about records that has reached 11
    total = 3 + 7 + 1
    by_name = {}
    for n, labels, v in samples:
        if re.search(r"record", n, re.I) and not re.search(r"request|latency|seconds|bucket", n, re.I):
            by_name[n] = by_name.get(n, 0) + v
    assert any(v >= total for v in by_name.values()), (
        f"no records-in counter reaching {total}: {by_name}")


def test_metrics_counts_errors(server):
    c = server.client()
    for _ in range(2):
        with pytest.raises(Exception):
            c.describe_stream(StreamName="nope")
    text = requests.get(server.url + "/metrics", timeout=5).text
    samples = parse_metrics(text)
    assert [s for s in samples if '"DescribeStream"' in s[1]], text[:2000]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_exit_on_signal(server, sig):
    c = server.client()
    create_stream(c, shards=1)
    t0 = time.monotonic()
    rc = server.stop(sig, timeout=15)
    assert rc == 0, f"exit code {rc} after {sig.name} (None = had to SIGKILL)"
    assert time.monotonic() - t0 < 10


def test_transition_ms(server_factory):
    srv = server_factory(["--transition-ms", "800"])
    c = srv.client()
    name = unique_name()
    c.create_stream(StreamName=name, ShardCount=2)
    s = c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["StreamStatus"] == "CREATING"
    deadline = time.monotonic() + 15
    while s["StreamStatus"] != "ACTIVE":
        assert time.monotonic() < deadline, "stream never became ACTIVE"
        time.sleep(0.05)
        s = c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    c.put_record(StreamName=name, Data=b"x", PartitionKey="k")
    # resharding goes through UPDATING
    c.split_shard(StreamName=name, ShardToSplit="shardId-000000000000",
                  NewStartingHashKey=str(2**126))
    s = c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["StreamStatus"] == "UPDATING"
    # a second reshard while UPDATING is refused
    err = None
    try:
        c.split_shard(StreamName=name, ShardToSplit="shardId-000000000001",
                      NewStartingHashKey=str(2**127 + 2**126))
    except c.exceptions.ResourceInUseException as e:
        err = e
    assert err is not None, "split while UPDATING was accepted"
    # writes still work while UPDATING
    c.put_record(StreamName=name, Data=b"y", PartitionKey="k")
    # waiter works too
    c.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    assert c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "OpenShardCount"] == 3
