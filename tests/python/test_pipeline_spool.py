"""`sluice run`'s spool end to end: kept until every sink has it, and a full disk.

* A Kinesis sink whose endpoint refuses connections while a feed is spooled: nothing is
  trimmed while it is down (there is no age limit unless `[spool] max_age` is set), and once
  `sluice serve` comes up on that port every event arrives exactly once, after which the
  delivered segments are deleted.
* The spool on a tiny tmpfs: when a write fails for lack of space the source stops reading,
  `/health` answers 503 with the `spool_blocked` alarm and one ERROR line is logged; once the
  file system grows the pipeline recovers by itself (one INFO line) and every event arrives
  exactly once. Needs root for `mount`; skipped otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from conftest import LISTEN_RE, sluice_bin
from pipeline_helpers import (  # noqa: F401  (fixtures)
    Process,
    StreamReader,
    describe_seqs,
    free_port,
    kinesis_sink_toml,
    metric_sum,
    pipeline_factory,
    pipeline_toml,
    read_until_complete,
    seqs_of,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed
from sluice_helpers import make_client

STREAM = "race"
BLOCKED_LINE = "the source stops reading until space returns"
RECOVERED_LINE = "spool writes again"


def spool_segments(data_dir: Path, source: str) -> list[Path]:
    """The segment files of a source's spool (one single-shard stream per source)."""
    shard = data_dir / "spool" / "streams" / f"{source}.00000001" / "000000000000"
    return sorted(shard.glob("*.seg")) if shard.exists() else []


def health(run) -> tuple[int, dict]:
    r = requests.get(run.metrics_url + "/health", timeout=5)
    return r.status_code, r.json()


def assert_exactly_once(records, feed: Feed, what: str):
    seqs = seqs_of(records)
    assert sorted(seqs) == list(range(1, feed.total + 1)), (
        f"{what}: expected every seq 1..{feed.total} exactly once: {describe_seqs(seqs, feed.total)}"
    )
    wrong = [s for r, s in zip(records, seqs) if r["Data"] != feed.payload_bytes(s)]
    assert not wrong, f"{what}: {len(wrong)} records differ from the provider's bytes"


