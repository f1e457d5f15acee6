"""Error responses through boto3: exception names, HTTP 400, AWS-shaped messages.

Client-side parameter validation is switched off (`kinesis_novalidate`) where the
request is deliberately invalid, so the server is what rejects it.
"""

import re

from sluice_helpers import (
    MAX_HASH,
    ONE_MIB,
    VALIDATION_RE,
    client_error,
    create_stream,
    expect_error,
    stream_arn,
)


def test_unknown_stream_is_not_found(kinesis):
    n = "does-not-exist"
    calls = [
        (kinesis.describe_stream, {"StreamName": n}),
        (kinesis.describe_stream_summary, {"StreamName": n}),
        (kinesis.delete_stream, {"StreamName": n}),
        (kinesis.list_shards, {"StreamName": n}),
        (kinesis.put_record, {"StreamName": n, "Data": b"x", "PartitionKey": "k"}),
        (kinesis.put_records, {"StreamName": n, "Records": [{"Data": b"x", "PartitionKey": "k"}]}),
        (kinesis.get_shard_iterator, {"StreamName": n, "ShardId": "shardId-000000000000",
                                      "ShardIteratorType": "TRIM_HORIZON"}),
        (kinesis.add_tags_to_stream, {"StreamName": n, "Tags": {"a": "b"}}),
        (kinesis.list_tags_for_stream, {"StreamName": n}),
        (kinesis.split_shard, {"StreamName": n, "ShardToSplit": "shardId-000000000000",
                               "NewStartingHashKey": "100"}),
        (kinesis.update_shard_count, {"StreamName": n, "TargetShardCount": 2,
                                      "ScalingType": "UNIFORM_SCALING"}),
        (kinesis.increase_stream_retention_period, {"StreamName": n, "RetentionPeriodHours": 48}),
    ]
    for fn, kw in calls:
        msg = expect_error("ResourceNotFoundException", fn, **kw)
        assert msg, f"{fn.__name__}: empty message"


def test_create_twice(kinesis):
    name = create_stream(kinesis, shards=1)
    msg = expect_error("ResourceInUseException", kinesis.create_stream, StreamName=name,
                       ShardCount=2)
    assert name in msg


def test_validation_bad_stream_name(kinesis_novalidate):
    msg = expect_error("ValidationException", kinesis_novalidate.create_stream,
                       StreamName="bad name!", ShardCount=1)
    assert msg == (
        "1 validation error detected: Value 'bad name!' at 'streamName' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
    )
    msg = expect_error("ValidationException", kinesis_novalidate.describe_stream_summary,
                       StreamName="x" * 129)
    assert msg == (
        f"1 validation error detected: Value '{'x' * 129}' at 'streamName' failed to satisfy "
        "constraint: Member must have length less than or equal to 128"
    )


def test_validation_shard_count_zero(kinesis_novalidate):
    msg = expect_error("ValidationException", kinesis_novalidate.create_stream,
                       StreamName="ok-name", ShardCount=0)
    assert msg == (
        "1 validation error detected: Value '0' at 'shardCount' failed to satisfy "
        "constraint: Member must have value greater than or equal to 1"
    )
    assert "ok-name" not in kinesis_novalidate.list_streams()["StreamNames"]


def test_validation_partition_key_too_long(kinesis_novalidate):
    c = kinesis_novalidate
    name = create_stream(c, shards=1)
    pk = "p" * 257
    msg = expect_error("ValidationException", c.put_record, StreamName=name, Data=b"x",
                       PartitionKey=pk)
    assert msg == (
        f"1 validation error detected: Value '{pk}' at 'partitionKey' failed to satisfy "
        "constraint: Member must have length less than or equal to 256"
    )
    # 256 is fine
    c.put_record(StreamName=name, Data=b"x", PartitionKey="p" * 256)
    msg = expect_error("ValidationException", c.put_record, StreamName=name, Data=b"x",
                       PartitionKey="")
    assert VALIDATION_RE.match(msg) and "'partitionKey'" in msg, msg


def test_record_too_large(kinesis_novalidate):
    c = kinesis_novalidate
    name = create_stream(c, shards=1)
    # data alone over 1 MiB
    msg = expect_error("ValidationException", c.put_record, StreamName=name,
                       Data=b"\0" * (ONE_MIB + 1), PartitionKey="k")
    assert re.match(
        r"^1 validation error detected: Value '.*' at 'data' failed to satisfy constraint: "
        r"Member must have length less than or equal to 1048576$", msg), msg
    # same inside PutRecords: the path names the record
    msg = expect_error("ValidationException", c.put_records, StreamName=name, Records=[
        {"Data": b"ok", "PartitionKey": "k"},
        {"Data": b"\0" * (ONE_MIB + 1), "PartitionKey": "k"}])
    assert re.match(r"^1 validation error detected: Value '.*' at 'records\.2\.member\.data' "
                    r"failed to satisfy constraint: Member must have length less than or "
                    r"equal to 1048576$", msg), msg


