"""Stream-level control plane: create/delete/describe/list, retention, tags, ARNs."""

import datetime as dt
import re
import time

from sluice_helpers import (
    SEQ_RE,
    SHARD_ID_RE,
    assert_contiguous_cover,
    create_stream,
    expect_error,
    list_all_shards,
    stream_arn,
    unique_name,
    wait_status,
)

ARN_RE = re.compile(r"^arn:aws:kinesis:us-east-1:(\d{12}):stream/(.+)$")


def _recent(ts, slack=120):
    now = dt.datetime.now(dt.timezone.utc)
    return abs((now - ts).total_seconds()) < slack


def test_create_stream_provisioned_and_describe(kinesis):
    name = create_stream(kinesis, shards=3)
    d = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    assert d["StreamName"] == name
    m = ARN_RE.match(d["StreamARN"])
    assert m and m.group(2) == name, d["StreamARN"]
    assert d["StreamStatus"] == "ACTIVE"
    assert d["StreamModeDetails"]["StreamMode"] == "PROVISIONED"
    assert d["RetentionPeriodHours"] == 24
    assert _recent(d["StreamCreationTimestamp"])
    assert isinstance(d["EnhancedMonitoring"], list)
    assert d["HasMoreShards"] is False
    assert d.get("EncryptionType", "NONE") == "NONE"
    shards = d["Shards"]
    assert len(shards) == 3
    ids = [s["ShardId"] for s in shards]
    assert ids == sorted(ids)
    assert ids == [f"shardId-{i:012d}" for i in range(3)]
    for s in shards:
        assert SHARD_ID_RE.match(s["ShardId"])
        assert "ParentShardId" not in s
        assert SEQ_RE.match(s["SequenceNumberRange"]["StartingSequenceNumber"])
        assert "EndingSequenceNumber" not in s["SequenceNumberRange"]
    assert_contiguous_cover(shards)


def test_create_stream_on_demand(kinesis):
    name = unique_name()
    kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    wait_status(kinesis, name)
    s = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
    assert s["OpenShardCount"] >= 1
    shards = list_all_shards(kinesis, name)
    assert len(shards) == s["OpenShardCount"]
    assert_contiguous_cover(shards)
    # and it takes writes
    r = kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="pk")
    assert r["ShardId"] in {sh["ShardId"] for sh in shards}


def test_create_stream_with_tags(kinesis):
    name = create_stream(kinesis, shards=1, Tags={"team": "data", "env": "test"})
    tags = kinesis.list_tags_for_stream(StreamName=name)
    assert {t["Key"]: t["Value"] for t in tags["Tags"]} == {"team": "data", "env": "test"}
    assert tags["HasMoreTags"] is False


def test_create_twice_is_resource_in_use(kinesis):
    name = create_stream(kinesis, shards=1)
    expect_error("ResourceInUseException", kinesis.create_stream, StreamName=name, ShardCount=1)


def test_describe_stream_paging(kinesis):
    name = create_stream(kinesis, shards=5)
    seen = []
    resp = kinesis.describe_stream(StreamName=name, Limit=2)["StreamDescription"]
    assert len(resp["Shards"]) == 2
    assert resp["HasMoreShards"] is True
    seen += [s["ShardId"] for s in resp["Shards"]]
    for _ in range(10):
        if not resp["HasMoreShards"]:
            break
        resp = kinesis.describe_stream(
            StreamName=name, Limit=2, ExclusiveStartShardId=seen[-1]
        )["StreamDescription"]
        assert 1 <= len(resp["Shards"]) <= 2
        seen += [s["ShardId"] for s in resp["Shards"]]
    assert resp["HasMoreShards"] is False
    assert seen == [f"shardId-{i:012d}" for i in range(5)]
    # last page with exact Limit
    resp = kinesis.describe_stream(StreamName=name, Limit=1, ExclusiveStartShardId=seen[3])[
        "StreamDescription"
    ]
    assert [s["ShardId"] for s in resp["Shards"]] == [seen[4]]
    assert resp["HasMoreShards"] is False


