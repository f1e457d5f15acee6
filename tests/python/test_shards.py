"""ListShards (paging, filters) and resharding: SplitShard, MergeShards, UpdateShardCount."""

import datetime as dt
import random
import time

from sluice_helpers import (
    MAX_HASH,
    SHARD_ID_RE,
    assert_contiguous_cover,
    create_stream,
    expect_error,
    hash_range,
    list_all_shards,
    md5_hash,
    open_shards,
    read_shard,
    shard_for_hash,
    stream_arn,
    wait_status,
)


def sid(i):
    return f"shardId-{i:012d}"


def ids(shards):
    return [s["ShardId"] for s in shards]


def test_list_shards_paging(kinesis):
    name = create_stream(kinesis, shards=5)
    full = kinesis.list_shards(StreamName=name)
    assert ids(full["Shards"]) == [sid(i) for i in range(5)]
    assert not full.get("NextToken")
    for s in full["Shards"]:
        assert SHARD_ID_RE.match(s["ShardId"])
    assert_contiguous_cover(full["Shards"])

    page = kinesis.list_shards(StreamName=name, MaxResults=2)
    assert ids(page["Shards"]) == [sid(0), sid(1)]
    assert page.get("NextToken")
    got = ids(page["Shards"])
    for _ in range(10):
        if not page.get("NextToken"):
            break
        page = kinesis.list_shards(NextToken=page["NextToken"], MaxResults=2)
        assert len(page["Shards"]) <= 2
        got += ids(page["Shards"])
    assert got == [sid(i) for i in range(5)]

    after = kinesis.list_shards(StreamName=name, ExclusiveStartShardId=sid(2))
    assert ids(after["Shards"]) == [sid(3), sid(4)]


def test_list_shards_next_token_must_come_alone(kinesis):
    name = create_stream(kinesis, shards=3)
    page = kinesis.list_shards(StreamName=name, MaxResults=1)
    token = page["NextToken"]
    expect_error("InvalidArgumentException", kinesis.list_shards, StreamName=name, NextToken=token)
    # alone it works
    nxt = kinesis.list_shards(NextToken=token)
    assert ids(nxt["Shards"]) == [sid(1), sid(2)]


def test_list_shards_filters(kinesis):
    name = create_stream(kinesis, shards=2)
    time.sleep(1.1)
    t_before = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.1)
    kinesis.split_shard(StreamName=name, ShardToSplit=sid(0), NewStartingHashKey=str(2**126))
    wait_status(kinesis, name)
    time.sleep(1.1)
    t_after = dt.datetime.now(dt.timezone.utc)

    def lf(**flt):
        return sorted(ids(list_all_shards(kinesis, name, ShardFilter=flt)))

    assert sorted(ids(list_all_shards(kinesis, name))) == [sid(i) for i in range(4)]
    assert lf(Type="AFTER_SHARD_ID", ShardId=sid(1)) == [sid(2), sid(3)]
    assert lf(Type="AT_TRIM_HORIZON") == [sid(0), sid(1)]
    assert lf(Type="FROM_TRIM_HORIZON") == [sid(i) for i in range(4)]
    assert lf(Type="AT_LATEST") == [sid(1), sid(2), sid(3)]
    assert lf(Type="AT_TIMESTAMP", Timestamp=t_before) == [sid(0), sid(1)]
    assert lf(Type="AT_TIMESTAMP", Timestamp=t_after) == [sid(1), sid(2), sid(3)]
    assert lf(Type="FROM_TIMESTAMP", Timestamp=t_before) == [sid(i) for i in range(4)]
    assert lf(Type="FROM_TIMESTAMP", Timestamp=t_after) == [sid(1), sid(2), sid(3)]


def test_split_shard(kinesis):
    name = create_stream(kinesis, shards=1)
    before = [kinesis.put_record(StreamName=name, Data=f"before-{i}".encode(),
                                 PartitionKey=f"k{i}") for i in range(5)]
    parent = sid(0)
    key = 2**127 + 12345
    kinesis.split_shard(StreamName=name, ShardToSplit=parent, NewStartingHashKey=str(key))
    wait_status(kinesis, name)

    shards = {s["ShardId"]: s for s in list_all_shards(kinesis, name)}
    assert set(shards) == {sid(0), sid(1), sid(2)}
    p = shards[parent]
    end_seq = p["SequenceNumberRange"].get("EndingSequenceNumber")
    assert end_seq, "parent has no EndingSequenceNumber after split"
    assert int(end_seq) >= max(int(r["SequenceNumber"]) for r in before)
    c1, c2 = shards[sid(1)], shards[sid(2)]
    assert c1.get("ParentShardId") == parent and c2.get("ParentShardId") == parent
    assert "AdjacentParentShardId" not in c1 and "AdjacentParentShardId" not in c2
    assert hash_range(c1) == (0, key - 1)
    assert hash_range(c2) == (key, MAX_HASH)
    for c in (c1, c2):
        assert "EndingSequenceNumber" not in c["SequenceNumberRange"]
    assert_contiguous_cover(list(shards.values()))

    # DescribeStream shows the same
    d = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    assert ids(d["Shards"]) == [sid(0), sid(1), sid(2)]

    # reading the closed parent to its end: all old records, then SHARD_END
    recs, last = read_shard(kinesis, name, parent)
    assert [r["Data"] for r in recs] == [f"before-{i}".encode() for i in range(5)]
    assert [r["SequenceNumber"] for r in recs] == [r["SequenceNumber"] for r in before]
    assert not last.get("NextShardIterator"), "closed shard read to its end still has an iterator"
    children = {c["ShardId"]: c for c in last.get("ChildShards") or []}
    assert set(children) == {sid(1), sid(2)}, last.get("ChildShards")
    for c in children.values():
        assert c["ParentShards"] == [parent]
    assert hash_range(children[sid(1)]) == (0, key - 1)
    assert hash_range(children[sid(2)]) == (key, MAX_HASH)

    # new writes go to the children
    all_shards = list(shards.values())
    for i in range(40):
        pk = f"after-{i}-{random.random()}"
        r = kinesis.put_record(StreamName=name, Data=b"x", PartitionKey=pk)
        assert r["ShardId"] in (sid(1), sid(2))
        assert r["ShardId"] == shard_for_hash(all_shards, md5_hash(pk))
    assert kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="p",
                              ExplicitHashKey=str(key - 1))["ShardId"] == sid(1)
    assert kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="p",
                              ExplicitHashKey=str(key))["ShardId"] == sid(2)
    # nothing more lands in the parent
    recs2, _ = read_shard(kinesis, name, parent)
    assert len(recs2) == 5


