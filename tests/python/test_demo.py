"""`sluice demo` shows the whole system (issue 11, item 4): the simulated race feed into the
embedded stream, the stream read back into the leaderboard (a tumbling-window handler running
`examples/leaderboard.py`), and the raw feed archived by the `s3` sink as gzip objects.

- the leaderboard's complete windows equal a direct computation (average power per racer, top 10)
  over the records read back from the stream by their arrival times, and the live status prints
  them; the archive holds gzip objects under the Firehose layout whose lines are the feed's
  events, each one once, byte for byte as in the stream;
- without python3 the demo says so in one line and runs without the leaderboard.

Short windows (`--window 2s`) keep the test under a minute; ports are picked by the OS.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from datetime import datetime, timezone

from conftest import sluice_bin
from pipeline_helpers import Process, wait_for
from sluice_helpers import make_client

STREAM_RE = re.compile(r'stream "race" at (http://127\.0\.0\.1:\d+)')
OBJECT_RE = re.compile(r"^(\d{4})/(\d\d)/(\d\d)/(\d\d)/lake-1-(\d{4})-(\d\d)-(\d\d)-(\d\d)-\d\d-\d\d-[0-9a-f-]{36}\.gz$")
SHARDS = 4
WINDOW_MS = 2000


def demo(tmp_path, name, *extra, env=None):
    cmd = [sluice_bin(), "demo", "--data-dir", tmp_path / "data", "--stream-listen", "127.0.0.1:0", *extra]
    return Process(name, cmd, tmp_path / "logs", env=env).start()


def read_stream(url):
    """Every record of the stream `race`: (arrival ms, data bytes)."""
    client = make_client(url)
    records = []
    for shard in client.list_shards(StreamName="race")["Shards"]:
        it = client.get_shard_iterator(StreamName="race", ShardId=shard["ShardId"],
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            out = client.get_records(ShardIterator=it, Limit=10000)
            for r in out["Records"]:
                records.append((round(r["ApproximateArrivalTimestamp"].timestamp() * 1000), r["Data"]))
            it = out.get("NextShardIterator") if out["Records"] else None
    return records


def expected_windows(records):
    """Window start (as the handler event names it) -> (reports, top 10 as leaderboard.py writes it)."""
    totals = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for arrival_ms, data in records:
        event = json.loads(data)
        start = datetime.fromtimestamp(arrival_ms // WINDOW_MS * WINDOW_MS / 1000, timezone.utc)
        t = totals[start.strftime("%Y-%m-%dT%H:%M:%SZ")][event["racer"]]
        t[0] += event["power"]
        t[1] += 1
    want = {}
    for start, racers in totals.items():
        rows = sorted(racers.items(), key=lambda kv: (-kv[1][0] / kv[1][1], kv[0]))[:10]
        want[start] = (sum(n for _, n in racers.values()),
                       [{"racer": r, "avg_power": round(s / n, 1), "reports": n} for r, (s, n) in rows])
    return want


def complete_windows(path):
    try:
        board = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [w for w in board["windows"] if len(w["shards"]) == SHARDS]


def test_the_demo_runs_the_leaderboard_and_archives_the_feed(tmp_path):
    run = demo(tmp_path, "demo", "--racers", "40", "--window", "2s", "--archive-every", "2s", "--seconds", "50")
    try:
        url = run.wait_line(STREAM_RE).group(1)
        board = tmp_path / "data" / "leaderboard.json"
        assert (tmp_path / "data" / "leaderboard.py").is_file(), "the script is written into the data directory"
        wait_for(lambda: len(complete_windows(board)) >= 3, 30, "three complete leaderboard windows",
                 details=lambda: run.log_tail(30))
        windows = complete_windows(board)
        records = read_stream(url)
        want = expected_windows(records)
        for w in windows:
            assert w["start"] in want, f"window {w['start']} has records in the stream"
            reports, top = want[w["start"]]
            assert (w["reports"], w["top"]) == (reports, top), f"window {w['start']}"
            assert len(top) == 10 and "totals" not in w
        line = run.wait_line(re.compile(r"^leaderboard \d\d:\d\d:\d\d-\d\d:\d\d:\d\d UTC \(\d+ reports\), "
                                        r"average power: 1\. r\d{4} \d+\.\d W"), 10)
        assert line, "the live status shows the leaderboard"
        assert run.stop() == 0, run.log_tail()
    finally:
        run.kill()

    lake = tmp_path / "data" / "lake"
    objects = sorted(p for p in lake.rglob("*") if p.is_file())
    assert objects, "the archive holds objects"
    stream_events = {json.loads(data)["seq"]: data for _, data in records}
    seqs = []
    for p in objects:
        rel = p.relative_to(lake).as_posix()
        m = OBJECT_RE.match(rel)
        assert m, f"{rel} is keyed as Firehose keys objects"
        assert m.groups()[:4] == m.groups()[4:], f"{rel}: the prefix is the object's hour"
        for line in gzip.decompress(p.read_bytes()).splitlines():
            event = json.loads(line)
            assert {"seq", "racer", "power", "ts"} <= event.keys(), line
            if event["seq"] in stream_events:
                assert line == stream_events[event["seq"]], "the archive holds the feed's bytes"
            seqs.append(event["seq"])
    assert len(seqs) == len(set(seqs)), "each event archived once"
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), "no event missing from the archive"
    assert max(seqs) >= max(stream_events), "the archive has at least what the stream had when read"
    print(f"demo: {len(windows)} complete windows checked against {len(records)} stream records; "
          f"{len(objects)} archive objects holding {len(seqs)} events")


def test_without_python3_the_demo_runs_without_the_leaderboard(tmp_path):
    empty = tmp_path / "no-python"
    empty.mkdir()
    run = demo(tmp_path, "demo-nopy", "--racers", "20", "--archive-every", "1s", "--seconds", "3",
               env={"PATH": str(empty), "NO_COLOR": "1"})
    try:
        assert run.wait_line(re.compile(r"^sluice demo: python3 not found: running without the leaderboard$"))
        assert run.proc.wait(timeout=30) == 0, run.log_tail()
        run.expected_exit = True
    finally:
        run.kill()
    assert not (tmp_path / "data" / "leaderboard.py").exists()
    assert any((tmp_path / "data" / "lake").rglob("*.gz")), "the archive runs anyway"
