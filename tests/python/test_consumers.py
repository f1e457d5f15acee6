"""Enhanced fan-out: consumer registry and SubscribeToShard (boto3 event stream)."""

import re
import threading
import time

import pytest

from sluice_helpers import (
    SEQ_RE,
    create_stream,
    expect_error,
    make_client,
    stream_arn,
)


def sid(i):
    return f"shardId-{i:012d}"


def wait_consumer_active(client, arn, timeout=15):
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = client.describe_stream_consumer(ConsumerARN=arn)["ConsumerDescription"][
            "ConsumerStatus"]
        if status == "ACTIVE":
            return
        time.sleep(0.05)
    raise AssertionError(f"consumer {arn} still {status}")


def test_consumer_lifecycle(kinesis):
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    c = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="app-1")["Consumer"]
    assert c["ConsumerName"] == "app-1"
    assert c["ConsumerStatus"] in ("CREATING", "ACTIVE")
    assert re.match(re.escape(arn) + r"/consumer/app-1:\d+$", c["ConsumerARN"]), c["ConsumerARN"]
    assert c["ConsumerCreationTimestamp"]
    wait_consumer_active(kinesis, c["ConsumerARN"])

    # registering the same name again
    expect_error("ResourceInUseException", kinesis.register_stream_consumer,
                 StreamARN=arn, ConsumerName="app-1")

    by_arn = kinesis.describe_stream_consumer(ConsumerARN=c["ConsumerARN"])["ConsumerDescription"]
    by_name = kinesis.describe_stream_consumer(StreamARN=arn, ConsumerName="app-1")[
        "ConsumerDescription"]
    for d in (by_arn, by_name):
        assert d["ConsumerName"] == "app-1"
        assert d["ConsumerARN"] == c["ConsumerARN"]
        assert d["StreamARN"] == arn
        assert d["ConsumerStatus"] == "ACTIVE"

    c2 = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="app-2")["Consumer"]
    c3 = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="app-3")["Consumer"]
    listed = kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]
    assert sorted(x["ConsumerName"] for x in listed) == ["app-1", "app-2", "app-3"]
    # paging
    page = kinesis.list_stream_consumers(StreamARN=arn, MaxResults=2)
    assert len(page["Consumers"]) == 2 and page.get("NextToken")
    rest = kinesis.list_stream_consumers(StreamARN=arn, NextToken=page["NextToken"])
    names = [x["ConsumerName"] for x in page["Consumers"] + rest["Consumers"]]
    assert sorted(names) == ["app-1", "app-2", "app-3"]
    assert not rest.get("NextToken")
    assert kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "ConsumerCount"] == 3

    kinesis.deregister_stream_consumer(ConsumerARN=c2["ConsumerARN"])
    kinesis.deregister_stream_consumer(StreamARN=arn, ConsumerName="app-3")
    deadline = time.monotonic() + 15
    while True:
        names = sorted(x["ConsumerName"] for x in
                       kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]
                       if x["ConsumerStatus"] != "DELETING")
        if names == ["app-1"]:
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.05)
    deadline = time.monotonic() + 15
    while True:
        try:
            kinesis.describe_stream_consumer(ConsumerARN=c3["ConsumerARN"])
        except kinesis.exceptions.ResourceNotFoundException:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    expect_error("ResourceNotFoundException", kinesis.describe_stream_consumer,
                 StreamARN=arn, ConsumerName="never")


