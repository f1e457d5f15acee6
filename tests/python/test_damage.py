"""Damage to `sluice serve`'s data dir costs only the damaged records (issue 9).

30,000 acknowledged records on 2 shards with 1 MiB segments, a clean stop, then the cases a
new user tried: 5,000 bytes cut off the tail of a sealed segment, 16 flipped bytes in a sealed
segment, 4 flipped bytes in the active segment.  `sluice serve --verify` reports the damage and
exits 1; after a restart boto3 reads every intact record from TRIM_HORIZON, the records lost
equal `sluice_storage_corrupt_records_total`, the quarantine holds the damaged bytes, and new
records get sequence numbers above every one acknowledged before.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests

from conftest import sluice_bin
from pipeline_helpers import metric_sum, parse_metrics
from sluice_helpers import create_stream, list_all_shards, read_shard

N = 30_000


def frames(path: Path):
    """(offset, length, ordinal) of each frame, by the documented segment format."""
    b = path.read_bytes()
    out, p = [], 32
    while p + 24 <= len(b):
        body = int.from_bytes(b[p + 4 : p + 8], "little")
        ordinal = int.from_bytes(b[p + 8 : p + 16], "little")
        out.append((p, 24 + body, ordinal))
        p += 24 + body
    assert p == len(b), f"{path} parses to its end"
    return out


def overlapping(frs, start, end):
    return {o for off, ln, o in frs if off < end and off + ln > start}


def ordinal_of(seq: str) -> int:
    # Sequence number layout: "49", stream tag (10), shard (10), ordinal (20), ...
    return int(seq[22:42])


def flip(path: Path, at: int, n: int):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(n)
        f.seek(at)
        f.write(bytes(x ^ 0xA5 for x in b))


def test_damage_costs_only_the_damaged_records(server_factory):
    srv = server_factory(["--segment-mib", "1"])
    c = srv.client()
    name = create_stream(c, shards=2)
    for start in range(0, N, 500):
        recs = [
            {"Data": f"rec-{i:06d}-".encode() + b"x" * 200, "PartitionKey": f"pk{i}"}
            for i in range(start, min(N, start + 500))
        ]
        assert c.put_records(StreamName=name, Records=recs)["FailedRecordCount"] == 0
    shard_ids = sorted(s["ShardId"] for s in list_all_shards(c, name))
    before = {sid: read_shard(c, name, sid)[0] for sid in shard_ids}
    assert sum(len(v) for v in before.values()) == N
    max_seq = {sid: max(int(r["SequenceNumber"]) for r in before[sid]) for sid in shard_ids}
    assert srv.stop() == 0

    stream_dir = next((srv.data_dir / "streams").iterdir())
    segs = {i: sorted((stream_dir / f"{i:012d}").glob("*.seg")) for i in range(2)}
    assert len(segs[0]) >= 3 and len(segs[1]) >= 3, segs
    lost = {sid: set() for sid in shard_ids}

    # 5,000 bytes cut off the tail of a sealed segment of shard 1.
    victim = segs[1][1]
    frs = frames(victim)
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size - 5000)
    lost[shard_ids[1]] |= overlapping(frs, size - 5000, size)
    # 16 flipped bytes in a sealed segment of shard 0 (its sidecar still vouches for it).
    victim = segs[0][1]
    frs = frames(victim)
    mid = frs[len(frs) // 2][0]
    flip(victim, mid - 8, 16)
    lost[shard_ids[0]] |= overlapping(frs, mid - 8, mid + 8)
    # 4 flipped bytes at 25 % of the active segment of shard 0.
    victim = segs[0][-1]
    frs = frames(victim)
    at = frs[len(frs) // 4][0] + 40
    flip(victim, at, 4)
    lost[shard_ids[0]] |= overlapping(frs, at, at + 4)
    n_lost = sum(len(v) for v in lost.values())
    assert 4 <= n_lost < 60, lost
    print(f"damage: {n_lost} records in damaged bytes ({ {k: len(v) for k, v in lost.items()} })")

    # --verify: a report, exit status 1, nothing changed.
    snapshot = {p: p.read_bytes() for p in segs[0] + segs[1]}
    v = subprocess.run(
        [sluice_bin(), "serve", "--verify", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert v.returncode == 1, v.stdout + v.stderr
    assert str(segs[1][1]) in v.stdout and str(segs[0][1]) in v.stdout, v.stdout
    assert "damage found" in v.stderr, v.stderr
    assert all(p.read_bytes() == b for p, b in snapshot.items()), "--verify changed a file"
    print(v.stdout)

    srv.start()
    c = srv.client()
    for sid in shard_ids:
        after, _ = read_shard(c, name, sid)
        expected = [r for r in before[sid] if ordinal_of(r["SequenceNumber"]) not in lost[sid]]
        assert [r["SequenceNumber"] for r in after] == [r["SequenceNumber"] for r in expected], sid
        assert [r["Data"] for r in after] == [r["Data"] for r in expected]

    # The loss is counted exactly (the sealed segment is checked in the background).
    deadline = time.monotonic() + 30
    while True:
        m = parse_metrics(requests.get(srv.url + "/metrics", timeout=5).text)
        counted = metric_sum(m, "sluice_storage_corrupt_records_total")
        if counted == n_lost or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counted == n_lost, (counted, n_lost, srv.log_tail())
    quarantine = list((srv.data_dir / "quarantine").iterdir())
    assert len(quarantine) == 3, quarantine
    assert sum(p.stat().st_size for p in quarantine) == metric_sum(m, "sluice_storage_quarantined_bytes_total")
    assert "records lost" in srv.log_path.read_text() or "records_lost" in srv.log_path.read_text()

    # Sequence numbers keep increasing.
    for i, sid in enumerate(shard_ids):
        h = hex(0 if i == 0 else 2**127 + 1)
        r = c.put_record(StreamName=name, Data=b"after", PartitionKey="k", ExplicitHashKey=str(int(h, 16)))
        assert r["ShardId"] == sid
        assert int(r["SequenceNumber"]) > max_seq[sid]

    # What was damaged is cut out for good: the data dir verifies clean.
    assert srv.stop() == 0
    v = subprocess.run(
        [sluice_bin(), "serve", "--verify", "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert v.returncode == 0, v.stdout + v.stderr
