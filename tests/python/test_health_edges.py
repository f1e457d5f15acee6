"""Health that tells the truth, and the HTTP edges (issue 9, items 6 and 7).

* `sluice run`: `/health` answers 503 with `out: sink_failing` while the sink's endpoint
  refuses for longer than `[api] sink_failing_after`, and 200 once it delivers again.
* `sluice run` with its spool on a tiny tmpfs: `feed: source_paused` (the source waits on its
  full spool queue) and `spool: spool_write_failed` while the disk is full; 200 after it grows.
* `sluice serve` with its data dir on a tiny tmpfs: 503 `store_write_failed` while appends
  fail; 200 once space is back and an append succeeds.
* `sluice serve --header-timeout-secs 1`: a connection with a partial request header (long or
  shorter than the HTTP/2 preface) and an idle keep-alive connection are closed after ~1 s.
* A `Content-Length: 1000000000` PutRecord gets 413 at once, without any of the body sent.

The tmpfs tests need root for `mount` and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import requests

from conftest import LISTEN_RE, sluice_bin
from pipeline_helpers import (  # noqa: F401  (fixtures)
    Process,
    free_port,
    kinesis_sink_toml,
    metric_sum,
    parse_metrics,
    pipeline_factory,
    pipeline_toml,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed
from sluice_helpers import b64, json_call, signed_headers

STREAM = "race"


def with_api(text: str, option: str) -> str:
    """Adds `option` to the `[api]` table `pipeline_toml` writes."""
    head = '[api]\nlisten = "127.0.0.1:0"\n'
    assert head in text
    return text.replace(head, head + option.strip() + "\n", 1)


def down_sink(port: int) -> str:
    """A Kinesis sink whose endpoint is `port` on loopback (refused until something listens)."""
    return kinesis_sink_toml(
        "out", ["feed"], STREAM, endpoint=f"http://127.0.0.1:{port}",
        extra='shards = 1\nrequest_timeout = "2s"\nretry_backoff = { base = "50ms", max = "300ms" }',
    )


def health(url: str) -> tuple[int, dict]:
    r = requests.get(url + "/health", timeout=5)
    return r.status_code, r.json()


def reasons(body: dict) -> list[str]:
    return list(body.get("reasons") or [])


def start_serve(tmp_path: Path, port: int, data_dir: Path | None = None, args=()) -> tuple[Process, str]:
    serve = Process("sluice-serve", [sluice_bin(), "serve", "--listen", f"127.0.0.1:{port}",
                                     "--data-dir", data_dir or tmp_path / "serve", *args], tmp_path / "logs")
    serve.start()
    return serve, serve.wait_line(LISTEN_RE).group(1)


# ---------------------------------------------------------------------------
# sluice run: a failing sink
# ---------------------------------------------------------------------------


def test_a_sink_refused_longer_than_the_threshold_makes_health_503_until_it_delivers(
    tmp_path, ws_feed_factory, pipeline_factory
):
    feed = Feed(total=200, pad=20)
    provider = ws_feed_factory(feed)
    port = free_port()  # nothing listens yet: every call is refused
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
        down_sink(port),
        embedded=False,
    )
    run = pipeline_factory(with_api(text, 'sink_failing_after = "2s"'), expect_embedded=False)
    url = run.metrics_url
    wait_for(lambda: health(url)[1]["pipeline"]["sources"]["feed"]["spooled"] == feed.total, 30,
             "every event spooled")
    spooled_at = time.monotonic()
    # Not before the threshold: the sink has been refused for less than 2 s.
    assert health(url)[0] == 200, health(url)

    def failing():
        code, body = health(url)
        return code == 503 and "out: sink_failing" in reasons(body) and body

    body = wait_for(failing, 30, "/health 503 with out: sink_failing",
                    details=lambda: f"{health(url)}\n{run.log_tail(20)}", interval=0.05)
    took = time.monotonic() - spooled_at
    print(f"/health 503 (sink_failing) {took:.2f} s after every event was spooled (threshold 2 s)")
    assert 1.0 <= took <= 15, took
    assert body["status"] == "alarm"
    alarm = next(a for a in body["alarms"] if a["alarm"] == "sink_failing")
    assert alarm["component"] == "out" and f"{feed.total} wait" in alarm["detail"], alarm
    samples = run.metrics()
    assert metric_sum(samples, "sluice_pipeline_sink_failing", sink="out") == 1
    assert metric_sum(samples, "sluice_pipeline_healthy") == 0
    assert metric_sum(samples, "sluice_pipeline_alarm", component="out", alarm="sink_failing") == 1

    serve, _ = start_serve(tmp_path, port)
    try:
        came_back = time.monotonic()
        wait_for(lambda: health(url)[0] == 200, 30, "/health back to 200 once the sink delivers",
                 details=lambda: f"{health(url)}\n{run.log_tail(20)}", interval=0.05)
        print(f"/health 200 again {time.monotonic() - came_back:.2f} s after the endpoint came up")
        code, body = health(url)
        assert body["status"] == "ok" and reasons(body) == [] and body["alarms"] == []
        run.wait_delivered("out", feed.total, timeout=30)
        samples = run.metrics()
        assert metric_sum(samples, "sluice_pipeline_sink_failing", sink="out") == 0
        assert metric_sum(samples, "sluice_pipeline_healthy") == 1
        assert metric_sum(samples, "sluice_pipeline_alarm", component="out", alarm="sink_failing") == 0
        log = run.log_path.read_text("utf-8", "replace")
        assert log.count("sink failing: no acknowledgement") == 1, run.log_tail(30)
        assert "sink acknowledges again" in log
    finally:
        serve.stop()


# ---------------------------------------------------------------------------
# sluice run: the spool's disk is full
# ---------------------------------------------------------------------------


class GatedFeed(Feed):
    """Releases nothing until `open()`, so that `sluice run` is up first."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.released = False

    def open(self):
        self.released = True

    def available(self) -> int:
        return super().available() if self.released else 0


