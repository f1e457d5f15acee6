"""`sluice run` end to end: providers that cut, abort and stall connections → sources → spool →
kinesis sink → the embedded stream, read back with boto3.

Every event of a numbered feed (seq 1..N) must arrive exactly once (or, after a SIGKILL,
with at most as many duplicates as the pipeline reported as redelivered), byte for byte.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import pytest
import requests

from pipeline_helpers import (  # noqa: F401  (fixtures)
    StreamReader,
    describe_seqs,
    kinesis_sink_toml,
    metric_sum,
    pipeline_factory,
    pipeline_toml,
    read_until_complete,
    seqs_of,
    simulate_factory,
    sse_feed_factory,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed

STREAM = "race"


def assert_exactly_once(records, feed: Feed, what=""):
    """Every seq 1..total once, each record's data byte-identical to what the provider sent
    and its partition key the payload's racer."""
    seqs = seqs_of(records)
    total = feed.total
    assert len(seqs) == total and set(seqs) == set(range(1, total + 1)), (
        f"{what}: expected every seq 1..{total} exactly once: {describe_seqs(seqs, total)}"
    )
    wrong_data = [r["SequenceNumber"] for r, s in zip(records, seqs) if r["Data"] != feed.payload_bytes(s)]
    assert not wrong_data, f"{what}: {len(wrong_data)} records differ from the provider's bytes"
    wrong_keys = [(s, r["PartitionKey"]) for r, s in zip(records, seqs) if r["PartitionKey"] != feed.racer(s)]
    assert not wrong_keys, f"{what}: partition keys are not /racer: {wrong_keys[:5]}"


def assert_stall_detected(provider, idle_timeout="1s"):
    """Connection #1 stalls mid-feed (open, silent) for `stall_for` seconds: the source's
    idle timeout must drop it before the provider gives up."""
    stall = provider.conns[1]
    assert stall.plan == "stall", "test bug: connection #1 is the one that stalls"
    wait_for(lambda: stall.ended != "open", provider.stall_for + 5, "the stalled connection to end",
             details=provider.summary)
    assert stall.ended == "stall-detected", (
        f"the source kept a silent connection open for {provider.stall_for}s with idle_timeout = "
        f"{idle_timeout} (connection #1 ended: {stall.ended}): {provider.summary()}"
    )


def assert_reconnect_causes(run, source="race"):
    """A close frame / end of body counts as `closed`, a TCP abort as `error`, a stall as
    `idle_timeout` in sluice_source_reconnects_total."""
    m = run.metrics()
    causes = {
        cause: metric_sum(m, "sluice_source_reconnects_total", source=source, cause=cause)
        for cause in ("closed", "error", "idle_timeout")
    }
    assert all(n >= 1 for n in causes.values()), f"sluice_source_reconnects_total by cause: {causes}"


# ---------------------------------------------------------------------------
# 1. WebSocket provider with cuts (close frame / TCP abort) and stalls
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0, 3], ids=["exact-resume", "provider-replays-3"])
def test_websocket_cuts_and_stalls_deliver_every_event_exactly_once(
    tmp_path, ws_feed_factory, pipeline_factory, overlap
):
    """Connections live 0.5–1 s and end with a close frame, a TCP abort, or a stall longer
    than idle_timeout; the source resumes with ?after={cursor}. With `provider-replays-3`
    every resumed connection starts 3 messages early (the source must drop them as
    duplicates)."""
    feed = Feed(4000, rate=1000)
    provider = ws_feed_factory(
        feed,
        plan=["close", "stall", "abort", "close", "abort"],
        lifetime=(0.5, 1.0),
        stall_for=3.0,
        replay_overlap=overlap,
    )
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="1s"),
        kinesis_sink_toml("out", ["race"], STREAM),
    )
    run = pipeline_factory(text)
    run.wait_delivered("out", feed.total, timeout=45)
    records = read_until_complete(StreamReader(run.embedded_client(), STREAM), feed.total, timeout=15)
    assert_exactly_once(records, feed, provider.summary())

    health = run.health()["pipeline"]
    assert health["sinks"]["out"]["delivered"] == feed.total, health
    assert health["sinks"]["out"]["dead_lettered"] == 0, health
    assert health["sources"]["race"]["spooled"] == feed.total, health
    assert health["sources"]["race"]["cursor"] == str(feed.total), health

    # The faults really happened, and the source handled each kind.
    assert provider.ended("close") and provider.ended("abort"), provider.summary()
    assert_stall_detected(provider)
    not_resumed = [c.index for c in provider.conns[1:] if c.after is None]
    assert not not_resumed, f"connections {not_resumed} did not resume with ?after=: {provider.summary()}"
    assert_reconnect_causes(run)
    m = run.metrics()
    if overlap:
        assert metric_sum(m, "sluice_source_duplicates_total", source="race") >= overlap


