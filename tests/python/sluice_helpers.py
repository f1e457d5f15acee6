"""Shared helpers for the sluice end-to-end tests (imported by conftest and tests)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import socket
import struct
import time
import uuid

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

MAX_HASH = 2**128 - 1
SHARD_ID_RE = re.compile(r"^shardId-\d{12}$")
SEQ_RE = re.compile(r"^(0|[1-9]\d{0,128})$")
TARGET_PREFIX = "Kinesis_20131202."
JSON_CT = "application/x-amz-json-1.1"
CBOR_CT = "application/x-amz-cbor-1.1"
ONE_MIB = 1024 * 1024


def make_client(url, validate=True, read_timeout=30, connect_timeout=5):
    """A boto3 Kinesis client for `url` with retries off (one attempt)."""
    session = boto3.session.Session(
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    return session.client(
        "kinesis",
        endpoint_url=url,
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            parameter_validation=validate,
            max_pool_connections=10,
        ),
    )


def unique_name(prefix="s"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def md5_hash(pk: str) -> int:
    return int.from_bytes(hashlib.md5(pk.encode("utf-8")).digest(), "big")


# ---------------------------------------------------------------------------
# stream helpers
# ---------------------------------------------------------------------------


def wait_status(client, name, status="ACTIVE", timeout=15.0, **ident):
    ident = ident or {"StreamName": name}
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = client.describe_stream_summary(**ident)["StreamDescriptionSummary"]["StreamStatus"]
        if last == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"stream {name} still {last} after {timeout}s (wanted {status})")


def create_stream(client, name=None, shards=1, wait=True, **kw):
    name = name or unique_name()
    args = {"StreamName": name, **kw}
    if shards is not None:
        args["ShardCount"] = shards
    client.create_stream(**args)
    if wait:
        wait_status(client, name, "ACTIVE")
    return name


def stream_arn(client, name):
    return client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]


def list_all_shards(client, name=None, timeout=20.0, **kw):
    """All shards via ListShards, following NextToken (bounded)."""
    args = {"StreamName": name, **kw} if name else dict(kw)
    resp = client.list_shards(**args)
    shards = list(resp["Shards"])
    deadline = time.monotonic() + timeout
    while resp.get("NextToken"):
        assert time.monotonic() < deadline, "ListShards paging did not terminate"
        resp = client.list_shards(NextToken=resp["NextToken"])
        shards.extend(resp["Shards"])
    return shards


def open_shards(shards):
    return [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]


def hash_range(shard):
    r = shard["HashKeyRange"]
    return int(r["StartingHashKey"]), int(r["EndingHashKey"])


def shard_for_hash(shards, h):
    found = [s for s in open_shards(shards) if hash_range(s)[0] <= h <= hash_range(s)[1]]
    assert len(found) == 1, f"hash {h} is covered by {len(found)} open shards"
    return found[0]["ShardId"]


def assert_contiguous_cover(shards):
    """Open shards cover [0, 2^128-1] with no gap and no overlap."""
    ranges = sorted(hash_range(s) for s in open_shards(shards))
    assert ranges, "no open shards"
    assert ranges[0][0] == 0, f"key space does not start at 0: {ranges}"
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
        assert e1 + 1 == s2, f"gap/overlap between {(s1, e1)} and {(s2, e2)}"
    assert ranges[-1][1] == MAX_HASH, f"key space does not end at 2^128-1: {ranges}"
    for s, e in ranges:
        assert s <= e


def read_shard(client, name, shard_id, iterator_type="TRIM_HORIZON", limit=None,
               timeout=60.0, max_calls=2000, **it_kw):
    """Read a shard from `iterator_type` to its tip (or SHARD_END).

    Returns (records, last_get_records_response).  Stops when a page is empty
    and MillisBehindLatest == 0, or when NextShardIterator is absent.
    """
    it = client.get_shard_iterator(
        StreamName=name, ShardId=shard_id, ShardIteratorType=iterator_type, **it_kw
    )["ShardIterator"]
    records = []
    deadline = time.monotonic() + timeout
    resp = None
    for _ in range(max_calls):
        assert time.monotonic() < deadline, f"reading {shard_id} did not reach the tip in {timeout}s"
        args = {"ShardIterator": it}
        if limit:
            args["Limit"] = limit
        resp = client.get_records(**args)
        records.extend(resp["Records"])
        it = resp.get("NextShardIterator")
        if not it:
            break
        if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
            break
    else:
        raise AssertionError(f"reading {shard_id} took more than {max_calls} GetRecords calls")
    return records, resp


def client_error(fn, *args, **kwargs) -> dict:
    """Call fn, assert it raises ClientError, return the error response dict."""
    with pytest.raises(ClientError) as ei:
        fn(*args, **kwargs)
    return ei.value.response


def assert_error(resp, code, status=400):
    got = resp["Error"]["Code"]
    assert got == code, f"expected {code}, got {got}: {resp['Error'].get('Message')}"
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp["ResponseMetadata"]
    return resp["Error"].get("Message", "")


def expect_error(code, fn, *args, status=400, **kwargs) -> str:
    """Assert fn(...) fails with error `code` and HTTP `status`; return the message."""
    return assert_error(client_error(fn, *args, **kwargs), code, status)


VALIDATION_RE = re.compile(
    r"^(\d+) validation errors? detected: Value .* at '[A-Za-z0-9.]+' failed to satisfy "
    r"constraint: Member must .+",
    re.S,
)


# ---------------------------------------------------------------------------
# raw HTTP (signed with SigV4, so that auth checks on the server pass)
# ---------------------------------------------------------------------------

_CREDS = Credentials("test", "test")


def signed_headers(url, body: bytes, headers: dict) -> dict:
    req = AWSRequest(method="POST", url=url + "/", data=body, headers=dict(headers))
    SigV4Auth(_CREDS, "kinesis", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def raw_post(url, body: bytes, target: str | None, content_type=JSON_CT, timeout=30,
             extra_headers=None):
    headers = {"Content-Type": content_type}
    if target is not None:
        headers["X-Amz-Target"] = target if "." in target else TARGET_PREFIX + target
    headers.update(extra_headers or {})
    headers = signed_headers(url, body, headers)
    return requests.post(url + "/", data=body, headers=headers, timeout=timeout)


def json_call(url, op, payload: dict, timeout=30):
    return raw_post(url, json.dumps(payload).encode(), op, JSON_CT, timeout)


def error_type(resp_json: dict, headers=None) -> str:
    """Error code as the SDKs compute it: header first, then __type, minus ns#/:url."""
    code = None
    if headers is not None:
        code = headers.get("x-amzn-ErrorType")
    code = code or resp_json.get("__type") or resp_json.get("code") or ""
    code = code.split(":")[0]
    return code.split("#")[-1]