def test_a_full_spool_disk_reports_source_paused_and_spool_write_failed(
    tmp_path, tmpfs, ws_feed_factory, pipeline_factory
):
    data = tmp_path / "data"
    tmpfs(data / "spool", "256k")
    feed = GatedFeed(total=30_000, rate=30_000, pad=1000)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        data,
        ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}", idle_timeout="5s"),
        down_sink(free_port()),  # down: nothing is trimmed to make room
        embedded=False,
        extra="[spool]\nsegment_bytes = 16384\n",
    )
    # Only the disk's conditions are under test here: the down sink never counts as failing.
    run = pipeline_factory(with_api(text, 'sink_failing_after = "1h"'), expect_embedded=False)
    url = run.metrics_url
    started = time.monotonic()
    feed.open()
    try:
        def paused():
            code, body = health(url)
            r = reasons(body)
            return code == 503 and "feed: source_paused" in r and "spool: spool_write_failed" in r and body

        body = wait_for(paused, 60, "/health 503 with feed: source_paused and spool: spool_write_failed",
                        details=lambda: f"{health(url)}\n{run.log_tail(20)}", interval=0.05)
        print(f"/health 503 (source_paused, spool_write_failed) {time.monotonic() - started:.2f} s after the feed opened")
        assert "feed: spool_blocked" in reasons(body), "the existing alarm stays"
        failed = next(a for a in body["alarms"] if a["alarm"] == "spool_write_failed")
        assert "space" in failed["detail"], failed
        samples = run.metrics()
        assert metric_sum(samples, "sluice_pipeline_source_paused", source="feed") == 1
        assert metric_sum(samples, "sluice_pipeline_alarm", component="spool", alarm="spool_write_failed") == 1
        assert metric_sum(samples, "sluice_pipeline_healthy") == 0

        tmpfs.resize(data / "spool", "64m")
        wait_for(lambda: health(url)[0] == 200, 30, "/health 200 once the spool has space",
                 details=lambda: f"{health(url)}\n{run.log_tail(20)}")
        samples = run.metrics()
        assert metric_sum(samples, "sluice_pipeline_source_paused", source="feed") == 0
        assert metric_sum(samples, "sluice_pipeline_alarm", component="spool", alarm="spool_write_failed") == 0
        wait_for(lambda: health(url)[1]["pipeline"]["sources"]["feed"]["spooled"] == feed.total, 60,
                 "every event spooled after the disk grew")
        assert health(url)[0] == 200
    finally:
        run.stop()  # before the fixture unmounts the spool


# ---------------------------------------------------------------------------
# sluice serve: its data dir is full
# ---------------------------------------------------------------------------


def put(url: str, stream: str, data: bytes, key="k"):
    return json_call(url, "PutRecord", {"StreamName": stream, "Data": b64(data), "PartitionKey": key}, timeout=30)