def test_record_data_plus_key_limit(kinesis_novalidate):
    c = kinesis_novalidate
    name = create_stream(c, shards=1)
    key = "k" * 10
    # data + key == 1 MiB exactly: accepted
    r = c.put_record(StreamName=name, Data=b"\1" * (ONE_MIB - len(key)), PartitionKey=key)
    assert r["SequenceNumber"]
    # data + key == 1 MiB + 1 (data alone is under 1 MiB): rejected with a 400
    resp = client_error(c.put_record, StreamName=name, Data=b"\1" * (ONE_MIB + 1 - len(key)),
                        PartitionKey=key)
    code = resp["Error"]["Code"]
    msg = resp["Error"].get("Message", "")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert code in ("ValidationException", "InvalidArgumentException"), (code, msg)
    assert msg
    if code == "ValidationException":
        assert VALIDATION_RE.match(msg), msg


def test_put_records_too_many(kinesis_novalidate):
    c = kinesis_novalidate
    name = create_stream(c, shards=1)
    msg = expect_error("ValidationException", c.put_records, StreamName=name,
                       Records=[{"Data": b"x", "PartitionKey": "k"}] * 501)
    assert re.match(r"^1 validation error detected: Value '.*' at 'records' failed to satisfy "
                    r"constraint: Member must have length less than or equal to 500$", msg, re.S), msg[:300]
    msg = expect_error("ValidationException", c.put_records, StreamName=name, Records=[])
    assert VALIDATION_RE.match(msg) and "'records'" in msg
    # exactly 500 is fine
    r = c.put_records(StreamName=name, Records=[{"Data": b"x", "PartitionKey": "k"}] * 500)
    assert r.get("FailedRecordCount", 0) == 0 and len(r["Records"]) == 500


def test_explicit_hash_key_out_of_range(kinesis_novalidate):
    c = kinesis_novalidate
    name = create_stream(c, shards=2)
    expect_error("InvalidArgumentException", c.put_record, StreamName=name, Data=b"x",
                 PartitionKey="k", ExplicitHashKey=str(MAX_HASH + 1))
    expect_error("InvalidArgumentException", c.put_records, StreamName=name, Records=[
        {"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": str(MAX_HASH + 1)}])
    msg = expect_error("ValidationException", c.put_record, StreamName=name, Data=b"x",
                       PartitionKey="k", ExplicitHashKey="12abc")
    assert VALIDATION_RE.match(msg) and "'explicitHashKey'" in msg, msg
    assert c.put_record(StreamName=name, Data=b"x", PartitionKey="k",
                        ExplicitHashKey=str(MAX_HASH))["ShardId"] == "shardId-000000000001"


def test_retention_out_of_range(kinesis_novalidate):
    c = kinesis_novalidate
    name = create_stream(c, shards=1)
    expect_error("InvalidArgumentException", c.increase_stream_retention_period,
                 StreamName=name, RetentionPeriodHours=8761)
    expect_error("InvalidArgumentException", c.decrease_stream_retention_period,
                 StreamName=name, RetentionPeriodHours=23)
    # 0 breaks the service model's own minimum (1), so it is a ValidationException there
    # (kinesalite, copied from the real service, agrees)
    msg = expect_error("ValidationException", c.decrease_stream_retention_period,
                       StreamName=name, RetentionPeriodHours=0)
    assert VALIDATION_RE.match(msg) and "'retentionPeriodHours'" in msg, msg
    assert c.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "RetentionPeriodHours"] == 24


def test_stream_name_and_arn_must_agree(kinesis):
    a = create_stream(kinesis, shards=1)
    b = create_stream(kinesis, shards=1)
    resp = client_error(kinesis.describe_stream_summary, StreamName=a,
                        StreamARN=stream_arn(kinesis, b))
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert resp["Error"]["Code"] in ("InvalidArgumentException", "ValidationException",
                                     "ResourceNotFoundException"), resp["Error"]


def test_error_response_has_request_id(kinesis):
    resp = client_error(kinesis.describe_stream_summary, StreamName="nope")
    rid = resp["ResponseMetadata"].get("RequestId")
    assert rid and len(rid) >= 16, resp["ResponseMetadata"]