class GatedFeed(Feed):
    """A feed that releases nothing until `open()` (so `sluice run` is up, and its /health
    answered 200, before the spool's disk fills)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.released = False

    def open(self):
        self.released = True

    def available(self) -> int:
        return super().available() if self.released else 0


def start_serve(tmp_path: Path, port: int) -> tuple[Process, str]:
    """`sluice serve` on exactly `port` (where a sink's endpoint has been refusing)."""
    serve = Process("sluice-serve", [sluice_bin(), "serve", "--listen", f"127.0.0.1:{port}",
                                     "--data-dir", tmp_path / "serve"], tmp_path / "logs")
    serve.start()
    return serve, serve.wait_line(LISTEN_RE).group(1)


def down_sink(port: int) -> str:
    """A Kinesis sink whose endpoint is `port` on loopback, retrying quickly."""
    return kinesis_sink_toml(
        "out", ["feed"], STREAM, endpoint=f"http://127.0.0.1:{port}",
        extra='shards = 2\nrequest_timeout = "2s"\nretry_backoff = { base = "50ms", max = "300ms" }',
    )


def log_count(run, text: str) -> int:
    return run.log_path.read_text("utf-8", "replace").count(text)


# ---------------------------------------------------------------------------
# a) kept until delivered
# ---------------------------------------------------------------------------


def test_a_sink_down_longer_than_an_age_limit_loses_nothing(tmp_path, ws_feed_factory, pipeline_factory):
    feed = Feed(total=3000, pad=60)
    provider = ws_feed_factory(feed)
    port = free_port()  # nothing listens here yet: every call is refused
    data = tmp_path / "data"
    text = pipeline_toml(
        data,
        ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}"),
        down_sink(port),
        embedded=False,
        extra="[spool]\nsegment_bytes = 4096  # small segments: trimming is visible\n",
    )
    run = pipeline_factory(text, expect_embedded=False)

    wait_for(lambda: run.source("feed")["spooled"] == feed.total, 60, "every event spooled",
             details=lambda: json.dumps(run.health()))
    segments = spool_segments(data, "feed")
    assert len(segments) > 20, f"small segments expected, got {len(segments)}"
    # Longer than a `max_age = "1s"` (which this file does not set) would have kept, and
    # several keeper passes: with the sink down, every segment stays.
    def first_metric():
        return metric_sum(run.metrics(), "sluice_pipeline_spool_first_ordinal", source="feed")

    wait_for(lambda: first_metric() == 1, 30, "the first-ordinal gauge")
    # An absence cannot be polled for: give the keeper (one pass a second) three passes.
    time.sleep(3.5)
    assert spool_segments(data, "feed") == segments, "nothing may be trimmed while the sink has not delivered"
    assert first_metric() == 1
    assert run.sink("out")["delivered"] == 0
    assert metric_sum(run.metrics(), "sluice_pipeline_spool_expired_total") == 0
    assert metric_sum(run.metrics(), "sluice_pipeline_spool_last_ordinal", source="feed") == feed.total

    # The endpoint comes up: `sluice serve` on exactly that port.
    serve, url = start_serve(tmp_path, port)
    try:
        reader = StreamReader(make_client(url), STREAM)
        records = read_until_complete(reader, feed.total, timeout=90, details=run.log_tail)
        assert_exactly_once(records, feed, "after the sink's endpoint came back")
        run.wait_delivered("out", feed.total, timeout=30)
        wait_for(lambda: run.sink("out")["watermarks"]["feed"] == feed.total, 30, "the sink's watermark at the end")
        # ... and now that every event is delivered, the spool lets go of them.
        wait_for(lambda: len(spool_segments(data, "feed")) <= 2, 30, "delivered segments deleted",
                 details=lambda: f"{len(spool_segments(data, 'feed'))} segments left")
        samples = run.metrics()
        assert metric_sum(samples, "sluice_pipeline_spool_trimmed_segments_total", source="feed") >= len(segments) - 2
        assert metric_sum(samples, "sluice_pipeline_spool_first_ordinal", source="feed") > feed.total - 100
        assert metric_sum(samples, "sluice_pipeline_spool_expired_total") == 0
        assert metric_sum(samples, "sluice_pipeline_watermark", sink="out", input="feed") == feed.total
    finally:
        serve.stop()


# ---------------------------------------------------------------------------
# b) a full disk
# ---------------------------------------------------------------------------


