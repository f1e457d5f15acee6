"""Per-shard throughput limits with --enforce-limits (and their absence without it)."""

import time

import pytest
from botocore.exceptions import ClientError

from sluice_helpers import create_stream

SHARD = "shardId-000000000000"


def _burst_records(client, name, batches=6, size=500):
    """PutRecords bursts of small records: 3,000 records in well under 3 s."""
    results = []
    t0 = time.monotonic()
    for b in range(batches):
        resp = client.put_records(StreamName=name, Records=[
            {"Data": b"r%d" % i, "PartitionKey": f"{b}-{i}"} for i in range(size)])
        results.append(resp)
    return results, time.monotonic() - t0


def _burst_bytes(client, name, batches=3, count=20, size=100 * 1024):
    """PutRecords bursts of 20 x 100 KiB records (2 MB per call), ~6 MB in total."""
    results = []
    blob = b"b" * size
    t0 = time.monotonic()
    for b in range(batches):
        resp = client.put_records(StreamName=name, Records=[
            {"Data": blob, "PartitionKey": f"{b}-{i}"} for i in range(count)])
        results.append(resp)
    return results, time.monotonic() - t0


def _tally(results):
    ok = failed = 0
    for resp in results:
        recs = resp["Records"]
        n_failed = sum(1 for r in recs if "ErrorCode" in r)
        assert resp.get("FailedRecordCount", 0) == n_failed
        for r in recs:
            if "ErrorCode" in r:
                assert r["ErrorCode"] == "ProvisionedThroughputExceededException", r
                assert r.get("ErrorMessage"), r
                assert "SequenceNumber" not in r and "ShardId" not in r
            else:
                assert r["SequenceNumber"] and r["ShardId"] == SHARD
        ok += len(recs) - n_failed
        failed += n_failed
    return ok, failed


def _get_records_burst(client, name, calls=12):
    it = client.get_shard_iterator(StreamName=name, ShardId=SHARD,
                                   ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    throttled = 0
    t0 = time.monotonic()
    for _ in range(calls):
        try:
            resp = client.get_records(ShardIterator=it, Limit=1)
            it = resp["NextShardIterator"] or it
        except ClientError as e:
            assert e.response["Error"]["Code"] == "ProvisionedThroughputExceededException", \
                e.response["Error"]
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            throttled += 1
    return throttled, time.monotonic() - t0


@pytest.fixture
def limited(server_factory):
    srv = server_factory(["--enforce-limits"])
    client = srv.client()
    return client, create_stream(client, shards=1)


@pytest.fixture
def unlimited(server_factory):
    srv = server_factory()
    client = srv.client()
    return client, create_stream(client, shards=1)


def test_put_records_count_limit(limited):
    client, name = limited
    results, elapsed = _burst_records(client, name)
    ok, failed = _tally(results)
    assert elapsed < 2.5, f"burst too slow ({elapsed:.2f}s) to exceed 1,000 records/s reliably"
    assert failed > 0, f"3,000 records in {elapsed:.2f}s on one shard were all accepted"
    assert ok > 0, "every record was throttled"
    assert ok <= 1000 * (elapsed + 1) + 1000, f"{ok} records accepted in {elapsed:.2f}s"


def test_put_records_bytes_limit(limited):
    client, name = limited
    results, elapsed = _burst_bytes(client, name)
    ok, failed = _tally(results)
    assert elapsed < 2.5, f"burst too slow ({elapsed:.2f}s)"
    assert failed > 0, f"~6 MB in {elapsed:.2f}s on one shard was all accepted"
    assert ok > 0
    assert ok * 100 * 1024 <= (elapsed + 2) * 1024 * 1024 + 100 * 1024, (ok, elapsed)


def test_put_record_single_throttled(limited):
    client, name = limited
    _burst_records(client, name, batches=3)
    with pytest.raises(ClientError) as ei:
        for _ in range(50):
            client.put_record(StreamName=name, Data=b"x" * 100_000, PartitionKey="k")
    assert ei.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_get_records_rate_limit(limited):
    client, name = limited
    client.put_records(StreamName=name, Records=[{"Data": b"x", "PartitionKey": "k"}] * 20)
    throttled, elapsed = _get_records_burst(client, name)
    assert elapsed < 1.5, f"GetRecords burst took {elapsed:.2f}s"
    assert throttled > 0, "12 GetRecords calls on one shard within ~1s were all served"
    assert throttled < 12, "every GetRecords call was throttled"
    # the limit recovers
    time.sleep(1.5)
    it = client.get_shard_iterator(StreamName=name, ShardId=SHARD,
                                   ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert client.get_records(ShardIterator=it)["Records"]


def test_no_limits_without_flag(unlimited):
    client, name = unlimited
    ok, failed = _tally(_burst_records(client, name)[0])
    assert failed == 0 and ok == 3000
    ok, failed = _tally(_burst_bytes(client, name)[0])
    assert failed == 0 and ok == 60
    throttled, _ = _get_records_burst(client, name)
    assert throttled == 0