def test_describe_stream_summary_counts(kinesis):
    name = create_stream(kinesis, shards=4)
    s = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["StreamName"] == name
    assert s["OpenShardCount"] == 4
    assert s.get("ConsumerCount", 0) == 0
    assert s["StreamStatus"] == "ACTIVE"
    assert s["RetentionPeriodHours"] == 24
    assert _recent(s["StreamCreationTimestamp"])
    assert ARN_RE.match(s["StreamARN"])
    arn = s["StreamARN"]
    kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="c1")
    s = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["ConsumerCount"] == 1
    # a split closes one shard and opens two
    kinesis.split_shard(StreamName=name, ShardToSplit="shardId-000000000000",
                        NewStartingHashKey=str(2**125))
    wait_status(kinesis, name)
    s = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert s["OpenShardCount"] == 5


def test_list_streams_paging(kinesis):
    names = sorted(create_stream(kinesis, name=f"ls-{i}-{unique_name()}") for i in range(3))
    resp = kinesis.list_streams()
    assert resp["StreamNames"] == names
    assert resp["HasMoreStreams"] is False
    summaries = resp["StreamSummaries"]
    assert [s["StreamName"] for s in summaries] == names
    for s in summaries:
        assert s["StreamStatus"] == "ACTIVE"
        assert ARN_RE.match(s["StreamARN"]).group(2) == s["StreamName"]
        assert s["StreamModeDetails"]["StreamMode"] == "PROVISIONED"
        assert _recent(s["StreamCreationTimestamp"])

    page = kinesis.list_streams(Limit=2)
    assert page["StreamNames"] == names[:2]
    assert page["HasMoreStreams"] is True
    assert page.get("NextToken")
    rest = kinesis.list_streams(NextToken=page["NextToken"])
    assert rest["StreamNames"] == names[2:]
    assert rest["HasMoreStreams"] is False

    after = kinesis.list_streams(ExclusiveStartStreamName=names[0])
    assert after["StreamNames"] == names[1:]
    after = kinesis.list_streams(ExclusiveStartStreamName=names[0], Limit=1)
    assert after["StreamNames"] == [names[1]]
    assert after["HasMoreStreams"] is True


def test_delete_stream(kinesis):
    keep = create_stream(kinesis, shards=1)
    name = create_stream(kinesis, shards=2)
    kinesis.delete_stream(StreamName=name)
    deadline = time.monotonic() + 15
    while True:
        try:
            st = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            assert st["StreamStatus"] == "DELETING", st["StreamStatus"]
        except kinesis.exceptions.ResourceNotFoundException:
            break
        assert time.monotonic() < deadline, "stream never disappeared after DeleteStream"
        time.sleep(0.05)
    assert kinesis.list_streams()["StreamNames"] == [keep]
    expect_error("ResourceNotFoundException", kinesis.delete_stream, StreamName=name)
    expect_error("ResourceNotFoundException", kinesis.put_record, StreamName=name,
                 Data=b"x", PartitionKey="k")
    # the name can be reused
    create_stream(kinesis, name=name, shards=1)
    assert kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "OpenShardCount"] == 1


def test_retention_period(kinesis):
    name = create_stream(kinesis, shards=1)

    def current():
        return kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
            "RetentionPeriodHours"]

    kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=48)
    assert current() == 48
    # increase must be larger
    expect_error("InvalidArgumentException", kinesis.increase_stream_retention_period,
                 StreamName=name, RetentionPeriodHours=36)
    # decrease must be smaller
    expect_error("InvalidArgumentException", kinesis.decrease_stream_retention_period,
                 StreamName=name, RetentionPeriodHours=72)
    assert current() == 48
    kinesis.decrease_stream_retention_period(StreamName=name, RetentionPeriodHours=24)
    assert current() == 24
    # out of range
    expect_error("InvalidArgumentException", kinesis.decrease_stream_retention_period,
                 StreamName=name, RetentionPeriodHours=23)
    expect_error("InvalidArgumentException", kinesis.increase_stream_retention_period,
                 StreamName=name, RetentionPeriodHours=8761)
    kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=8760)
    assert current() == 8760
    expect_error("ResourceNotFoundException", kinesis.increase_stream_retention_period,
                 StreamName="nope-" + name, RetentionPeriodHours=100)


