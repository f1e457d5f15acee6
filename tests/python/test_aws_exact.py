"""AWS-exact answers to wrong requests (issue 13), through boto3 against `sluice serve`.

Each case is what the real service answers (as recorded in kinesalite's tests and the botocore
model); every refused request must also leave the stream as it was.
"""

import pytest

from sluice_helpers import create_stream, expect_error, list_all_shards

ACCOUNT = "000000000000"
BAD_CHARS = "Some tags contain invalid characters. Valid characters: Unicode letters, digits, white space, _ . / = + - % @ :."


def tags_of(kinesis, name):
    return {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName=name)["Tags"]}


@pytest.mark.parametrize("bad", ["semi;colon", "tab\there", "new\nline", "com,ma", "emoji\U0001F600"])
def test_tags_with_invalid_characters_are_refused_and_change_nothing(kinesis, bad):
    name = create_stream(kinesis, shards=1)
    kinesis.add_tags_to_stream(StreamName=name, Tags={"keep": "me"})
    for tags in ({bad: "v"}, {"k": bad}):
        msg = expect_error("InvalidArgumentException", kinesis.add_tags_to_stream, StreamName=name, Tags=tags)
        assert msg == BAD_CHARS
    msg = expect_error("InvalidArgumentException", kinesis.remove_tags_from_stream, StreamName=name,
                       TagKeys=["keep", bad])
    assert msg == BAD_CHARS
    assert tags_of(kinesis, name) == {"keep": "me"}


def test_a_percent_sign_in_tags_gets_the_second_message(kinesis):
    name = create_stream(kinesis, shards=1)
    msg = expect_error("InvalidArgumentException", kinesis.add_tags_to_stream, StreamName=name,
                       Tags={"a%b": "v"})
    assert msg == (
        f"Failed to add tags to stream {name} under account {ACCOUNT} because some tags contained illegal "
        "characters. The allowed characters are Unicode letters, white-spaces, '_',',','/','=','+','-','@',':'."
    )
    msg = expect_error("InvalidArgumentException", kinesis.remove_tags_from_stream, StreamName=name,
                       TagKeys=["100%"])
    assert msg.startswith(f"Failed to remove tags from stream {name} under account {ACCOUNT} because")
    assert tags_of(kinesis, name) == {}
    # What AWS accepts: letters beyond ASCII, spaces, and the listed punctuation.
    ok = {"Größe é": "a_b.c/d=e+f-g@h:i", "名前": "値"}
    kinesis.add_tags_to_stream(StreamName=name, Tags=ok)
    assert tags_of(kinesis, name) == ok


def test_merge_needs_the_lower_shard_first(kinesis):
    name = create_stream(kinesis, shards=2)
    before = list_all_shards(kinesis, name)
    msg = expect_error("InvalidArgumentException", kinesis.merge_shards, StreamName=name,
                       ShardToMerge="shardId-000000000001", AdjacentShardToMerge="shardId-000000000000")
    assert msg == (
        f"Shards shardId-000000000001 and shardId-000000000000 in stream {name} under account {ACCOUNT} "
        "are not an adjacent pair of shards eligible for merging"
    )
    assert list_all_shards(kinesis, name) == before
    assert kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
    kinesis.merge_shards(StreamName=name, ShardToMerge="shardId-000000000000",
                         AdjacentShardToMerge="shardId-000000000001")


def test_shard_ids_are_named_normalized(kinesis):
    name = create_stream(kinesis, shards=1)
    for given in ("shardId-5", "5", "shardId-000000000005"):
        msg = expect_error("ResourceNotFoundException", kinesis.get_shard_iterator, StreamName=name,
                           ShardId=given, ShardIteratorType="TRIM_HORIZON")
        assert msg == f"Shard shardId-000000000005 in stream {name} under account {ACCOUNT} does not exist"
        msg = expect_error("ResourceNotFoundException", kinesis.split_shard, StreamName=name,
                           ShardToSplit=given, NewStartingHashKey="100")
        assert msg == f"Could not find shard shardId-000000000005 in stream {name} under account {ACCOUNT}."
    # An unknown stream with a valid shard id names the shard.
    msg = expect_error("ResourceNotFoundException", kinesis.get_shard_iterator, StreamName="no-such-stream",
                       ShardId="shardId-7", ShardIteratorType="TRIM_HORIZON")
    assert msg == f"Shard shardId-000000000007 in stream no-such-stream under account {ACCOUNT} does not exist"


