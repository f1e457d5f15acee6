"""`sluice run` while connections keep dying (issue 8, "Nothing lost while reconnecting").

Written against the issue's specification of the connection manager: prompt reconnects after
a connection that worked (backoff only for failed attempts), `replicas` merged and
de-duplicated by `dedup.key`, rotation without a cursor aligned by position, gap counting
(`gaps.field`), and the `silence` alarm (gauge, `/health` 503, `alarm.command`).

Providers (tests/python/providers.py): `WsFeed` with resume, a short `replay_window` and cuts;
`BroadcastWsFeed`, a live feed without resume that cuts each connection on its own but never
all at once; `RepeatingFeed`, a feed without any cursor whose payloads repeat; `Feed(stall=…)`
for a feed that goes silent once.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from conftest import sluice_bin
from pipeline_helpers import (  # noqa: F401  (fixtures)
    StreamReader,
    _provider_factory,
    describe_seqs,
    kinesis_sink_toml,
    metric_sum,
    pipeline_factory,
    pipeline_toml,
    read_until_complete,
    seqs_of,
    wait_for,
    ws_feed_factory,
)
from providers import BroadcastWsFeed, Feed, RepeatingFeed
from test_pipeline import assert_exactly_once

STREAM = "race"
# Longest wait (s) for the next connection after one that delivered data: backoff_initial
# (100 ms in these tests) plus slack for a loaded 2-core machine. (The issue says "~1 s",
# but with 3-4 cuts per short run a doubling backoff never reaches 1 s: 100+200+400 ms.)
MAX_RECONNECT_GAP = 0.35


@pytest.fixture
def broadcast_feed_factory(request):
    """`broadcast_feed_factory(Feed(...), plan=[...], ...)` -> a started `BroadcastWsFeed`."""
    started, start = _provider_factory(BroadcastWsFeed, request)
    yield start
    for p in started:
        p.stop()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def toml_value(v) -> str:
    """A TOML value (strings as basic strings: JSON's escapes are TOML's)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def source_toml(name: str, url: str, kind="websocket", tables: dict | None = None, **options) -> str:
    """`[sources.NAME]` with `options`, then one `[sources.NAME.TABLE]` per entry of `tables`."""
    lines = [f"[sources.{name}]", f"type = {toml_value(kind)}", f"url = {toml_value(url)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in options.items()]
    for table, opts in (tables or {}).items():
        lines.append(f"[sources.{name}.{table}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in opts.items()]
    return "\n".join(lines) + "\n"


def source_metrics(run, source="feed") -> dict:
    """The issue-8 counters of one source, for assertions and failure messages."""
    m = run.metrics()
    out = {
        name: metric_sum(m, f"sluice_source_{name}", source=source)
        for name in ("gaps_total", "missing_total", "duplicates_total", "connects_total",
                     "rotation_unaligned_total", "messages_total")
    }
    for reason in ("dedup", "cursor", "rotation"):
        out[f"duplicates[{reason}]"] = metric_sum(m, "sluice_source_duplicates_total", source=source,
                                                  reason=reason)
    for cause in ("rotation", "closed", "error", "idle_timeout"):
        out[f"reconnects[{cause}]"] = metric_sum(m, "sluice_source_reconnects_total", source=source,
                                                 cause=cause)
    return out


def wait_settled(run, reader: StreamReader, source: str, sinks, timeout=30.0, need=None):
    """Polls until every sink delivered all the source spooled, the stream holds exactly what
    the kinesis sink (`sinks[0]`) delivered, and `need(records)` (if given) holds; returns the
    records. If `need` never holds, returns what settled anyway (the caller's assertions then
    say what is wrong, better than a timeout would)."""
    state = {}

    def settled(need=need):
        reader.poll()
        h = run.health()["pipeline"]
        spooled = h["sources"][source]["spooled"]
        delivered = {s: h["sinks"][s]["delivered"] for s in sinks}
        state.update(spooled=spooled, delivered=delivered, read=len(reader.records))
        return (
            spooled > 0
            and all(d == spooled for d in delivered.values())
            and len(reader.records) == delivered[sinks[0]]
            and (need is None or need(reader.records))
        )

    try:
        wait_for(settled, timeout, "the pipeline to deliver everything it spooled", interval=0.2)
    except AssertionError:
        wait_for(lambda: settled(None), 15, "the pipeline to deliver everything it spooled",
                 interval=0.2, details=lambda: f"{state}\n{run.log_tail(20)}")
    return reader.records


def wait_feed_done(feed: Feed, provider, slack=15.0):
    left = feed.total / feed.rate - (time.monotonic() - (feed.t0 or time.monotonic()))
    wait_for(lambda: feed.available() >= feed.total, max(0.0, left) + slack,
             "the provider to release the whole feed", details=provider.summary)


def payload_of(record) -> str:
    return record["Data"].decode()


# ---------------------------------------------------------------------------
# a) cuts every 1-2 s, resume, replay window 5 s
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("run", range(20))
def test_cuts_every_second_with_resume_and_a_5s_replay_window_lose_nothing(
    tmp_path, ws_feed_factory, pipeline_factory, run
):
    """600 events/s for 6 s; every connection is cut after 1-2 s (close frame or TCP abort,
    alternating), and in even runs connection #2 stalls (open, silent) until idle_timeout
    (2 s) drops it. The provider keeps only the last 5 s for `?after=`: a source that waits
    too long before reconnecting loses events for good. Proves: every event lands in the
    stream exactly once, byte for byte, and a connection that delivered data is reconnected
    promptly, however many cuts came before: backoff is not applied to connections that
    worked. "Promptly" is MAX_RECONNECT_GAP (0.35 s): backoff_initial (100 ms) plus slack for
    a loaded machine. A backoff that doubles with every cut (ceilings 100, 200, 400, 800 ms,
    full jitter) exceeds it at the third cut 1 time in 8 and at the fourth more than half the
    time, so across the 20 runs it fails."""
    feed = Feed(3600, rate=600)
    plan = ["close", "abort", "stall", "close", "abort"] if run % 2 == 0 else ["abort", "close"]
    provider = ws_feed_factory(feed, plan=plan, lifetime=(1.0, 2.0), stall_for=4.0,
                               replay_window=5.0, seed=1000 + run)
    source = source_toml(
        "race", provider.url,
        idle_timeout="2s", backoff_initial="100ms", backoff_max="5s",
        resume={"cursor": "/seq", "url": provider.url + "?after={cursor}"},
    )
    sluice = pipeline_factory(pipeline_toml(tmp_path / "data", source,
                                            kinesis_sink_toml("out", ["race"], STREAM)))
    sluice.wait_delivered("out", feed.total, timeout=40)
    records = read_until_complete(StreamReader(sluice.embedded_client(), STREAM), feed.total, timeout=15)
    lost = [(c.index, c.replay_lost) for c in provider.conns if c.replay_lost]
    assert_exactly_once(records, feed, f"{provider.summary()}; replay window exceeded by {lost}")

    # The faults happened.
    assert provider.ended("close") and provider.ended("abort"), provider.summary()
    if "stall" in plan:
        stall = provider.conns[2]
        wait_for(lambda: stall.ended != "open", 10, "the stalled connection to end", details=provider.summary)
        assert stall.ended == "stall-detected", f"idle_timeout did not drop the stall: {provider.summary()}"
    not_resumed = [c.index for c in provider.conns[1:] if c.after is None]
    assert not not_resumed, f"connections {not_resumed} did not resume with ?after=: {provider.summary()}"

    # No backoff after a connection that delivered data: the next connection came within
    # MAX_RECONNECT_GAP of the cut (of the stall's end for a stall).
    slow, gaps = [], []
    for prev, nxt in zip(provider.conns, provider.conns[1:]):
        if prev.sent == 0:
            continue
        lost_at = prev.ended_at if prev.plan == "stall" else (prev.cut_at or prev.ended_at)
        gap = nxt.started - lost_at
        gaps.append(round(gap, 3))
        if gap > MAX_RECONNECT_GAP:
            slow.append(f"#{prev.index} ({prev.ended}, {prev.sent} sent) -> #{nxt.index}: {gap:.2f}s")
    print(f"run {run}: {provider.summary()}; reconnect gaps after working connections (s): {gaps}")
    assert not slow, (
        f"reconnects after connections that worked waited more than {MAX_RECONNECT_GAP}s: {slow}; "
        f"all gaps {gaps}"
    )


# ---------------------------------------------------------------------------
# b) a feed without resume: replicas = 2 with dedup, and replicas = 1 with gap counting
# ---------------------------------------------------------------------------


def test_two_replicas_without_resume_lose_nothing_and_deliver_no_duplicate(
    tmp_path, broadcast_feed_factory, pipeline_factory
):
    """A live broadcast feed (600 events/s, ~6 s) that cannot resume; each connection is cut
    after 1-2 s on its own (close frame or abort), never both at once. With `replicas = 2`
    and `dedup.key = ["/seq"]`: every event from the first one the source received to the
    end is in the stream exactly once, byte for byte; the second copy of each was dropped as
    `dedup` duplicates; no gap is reported because the other replica always filled it."""
    feed = Feed(3600, rate=600)
    provider = broadcast_feed_factory(feed, plan=("close", "abort"), lifetime=(1.0, 2.0), seed=21)
    source = source_toml(
        "feed", provider.url,
        replicas=2, idle_timeout="2s", backoff_initial="100ms", backoff_max="5s",
        tables={"dedup": {"key": ["/seq"], "window": 100000}, "gaps": {"field": "/seq"}},
    )
    run = pipeline_factory(pipeline_toml(tmp_path / "data", source,
                                         kinesis_sink_toml("out", ["feed"], STREAM)))
    wait_feed_done(feed, provider)
    first = min(c.first_seq for c in provider.conns if c.first_seq is not None)
    expected = set(range(first, feed.total + 1))
    reader = StreamReader(run.embedded_client(), STREAM)
    records = wait_settled(run, reader, "feed", ["out"],
                           need=lambda recs: expected <= set(seqs_of(recs)))
    seqs = seqs_of(records)
    m = source_metrics(run)
    dups = sorted(s for s, n in Counter(seqs).items() if n > 1)
    extra = sorted(set(seqs) - expected)
    assert not dups and not extra and set(seqs) == expected, (
        f"stream from seq {first}: {len(seqs)} records, {len(set(seqs))} distinct of {len(expected)}; "
        f"duplicated {dups[:10]}, unexpected {extra[:10]}; metrics {m}; provider {provider.summary()}"
    )
    print(f"from seq {first}: {len(seqs)} records; metrics {m}; provider {provider.summary()}, "
          f"{provider.deferred_cuts} cuts deferred")
    wrong = [s for r, s in zip(records, seqs) if r["Data"] != feed.payload_bytes(s)]
    assert not wrong, f"{len(wrong)} records differ from the provider's bytes, e.g. seq {wrong[:3]}"

    # Two replicas really ran side by side and both were cut along the way.
    assert provider.max_concurrent() >= 2, f"never two connections at once: {provider.summary()}"
    assert len(provider.ended("close")) + len(provider.ended("abort")) >= 4, provider.summary()
    assert provider.ended("close") and provider.ended("abort"), provider.summary()
    assert m["duplicates[dedup]"] > 0, f"no duplicates counted with reason dedup: {m}"
    assert m["gaps_total"] == 0 and m["missing_total"] == 0, f"gaps reported though a replica filled them: {m}"


def test_one_connection_without_resume_counts_exactly_the_gaps_it_leaves(
    tmp_path, broadcast_feed_factory, pipeline_factory
):
    """The same kind of feed with one connection and no dedup: every cut loses what was
    released while the source reconnected. Proves that `sluice_source_missing_total` equals
    the number of seqs missing in the stream (between its first and last) and
    `sluice_source_gaps_total` the number of jumps, and that nothing is duplicated."""
    feed = Feed(3600, rate=600)
    provider = broadcast_feed_factory(feed, plan=("close", "abort"), lifetime=(0.8, 1.5),
                                      keep_one_live=False, seed=22)
    source = source_toml(
        "feed", provider.url,
        idle_timeout="2s", backoff_initial="100ms", backoff_max="5s",
        tables={"gaps": {"field": "/seq"}},
    )
    run = pipeline_factory(pipeline_toml(tmp_path / "data", source,
                                         kinesis_sink_toml("out", ["feed"], STREAM)))
    wait_feed_done(feed, provider)
    # No cuts in the feed's last second: the last connection gets seq `total`.
    reader = StreamReader(run.embedded_client(), STREAM)
    records = wait_settled(run, reader, "feed", ["out"],
                           need=lambda recs: feed.total in set(seqs_of(recs)))
    seqs = seqs_of(records)
    dups = sorted(s for s, n in Counter(seqs).items() if n > 1)
    assert not dups, f"duplicates in the stream: {dups[:10]}"
    have = sorted(set(seqs))
    jumps = [(a, b) for a, b in zip(have, have[1:]) if b - a > 1]
    missing = (have[-1] - have[0] + 1) - len(have)
    sent = set()
    for c in provider.conns:
        if c.first_seq is not None:
            sent.update(range(c.first_seq, c.last_seq + 1))
    assert set(have) <= sent, f"seqs the provider never sent: {sorted(set(have) - sent)[:10]}"
    cuts = len(provider.ended("close")) + len(provider.ended("abort"))
    assert cuts >= 3 and jumps, (
        f"the test needs cuts that lose events: {cuts} cuts, jumps {jumps}; {provider.summary()}"
    )
    m = source_metrics(run)
    print(f"stream {have[0]}..{have[-1]}: {len(have)} records, {missing} missing in {len(jumps)} jumps; "
          f"metrics {m}; provider {provider.summary()}")
    assert m["missing_total"] == missing, (
        f"sluice_source_missing_total = {m['missing_total']}, but {missing} seqs are missing in the stream "
        f"between {have[0]} and {have[-1]} (jumps {jumps}); metrics {m}"
    )
    assert m["gaps_total"] == len(jumps), (
        f"sluice_source_gaps_total = {m['gaps_total']}, but the stream has {len(jumps)} jumps {jumps}; {m}"
    )
    assert m["duplicates_total"] == 0, m


# ---------------------------------------------------------------------------
# c) rotation on a feed without a cursor whose payloads repeat
# ---------------------------------------------------------------------------


def _file_sink_lines(directory) -> list[str]:
    """Every line the file sink wrote, in file order (`-<n>` numbers files of the same second)."""
    files = [p for p in directory.glob("*") if re.search(r"\.ndjson(\.part)?$", p.name)]

    def order(p):
        m = re.search(r"-(\d{8}T\d{6}Z)-(\d+)\.ndjson", p.name)
        return (m.group(1), int(m.group(2))) if m else (p.name, 0)

    lines = []
    for p in sorted(files, key=order):
        lines += [line for line in p.read_text().splitlines() if line.strip()]
    return lines


def test_rotation_without_a_cursor_delivers_every_repeating_payload_once(
    tmp_path, broadcast_feed_factory, pipeline_factory
):
    """A live feed of ~1000 events/s (10 s) whose payloads carry no cursor and repeat
    (`{"racer":"r03","v":1}` from 50 combinations); nothing cuts, but sluice rotates the
    connection every 3 s (make-before-break). Proves rotation aligns the two streams by
    position and drops only the overlap: the source's output (read through a file sink, in
    order) is exactly the provider's released sequence from the first message the source
    received, and the Kinesis stream holds the same events in the same order per key."""
    feed = RepeatingFeed(11000, rate=1000, racers=10, values=5, seed=31)
    provider = broadcast_feed_factory(feed, plan=("none",), seed=31)
    source = source_toml("feed", provider.url, max_connection_age="3s", idle_timeout="5s",
                         backoff_initial="100ms", backoff_max="5s")
    archive = tmp_path / "data" / "archive"
    sinks = kinesis_sink_toml("out", ["feed"], STREAM) + "\n" + "\n".join([
        "[sinks.archive]", 'type = "file"', 'inputs = ["feed"]', f"path = {toml_value(str(archive))}",
    ])
    run = pipeline_factory(pipeline_toml(tmp_path / "data", source, sinks))
    wait_feed_done(feed, provider)
    live = [c for c in provider.conns if c.first_seq is not None]
    first = min(c.first_seq for c in live)
    expected = [feed.payload(i) for i in range(first, feed.total + 1)]
    reader = StreamReader(run.embedded_client(), STREAM)
    wait_settled(run, reader, "feed", ["out", "archive"], timeout=25,
                 need=lambda recs: len(recs) >= len(expected))
    m = source_metrics(run)

    got = _file_sink_lines(archive)
    print(f"from position {first}: {len(got)} events out, {len(expected)} expected; metrics {m}; "
          f"provider {provider.summary()}")
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        pytest.fail(
            f"the source's output differs from the provider's sequence (from position {first}): "
            f"{len(got)} events vs {len(expected)} expected, first difference at index {at} "
            f"(feed position {first + at}): got {got[max(0, at - 2):at + 3]}, "
            f"expected {expected[max(0, at - 2):at + 3]}; metrics {m}; connections "
            f"{[(c.index, c.first_seq, c.last_seq, round(c.started - (feed.t0 or 0), 2)) for c in provider.conns]}",
            pytrace=False,
        )

    per_key_stream = defaultdict(list)
    for r in reader.records:  # shard by shard, in order: a key lives on one shard
        per_key_stream[r["PartitionKey"]].append(payload_of(r))
    per_key_expected = defaultdict(list)
    for p in expected:
        per_key_expected[json.loads(p)["racer"]].append(p)
    differ = [k for k in per_key_expected if per_key_stream.get(k) != per_key_expected[k]]
    assert not differ and set(per_key_stream) == set(per_key_expected), (
        f"the stream differs per key for {differ}: "
        f"{[(k, len(per_key_stream.get(k, [])), len(per_key_expected[k])) for k in differ]}"
    )

    # Rotations happened while the feed was live, and each was make-before-break.
    assert m["reconnects[rotation]"] >= 2, f"fewer than 2 rotations: {m}"
    assert len(live) >= 3, f"fewer than 3 connections received data: {provider.summary()}"
    for old, new in zip(live, live[1:]):
        assert old.ended_at is None or new.started < old.ended_at, (
            f"connection #{old.index} ended before #{new.index} started (break before make): "
            f"{provider.summary()}"
        )
    assert m["duplicates[rotation]"] > 0, f"no rotation overlap was dropped (make-before-break?): {m}"


# ---------------------------------------------------------------------------
# d) the silence alarm
# ---------------------------------------------------------------------------


def _alarm_lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_silent_feed_raises_and_clears_the_silence_alarm(tmp_path, ws_feed_factory, pipeline_factory):
    """The feed (200 events/s) stops releasing anything for 5 s, with the connection open,
    then goes on. With `alarm.silence = "2s"`: during the stall `sluice_source_silent` is 1,
    `/health` answers 503 listing the alarm and `alarm.command` ran with state `raised`; once
    events flow again the gauge is 0, `/health` 200 and the command ran with `cleared`; no
    event was lost."""
    feed = Feed(800, rate=200, stall=(300, 5.0))
    provider = ws_feed_factory(feed)
    log = tmp_path / "alarms.log"
    script = (f'echo "$SLUICE_SOURCE $SLUICE_ALARM $SLUICE_ALARM_STATE|$SLUICE_ALARM_DETAIL" '
              f">> '{log}'")
    source = source_toml(
        "feed", provider.url, idle_timeout="30s", backoff_initial="100ms", backoff_max="5s",
        resume={"cursor": "/seq", "url": provider.url + "?after={cursor}"},
        tables={"alarm": {"silence": "2s", "command": ["/bin/sh", "-c", script]}},
    )
    run = pipeline_factory(pipeline_toml(tmp_path / "data", source,
                                         kinesis_sink_toml("out", ["feed"], STREAM)))

    def silent_gauge():
        samples = run.metrics()
        names = {n for n, _, _ in samples}
        assert "sluice_source_silent" in names, "no sluice_source_silent gauge in /metrics"
        return metric_sum(samples, "sluice_source_silent", source="feed")

    def silence_alarms(body):
        return [a for a in (body or {}).get("alarms", []) if a.get("component") == "feed"
                and a.get("alarm") == "silence"]

    # Before the stall: no alarm.
    wait_for(lambda: run.source("feed")["spooled"] >= 50, 15, "the first events", details=run.log_tail)
    stall_start, stall_end = feed.stall_window()
    assert time.monotonic() < stall_start + 1.5, "test too slow to see the state before the alarm"
    status, body = run.health_response()
    assert status == 200 and body["status"] == "ok" and body["alarms"] == [], (status, body)
    assert silent_gauge() == 0

    # During the stall.
    seen = {}

    def raised():
        status, body = run.health_response()
        gauge = silent_gauge()
        seen.update(status=status, body=body, gauge=gauge)
        return gauge == 1 and status == 503 and silence_alarms(body)

    wait_for(raised, max(0.5, stall_end - time.monotonic()), "the silence alarm while the feed stalls",
             details=lambda: f"last seen {seen}; {run.log_tail(20)}")
    raised_at = time.monotonic()
    assert raised_at >= stall_start + 1.8, (
        f"silence alarm raised {raised_at - stall_start:.2f}s into the stall, before alarm.silence (2s)"
    )
    body = seen["body"]
    assert body["status"] == "alarm" and "pipeline" in body, body
    alarm = silence_alarms(body)[0]
    assert isinstance(alarm.get("since_ms"), int) and isinstance(alarm.get("detail"), str), alarm
    wait_for(lambda: any(line.startswith("feed silence raised|") for line in _alarm_lines(log)),
             10, "alarm.command to report `raised`", details=lambda: f"{_alarm_lines(log)}")

    # After the stall.
    def cleared():
        status, body = run.health_response()
        gauge = silent_gauge()
        seen.update(status=status, body=body, gauge=gauge)
        return (gauge == 0 and status == 200 and body["status"] == "ok" and body["alarms"] == []
                and any(line.startswith("feed silence cleared|") for line in _alarm_lines(log)))

    wait_for(cleared, stall_end - time.monotonic() + 10, "the silence alarm to clear after the stall",
             details=lambda: f"last seen {seen}; command wrote {_alarm_lines(log)}; {run.log_tail(20)}")
    assert time.monotonic() >= stall_end - 0.2

    run.wait_delivered("out", feed.total, timeout=20)
    lines = _alarm_lines(log)
    states = [line.split("|", 1)[0] for line in lines]
    assert states == ["feed silence raised", "feed silence cleared"], lines
    assert lines[0].split("|", 1)[1].strip(), f"SLUICE_ALARM_DETAIL was empty: {lines}"
    warned = [line for line in run.log_path.read_text().splitlines()
              if "silence" in line.lower() and "warn" in line.lower()]
    assert warned, f"no warning about the silence in the log:\n{run.log_tail(30)}"


# ---------------------------------------------------------------------------
# e) validate: replicas need dedup
# ---------------------------------------------------------------------------


def test_validate_refuses_replicas_without_dedup(tmp_path):
    """`sluice validate` refuses `replicas = 2` without `[sources.NAME.dedup]` (exit code not
    0, the message names `replicas` and `dedup`), and accepts the same file once dedup is
    there."""
    sink = kinesis_sink_toml("out", ["feed"], STREAM)
    bad = pipeline_toml(tmp_path / "data", source_toml("feed", "ws://127.0.0.1:9/ws", replicas=2), sink)
    good = pipeline_toml(
        tmp_path / "data",
        source_toml("feed", "ws://127.0.0.1:9/ws", replicas=2, tables={"dedup": {"key": ["/seq"]}}),
        sink,
    )

    def validate(text, name):
        path = tmp_path / name
        path.write_text(text)
        return subprocess.run([sluice_bin(), "validate", str(path)], capture_output=True, text=True,
                              timeout=30, env={"RUST_LIB_BACKTRACE": "0", "PATH": "/usr/bin:/bin"})

    r = validate(bad, "bad.toml")
    assert r.returncode != 0, f"accepted replicas = 2 without dedup: {r.stdout}{r.stderr}"
    assert "unknown field" not in r.stderr, f"refused for another reason: {r.stderr}"
    assert "replicas" in r.stderr and "dedup" in r.stderr, f"unclear message: {r.stderr}"
    assert "bad.toml" in r.stderr, f"the message does not name the file: {r.stderr}"

    r = validate(good, "good.toml")
    assert r.returncode == 0, f"refused replicas = 2 with dedup: {r.stderr}"