def health_ok(url) -> bool:
    try:
        return requests.get(url + "/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def raw_http(port, request_head: bytes, body_chunks=(), read_timeout=30.0):
    """Send a hand-made HTTP/1.1 request on a fresh socket; body is sent from a
    thread while the main thread reads the answer (so an early 413 is seen even
    if the server stops reading).  Returns (status_code or None, raw_response)."""
    import threading

    sock = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    sock.settimeout(read_timeout)

    def sender():
        try:
            sock.sendall(request_head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass
        t.join(timeout=read_timeout)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), data


# ---------------------------------------------------------------------------
# a small CBOR decoder that keeps the wire types (bytes vs text, tags)
# ---------------------------------------------------------------------------


class Tagged:
    def __init__(self, tag, value):
        self.tag, self.value = tag, value

    def __repr__(self):
        return f"Tagged({self.tag}, {self.value!r})"


class _Break:
    pass


_BREAK = _Break()


def cbor_decode(data: bytes):
    """Decode one CBOR item; byte strings -> bytes, text -> str, tags -> Tagged.
    Supports indefinite-length items.  Raises ValueError on trailing garbage."""
    value, pos = _cbor_item(data, 0)
    if pos != len(data):
        raise ValueError(f"trailing bytes after CBOR item at {pos}/{len(data)}")
    return value


def _cbor_arg(data, pos, info):
    if info < 24:
        return info, pos
    if info == 24:
        return data[pos], pos + 1
    if info == 25:
        return struct.unpack_from(">H", data, pos)[0], pos + 2
    if info == 26:
        return struct.unpack_from(">I", data, pos)[0], pos + 4
    if info == 27:
        return struct.unpack_from(">Q", data, pos)[0], pos + 8
    if info == 31:
        return None, pos
    raise ValueError(f"bad additional info {info}")


def _cbor_item(data, pos):
    ib = data[pos]
    pos += 1
    major, info = ib >> 5, ib & 31
    if major == 7:
        if ib == 0xFF:
            return _BREAK, pos
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info in (22, 23):
            return None, pos
        if info == 25:
            return struct.unpack_from(">e", data, pos)[0], pos + 2
        if info == 26:
            return struct.unpack_from(">f", data, pos)[0], pos + 4
        if info == 27:
            return struct.unpack_from(">d", data, pos)[0], pos + 8
        raise ValueError(f"unsupported simple value {info}")
    arg, pos = _cbor_arg(data, pos, info)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if arg is None:  # indefinite: chunks
            parts = []
            while True:
                item, pos = _cbor_item(data, pos)
                if item is _BREAK:
                    break
                parts.append(item)
            return (b"".join(parts) if major == 2 else "".join(parts)), pos
        raw = bytes(data[pos:pos + arg])
        if len(raw) != arg:
            raise ValueError("truncated string")
        return (raw if major == 2 else raw.decode("utf-8")), pos + arg
    if major == 4:
        out = []
        if arg is None:
            while True:
                item, pos = _cbor_item(data, pos)
                if item is _BREAK:
                    break
                out.append(item)
        else:
            for _ in range(arg):
                item, pos = _cbor_item(data, pos)
                out.append(item)
        return out, pos
    if major == 5:
        out = {}
        n = 0
        while arg is None or n < arg:
            k, pos = _cbor_item(data, pos)
            if k is _BREAK:
                break
            v, pos = _cbor_item(data, pos)
            out[k] = v
            n += 1
        return out, pos
    if major == 6:
        v, pos = _cbor_item(data, pos)
        return Tagged(arg, v), pos
    raise ValueError(f"bad major type {major}")


def cbor_post(url, op, payload, raw_body: bytes | None = None, timeout=30):
    import cbor2

    body = raw_body if raw_body is not None else cbor2.dumps(payload)
    r = raw_post(url, body, op, CBOR_CT, timeout=timeout)
    decoded = None
    if r.content:
        try:
            decoded = cbor_decode(r.content)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
            raise AssertionError(
                f"{op}: answer is not CBOR ({e}); status {r.status_code}, "
                f"Content-Type {r.headers.get('Content-Type')!r}, body {r.content[:200]!r}"
            ) from None
    return r, decoded


def now_utc():
    return dt.datetime.now(dt.timezone.utc)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