def test_serve_health_is_503_while_its_disk_is_full_and_200_after(tmp_path, tmpfs):
    data = tmp_path / "serve"
    tmpfs(data, "3m")
    serve, url = start_serve(tmp_path, free_port(), data_dir=data, args=["--segment-mib", "1"])
    try:
        assert health(url) == (200, {"status": "ok", "reasons": [], "streams": 0})
        r = json_call(url, "CreateStream", {"StreamName": "full", "ShardCount": 1})
        assert r.status_code == 200, r.text
        wait_for(lambda: json_call(url, "DescribeStreamSummary", {"StreamName": "full"}).json()
                 ["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE", 15, "the stream ACTIVE")
        chunk = os.urandom(200 * 1024)
        refused = None
        for i in range(100):
            r = put(url, "full", chunk, key=f"k{i}")
            if r.status_code != 200:
                refused = r
                break
        assert refused is not None, "3 MiB never filled up"
        refused_at = time.monotonic()
        code, body = health(url)
        print(f"a put refused with {refused.status_code}; /health then answered {code} "
              f"({time.monotonic() - refused_at:.3f} s later)")
        assert code == 503, body
        assert body["status"] == "unavailable"
        assert [x["reason"] for x in body["reasons"]] == ["store_write_failed"]
        assert "space" in body["reasons"][0]["detail"], body
        samples = parse_metrics(requests.get(url + "/metrics", timeout=5).text)
        assert metric_sum(samples, "sluice_storage_write_failing") == 1

        tmpfs.resize(data, "64m")
        # Healthy again once an append succeeds.
        wait_for(lambda: put(url, "full", b"again").status_code == 200, 30, "a put to succeed after the resize")
        code, body = health(url)
        assert (code, body["status"], body["reasons"]) == (200, "ok", []), body
        samples = parse_metrics(requests.get(url + "/metrics", timeout=5).text)
        assert metric_sum(samples, "sluice_storage_write_failing") == 0
    finally:
        serve.stop()


# ---------------------------------------------------------------------------
# HTTP edges
# ---------------------------------------------------------------------------


def closed_after(sock: socket.socket, limit: float = 10.0) -> tuple[float, bytes]:
    """Seconds until the server closes `sock` (recv returns EOF or a reset), and what it sent."""
    start = time.monotonic()
    sock.settimeout(limit)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"the connection was still open after {limit} s (received {got[:200]!r})")
    return time.monotonic() - start, got


@pytest.fixture
def fast_timeouts(server_factory):
    return server_factory(["--header-timeout-secs", "1"])


@pytest.mark.parametrize("partial", [
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\nContent-Ty",
    b"POST / HT",  # shorter than the HTTP/2 preface: still being sniffed for the protocol
], ids=["long", "short"])
def test_a_partial_request_header_is_closed_after_the_header_timeout(fast_timeouts, partial):
    sock = socket.create_connection(("127.0.0.1", fast_timeouts.port), timeout=5)
    try:
        sock.sendall(partial)
        took, got = closed_after(sock)
    finally:
        sock.close()
    print(f"partial header ({len(partial)} bytes): closed after {took:.3f} s (timeout 1 s)")
    assert 0.8 <= took <= 4.0, took
    assert b"200 OK" not in got
    assert requests.get(fast_timeouts.url + "/health", timeout=5).status_code == 200


def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not(fast_timeouts):
    sock = socket.create_connection(("127.0.0.1", fast_timeouts.port), timeout=5)
    try:
        for _ in range(3):  # requests 0.6 s apart keep the connection (each within the timeout)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head
            time.sleep(0.6)
        took, _ = closed_after(sock)
    finally:
        sock.close()
    print(f"idle keep-alive connection closed {took + 0.6:.3f} s after its last response (timeout 1 s)")
    assert took + 0.6 <= 4.0


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(server_factory):
    srv = server_factory(["--max-body-mib", "1"])
    for length in (1_000_000_000, 1024 * 1024 + 1):
        headers = signed_headers(srv.url, b"", {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "Kinesis_20131202.PutRecord",
        })
        headers["Content-Length"] = str(length)
        head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        try:
            start = time.monotonic()
            sock.sendall(head.encode())  # and not one byte of the body
            took, got = closed_after(sock, limit=5.0)
        finally:
            sock.close()
        head_end = got.find(b"\r\n\r\n")
        print(f"Content-Length {length}: {got[:12].decode(errors='replace')} after {took * 1000:.1f} ms")
        assert got.startswith(b"HTTP/1.1 413"), got[:300]
        assert b"x-amzn-errortype: RequestEntityTooLargeException" in got.lower().replace(
            b"requestentitytoolargeexception", b"RequestEntityTooLargeException"), got[:400]
        body = json.loads(got[head_end + 4:])
        assert body["__type"] == "RequestEntityTooLargeException", body
        assert "1048576 bytes" in body["message"]
        assert time.monotonic() - start < 2.0
    # Within the limit, the same server still takes requests.
    r = json_call(srv.url, "ListStreams", {})
    assert r.status_code == 200, r.text