def test_delete_stream_with_consumers(kinesis):
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="c")
    expect_error("ResourceInUseException", kinesis.delete_stream, StreamName=name)
    expect_error("ResourceInUseException", kinesis.delete_stream, StreamName=name,
                 EnforceConsumerDeletion=False)
    assert name in kinesis.list_streams()["StreamNames"]
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    deadline = time.monotonic() + 15
    while name in kinesis.list_streams()["StreamNames"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _records_of(event):
    ev = event.get("SubscribeToShardEvent")
    assert ev is not None, f"unexpected event {list(event)}"
    return ev


@pytest.mark.timeout(90)
def test_subscribe_to_shard(server):
    kinesis = server.client()
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="efo")["Consumer"]
    wait_consumer_active(kinesis, consumer["ConsumerARN"])
    before = [kinesis.put_record(StreamName=name, Data=f"before-{i}".encode(),
                                 PartitionKey="k")["SequenceNumber"] for i in range(3)]

    sub_client = make_client(server.url, read_timeout=20)
    resp = sub_client.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"], ShardId=sid(0),
        StartingPosition={"Type": "TRIM_HORIZON"},
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    stream = resp["EventStream"]
    got = []
    seqs = []
    conts = []
    after_sent = threading.Event()
    expected = [f"before-{i}".encode() for i in range(3)] + [f"after-{i}".encode() for i in range(3)]

    def put_after():
        c = make_client(server.url)
        for i in range(3):
            c.put_record(StreamName=name, Data=f"after-{i}".encode(), PartitionKey="k")
        after_sent.set()

    writer = None
    deadline = time.monotonic() + 45
    events = 0
    try:
        for event in stream:
            events += 1
            ev = _records_of(event)
            assert "ContinuationSequenceNumber" in ev and SEQ_RE.match(ev["ContinuationSequenceNumber"])
            assert "MillisBehindLatest" in ev and ev["MillisBehindLatest"] >= 0
            conts.append(int(ev["ContinuationSequenceNumber"]))
            for r in ev["Records"]:
                got.append(r["Data"])
                seqs.append(r["SequenceNumber"])
            if writer is None:  # first event arrived: now write more
                writer = threading.Thread(target=put_after, daemon=True)
                writer.start()
            if got == expected:
                break
            assert time.monotonic() < deadline, f"only got {got} after {events} events"
    finally:
        stream.close()
    assert got == expected
    assert seqs[:3] == before
    assert conts == sorted(conts), "ContinuationSequenceNumber went backwards"
    # Clients order sequence numbers as integers (KCL checkpoints the continuation and, on
    # restart, drops records <= checkpoint), so the continuation must not sort below a
    # record it already delivered.
    assert conts[-1] >= int(seqs[-1]), (
        f"ContinuationSequenceNumber {conts[-1]} sorts below the last delivered record's "
        f"SequenceNumber {seqs[-1]}")
    writer.join(timeout=10)


@pytest.mark.timeout(90)
def test_subscribe_to_shard_latest_and_after_sequence(server):
    kinesis = server.client()
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    consumer = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="efo")["Consumer"]
    wait_consumer_active(kinesis, consumer["ConsumerARN"])
    first = kinesis.put_record(StreamName=name, Data=b"old-0", PartitionKey="k")
    kinesis.put_record(StreamName=name, Data=b"old-1", PartitionKey="k")

    sub = make_client(server.url, read_timeout=20)
    resp = sub.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"], ShardId=sid(0),
        StartingPosition={"Type": "AFTER_SEQUENCE_NUMBER",
                          "SequenceNumber": first["SequenceNumber"]},
    )
    stream = resp["EventStream"]
    got = []
    deadline = time.monotonic() + 30
    try:
        for event in stream:
            got += [r["Data"] for r in _records_of(event)["Records"]]
            if got:
                break
            assert time.monotonic() < deadline
    finally:
        stream.close()
    assert got == [b"old-1"]

    # unknown consumer / unknown shard are plain error responses
    bad_arn = consumer["ConsumerARN"].replace("/consumer/efo:", "/consumer/nope:")
    expect_error("ResourceNotFoundException", sub.subscribe_to_shard, ConsumerARN=bad_arn,
                 ShardId=sid(0), StartingPosition={"Type": "LATEST"})


