"""CBOR wire format (what the Java SDKs, and so KCL, speak by default)."""

import time

import cbor2

from sluice_helpers import CBOR_CT, Tagged, cbor_decode, cbor_post, health_ok, raw_post


def _now_ms():
    return int(time.time() * 1000)


def _assert_ms_timestamp(v, slack_ms=120_000):
    assert isinstance(v, Tagged), f"timestamp is not tagged: {v!r}"
    assert v.tag == 1, v
    assert isinstance(v.value, int) and not isinstance(v.value, bool), (
        f"timestamp must be an integer (epoch milliseconds), got {v.value!r}")
    assert abs(v.value - _now_ms()) < slack_ms, (
        f"{v.value} is not epoch milliseconds close to now ({_now_ms()})")


def test_cbor_create_put_get(server):
    r, body = cbor_post(server.url, "CreateStream", {"StreamName": "cb", "ShardCount": 1})
    assert r.status_code == 200, (r.status_code, r.content[:300])
    payload = bytes(range(256))
    r, body = cbor_post(server.url, "PutRecord",
                        {"StreamName": "cb", "Data": payload, "PartitionKey": "pk"})
    assert r.status_code == 200, body
    assert r.headers["Content-Type"].startswith(CBOR_CT)
    assert body["ShardId"] == "shardId-000000000000"
    seq = body["SequenceNumber"]
    assert isinstance(seq, str) and seq.isdigit()

    r, body = cbor_post(server.url, "PutRecords", {"StreamName": "cb", "Records": [
        {"Data": b"second", "PartitionKey": "pk"}]})
    assert r.status_code == 200, body
    assert body.get("FailedRecordCount", 0) == 0
    assert body["Records"][0]["SequenceNumber"]

    r, body = cbor_post(server.url, "GetShardIterator", {
        "StreamName": "cb", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"})
    assert r.status_code == 200, body
    it = body["ShardIterator"]
    r, body = cbor_post(server.url, "GetRecords", {"ShardIterator": it})
    assert r.status_code == 200, body
    assert r.headers["Content-Type"].startswith(CBOR_CT)
    recs = body["Records"]
    assert len(recs) == 2
    assert type(recs[0]["Data"]) is bytes, "Data must be a CBOR byte string (major type 2)"
    assert recs[0]["Data"] == payload
    assert recs[1]["Data"] == b"second"
    assert recs[0]["SequenceNumber"] == seq
    assert recs[0]["PartitionKey"] == "pk"
    for rec in recs:
        _assert_ms_timestamp(rec["ApproximateArrivalTimestamp"])
    assert body["NextShardIterator"]
    assert body["MillisBehindLatest"] == 0
    # the raw bytes really use major type 2 for the payload
    assert (bytes([0x40 | len(b"second")]) + b"second") in r.content


def test_cbor_describe_stream_timestamp(server):
    cbor_post(server.url, "CreateStream", {"StreamName": "cb2", "ShardCount": 2})
    r, body = cbor_post(server.url, "DescribeStream", {"StreamName": "cb2"})
    assert r.status_code == 200, body
    d = body["StreamDescription"]
    assert d["StreamName"] == "cb2"
    assert len(d["Shards"]) == 2
    _assert_ms_timestamp(d["StreamCreationTimestamp"])
    r, body = cbor_post(server.url, "DescribeStreamSummary", {"StreamName": "cb2"})
    assert r.status_code == 200, body
    _assert_ms_timestamp(body["StreamDescriptionSummary"]["StreamCreationTimestamp"])


def test_cbor_timestamp_input(server):
    """AT_TIMESTAMP with a CBOR tag-1 epoch-millisecond timestamp (Java SDK style)."""
    cbor_post(server.url, "CreateStream", {"StreamName": "cb3", "ShardCount": 1})
    cbor_post(server.url, "PutRecord", {"StreamName": "cb3", "Data": b"old", "PartitionKey": "k"})
    time.sleep(1.2)
    ts_ms = _now_ms()
    time.sleep(0.2)
    cbor_post(server.url, "PutRecord", {"StreamName": "cb3", "Data": b"new", "PartitionKey": "k"})
    for ts in (cbor2.CBORTag(1, ts_ms), ts_ms / 1000.0):
        r, body = cbor_post(server.url, "GetShardIterator", {
            "StreamName": "cb3", "ShardId": "shardId-000000000000",
            "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": ts})
        assert r.status_code == 200, body
        r, body = cbor_post(server.url, "GetRecords", {"ShardIterator": body["ShardIterator"]})
        assert [x["Data"] for x in body["Records"]] == [b"new"], (ts, body)


def test_cbor_error_has_type(server):
    r, body = cbor_post(server.url, "DescribeStream", {"StreamName": "missing"})
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith(CBOR_CT)
    assert isinstance(body, dict)
    assert body["__type"].split("#")[-1] == "ResourceNotFoundException"
    assert body.get("message") or body.get("Message")
    r, body = cbor_post(server.url, "CreateStream", {"StreamName": "bad name", "ShardCount": 1})
    assert r.status_code == 400
    assert body["__type"].split("#")[-1] == "ValidationException"


def test_cbor_malformed(server):
    r = raw_post(server.url, b"\xbf\x61", "ListStreams", CBOR_CT)  # truncated
    assert r.status_code == 400
    body = cbor_decode(r.content)
    assert body["__type"].split("#")[-1] == "SerializationException"
    # Data as a text string instead of bytes is a type error
    cbor_post(server.url, "CreateStream", {"StreamName": "cb4", "ShardCount": 1})
    r, body = cbor_post(server.url, "PutRecord", {"StreamName": "cb4", "Data": 12345,
                                                  "PartitionKey": "k"})
    assert r.status_code == 400
    assert body["__type"].split("#")[-1] == "SerializationException"
    assert health_ok(server.url)


def test_cbor_indefinite_length_map(server):
    cbor_post(server.url, "CreateStream", {"StreamName": "cb5", "ShardCount": 1})
    # {_ "StreamName": "cb5", "Data": (_ h'6869', h'21'), "PartitionKey": "k"}  (Jackson style)
    body = (b"\xbf"
            + cbor2.dumps("StreamName") + cbor2.dumps("cb5")
            + cbor2.dumps("Data") + b"\x5f" + cbor2.dumps(b"hi") + cbor2.dumps(b"!") + b"\xff"
            + cbor2.dumps("PartitionKey") + cbor2.dumps("k")
            + b"\xff")
    r, resp = cbor_post(server.url, "PutRecord", None, raw_body=body)
    assert r.status_code == 200, resp
    assert resp["SequenceNumber"]
    # indefinite-length map + indefinite array in PutRecords
    body = (b"\xbf" + cbor2.dumps("StreamName") + cbor2.dumps("cb5") + cbor2.dumps("Records")
            + b"\x9f" + cbor2.dumps({"Data": b"x", "PartitionKey": "k"}) + b"\xff" + b"\xff")
    r, resp = cbor_post(server.url, "PutRecords", None, raw_body=body)
    assert r.status_code == 200, resp
    assert resp.get("FailedRecordCount", 0) == 0
    r, resp = cbor_post(server.url, "GetShardIterator", None, raw_body=(
        b"\xbf" + cbor2.dumps("StreamName") + cbor2.dumps("cb5")
        + cbor2.dumps("ShardId") + cbor2.dumps("shardId-000000000000")
        + cbor2.dumps("ShardIteratorType") + cbor2.dumps("TRIM_HORIZON") + b"\xff"))
    assert r.status_code == 200, resp
    r, resp = cbor_post(server.url, "GetRecords", {"ShardIterator": resp["ShardIterator"]})
    assert [x["Data"] for x in resp["Records"]] == [b"hi!", b"x"]
