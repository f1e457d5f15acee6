"""Raw HTTP robustness: malformed bodies, bad targets, oversized requests.

Requests are SigV4-signed with the dummy credentials so that only the
property under test is wrong.  After each abuse the server must still answer
GET /health with 200 (the fixture also fails the test if it exits).
"""

import json

import pytest

from sluice_helpers import (
    JSON_CT,
    b64,
    error_type,
    health_ok,
    json_call,
    raw_http,
    raw_post,
    signed_headers,
)


def _err(r):
    assert r.headers.get("Content-Type", "").startswith(JSON_CT), r.headers
    body = r.json()
    assert isinstance(body, dict)
    return error_type(body, r.headers), body


def _create(url, name, shards=1):
    r = json_call(url, "CreateStream", {"StreamName": name, "ShardCount": shards})
    assert r.status_code == 200, r.text


def test_json_roundtrip_and_headers(server):
    _create(server.url, "raw")
    r = json_call(server.url, "DescribeStreamSummary", {"StreamName": "raw"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith(JSON_CT)
    assert r.headers.get("x-amzn-RequestId")
    body = r.json()
    assert body["StreamDescriptionSummary"]["StreamName"] == "raw"
    ts = body["StreamDescriptionSummary"]["StreamCreationTimestamp"]
    assert isinstance(ts, (int, float)) and 1e9 < ts < 1e10, ts  # epoch seconds
    r = json_call(server.url, "PutRecord", {"StreamName": "raw", "Data": b64(b"hi"),
                                             "PartitionKey": "k"})
    assert r.status_code == 200 and r.json()["SequenceNumber"]
    r = json_call(server.url, "GetShardIterator", {"StreamName": "raw",
                                                   "ShardId": "shardId-000000000000",
                                                   "ShardIteratorType": "TRIM_HORIZON"})
    r = json_call(server.url, "GetRecords", {"ShardIterator": r.json()["ShardIterator"]})
    rec = r.json()["Records"][0]
    assert rec["Data"] == b64(b"hi")
    assert isinstance(rec["ApproximateArrivalTimestamp"], (int, float))
    assert 1e9 < rec["ApproximateArrivalTimestamp"] < 1e10


def test_malformed_json(server):
    for body in (b"{not json", b"[1,2,3]", b'"just a string"', b"{\"StreamName\": 5, \"ShardCount\": 1}"):
        r = raw_post(server.url, body, "CreateStream")
        assert r.status_code == 400, (body, r.status_code, r.text)
        code, _ = _err(r)
        assert code == "SerializationException", (body, r.text)
    assert health_ok(server.url)


def test_empty_body(server):
    r = raw_post(server.url, b"", "ListStreams")
    # kinesalite: no body -> SerializationException; an empty object is also fine for ListStreams
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert _err(r)[0] == "SerializationException"
    assert health_ok(server.url)


def test_bad_base64_data(server):
    _create(server.url, "b64")
    for data in ("!!!not base64!!!", "abc", "YQ=", "YQ==="):
        r = json_call(server.url, "PutRecord", {"StreamName": "b64", "Data": data,
                                                 "PartitionKey": "k"})
        assert r.status_code == 400, (data, r.text)
        assert _err(r)[0] == "SerializationException", (data, r.text)
    r = json_call(server.url, "PutRecords", {"StreamName": "b64", "Records": [
        {"Data": "%%%", "PartitionKey": "k"}]})
    assert r.status_code == 400 and _err(r)[0] == "SerializationException", r.text
    assert health_ok(server.url)


def test_unknown_operation(server):
    r = raw_post(server.url, b"{}", "Kinesis_20131202.Frobnicate")
    assert r.status_code == 400, r.text
    assert _err(r)[0] == "UnknownOperationException"
    r = raw_post(server.url, b"{}", "SomethingElse_20990101.ListStreams")
    assert r.status_code == 400, r.text
    assert _err(r)[0] == "UnknownOperationException"
    assert health_ok(server.url)


def test_missing_target(server):
    r = raw_post(server.url, b"{}", None)
    assert r.status_code == 400, (r.status_code, r.text)
    assert _err(r)[0] == "UnknownOperationException"
    assert health_ok(server.url)


@pytest.mark.timeout(120)
def test_huge_body_413(server):
    size = 20 * 1024 * 1024
    body_headers = signed_headers(server.url, b"", {
        "Content-Type": JSON_CT, "X-Amz-Target": "Kinesis_20131202.PutRecords"})
    head = [f"POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Length: {size}"]
    for k, v in body_headers.items():
        if k.lower() not in ("host", "content-length"):
            head.append(f"{k}: {v}")
    request_head = ("\r\n".join(head) + "\r\n\r\n").encode()
    prefix = b'{"StreamName":"x","Records":[{"PartitionKey":"k","Data":"'
    chunk = b"A" * (1024 * 1024)
    chunks = [prefix] + [chunk] * 19 + [b"A" * (1024 * 1024 - len(prefix) - 4) + b'"}]}']
    assert sum(map(len, chunks)) == size
    status, raw = raw_http(server.port, request_head, chunks, read_timeout=60)
    assert status == 413, raw[:500]
    assert health_ok(server.url)
    # and normal requests still work
    r = json_call(server.url, "ListStreams", {})
    assert r.status_code == 200 and r.json()["StreamNames"] == []


def test_huge_chunked_body_413(server):
    """Same without a Content-Length: chunked transfer of 20 MiB."""
    hdrs = signed_headers(server.url, b"", {
        "Content-Type": JSON_CT, "X-Amz-Target": "Kinesis_20131202.ListStreams"})
    head = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Transfer-Encoding: chunked"]
    head += [f"{k}: {v}" for k, v in hdrs.items() if k.lower() not in ("host", "content-length")]
    piece = b"A" * (1024 * 1024)
    chunks = [b"%x\r\n" % len(piece) + piece + b"\r\n"] * 20 + [b"0\r\n\r\n"]
    status, raw = raw_http(server.port, ("\r\n".join(head) + "\r\n\r\n").encode(), chunks,
                           read_timeout=60)
    assert status == 413, raw[:500]
    assert health_ok(server.url)


def test_wrong_content_type_does_not_crash(server):
    r = raw_post(server.url, b"{}", "ListStreams", content_type="text/plain")
    assert 400 <= r.status_code < 500, r.status_code
    assert health_ok(server.url)


def test_error_body_shape(server):
    r = json_call(server.url, "DescribeStream", {"StreamName": "missing"})
    assert r.status_code == 400
    code, body = _err(r)
    assert code == "ResourceNotFoundException"
    assert body.get("message") or body.get("Message")
    # only the documented keys
    assert set(body) <= {"__type", "message", "Message"}, body
    json.dumps(body)