def test_split_shard_invalid_key(kinesis):
    name = create_stream(kinesis, shards=2)
    # shard 1 covers [2^127, 2^128-1]; a key outside it (or at its start) is invalid
    expect_error("InvalidArgumentException", kinesis.split_shard, StreamName=name,
                 ShardToSplit=sid(1), NewStartingHashKey="5")
    expect_error("InvalidArgumentException", kinesis.split_shard, StreamName=name,
                 ShardToSplit=sid(1), NewStartingHashKey=str(2**127))
    expect_error("ResourceNotFoundException", kinesis.split_shard, StreamName=name,
                 ShardToSplit=sid(7), NewStartingHashKey=str(2**127 + 100))


def test_merge_shards(kinesis):
    name = create_stream(kinesis, shards=3)
    # non-adjacent shards cannot be merged
    expect_error("InvalidArgumentException", kinesis.merge_shards, StreamName=name,
                 ShardToMerge=sid(0), AdjacentShardToMerge=sid(2))
    r0 = kinesis.put_record(StreamName=name, Data=b"in0", PartitionKey="p", ExplicitHashKey="0")
    assert r0["ShardId"] == sid(0)
    kinesis.merge_shards(StreamName=name, ShardToMerge=sid(0), AdjacentShardToMerge=sid(1))
    wait_status(kinesis, name)

    shards = {s["ShardId"]: s for s in list_all_shards(kinesis, name)}
    assert set(shards) == {sid(0), sid(1), sid(2), sid(3)}
    for p in (sid(0), sid(1)):
        assert shards[p]["SequenceNumberRange"].get("EndingSequenceNumber"), p
    child = shards[sid(3)]
    assert child.get("ParentShardId") == sid(0)
    assert child.get("AdjacentParentShardId") == sid(1)
    assert hash_range(child) == (hash_range(shards[sid(0)])[0], hash_range(shards[sid(1)])[1])
    assert_contiguous_cover(list(shards.values()))
    assert sorted(ids(open_shards(list(shards.values())))) == [sid(2), sid(3)]

    recs, last = read_shard(kinesis, name, sid(0))
    assert [r["Data"] for r in recs] == [b"in0"]
    assert not last.get("NextShardIterator")
    cs = last.get("ChildShards") or []
    assert [c["ShardId"] for c in cs] == [sid(3)], cs
    assert sorted(cs[0]["ParentShards"]) == [sid(0), sid(1)]
    assert hash_range(cs[0]) == hash_range(child)

    # empty closed parent: SHARD_END too
    recs, last = read_shard(kinesis, name, sid(1))
    assert recs == []
    assert not last.get("NextShardIterator")
    assert [c["ShardId"] for c in last.get("ChildShards") or []] == [sid(3)]

    assert kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="p",
                              ExplicitHashKey="0")["ShardId"] == sid(3)


def _check_scaled(kinesis, name, target):
    shards = list_all_shards(kinesis, name)
    opened = open_shards(shards)
    assert len(opened) == target, [(s["ShardId"], hash_range(s)) for s in opened]
    assert_contiguous_cover(shards)
    s = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["OpenShardCount"] == target
    for i in range(30):
        pk = f"pk-{i}-{random.random()}"
        r = kinesis.put_record(StreamName=name, Data=b"x", PartitionKey=pk)
        assert r["ShardId"] == shard_for_hash(shards, md5_hash(pk))


def test_update_shard_count(kinesis):
    name = create_stream(kinesis, shards=2)
    arn = stream_arn(kinesis, name)
    r = kinesis.update_shard_count(StreamName=name, TargetShardCount=4,
                                   ScalingType="UNIFORM_SCALING")
    assert r["StreamName"] == name
    assert r["CurrentShardCount"] == 2
    assert r["TargetShardCount"] == 4
    assert r.get("StreamARN") == arn
    wait_status(kinesis, name)
    _check_scaled(kinesis, name, 4)

    r = kinesis.update_shard_count(StreamName=name, TargetShardCount=2,
                                   ScalingType="UNIFORM_SCALING")
    assert r["CurrentShardCount"] == 4
    assert r["TargetShardCount"] == 2
    wait_status(kinesis, name)
    _check_scaled(kinesis, name, 2)


def test_update_shard_count_odd_target(kinesis):
    name = create_stream(kinesis, shards=2)
    kinesis.update_shard_count(StreamName=name, TargetShardCount=3, ScalingType="UNIFORM_SCALING")
    wait_status(kinesis, name)
    _check_scaled(kinesis, name, 3)
