"""Durability: every acknowledged record survives a crash (SIGKILL) or a clean stop.

Four producer threads (one boto3 client each) write PutRecords batches of 100
records whose data encode (thread, counter).  Mid-load the server is killed;
it is restarted on the same data directory and every shard is read from
TRIM_HORIZON to the tip.
"""

import random
import signal
import threading
import time

import pytest

from sluice_helpers import create_stream, list_all_shards, make_client, read_shard

THREADS = 4
BATCH = 100
PAD = b"." * 64


def _payload(t, n):
    return b"%d:%d:" % (t, n) + PAD


def _parse(data):
    t, n, rest = data.split(b":", 2)
    assert rest == PAD, data
    return int(t), int(n)


def _load(url, name, duration, stop_server):
    """Run the producers; call stop_server() after `duration` seconds while they
    are still writing.  Returns {(t, n): (shard, seq, data)} of acknowledged records."""
    acked = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors = []
    batches = [0] * THREADS

    def worker(t):
        client = make_client(url, read_timeout=15, connect_timeout=2)
        n = 0
        rnd = random.Random(t)
        while not stop.is_set():
            recs = [{"Data": _payload(t, n + i), "PartitionKey": f"{t}-{n + i}-{rnd.random()}"}
                    for i in range(BATCH)]
            try:
                resp = client.put_records(StreamName=name, Records=recs)
            except Exception as e:  # the server went away mid-request
                errors.append(repr(e))
                break
            with lock:
                for i, r in enumerate(resp["Records"]):
                    if "SequenceNumber" in r:
                        acked[(t, n + i)] = (r["ShardId"], r["SequenceNumber"], recs[i]["Data"])
            batches[t] += 1
            n += BATCH

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    time.sleep(duration)
    stop_server()
    stop.set()
    for th in threads:
        th.join(timeout=30)
        assert not th.is_alive(), "producer thread hung after the server stopped"
    with lock:
        return dict(acked), batches


def _verify(client, name, acked):
    shards = list_all_shards(client, name)
    seen = {}
    per_shard_counts = {}
    for s in shards:
        recs, _ = read_shard(client, name, s["ShardId"], limit=10000, timeout=120)
        seqs = [int(r["SequenceNumber"]) for r in recs]
        assert all(a < b for a, b in zip(seqs, seqs[1:])), \
            f"{s['ShardId']}: sequence numbers not strictly increasing after restart"
        per_shard_counts[s["ShardId"]] = len(recs)
        for r in recs:
            key = _parse(r["Data"])
            assert key not in seen, f"record {key} read twice: {seen[key]} and {r['SequenceNumber']}"
            seen[key] = (s["ShardId"], r["SequenceNumber"], r["Data"])
    missing = [k for k in acked if k not in seen]
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged records lost, e.g. "
                         f"{sorted(missing)[:5]}")
    wrong = [(k, acked[k], seen[k]) for k in acked if seen[k] != acked[k]]
    assert not wrong, f"{len(wrong)} records changed shard/seq/data, e.g. {wrong[:3]}"
    # unacknowledged extras are allowed (in-flight batches), but only from known producers
    for (t, n) in seen:
        assert 0 <= t < THREADS
    return seen, per_shard_counts


def _after_restart_writes(client, name, seen):
    """New writes after the restart get sequence numbers above everything stored."""
    max_by_shard = {}
    for shard, seq, _ in seen.values():
        max_by_shard[shard] = max(max_by_shard.get(shard, 0), int(seq))
    resp = client.put_records(StreamName=name, Records=[
        {"Data": _payload(9, i), "PartitionKey": f"after-{i}"} for i in range(50)])
    assert resp.get("FailedRecordCount", 0) == 0
    for r in resp["Records"]:
        assert int(r["SequenceNumber"]) > max_by_shard.get(r["ShardId"], 0), \
            "sequence number reused/regressed after restart"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_acknowledged_records_survive_restart(server_factory, how):
    srv = server_factory(["--durability", "fsync"])
    client = srv.client()
    name = create_stream(client, shards=4)
    state = {}

    def stop_server():
        if how == "sigkill":
            srv.kill()
        else:
            state["rc"] = srv.stop(signal.SIGTERM, timeout=30)

    acked, batches = _load(srv.url, name, random.uniform(2.0, 3.0), stop_server)
    print(f"{how}: {len(acked)} records acknowledged in {sum(batches)} batches")
    assert len(acked) >= THREADS * BATCH, f"too little load before the stop: {batches}"
    if how == "sigterm":
        assert state["rc"] == 0, f"server did not exit cleanly on SIGTERM (rc={state['rc']})"

    srv.start()  # same data dir, new port
    client = srv.client()
    summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["OpenShardCount"] == 4
    seen, counts = _verify(client, name, acked)
    assert len(counts) == 4 and all(c > 0 for c in counts.values()), counts
    _after_restart_writes(client, name, seen)


@pytest.mark.timeout(120)
def test_metadata_survives_restart(server_factory):
    """Streams, reshards, tags, retention and consumers are durable too."""
    srv = server_factory(["--durability", "fsync"])
    c = srv.client()
    name = create_stream(c, shards=2, Tags={"k": "v"})
    c.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=48)
    c.split_shard(StreamName=name, ShardToSplit="shardId-000000000000",
                  NewStartingHashKey=str(2**126))
    from sluice_helpers import stream_arn, wait_status
    wait_status(c, name)
    arn = stream_arn(c, name)
    cons = c.register_stream_consumer(StreamARN=arn, ConsumerName="durable")["Consumer"]
    put = c.put_record(StreamName=name, Data=b"persisted", PartitionKey="k", ExplicitHashKey="0")
    before = sorted((s["ShardId"], s.get("ParentShardId"), s["HashKeyRange"]["StartingHashKey"],
                     s["SequenceNumberRange"].get("EndingSequenceNumber"))
                    for s in list_all_shards(c, name))
    srv.kill()
    srv.start()
    c = srv.client()
    after = sorted((s["ShardId"], s.get("ParentShardId"), s["HashKeyRange"]["StartingHashKey"],
                    s["SequenceNumberRange"].get("EndingSequenceNumber"))
                   for s in list_all_shards(c, name))
    assert after == before
    s = c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["RetentionPeriodHours"] == 48
    assert s["OpenShardCount"] == 3
    assert s["StreamARN"] == arn
    assert {t["Key"]: t["Value"] for t in c.list_tags_for_stream(StreamName=name)["Tags"]} == {"k": "v"}
    d = c.describe_stream_consumer(ConsumerARN=cons["ConsumerARN"])["ConsumerDescription"]
    assert d["ConsumerName"] == "durable"
    recs, _ = read_shard(c, name, put["ShardId"])
    assert [(r["Data"], r["SequenceNumber"]) for r in recs] == [(b"persisted", put["SequenceNumber"])]
