"""Data plane: PutRecord(s), routing, sequence numbers, iterators, GetRecords."""

import datetime as dt
import os
import random
import time

from sluice_helpers import (
    MAX_HASH,
    SEQ_RE,
    SHARD_ID_RE,
    create_stream,
    expect_error,
    hash_range,
    list_all_shards,
    md5_hash,
    read_shard,
    shard_for_hash,
)


def sid(i):
    return f"shardId-{i:012d}"


def test_put_record_and_read_back(kinesis):
    name = create_stream(kinesis, shards=1)
    payload = bytes(range(256)) * 3
    t0 = dt.datetime.now(dt.timezone.utc)
    r = kinesis.put_record(StreamName=name, Data=payload, PartitionKey="héllo-ключ")
    assert SHARD_ID_RE.match(r["ShardId"])
    assert SEQ_RE.match(r["SequenceNumber"])
    assert r.get("EncryptionType", "NONE") == "NONE"
    recs, last = read_shard(kinesis, name, r["ShardId"])
    assert len(recs) == 1
    rec = recs[0]
    assert rec["Data"] == payload
    assert rec["PartitionKey"] == "héllo-ключ"
    assert rec["SequenceNumber"] == r["SequenceNumber"]
    ts = rec["ApproximateArrivalTimestamp"]
    assert abs((ts - t0).total_seconds()) < 30, (ts, t0)
    assert last["MillisBehindLatest"] == 0


def test_routing_by_md5(kinesis):
    name = create_stream(kinesis, shards=3)
    shards = list_all_shards(kinesis, name)
    rnd = random.Random(1234)
    pks = [f"{rnd.random()}-{i}" for i in range(40)]
    for pk in pks:
        r = kinesis.put_record(StreamName=name, Data=b"d", PartitionKey=pk)
        assert r["ShardId"] == shard_for_hash(shards, md5_hash(pk)), pk
    pks = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789éß")
                   for _ in range(rnd.randint(1, 40))) for _ in range(300)]
    resp = kinesis.put_records(StreamName=name,
                               Records=[{"Data": b"d", "PartitionKey": pk} for pk in pks])
    assert resp.get("FailedRecordCount", 0) == 0
    assert len(resp["Records"]) == len(pks)
    for pk, res in zip(pks, resp["Records"]):
        assert res["ShardId"] == shard_for_hash(shards, md5_hash(pk)), pk
    # known value from the reference notes: md5("a") lands in shard 0 of 2
    assert md5_hash("a") == 16955237001963240173058271559858726497


def test_explicit_hash_key_overrides(kinesis):
    name = create_stream(kinesis, shards=3)
    shards = list_all_shards(kinesis, name)
    natural = shard_for_hash(shards, md5_hash("same-key"))
    for s in shards:
        lo, hi = hash_range(s)
        for h in (lo, hi, (lo + hi) // 2):
            r = kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="same-key",
                                   ExplicitHashKey=str(h))
            assert r["ShardId"] == s["ShardId"], (h, natural)
    r = kinesis.put_records(StreamName=name, Records=[
        {"Data": b"a", "PartitionKey": "same-key", "ExplicitHashKey": "0"},
        {"Data": b"b", "PartitionKey": "same-key", "ExplicitHashKey": str(MAX_HASH)},
    ])
    assert [x["ShardId"] for x in r["Records"]] == [sid(0), sid(2)]
    # partition key is still stored
    recs, _ = read_shard(kinesis, name, sid(2))
    assert recs and all(x["PartitionKey"] == "same-key" for x in recs)


def test_sequence_numbers_increase_and_are_unique(kinesis):
    name = create_stream(kinesis, shards=4)
    per_shard = {}
    all_seqs = []
    for i in range(60):
        r = kinesis.put_record(StreamName=name, Data=str(i).encode(), PartitionKey=f"pk{i}")
        assert SEQ_RE.match(r["SequenceNumber"]), r["SequenceNumber"]
        per_shard.setdefault(r["ShardId"], []).append(int(r["SequenceNumber"]))
        all_seqs.append(r["SequenceNumber"])
    for batch in range(3):
        resp = kinesis.put_records(StreamName=name, Records=[
            {"Data": b"b", "PartitionKey": f"b{batch}-{j}"} for j in range(100)])
        assert resp.get("FailedRecordCount", 0) == 0
        for res in resp["Records"]:
            per_shard.setdefault(res["ShardId"], []).append(int(res["SequenceNumber"]))
            all_seqs.append(res["SequenceNumber"])
    assert len(per_shard) == 4
    for shard, seqs in per_shard.items():
        assert all(a < b for a, b in zip(seqs, seqs[1:])), f"{shard} not strictly increasing"
    assert len(set(all_seqs)) == len(all_seqs), "duplicate sequence numbers across the stream"
    # what GetRecords returns matches what PutRecord(s) acknowledged, in order
    for shard, seqs in per_shard.items():
        recs, _ = read_shard(kinesis, name, shard)
        assert [int(r["SequenceNumber"]) for r in recs] == seqs