def test_a_full_spool_disk_blocks_the_source_truthfully_and_recovers(
    tmp_path, tmpfs, ws_feed_factory, pipeline_factory
):
    data = tmp_path / "data"
    tmpfs(data / "spool", "256k")
    # Far more than fits, and more than the source's channel (8,192 events) plus the socket
    # buffers hold, so the source really has to stop reading the provider.
    feed = GatedFeed(total=30_000, rate=30_000, pad=1000)
    provider = ws_feed_factory(feed)
    # The sink is down meanwhile, so delivered segments cannot be deleted to make room.
    port = free_port()
    text = pipeline_toml(
        data,
        ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}", idle_timeout="5s"),
        down_sink(port),
        embedded=False,
        extra="[spool]\nsegment_bytes = 16384\n",
        # The sink stays down on purpose for the whole test: only the spool's state is judged.
        api_extra='sink_failing_after = "1h"',
    )
    run = pipeline_factory(text, expect_embedded=False)
    feed.open()
    serve = None
    try:
        def blocked():
            code, body = health(run)
            alarms = [(a["component"], a["alarm"]) for a in body["alarms"]]
            return code == 503 and body["status"] == "alarm" and ("feed", "spool_blocked") in alarms and body

        body = wait_for(blocked, 60, "/health to answer 503 with the spool_blocked alarm",
                        details=lambda: f"{health(run)}\n{run.log_tail(20)}")
        alarm = next(a for a in body["alarms"] if a["alarm"] == "spool_blocked")
        assert "No space left" in alarm["detail"] or "space" in alarm["detail"], alarm
        assert alarm["since_ms"] > 0
        spooled_when_blocked = body["pipeline"]["sources"]["feed"]["spooled"]
        assert spooled_when_blocked < feed.total
        assert metric_sum(run.metrics(), "sluice_pipeline_spool_blocked", source="feed") == 1
        # Several failed retries, yet one ERROR line.
        wait_for(lambda: metric_sum(run.metrics(), "sluice_pipeline_spool_errors_total", source="feed") >= 3, 30,
                 "the spool writer to retry")
        # One ERROR line per blocked episode, not per retry. (Space the store gives back, such
        # as its journal after a checkpoint, may let a few writes through and the spool block
        # again: each episode is told once when it starts and once when it ends.)
        assert log_count(run, BLOCKED_LINE) == log_count(run, RECOVERED_LINE) + 1, run.log_tail(30)
        assert "spool cannot write (" in run.log_path.read_text("utf-8", "replace")
        # The source stops reading the provider: the count of messages it read stands still,
        # far below the feed (the rest waits in the provider and the socket buffers).
        def read_by_source():
            return metric_sum(run.metrics(), "sluice_source_messages_total", source="feed")

        def errors():
            return metric_sum(run.metrics(), "sluice_pipeline_spool_errors_total", source="feed")

        # Its channels fill first (a few thousand events), then reading stops: wait until the
        # count holds across two failed writes, and it must hold far below the feed.
        last = {"read": -1.0, "errors": errors()}

        def settled():
            read, errs = read_by_source(), errors()
            if errs < last["errors"] + 2:
                return False
            same = read == last["read"]
            last.update(read=read, errors=errs)
            return same

        wait_for(settled, 60, "the source to stop reading while the spool is blocked",
                 details=lambda: f"read {read_by_source()} of {feed.total}", interval=0.2)
        print(f"the source read {last['read']} of {feed.total} while the spool was blocked")
        assert last["read"] < feed.total * 0.6, f"the source read {last['read']} of {feed.total}"
        # Nothing more is spooled while the disk is full (the events wait, they are not dropped).
        spooled_when_settled = health(run)[1]["pipeline"]["sources"]["feed"]["spooled"]
        assert spooled_when_settled < feed.total
        time.sleep(0.5)
        assert health(run)[1]["pipeline"]["sources"]["feed"]["spooled"] == spooled_when_settled
        assert metric_sum(run.metrics(), "sluice_pipeline_spool_blocked", source="feed") == 1

        tmpfs.resize(data / "spool", "64m")

        wait_for(lambda: health(run)[0] == 200, 30, "/health back to 200 once space returned",
                 details=lambda: f"{health(run)}\n{run.log_tail(20)}")
        code, body = health(run)
        assert body["status"] == "ok" and body["alarms"] == []
        assert metric_sum(run.metrics(), "sluice_pipeline_spool_blocked", source="feed") == 0
        assert log_count(run, RECOVERED_LINE) == log_count(run, BLOCKED_LINE), run.log_tail(30)

        serve, url = start_serve(tmp_path, port)
        reader = StreamReader(make_client(url), STREAM)
        records = read_until_complete(reader, feed.total, timeout=120, details=run.log_tail)
        assert_exactly_once(records, feed, "after the spool's disk had space again")
        wait_for(lambda: health(run)[1]["pipeline"]["sources"]["feed"]["spooled"] == feed.total, 30,
                 "the spool to hold every event once")
        assert metric_sum(run.metrics(), "sluice_pipeline_spool_last_ordinal", source="feed") == feed.total
        assert log_count(run, BLOCKED_LINE) == log_count(run, RECOVERED_LINE) >= 1
    finally:
        # Stop before the fixture unmounts the spool.
        run.stop()
        if serve is not None:
            serve.stop()
