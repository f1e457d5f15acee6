"""Exactly once into the embedded stream across `kill -9`.

A numbered feed (seq 1..N) from a provider that resumes from the cursor (`?after={cursor}`)
flows into `sluice run` with the default embedded `kinesis` sink. The `sluice run` process is
killed with SIGKILL five times at random moments while the feed runs and restarted each time
on the same data dir. At the end the whole stream is read back with boto3: every event must be
in it exactly once (0 duplicates, 0 missing), byte for byte. The source's events are appended
to the stream with their cursor in one commit (the direct path), so nothing handed over
before a kill is written twice.

The second case adds a `file` sink on the same source (it reads the source's spool): the
stream is still exactly once, and so are the file sink's files (records it wrote before a kill
but had not acknowledged are recognised by its progress mark and not written again).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline_helpers import (  # noqa: F401  (fixtures)
    StreamReader,
    describe_seqs,
    kinesis_sink_toml,
    pipeline_factory,
    pipeline_toml,
    read_until_complete,
    seqs_of,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed

STREAM = "race"
KILLS = 5
TOTAL = 20_000
RATE = 1_500


def file_sink_toml(name: str, inputs, path: Path) -> str:
    return "\n".join([
        f"[sinks.{name}]", 'type = "file"', "inputs = [" + ", ".join(f'"{i}"' for i in inputs) + "]",
        f'path = "{path}"',
    ]) + "\n"


def file_seqs(path: Path) -> list[int]:
    """Every record's seq in the file sink's files (finished and `.part` ones)."""
    out = []
    for f in sorted(path.glob("*.ndjson*")):
        for line in f.read_text("utf-8", "replace").splitlines():
            if line.strip():
                out.append(json.loads(line)["seq"])
    return out


@pytest.mark.parametrize("with_file_sink", [False, True], ids=["stream-only", "stream-and-file"])
def test_five_kills_mid_feed_leave_every_event_in_the_stream_exactly_once(
    tmp_path, ws_feed_factory, pipeline_factory, with_file_sink
):
    seed = int(os.environ.get("SLUICE_TEST_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    feed = Feed(TOTAL, rate=RATE)
    provider = ws_feed_factory(feed)
    archive = tmp_path / "archive"
    sinks = kinesis_sink_toml("out", ["race"], STREAM)
    if with_file_sink:
        sinks += "\n" + file_sink_toml("archive", ["race"], archive)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        sinks,
    )
    run = pipeline_factory(text)
    kills = []
    for i in range(KILLS):
        # A random moment while events flow: after the restarted source has delivered some.
        delay = rng.uniform(0.2, 1.2)
        time.sleep(delay)
        wait_for(lambda: run.sink("out")["delivered"] > 0, 30, f"events delivered before kill {i + 1}",
                 details=run.log_tail)
        delivered = run.sink("out")["delivered"]
        run.kill()
        kills.append((round(delay, 2), delivered, feed.available()))
        time.sleep(rng.uniform(0.0, 0.3))
        run.start()
    assert all(available < TOTAL for _, _, available in kills), (
        f"the feed was over before the last kill (seed {seed}): kills (delay, delivered, released) {kills}"
    )
    wait_for(lambda: len(provider.conns) > KILLS, 30, "the source to reconnect after the last restart",
             details=provider.summary)
    resumed = [c.after for c in provider.conns[1:]]
    assert all(a is not None for a in resumed), f"a restarted source did not resume: {provider.summary()}"

    records = read_until_complete(StreamReader(run.embedded_client(), STREAM), TOTAL, timeout=90, settle=1.0,
                                  details=run.log_tail)
    seqs = seqs_of(records)
    counts = Counter(seqs)
    duplicates = len(seqs) - len(counts)
    missing = TOTAL - len(set(seqs) & set(range(1, TOTAL + 1)))
    print(f"seed {seed}: {KILLS} kills (delay s, delivered, released) {kills}; {len(seqs)} records in the "
          f"stream for {TOTAL} events: {duplicates} duplicates, {missing} missing")
    assert duplicates == 0 and missing == 0 and len(seqs) == TOTAL, (
        f"seed {seed}: {describe_seqs(seqs, TOTAL)}; repeated {sorted(s for s, n in counts.items() if n > 1)[:10]}; "
        f"kills {kills}; {provider.summary()}"
    )
    wrong = [r["SequenceNumber"] for r, s in zip(records, seqs) if r["Data"] != feed.payload_bytes(s)]
    assert not wrong, f"{len(wrong)} records differ from the provider's bytes"
    wrong_keys = [(s, r["PartitionKey"]) for r, s in zip(records, seqs) if r["PartitionKey"] != feed.racer(s)]
    assert not wrong_keys, f"partition keys are not /racer: {wrong_keys[:5]}"
    # Per key, in feed order (a shard is read in order; one key lives on one shard).
    by_key: dict[str, list[int]] = {}
    for r, s in zip(records, seqs):
        by_key.setdefault(r["PartitionKey"], []).append(s)
    unordered = [k for k, v in by_key.items() if v != sorted(v)]
    assert not unordered, f"keys out of order: {unordered}"

    health = run.health()["pipeline"]
    assert health["sinks"]["out"]["redelivered"] == 0, health["sinks"]["out"]
    assert health["sinks"]["out"]["dead_lettered"] == 0, health["sinks"]["out"]
    assert health["sources"]["race"]["cursor"] == str(TOTAL), health["sources"]["race"]

    if with_file_sink:
        wait_for(lambda: set(range(1, TOTAL + 1)) <= set(file_seqs(archive)), 60,
                 "every event in the file sink", details=lambda: describe_seqs(file_seqs(archive), TOTAL))
        run.stop()
        got = file_seqs(archive)
        file_dups = len(got) - len(set(got))
        print(f"file sink: {len(got)} lines for {TOTAL} events, {file_dups} duplicates, 0 missing")
        assert set(got) == set(range(1, TOTAL + 1)), describe_seqs(got, TOTAL)
        assert file_dups == 0, f"seed {seed}: the file sink wrote {file_dups} records twice; kills {kills}"