# ---------------------------------------------------------------------------
# 2. SIGKILL mid-feed, restart on the same data_dir
# ---------------------------------------------------------------------------


def test_sigkill_mid_feed_resumes_from_the_spooled_cursor(tmp_path, ws_feed_factory, pipeline_factory):
    feed = Feed(6000, rate=1500)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        kinesis_sink_toml("out", ["race"], STREAM),
    )
    run = pipeline_factory(text)
    wait_for(lambda: run.sink("out")["delivered"] >= 1500, 30, "1500 records delivered before the kill",
             details=run.log_tail)
    before = run.health()["pipeline"]
    conns_before = len(provider.conns)
    run.kill()
    sent_before_kill = max(c.last_seq or 0 for c in provider.conns)
    spooled_cursor_before = int(before["sources"]["race"]["cursor"])
    time.sleep(0.3)

    run.start()
    after_restart = run.health()["pipeline"]
    redelivered = after_restart["sinks"]["out"]["redelivered"]
    wait_for(lambda: len(provider.conns) > conns_before, 15, "the restarted source to reconnect")
    resumed = provider.conns[conns_before]
    assert resumed.after is not None, f"the restarted source did not resume: {provider.summary()}"
    assert spooled_cursor_before <= resumed.after <= sent_before_kill, (
        f"resumed after {resumed.after}; /health showed cursor {spooled_cursor_before} before the kill "
        f"and the provider had sent up to {sent_before_kill}"
    )

    records = read_until_complete(StreamReader(run.embedded_client(), STREAM), feed.total, timeout=45,
                                  details=run.log_tail)
    seqs = seqs_of(records)
    assert set(seqs) == set(range(1, feed.total + 1)), describe_seqs(seqs, feed.total)
    duplicates = len(seqs) - len(set(seqs))
    repeated = sorted(s for s, n in Counter(seqs).items() if n > 1)
    assert duplicates <= redelivered, (
        f"{duplicates} duplicates in the stream but /health reported {redelivered} redelivered after the "
        f"restart: {describe_seqs(seqs, feed.total)}; repeated seqs {repeated[:1]}..{repeated[-1:]}; "
        f"watermark at restart {after_restart['sinks']['out']['watermarks']}, "
        f"/health before the kill: {before['sinks']['out']}"
    )
    wrong = [r["SequenceNumber"] for r, s in zip(records, seqs) if r["Data"] != feed.payload_bytes(s)]
    assert not wrong, f"{len(wrong)} records differ from the provider's bytes"
    m = run.metrics()
    assert metric_sum(m, "sluice_pipeline_redelivered_total", sink="out") == redelivered


# ---------------------------------------------------------------------------
# 3. SSE provider: id: lines and Last-Event-ID
# ---------------------------------------------------------------------------


def test_sse_cuts_deliver_every_event_exactly_once(tmp_path, sse_feed_factory, pipeline_factory):
    feed = Feed(3000, rate=1000)
    provider = sse_feed_factory(feed, plan=["close", "stall", "abort", "close", "abort"],
                                lifetime=(0.5, 1.0), stall_for=3.0)
    source = "\n".join([
        "[sources.race]",
        'type = "sse"',
        f'url = "{provider.url}"',
        'idle_timeout = "1s"',
        'backoff_initial = "50ms"',
        'backoff_max = "500ms"',
    ])
    text = pipeline_toml(tmp_path / "data", source, kinesis_sink_toml("out", ["race"], STREAM))
    run = pipeline_factory(text)
    run.wait_delivered("out", feed.total, timeout=45)
    records = read_until_complete(StreamReader(run.embedded_client(), STREAM), feed.total, timeout=15)
    assert_exactly_once(records, feed, provider.summary())
    assert provider.ended("close") and provider.ended("abort"), provider.summary()
    assert_stall_detected(provider)
    assert_reconnect_causes(run)
    no_id = [c.index for c in provider.conns[1:] if "last-event-id" not in c.headers]
    assert not no_id, f"reconnections {no_id} sent no Last-Event-ID: {provider.summary()}"


