"""What the `kinesis` source hands the sinks besides the payload (issue 10): each record's stream,
shard, sequence and sub-sequence number, partition key and arrival time, through the spool to a
file sink written with `metadata = true`; and `decompress = true`, which undoes the kinesis
sink's gzip / zstd compression and dead-letters a record that does not decompress.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

from aws_kinesis_agg.aggregator import RecordAggregator

from pipeline_helpers import (  # noqa: F401  (fixtures)
    kinesis_sink_toml,
    metric_sum,
    moto_server,
    pipeline_factory,
    pipeline_toml,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed
from test_kinesis_source import archived


def reader_toml(tmp_path: Path, endpoint: str, stream: str, application: str, extra=()):
    archive = tmp_path / f"archive-{application}"
    source = "\n".join([
        "[sources.in]", 'type = "kinesis"', f'stream_name = "{stream}"', f'endpoint = "{endpoint}"',
        f'application = "{application}"', 'starting_position = "trim_horizon"', 'idle_between_reads = "50ms"',
        'checkpoint_interval = "200ms"', *extra,
    ]) + "\n"
    sinks = "\n".join(["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"',
                       "metadata = true"]) + "\n"
    return pipeline_toml(tmp_path / f"data-{application}", source, sinks, embedded=False), archive


def test_every_record_reaches_the_sink_with_its_place_in_the_stream(server, kinesis, tmp_path, pipeline_factory):
    kinesis.create_stream(StreamName="meta", ShardCount=2)
    # Plain records: what PutRecords answered is what the sink must be told.
    plain = [{"Data": json.dumps({"i": i}).encode(), "PartitionKey": f"key-{i}"} for i in range(40)]
    answer = kinesis.put_records(StreamName="meta", Records=plain)
    assert answer["FailedRecordCount"] == 0
    expected = {i: (r["ShardId"], r["SequenceNumber"], f"key-{i}") for i, r in enumerate(answer["Records"])}
    # One KPL aggregate of 5 user records with their own keys: one sequence number, sub 0..4.
    agg = RecordAggregator()
    for j in range(5):
        agg.add_user_record(f"user-{j}", json.dumps({"agg": j}).encode())
    pk, _ehk, data = agg.clear_and_get().get_contents()
    agg_answer = kinesis.put_record(StreamName="meta", PartitionKey=pk, Data=data)

    # Arrival times as GetRecords reports them.
    arrival = {}
    for shard in ("shardId-000000000000", "shardId-000000000001"):
        it = kinesis.get_shard_iterator(StreamName="meta", ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for r in kinesis.get_records(ShardIterator=it, Limit=1000)["Records"]:
            arrival[r["SequenceNumber"]] = round(r["ApproximateArrivalTimestamp"].timestamp() * 1000)

    text, archive = reader_toml(tmp_path, server.url, "meta", "meta-reader")
    run = pipeline_factory(text, name="meta", expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 45, 60, "45 records archived",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    lines = archived(archive)
    assert len(lines) == 45
    arn = kinesis.describe_stream_summary(StreamName="meta")["StreamDescriptionSummary"]["StreamARN"]
    for line in lines:
        assert line["stream"] == "meta" and line["stream_arn"] == arn
        assert abs(line["arrival_ms"] - arrival[line["sequence_number"]]) <= 1, line
        assert line["received_ms"] >= line["arrival_ms"]
    by_i = {line["data"]["i"]: line for line in lines if "i" in line["data"]}
    assert set(by_i) == set(range(40))
    for i, (shard, seq, key) in expected.items():
        line = by_i[i]
        assert (line["shard_id"], line["sequence_number"], line["partition_key"]) == (shard, seq, key)
        assert line["sub_sequence_number"] == 0 and line["aggregated"] is False
    users = sorted((line for line in lines if "agg" in line["data"]), key=lambda line: line["data"]["agg"])
    assert [u["sub_sequence_number"] for u in users] == [0, 1, 2, 3, 4]
    assert [u["partition_key"] for u in users] == [f"user-{j}" for j in range(5)]
    assert all(u["aggregated"] is True for u in users)
    assert {u["sequence_number"] for u in users} == {agg_answer["SequenceNumber"]}
    assert {u["shard_id"] for u in users} == {agg_answer["ShardId"]}


def test_decompress_undoes_the_kinesis_sinks_compression(tmp_path, server, kinesis, ws_feed_factory, pipeline_factory):
    """A producer pipeline writes with `compression = "zstd"` and KPL aggregation; a reader
    with `decompress = true` gets the provider's payloads back. Gzip records put by hand
    decompress too; one that only looks like gzip is dead-lettered whole and reading goes on."""
    kinesis.create_stream(StreamName="packed", ShardCount=2)
    feed = Feed(total=300)
    provider = ws_feed_factory(feed)
    produce = pipeline_toml(
        tmp_path / "produce",
        ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
        kinesis_sink_toml("out", ["feed"], "packed", endpoint=server.url,
                          extra='compression = "zstd"\naggregate = true'),
        embedded=False,
    )
    producer = pipeline_factory(produce, name="produce", expect_embedded=False)

    def delivered():
        return sum(len(kinesis.get_records(ShardIterator=kinesis.get_shard_iterator(
            StreamName="packed", ShardId=s, ShardIteratorType="TRIM_HORIZON")["ShardIterator"], Limit=10000)["Records"])
            for s in ("shardId-000000000000", "shardId-000000000001"))

    wait_for(lambda: producer.sink("out")["delivered"] >= feed.total, 60, "the feed produced",
             details=lambda: producer.log_tail(20))
    assert delivered() > 0
    hand = [
        {"Data": gzip.compress(b'{"hand":1}'), "PartitionKey": "h"},
        {"Data": b'\x1f\x8b' + b'not really gzip', "PartitionKey": "h"},
        {"Data": gzip.compress(b'{"hand":2}'), "PartitionKey": "h"},
        {"Data": b'{"hand":3}', "PartitionKey": "h"},
    ]
    assert kinesis.put_records(StreamName="packed", Records=hand)["FailedRecordCount"] == 0

    text, archive = reader_toml(tmp_path, server.url, "packed", "unpacker", extra=["decompress = true"])
    run = pipeline_factory(text, name="unpack", expect_embedded=False)
    want = feed.total + 3
    wait_for(lambda: len(archived(archive)) >= want, 60, f"{want} records archived",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    lines = archived(archive)
    assert len(lines) == want
    got = sorted(json.dumps(line["data"], separators=(",", ":")) for line in lines if "seq" in line["data"])
    assert got == sorted(json.dumps(json.loads(feed.payload(s)), separators=(",", ":")) for s in range(1, feed.total + 1))
    assert all(line["aggregated"] for line in lines if "seq" in line["data"])
    assert [line["data"]["hand"] for line in lines if "hand" in line["data"]] == [1, 2, 3], "in shard order"
    assert metric_sum(run.metrics(), "sluice_dead_letters_total", component="in", reason="decompress_failed") == 1
    dead = [json.loads(x) for x in (tmp_path / "data-unpacker" / "dead-letter" / "in.ndjson").read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["reason"] == "decompress_failed"
    assert "shardId-" in dead[0]["detail"]


def test_a_pipeline_reads_moto_streams_with_its_lease_table_in_motos_dynamodb(moto_server, tmp_path, pipeline_factory):
    """Against an implementation that is not ours: moto's Kinesis for the records and moto's
    DynamoDB for the KCL lease table."""
    import boto3
    from test_kinesis_source import put

    kw = dict(endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    kinesis = boto3.client("kinesis", **kw)
    kinesis.create_stream(StreamName="src", ShardCount=2)
    wait_for(lambda: kinesis.describe_stream_summary(StreamName="src")["StreamDescriptionSummary"]["StreamStatus"]
             == "ACTIVE", 30, "the moto stream ACTIVE")
    put(kinesis, "src", 0, 300)
    text, archive = reader_toml(tmp_path, moto_server, "src", "moto-reader")
    run = pipeline_factory(text, name="moto", expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 300, 60, "300 records archived",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    lines = archived(archive)
    assert sorted(line["data"]["i"] for line in lines) == list(range(300))
    assert {line["shard_id"] for line in lines} == {"shardId-000000000000", "shardId-000000000001"}
    ddb = boto3.client("dynamodb", **kw)

    def checkpointed():
        items = ddb.scan(TableName="moto-reader", ConsistentRead=True)["Items"]
        return len(items) == 2 and all(i["checkpoint"]["S"].isdigit() for i in items) and items
    items = wait_for(checkpointed, 30, "both leases checkpointed in moto's DynamoDB")
    last = {}
    for line in lines:
        if int(line["sequence_number"]) > int(last.get(line["shard_id"], "-1")):
            last[line["shard_id"]] = line["sequence_number"]
    assert {i["leaseKey"]["S"]: i["checkpoint"]["S"] for i in items} == last
    run.stop()
    put(kinesis, "src", 300, 340)
    run.start(expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 340, 60, "the 40 new records",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    got = sorted(line["data"]["i"] for line in archived(archive))
    assert got == list(range(340)), f"{len(got)} records, {len(got) - len(set(got))} duplicates"


def test_kill_9_while_reading_kpl_aggregates_loses_no_user_record(server, kinesis, tmp_path, pipeline_factory):
    """KPL aggregates of 50 user records keep arriving while the reader is killed three times.
    Every user record arrives; what is read again after a kill (records spooled since the last
    checkpoint, and records the sink had not acknowledged) is printed."""
    import threading

    kinesis.create_stream(StreamName="agg", ShardCount=2)
    aggregates, per = 150, 50
    total = aggregates * per

    def produce():
        for a in range(aggregates):
            agg = RecordAggregator()
            for j in range(per):
                agg.add_user_record(f"k{(a * per + j) % 7}", json.dumps({"u": a * per + j}).encode())
            pk, _ehk, data = agg.clear_and_get().get_contents()
            kinesis.put_record(StreamName="agg", PartitionKey=pk, Data=data)
            time.sleep(0.02)

    producer = threading.Thread(target=produce, daemon=True)
    text, archive = reader_toml(tmp_path, server.url, "agg", "agg-reader",
                                extra=["max_records = 10", 'failover_time = "1s"'])
    run = pipeline_factory(text, name="agg", expect_embedded=False)
    producer.start()
    kills = 0
    for goal in (total // 5, total * 2 // 5, total * 3 // 5):
        wait_for(lambda: len(archived(archive)) >= goal, 60, f"{goal} user records",
                 details=lambda: run.log_tail(20))
        run.kill()
        kills += 1
        run.start(expect_embedded=False)
    producer.join(60)
    wait_for(lambda: len({line["data"]["u"] for line in archived(archive)}) >= total, 90, "every user record",
             details=lambda: f"{len({line['data']['u'] for line in archived(archive)})} of {total}\n{run.log_tail(20)}")
    lines = archived(archive)
    got = [line["data"]["u"] for line in lines]
    assert set(got) == set(range(total))
    dups = len(got) - len(set(got))
    print(f"{total} user records, {kills} kills, {dups} read again")
    # Per shard, user records arrive in (sequence, sub-sequence) order; only a restart after a
    # kill steps back: the spool hands the sink what it had not acknowledged, and the source
    # re-reads from its checkpoint what was spooled after it (two steps at most per kill).
    for shard in {line["shard_id"] for line in lines}:
        positions = [(int(line["sequence_number"]), line["sub_sequence_number"])
                     for line in lines if line["shard_id"] == shard]
        assert all(line["aggregated"] for line in lines if line["shard_id"] == shard)
        rewinds = sum(1 for a, b in zip(positions, positions[1:]) if b <= a)
        assert rewinds <= 2 * kills, f"{shard}: {rewinds} steps back for {kills} kills"
