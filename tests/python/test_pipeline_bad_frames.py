"""`sluice run` against providers that send frames sluice cannot use (issue 9, items 4 and 5).

* A 20 MB frame (20x the default `max_message_bytes` of 1 MiB, above the old 16 MiB hard cap
  that used to drop the connection) is read and discarded as it streams, dead-lettered
  (`oversized`) with only its first 64 KiB and its real size, counted, and the connection
  goes on. When the cursor is at the start of the frame, the cursor moves past it, as the
  provider sees in the next resume request. When it is not (the cursor comes after 20 MB of
  padding) and the provider replays the frame on every resume and then cuts, reconnects back
  off and the `cursor_stuck` alarm shows in `/health` (503) and `/metrics`.
* A cursor of another type than the first ones (`{"seq":"bin?"}` after integers) is
  dead-lettered (`bad_cursor`), the event is not delivered, and the next resume request still
  carries the last good integer.

The providers are `providers.ScriptedFeed` (Python `websockets`, SSE and NDJSON over plain
HTTP/1.1): items with positions, resume after `?after=X`, cuts after chosen items.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from pipeline_helpers import (  # noqa: F401  (fixtures)
    StreamReader,
    _ProviderLog,
    _register,
    kinesis_sink_toml,
    metric_sum,
    pipeline_factory,
    pipeline_toml,
    read_until_complete,
    seqs_of,
    wait_for,
)
from providers import ScriptedFeed

STREAM = "feed"
BIG = 20 * 1000 * 1000  # a 20 MB frame
KEPT = 64 * 1024  # what sluice keeps of an oversized frame


@pytest.fixture
def scripted_feed(request):
    """`scripted_feed(kind, items, cut_after=…)` -> a started `ScriptedFeed`."""
    started = []

    def start(kind, items, **kw):
        p = ScriptedFeed(kind, items, **kw).start()
        started.append(p)
        _register(request, _ProviderLog(p))
        return p

    yield start
    for p in started:
        p.stop()


def event(seq) -> str:
    return json.dumps({"seq": seq, "racer": f"r{seq % 5}"}, separators=(",", ":"))


def big_event(seq: int, cursor_first: bool) -> str:
    """A JSON event of exactly BIG bytes with its `seq` first (readable from the kept
    beginning) or last (after 20 MB of padding)."""
    head = f'{{"seq":{seq},"pad":"' if cursor_first else '{"pad":"'
    tail = '"}' if cursor_first else f'","seq":{seq}}}'
    return head + "x" * (BIG - len(head) - len(tail)) + tail


def source_toml(kind: str, url: str, extra: str = "") -> str:
    return (
        f'[sources.feed]\ntype = "{kind}"\nurl = "{url}"\n'
        'backoff_initial = "100ms"\nbackoff_max = "2s"\nidle_timeout = "30s"\n'
        f'resume = {{ cursor = "/seq", url = "{url}?after={{cursor}}" }}\n{extra}'
    )


def start_pipeline(tmp_path, pipeline_factory, kind, url, extra=""):
    text = pipeline_toml(
        tmp_path / "data",
        source_toml(kind, url, extra),
        kinesis_sink_toml("out", ["feed"], STREAM, partition_key="/seq"),
    )
    return pipeline_factory(text)


def dead_letters(tmp_path) -> list[dict]:
    path = tmp_path / "data" / "dead-letter" / "feed.ndjson"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_seqs(run, want: list[int], timeout: float, details) -> list[int]:
    """Reads the stream until every seq of `want` is in it, then once more after 0.5 s (to
    catch late duplicates); returns every seq read."""
    reader = StreamReader(run.embedded_client(), STREAM)

    def done():
        reader.poll()
        return set(want) <= set(seqs_of(reader.records))

    wait_for(done, timeout, f"seqs {want[0]}..{want[-1]} in the stream",
             details=lambda: f"{details()}; read {sorted(set(seqs_of(reader.records)))}")
    time.sleep(0.5)
    reader.poll()
    return seqs_of(reader.records)


def stuck_alarms(body):
    return [a for a in (body or {}).get("alarms", [])
            if a.get("component") == "feed" and a.get("alarm") == "cursor_stuck"]


def check_oversized_letter(letter: dict, seq: int, cursor_first: bool):
    assert letter["reason"] == "oversized", letter
    detail = letter["detail"]
    # Its real size is noted, and only the first 64 KiB were kept.
    assert detail.startswith(f"{BIG} bytes, more than max_message_bytes = 1048576"), detail
    payload = base64.b64decode(letter["payload_base64"])
    assert len(payload) == KEPT, len(payload)
    assert payload.startswith(f'{{"seq":{seq},'.encode() if cursor_first else b'{"pad":"xxx'), payload[:40]


# ---------------------------------------------------------------------------
# 4. oversized frames
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["websocket", "sse", "http"])
def test_a_20mb_frame_is_dead_lettered_truncated_and_the_cursor_moves_past_it(
    tmp_path, scripted_feed, pipeline_factory, kind
):
    """Events 1..40, event 20 is 20 MB with its cursor first. The first connection is cut
    right after it; the provider would replay it to a resume from before it. Proves: the
    frame is dead-lettered once (64 KiB kept, 20,000,000 bytes noted), counted with reason
    `oversized`; the connection took it without breaking (no `too_large`/`error` reconnect);
    the resume request asks for after=20 (the cursor moved past it), so it is never sent
    again; the 39 other events are delivered exactly once; /health stays 200."""
    items = [(float(s), big_event(s, True) if s == 20 else event(s)) for s in range(1, 41)]
    feed = scripted_feed(kind, items, cut_after=lambda conn, pos: conn == 0 and pos == 20)
    run = start_pipeline(tmp_path, pipeline_factory, kind, feed.url)

    want = [s for s in range(1, 41) if s != 20]
    seqs = wait_seqs(run, want, 60, feed.summary)
    assert sorted(seqs) == want, seqs

    # The resume came after the big frame's cursor: the provider never sent it again.
    assert [c["after"] for c in feed.conns] == [None, "20"], feed.summary()
    assert feed.big_sent == 1, feed.summary()
    letters = dead_letters(tmp_path)
    assert len(letters) == 1, letters
    check_oversized_letter(letters[0], 20, cursor_first=True)
    assert "the cursor moves past it to 20" in letters[0]["detail"], letters[0]["detail"]

    m = run.metrics()
    assert metric_sum(m, "sluice_dead_letters_total", component="feed", reason="oversized") == 1
    assert metric_sum(m, "sluice_source_dead_lettered_total", source="feed") == 1
    assert metric_sum(m, "sluice_source_connects_total", source="feed") == 2
    broken = {c: metric_sum(m, "sluice_source_reconnects_total", source="feed", cause=c)
              for c in ("error", "too_large")}
    assert broken == {"error": 0, "too_large": 0}, broken
    status, body = run.health_response()
    assert status == 200 and body["alarms"] == [], (status, body)
    print(f"{kind}: connections {len(feed.conns)}, dead letters {len(letters)}, delivered {len(seqs)}")


@pytest.mark.parametrize("kind", ["websocket", "http"])
def test_a_replayed_20mb_frame_without_a_readable_cursor_backs_off_and_raises_cursor_stuck(
    tmp_path, scripted_feed, pipeline_factory, kind
):
    """Events 1..30, event 10 is 20 MB with its cursor after the padding, and the provider
    cuts every connection right after it, so every resume (after=9) replays it. Proves: no
    unbounded reconnect loop (the connections that only brought the unusable frame back off
    exponentially: about 8 in 8 s, where reconnecting at once would make ~40); `cursor_stuck` is
    raised (/health 503 naming it, `sluice_source_cursor_stuck` 1); every replay is
    dead-lettered and counted (dead letters = metric = frames the provider sent). Then the
    provider stops cutting: the next connection gets past the frame, events 11..30 are
    delivered, and the alarm clears."""
    state = {"replay": True}
    items = [(float(s), big_event(s, False) if s == 10 else event(s)) for s in range(1, 31)]
    feed = scripted_feed(kind, items, cut_after=lambda conn, pos: state["replay"] and pos == 10)
    run = start_pipeline(tmp_path, pipeline_factory, kind, feed.url)
    t0 = time.monotonic()

    def raised():
        status, body = run.health_response()
        return status == 503 and stuck_alarms(body) and (status, body)

    status, body = wait_for(raised, 60, "/health 503 with cursor_stuck",
                            details=lambda: f"{feed.summary()}\n{run.log_tail(20)}")
    to_alarm = time.monotonic() - t0
    alarm = stuck_alarms(body)[0]
    assert "without moving the cursor past 9" in alarm["detail"], alarm
    assert metric_sum(run.metrics(), "sluice_source_cursor_stuck", source="feed") == 1
    assert all(c["after"] in (None, "9") for c in feed.conns), feed.summary()

    # Bounded: watch the reconnects for 8 s more.
    before = len(feed.conns)
    time.sleep(8)
    during = len(feed.conns) - before
    m = run.metrics()
    assert metric_sum(m, "sluice_source_cursor_stuck", source="feed") == 1
    # Backing off (full jitter up to backoff_max = 2 s) allows about 8; reconnecting within
    # backoff_initial (100 ms) after each one, as after a connection that delivered, ~40.
    assert during <= 15, f"{during} connections in 8 s while stuck: {feed.summary()}"
    backoff = metric_sum(m, "sluice_source_backoff_seconds", source="feed")

    # Every replay was dead-lettered and counted; none was delivered.
    def counted():
        sent = feed.big_sent
        letters = dead_letters(tmp_path)
        n = metric_sum(run.metrics(), "sluice_dead_letters_total", component="feed", reason="oversized")
        return len(letters) == n == sent and (sent, letters)

    sent, letters = wait_for(counted, 20, "every replay dead-lettered and counted", details=feed.summary)
    assert sent >= 3, feed.summary()
    for letter in letters:
        check_oversized_letter(letter, 10, cursor_first=False)
        assert "no usable cursor in its first 65536 bytes, so the cursor stays at 9" in letter["detail"]

    # The provider stops cutting: the stream goes on past the frame and the alarm clears.
    state["replay"] = False
    want = [s for s in range(1, 31) if s != 10]
    seqs = wait_seqs(run, want, 30, feed.summary)
    assert sorted(seqs) == want, seqs

    def cleared():
        status, body = run.health_response()
        return status == 200 and not stuck_alarms(body)

    wait_for(cleared, 10, "cursor_stuck to clear", details=run.log_tail)
    assert metric_sum(run.metrics(), "sluice_source_cursor_stuck", source="feed") == 0
    print(f"{kind}: alarm after {to_alarm:.1f}s and {before} connections; {during} connections in the "
          f"next 8 s (backoff gauge {backoff:.2f}s); {sent} replays dead-lettered")


# ---------------------------------------------------------------------------
# 5. cursor validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["websocket", "sse"])
def test_a_string_cursor_after_integers_is_dead_lettered_and_does_not_move_the_cursor(
    tmp_path, scripted_feed, pipeline_factory, kind
):
    """Events 1..10, then `{"seq":"bin?"}`, then 11..20; the first connection is cut right
    after the bad one. Proves: it is dead-lettered `bad_cursor` (not delivered), counted, and
    the resume request after the cut asks for after=10, the last good integer (not
    `after=bin?`); the replayed bad frame is dead-lettered again; every good event arrives
    once."""
    bad = '{"seq":"bin?","racer":"r0"}'
    items = [(float(s), event(s)) for s in range(1, 11)] + [(10.5, bad)]
    items += [(float(s), event(s)) for s in range(11, 21)]
    feed = scripted_feed(kind, items, cut_after=lambda conn, pos: conn == 0 and pos == 10.5)
    run = start_pipeline(tmp_path, pipeline_factory, kind, feed.url)

    reader = StreamReader(run.embedded_client(), STREAM)
    records = read_until_complete(reader, 20, timeout=30, details=feed.summary)
    assert sorted(seqs_of(records)) == list(range(1, 21)), seqs_of(records)
    assert [c["after"] for c in feed.conns] == [None, "10"], feed.summary()
    letters = dead_letters(tmp_path)
    assert [l["reason"] for l in letters] == ["bad_cursor", "bad_cursor"], letters
    assert base64.b64decode(letters[0]["payload_base64"]).decode() == bad
    assert re.search(r'cursor "bin\?" at "/seq" is not an integer .*the cursor stays at 10', letters[0]["detail"]), letters[0]
    m = run.metrics()
    assert metric_sum(m, "sluice_dead_letters_total", component="feed", reason="bad_cursor") == 2
    assert metric_sum(m, "sluice_source_cursor", source="feed") == 20


def test_cursor_type_is_checked_by_validate(tmp_path):
    """`resume.cursor_type` takes "integer" or "string"; anything else is refused with the
    file, line and option."""
    import subprocess

    from conftest import sluice_bin

    def validate(value):
        text = pipeline_toml(
            tmp_path / "data",
            source_toml("websocket", "ws://127.0.0.1:9/feed").replace(
                'cursor = "/seq",', f"cursor = \"/seq\", cursor_type = {value},"),
            kinesis_sink_toml("out", ["feed"], STREAM),
        )
        path = tmp_path / "p.toml"
        path.write_text(text)
        return subprocess.run([sluice_bin(), "validate", str(path)], capture_output=True, text=True, timeout=30)

    assert validate('"integer"').returncode == 0
    assert validate('"string"').returncode == 0
    bad = validate('"number"')
    assert bad.returncode != 0
    err = bad.stderr + bad.stdout
    assert "cursor_type" in err and "integer" in err and "string" in err, err