def _collect(stream, want, timeout=30):
    """Read events until `want` records arrived; returns (datas, last continuation)."""
    got, cont = [], None
    deadline = time.monotonic() + timeout
    try:
        for event in stream:
            ev = _records_of(event)
            got += [r["Data"] for r in ev["Records"]]
            cont = ev.get("ContinuationSequenceNumber")
            if len(got) >= want:
                break
            assert time.monotonic() < deadline, f"only {got} after {timeout}s"
    finally:
        stream.close()
    return got, cont


@pytest.mark.timeout(90)
def test_subscribe_resume_from_continuation(server):
    """Resuming AFTER_SEQUENCE_NUMBER=ContinuationSequenceNumber neither repeats nor skips."""
    kinesis = server.client()
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    a = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="a")["Consumer"]
    b = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="b")["Consumer"]
    wait_consumer_active(kinesis, a["ConsumerARN"])
    wait_consumer_active(kinesis, b["ConsumerARN"])
    for i in range(3):
        kinesis.put_record(StreamName=name, Data=f"r{i}".encode(), PartitionKey="k")
    sub = make_client(server.url, read_timeout=20)
    got, cont = _collect(sub.subscribe_to_shard(
        ConsumerARN=a["ConsumerARN"], ShardId=sid(0),
        StartingPosition={"Type": "TRIM_HORIZON"})["EventStream"], 3)
    assert got == [b"r0", b"r1", b"r2"]
    assert cont and SEQ_RE.match(cont)
    for i in range(3, 5):
        kinesis.put_record(StreamName=name, Data=f"r{i}".encode(), PartitionKey="k")
    got, _ = _collect(sub.subscribe_to_shard(
        ConsumerARN=b["ConsumerARN"], ShardId=sid(0),
        StartingPosition={"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": cont})["EventStream"], 2)
    assert got == [b"r3", b"r4"]


@pytest.mark.timeout(60)
def test_subscribe_twice_within_5s_is_in_use(server):
    kinesis = server.client()
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    c = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="dup")["Consumer"]
    wait_consumer_active(kinesis, c["ConsumerARN"])
    sub = make_client(server.url, read_timeout=20)
    first = sub.subscribe_to_shard(ConsumerARN=c["ConsumerARN"], ShardId=sid(0),
                                   StartingPosition={"Type": "LATEST"})["EventStream"]
    try:
        other = make_client(server.url, read_timeout=20)
        expect_error("ResourceInUseException", other.subscribe_to_shard,
                     ConsumerARN=c["ConsumerARN"], ShardId=sid(0),
                     StartingPosition={"Type": "LATEST"})
    finally:
        first.close()


@pytest.mark.timeout(60)
def test_subscribe_closed_shard_ends_with_child_shards(server):
    kinesis = server.client()
    name = create_stream(kinesis, shards=1)
    arn = stream_arn(kinesis, name)
    c = kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="end")["Consumer"]
    wait_consumer_active(kinesis, c["ConsumerARN"])
    kinesis.put_record(StreamName=name, Data=b"only", PartitionKey="k")
    kinesis.split_shard(StreamName=name, ShardToSplit=sid(0), NewStartingHashKey=str(2**127))
    from sluice_helpers import wait_status
    wait_status(kinesis, name)
    sub = make_client(server.url, read_timeout=20)
    stream = sub.subscribe_to_shard(ConsumerARN=c["ConsumerARN"], ShardId=sid(0),
                                    StartingPosition={"Type": "TRIM_HORIZON"})["EventStream"]
    got, children = [], None
    deadline = time.monotonic() + 30
    try:
        for event in stream:
            ev = _records_of(event)
            got += [r["Data"] for r in ev["Records"]]
            if ev.get("ChildShards"):
                children = ev["ChildShards"]
                break
            assert time.monotonic() < deadline, "no ChildShards at the end of a closed shard"
    finally:
        stream.close()
    assert got == [b"only"]
    assert sorted(ch["ShardId"] for ch in children) == [sid(1), sid(2)]
    assert all(ch["ParentShards"] == [sid(0)] for ch in children)