def test_put_records_results_in_order(kinesis):
    name = create_stream(kinesis, shards=2)
    records = []
    for i in range(20):
        ehk = "0" if i % 3 else str(MAX_HASH)
        records.append({"Data": f"r{i}".encode(), "PartitionKey": f"k{i}", "ExplicitHashKey": ehk})
    resp = kinesis.put_records(StreamName=name, Records=records)
    assert resp.get("FailedRecordCount", 0) == 0
    res = resp["Records"]
    assert len(res) == 20
    for i, r in enumerate(res):
        assert "ErrorCode" not in r
        assert r["ShardId"] == (sid(0) if i % 3 else sid(1)), i
        assert SEQ_RE.match(r["SequenceNumber"])
    for shard in (sid(0), sid(1)):
        recs, _ = read_shard(kinesis, name, shard)
        want = [(records[i]["Data"], res[i]["SequenceNumber"], records[i]["PartitionKey"])
                for i in range(20) if res[i]["ShardId"] == shard]
        assert [(r["Data"], r["SequenceNumber"], r["PartitionKey"]) for r in recs] == want


def test_shard_iterator_types(kinesis):
    name = create_stream(kinesis, shards=1)
    shard = sid(0)
    puts = [kinesis.put_record(StreamName=name, Data=f"r{i}".encode(), PartitionKey="k")
            for i in range(3)]
    time.sleep(1.2)
    ts = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.2)
    puts += [kinesis.put_record(StreamName=name, Data=f"r{i}".encode(), PartitionKey="k")
             for i in range(3, 5)]
    seqs = [p["SequenceNumber"] for p in puts]

    def data(recs):
        return [r["Data"].decode() for r in recs]

    recs, _ = read_shard(kinesis, name, shard, "TRIM_HORIZON")
    assert data(recs) == [f"r{i}" for i in range(5)]
    assert [r["SequenceNumber"] for r in recs] == seqs
    arrivals = [r["ApproximateArrivalTimestamp"] for r in recs]
    assert arrivals == sorted(arrivals)

    recs, _ = read_shard(kinesis, name, shard, "AT_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[2])
    assert data(recs) == ["r2", "r3", "r4"]
    recs, _ = read_shard(kinesis, name, shard, "AFTER_SEQUENCE_NUMBER",
                         StartingSequenceNumber=seqs[2])
    assert data(recs) == ["r3", "r4"]
    recs, _ = read_shard(kinesis, name, shard, "AFTER_SEQUENCE_NUMBER",
                         StartingSequenceNumber=seqs[4])
    assert recs == []
    recs, _ = read_shard(kinesis, name, shard, "AT_TIMESTAMP", Timestamp=ts)
    assert data(recs) == ["r3", "r4"]
    recs, _ = read_shard(kinesis, name, shard, "AT_TIMESTAMP",
                         Timestamp=dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc))
    assert data(recs) == [f"r{i}" for i in range(5)]

    latest = kinesis.get_shard_iterator(StreamName=name, ShardId=shard,
                                        ShardIteratorType="LATEST")["ShardIterator"]
    page = kinesis.get_records(ShardIterator=latest)
    assert page["Records"] == []
    assert page["NextShardIterator"]
    assert page["MillisBehindLatest"] == 0
    kinesis.put_record(StreamName=name, Data=b"r5", PartitionKey="k")
    page = kinesis.get_records(ShardIterator=page["NextShardIterator"])
    assert data(page["Records"]) == ["r5"]
    # the iterator taken before the put also sees r5 (LATEST = just after the tip at that time)
    page = kinesis.get_records(ShardIterator=latest)
    assert data(page["Records"]) == ["r5"]

    # AT/AFTER_SEQUENCE_NUMBER need a sequence number
    expect_error("InvalidArgumentException", kinesis.get_shard_iterator, StreamName=name,
                 ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER")


def test_get_records_limit_and_millis_behind(kinesis):
    name = create_stream(kinesis, shards=1)
    kinesis.put_records(StreamName=name, Records=[
        {"Data": f"a{i}".encode(), "PartitionKey": "k"} for i in range(10)])
    time.sleep(1.0)
    kinesis.put_record(StreamName=name, Data=b"last", PartitionKey="k")
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=sid(0),
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    page = kinesis.get_records(ShardIterator=it, Limit=3)
    assert [r["Data"] for r in page["Records"]] == [b"a0", b"a1", b"a2"]
    assert page["MillisBehindLatest"] > 0
    assert page["NextShardIterator"]
    got = [r["Data"] for r in page["Records"]]
    it = page["NextShardIterator"]
    for _ in range(20):
        page = kinesis.get_records(ShardIterator=it, Limit=4)
        assert len(page["Records"]) <= 4
        got += [r["Data"] for r in page["Records"]]
        it = page["NextShardIterator"]
        if not page["Records"]:
            break
    assert got == [f"a{i}".encode() for i in range(10)] + [b"last"]
    # caught up: empty page, still an iterator, MillisBehindLatest 0
    assert page["Records"] == []
    assert page["MillisBehindLatest"] == 0
    assert page["NextShardIterator"]
    # empty pages can be repeated
    again = kinesis.get_records(ShardIterator=page["NextShardIterator"])
    assert again["Records"] == [] and again["NextShardIterator"]


def test_iterator_can_be_reused(kinesis):
    name = create_stream(kinesis, shards=1)
    kinesis.put_record(StreamName=name, Data=b"one", PartitionKey="k")
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=sid(0),
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert len(it) <= 512
    a = kinesis.get_records(ShardIterator=it)["Records"]
    b = kinesis.get_records(ShardIterator=it)["Records"]
    assert [r["Data"] for r in a] == [r["Data"] for r in b] == [b"one"]


def test_sequence_number_from_other_shard_rejected(kinesis):
    name = create_stream(kinesis, shards=2)
    a = kinesis.put_record(StreamName=name, Data=b"a", PartitionKey="k", ExplicitHashKey="0")
    assert a["ShardId"] == sid(0)
    kinesis.put_record(StreamName=name, Data=b"b", PartitionKey="k", ExplicitHashKey=str(MAX_HASH))
    for typ in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
        expect_error("InvalidArgumentException", kinesis.get_shard_iterator, StreamName=name,
                     ShardId=sid(1), ShardIteratorType=typ,
                     StartingSequenceNumber=a["SequenceNumber"])
    # the right shard accepts it
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=sid(0),
                                    ShardIteratorType="AT_SEQUENCE_NUMBER",
                                    StartingSequenceNumber=a["SequenceNumber"])["ShardIterator"]
    assert [r["Data"] for r in kinesis.get_records(ShardIterator=it)["Records"]] == [b"a"]