def test_an_iterator_of_a_deleted_stream_names_the_shard(kinesis):
    name = create_stream(kinesis, shards=1)
    it = kinesis.get_shard_iterator(StreamName=name, ShardId="shardId-000000000000",
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    kinesis.delete_stream(StreamName=name)
    msg = expect_error("ResourceNotFoundException", kinesis.get_records, ShardIterator=it)
    assert msg == f"Shard shardId-000000000000 in stream {name} under account {ACCOUNT} does not exist"


def test_a_browser_preflight_is_answered_and_responses_carry_cors_and_ids(server, kinesis):
    import requests

    from sluice_helpers import raw_post

    origin = {"Origin": "http://localhost:8080"}
    r = requests.options(server.url + "/", headers={
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-amz-date,x-amz-target,x-amz-user-agent",
    }, timeout=10)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Methods"] == "POST"
    assert r.headers["Access-Control-Allow-Headers"] == "authorization,content-type,x-amz-date,x-amz-target,x-amz-user-agent"
    assert r.headers["Access-Control-Max-Age"] == "172800"
    assert r.headers["x-amzn-RequestId"] and "x-amz-id-2" not in r.headers
    # A call from the page: the answer is readable by the page, errors too.
    name = create_stream(kinesis, shards=1)
    ok = raw_post(server.url, b'{"StreamName": "%s"}' % name.encode(), "DescribeStreamSummary", extra_headers=origin)
    bad = raw_post(server.url, b'{"StreamName": "nope"}', "DescribeStreamSummary", extra_headers=origin)
    for resp in (ok, bad):
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "x-amzn-ErrorType" in resp.headers["Access-Control-Expose-Headers"]
        assert resp.headers["x-amzn-RequestId"] and len(resp.headers["x-amz-id-2"]) == 96
    assert ok.status_code == 200 and bad.status_code == 400
    # Without Origin there are no CORS headers, and still both ids.
    plain = raw_post(server.url, b'{"StreamName": "%s"}' % name.encode(), "DescribeStreamSummary")
    assert "Access-Control-Allow-Origin" not in plain.headers and plain.headers["x-amz-id-2"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_access_denied(server, method):
    import requests

    r = requests.request(method, server.url + "/", data=b"{}", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Kinesis_20131202.ListStreams"}, timeout=10)
    assert r.status_code == 403
    assert r.text == ("<AccessDeniedException>\n  <Message>Unable to determine service/operation name to be "
                      "authorized</Message>\n</AccessDeniedException>\n")
    assert r.headers["x-amzn-RequestId"]


def test_query_string_authentication_must_be_complete(server):
    import requests

    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Kinesis_20131202.ListStreams"}
    partial = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20260101%2Fus-east-1%2Fkinesis%2Faws4_request"
               "&X-Amz-Signature=abc&X-Amz-Date=20260101T000000Z")
    r = requests.post(server.url + "/?" + partial, data=b"{}", headers=headers, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json() == {"__type": "IncompleteSignatureException",
                        "message": "AWS query-string parameters must include 'X-Amz-SignedHeaders'. "
                                   "Re-examine the query-string parameters."}
    both = requests.post(server.url + "/?" + partial + "&X-Amz-SignedHeaders=host", data=b"{}",
                         headers={**headers, "Authorization": "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, "
                                  "SignedHeaders=host, Signature=abc", "X-Amz-Date": "20260101T000000Z"}, timeout=10)
    assert both.json()["__type"] == "InvalidSignatureException"
    assert both.json()["message"].startswith("Found both 'X-Amz-Algorithm' as a query-string param")


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def test_records_past_retention_are_never_returned_even_inside_a_kept_segment(server_factory, tmp_path, monkeypatch):
    """The clock moves 25 h ahead (libfaketime): the 24 h stream's old records sit in a segment
    far from full, so nothing trims them, yet no read returns them."""
    import os

    if not os.path.exists(LIBFAKETIME):
        pytest.skip("libfaketime is not installed (.ci/run installs the faketime package)")
    data = tmp_path / "retained"
    srv = server_factory(data_dir=data)
    client = srv.client()
    name = create_stream(client, shards=1)
    for i in range(5):
        client.put_record(StreamName=name, Data=b"old %d" % i, PartitionKey="k")
    srv.stop()
    monkeypatch.setenv("LD_PRELOAD", LIBFAKETIME)
    monkeypatch.setenv("FAKETIME", "+25h")
    later = server_factory(data_dir=data)
    client = later.client()
    client.put_record(StreamName=name, Data=b"new", PartitionKey="k")
    it = client.get_shard_iterator(StreamName=name, ShardId="shardId-000000000000",
                                   ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    got = []
    for _ in range(5):
        r = client.get_records(ShardIterator=it)
        got += [x["Data"] for x in r["Records"]]
        it = r["NextShardIterator"]
    assert got == [b"new"]


SERIALIZATION_CASES = [
    # (operation, request, the service's message): types are checked before anything else.
    ("DescribeStreamSummary", {"StreamARN": True}, "class java.lang.Boolean can not be converted to an String"),
    ("CreateStream", {"StreamName": "ok", "ShardCount": "2"}, "class java.lang.String can not be converted to an Integer"),
    ("CreateStream", {"StreamName": "", "ShardCount": 0, "Tags": "x"}, "Expected map or null"),
    ("AddTagsToStream", {"Tags": {"k": {"nested": 1}}}, "Start of structure or map found where not expected."),
    ("RemoveTagsFromStream", {"StreamName": "s", "TagKeys": [["a"]]}, "Start of list found where not expected"),
    ("DeleteStream", {"StreamName": "s", "EnforceConsumerDeletion": "maybe"}, "'MAYBE' can not be converted to an Boolean"),
    ("PutRecord", {"StreamName": "s", "PartitionKey": "k", "Data": "abc"},
     "'abc' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes but found: 3"),
    ("PutRecords", {"StreamName": "s", "Records": [{"PartitionKey": "k", "Data": False}]},
     "class java.lang.Boolean can not be converted to a Blob"),
    ("ListShards", {"ShardFilter": "AT_LATEST"}, "Expected null"),
]


@pytest.mark.parametrize("op,request_body,message", SERIALIZATION_CASES, ids=[c[0] + str(i) for i, c in enumerate(SERIALIZATION_CASES)])
def test_type_errors_come_first_worded_as_aws_words_them(server, op, request_body, message):
    import json

    from sluice_helpers import cbor_post, json_call

    r = json_call(server.url, op, request_body)
    assert r.status_code == 400
    assert r.json() == {"__type": "SerializationException", "Message": message}
    resp, body = cbor_post(server.url, op, request_body)
    assert resp.status_code == 400 and body == {"__type": "SerializationException", "Message": message}, body
    # Nothing was created or changed by a refused request.
    assert json.loads(json_call(server.url, "ListStreams", {}).content)["StreamNames"] == []