def test_tags_add_list_page_remove(kinesis):
    name = create_stream(kinesis, shards=1)
    tags = {f"k{i}": f"v{i}" for i in range(7)}
    kinesis.add_tags_to_stream(StreamName=name, Tags=tags)
    kinesis.add_tags_to_stream(StreamName=name, Tags={"k3": "overwritten", "empty": ""})
    expected = dict(tags, k3="overwritten", empty="")

    got, pages, start = {}, 0, None
    while True:
        args = {"StreamName": name, "Limit": 3}
        if start:
            args["ExclusiveStartTagKey"] = start
        page = kinesis.list_tags_for_stream(**args)
        pages += 1
        assert len(page["Tags"]) <= 3
        for t in page["Tags"]:
            assert t["Key"] not in got, f"tag {t['Key']} listed twice"
            got[t["Key"]] = t.get("Value", "")
        if not page["HasMoreTags"]:
            break
        assert page["Tags"], "HasMoreTags with an empty page"
        start = page["Tags"][-1]["Key"]
        assert pages < 10
    assert got == expected
    assert pages == 3

    kinesis.remove_tags_from_stream(StreamName=name, TagKeys=["k0", "k3", "not-there"])
    got = {t["Key"]: t.get("Value", "") for t in kinesis.list_tags_for_stream(StreamName=name)["Tags"]}
    assert got == {k: v for k, v in expected.items() if k not in ("k0", "k3")}


def test_stream_arn_accepted_everywhere(kinesis):
    name = create_stream(kinesis, shards=2)
    arn = stream_arn(kinesis, name)
    m = ARN_RE.match(arn)
    assert m and m.group(2) == name, arn

    assert kinesis.describe_stream(StreamARN=arn)["StreamDescription"]["StreamName"] == name
    assert kinesis.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"][
        "StreamName"] == name
    assert len(kinesis.list_shards(StreamARN=arn)["Shards"]) == 2
    pr = kinesis.put_record(StreamARN=arn, Data=b"one", PartitionKey="a")
    prs = kinesis.put_records(StreamARN=arn, Records=[{"Data": b"two", "PartitionKey": "a"}])
    assert prs.get("FailedRecordCount", 0) == 0
    it = kinesis.get_shard_iterator(StreamARN=arn, ShardId=pr["ShardId"],
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    recs = kinesis.get_records(ShardIterator=it, StreamARN=arn)["Records"]
    assert [r["Data"] for r in recs] == [b"one", b"two"]

    kinesis.add_tags_to_stream(StreamARN=arn, Tags={"a": "1", "b": "2"})
    assert len(kinesis.list_tags_for_stream(StreamARN=arn)["Tags"]) == 2
    kinesis.remove_tags_from_stream(StreamARN=arn, TagKeys=["a"])
    assert [t["Key"] for t in kinesis.list_tags_for_stream(StreamARN=arn)["Tags"]] == ["b"]

    kinesis.increase_stream_retention_period(StreamARN=arn, RetentionPeriodHours=30)
    kinesis.decrease_stream_retention_period(StreamARN=arn, RetentionPeriodHours=25)
    assert kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "RetentionPeriodHours"] == 25

    kinesis.split_shard(StreamARN=arn, ShardToSplit="shardId-000000000000",
                        NewStartingHashKey=str(2**126))
    wait_status(kinesis, name)
    kinesis.merge_shards(StreamARN=arn, ShardToMerge="shardId-000000000002",
                         AdjacentShardToMerge="shardId-000000000003")
    wait_status(kinesis, name)
    r = kinesis.update_shard_count(StreamARN=arn, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    assert r["TargetShardCount"] == 4
    wait_status(kinesis, name)
    assert kinesis.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"][
        "OpenShardCount"] == 4

    # an ARN naming an unknown stream (same account/region) is not found
    bad = arn[: -len(name)] + "nope-" + name
    expect_error("ResourceNotFoundException", kinesis.describe_stream_summary, StreamARN=bad)

    kinesis.delete_stream(StreamARN=arn)
    deadline = time.monotonic() + 15
    while name in kinesis.list_streams()["StreamNames"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