# ---------------------------------------------------------------------------
# 4. `sluice simulate` as the provider
# ---------------------------------------------------------------------------


def test_simulate_provider_with_mixed_cuts(tmp_path, simulate_factory, pipeline_factory):
    total = 3000
    sim = simulate_factory("--racers", "50", "--rate", "1500", "--count", str(total))
    ws = sim.url.replace("http://", "ws://") + "/ws"
    faults = "cut_after_ms=700&cut_mode=mixed"
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", f"{ws}?after=0&{faults}", f"{ws}?after={{cursor}}&{faults}", idle_timeout="2s"),
        kinesis_sink_toml("out", ["race"], STREAM),
    )
    run = pipeline_factory(text)
    run.wait_delivered("out", total, timeout=45)
    records = read_until_complete(StreamReader(run.embedded_client(), STREAM), total, timeout=15)
    seqs = seqs_of(records)
    assert len(seqs) == total and set(seqs) == set(range(1, total + 1)), describe_seqs(seqs, total)
    wrong_keys = [r["PartitionKey"] for r in records if r["PartitionKey"] != json.loads(r["Data"])["racer"]]
    assert not wrong_keys, f"partition keys are not /racer: {wrong_keys[:5]}"
    stats = requests.get(sim.url + "/stats", timeout=5).json()
    assert stats["generated"] == total, stats
    assert stats["cuts_close"] >= 1 and stats["cuts_abort"] >= 1, f"the simulator did not cut both ways: {stats}"


# ---------------------------------------------------------------------------
# 9. dead letters: non-JSON frames while the source expects a JSON cursor
# ---------------------------------------------------------------------------


def test_non_json_frames_are_dead_lettered_and_good_events_delivered(
    tmp_path, ws_feed_factory, pipeline_factory
):
    feed = Feed(2000)
    provider = ws_feed_factory(feed, garbage_every=97)
    data_dir = tmp_path / "data"
    text = pipeline_toml(
        data_dir,
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="30s"),
        kinesis_sink_toml("out", ["race"], STREAM),
    )
    run = pipeline_factory(text)
    run.wait_delivered("out", feed.total, timeout=30)
    expected = feed.total // 97
    assert len(provider.garbage_sent) == expected, provider.summary()
    dead_file = data_dir / "dead-letter" / "race.ndjson"

    def lines():
        if not dead_file.exists():
            return []
        return [json.loads(line) for line in dead_file.read_text().splitlines() if line.strip()]

    wait_for(lambda: len(lines()) >= expected, 10, f"{expected} dead letters in {dead_file}",
             details=lambda: f"{len(lines())} lines; files: {list((data_dir).rglob('*.ndjson'))}")
    dead = lines()
    assert len(dead) == expected, f"{len(dead)} dead letters, {expected} non-JSON frames sent"
    assert {d["reason"] for d in dead} == {"invalid_json"}, [d["reason"] for d in dead]
    assert {d["component"] for d in dead} == {"race"}
    payloads = [base64.b64decode(d["payload_base64"]).decode() for d in dead]
    assert payloads == provider.garbage_sent, "dead-lettered payloads differ from the frames sent"

    m = run.metrics()
    assert metric_sum(m, "sluice_source_dead_lettered_total", source="race") == expected
    assert metric_sum(m, "sluice_dead_letters_total", component="race", reason="invalid_json") == expected
    records = read_until_complete(StreamReader(run.embedded_client(), STREAM), feed.total, timeout=15)
    assert_exactly_once(records, feed)
    health = run.health()["pipeline"]
    assert health["sinks"]["out"]["dead_lettered"] == 0, health
    assert health["sources"]["race"]["spooled"] == feed.total, health