def _flip(s, pos):
    c = s[pos]
    repl = "A" if c != "A" else "B"
    return s[:pos] + repl + s[pos + 1:]


def test_tampered_and_garbage_iterators(kinesis):
    name = create_stream(kinesis, shards=1)
    kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="k")
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=sid(0),
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert kinesis.get_records(ShardIterator=it)["Records"]
    for pos in (len(it) // 2, len(it) // 3, len(it) - 5):
        bad = _flip(it, pos)
        expect_error("InvalidArgumentException", kinesis.get_records, ShardIterator=bad)
    for garbage in ("garbage", "AAAAAAAAAAE" + "x" * 60, os.urandom(30).hex()):
        expect_error("InvalidArgumentException", kinesis.get_records, ShardIterator=garbage)
    # the server is still fine
    assert kinesis.get_records(ShardIterator=it)["Records"]


def test_unknown_shard(kinesis):
    name = create_stream(kinesis, shards=1)
    expect_error("ResourceNotFoundException", kinesis.get_shard_iterator, StreamName=name,
                 ShardId=sid(5), ShardIteratorType="TRIM_HORIZON")


def test_sequence_number_for_ordering(kinesis):
    name = create_stream(kinesis, shards=2)
    prev = None
    seqs = []
    for i in range(10):
        kw = {"SequenceNumberForOrdering": prev} if prev else {}
        r = kinesis.put_record(StreamName=name, Data=str(i).encode(), PartitionKey="same", **kw)
        seqs.append(int(r["SequenceNumber"]))
        prev = r["SequenceNumber"]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10


def test_records_gone_after_stream_deleted(kinesis):
    name = create_stream(kinesis, shards=1)
    kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="k")
    it = kinesis.get_shard_iterator(StreamName=name, ShardId=sid(0),
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    kinesis.delete_stream(StreamName=name)
    deadline = time.monotonic() + 15
    while name in kinesis.list_streams()["StreamNames"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    expect_error("ResourceNotFoundException", kinesis.get_records, ShardIterator=it)
    # a new stream with the same name does not resurrect the old data
    create_stream(kinesis, name=name, shards=1)
    recs, _ = read_shard(kinesis, name, sid(0))
    assert recs == []
