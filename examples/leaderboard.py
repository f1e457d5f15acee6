#!/usr/bin/env python3
"""The race leaderboard of `sluice demo`: a tumbling-window handler (standard library only).

    python3 leaderboard.py OUT.json [SHARDS]

sluice's `handler` sink (with `tumbling_window`) starts it and writes one Lambda Kinesis event
per line on stdin; it answers one line per event on stdout, `{"result": {"state": ...}}` or
`{"error": ...}` (the process protocol in README.md). An event holds the records of one shard,
`window` {start, end}, the `state` this shard's window returned last time and
`isFinalInvokeForWindow`.

State, per shard and window: {racer: [power_sum, reports]}. On the final invoke of a window
the shard's totals are merged into OUT.json, which holds the newest windows, oldest first:

    {"windows": [{"start": "...Z", "end": "...Z", "shards": ["shardId-..."],
                  "reports": 9876,
                  "top": [{"racer": "r0042", "avg_power": 401.3, "reports": 10}, ...]}]}

Windows span shards, so a window's entry combines every shard that has closed it: racers are
merged by name (sums and counts added), which is exact even if one racer's records were split
over shards. `shards` says which have closed it; a reader that knows the stream's shard count
can tell a complete window from one still filling (given SHARDS, the script drops a complete
window's per-racer totals to keep the file small). OUT.json is replaced atomically (a temp
file, then rename) under an exclusive lock, because the sink runs one process per concurrent
invocation and two shards may close the same window at once.
"""

import base64
import json
import os
import sys
import tempfile

try:
    import fcntl
except ImportError:  # not Unix: a single process (concurrency = 1) needs no lock
    fcntl = None

TOP = 10
KEEP_WINDOWS = 30


def ranked(totals):
    """The top racers of {racer: [sum, n]} by average power, ties by name."""
    rows = sorted(totals.items(), key=lambda kv: (-kv[1][0] / kv[1][1], kv[0]))
    return [{"racer": r, "avg_power": round(s / n, 1), "reports": n} for r, (s, n) in rows[:TOP]]


def add_records(state, records):
    for r in records:
        try:
            event = json.loads(base64.b64decode(r["kinesis"]["data"]))
            racer, power = event["racer"], event["power"]
        except (ValueError, KeyError, TypeError):
            continue  # not a race event: nothing to rank
        if not isinstance(racer, str) or not isinstance(power, (int, float)):
            continue
        total = state.setdefault(racer, [0, 0])
        total[0] += power
        total[1] += 1


def merge(w, state):
    for racer, (s, n) in state.items():
        total = w["totals"].setdefault(racer, [0, 0])
        total[0] += s
        total[1] += n
        w["reports"] += n


def publish(out, shards, event, state):
    """Merges this shard's final state for its window into OUT.json."""
    lock = open(out + ".lock", "a")
    try:
        if fcntl:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(out) as f:
                board = json.load(f)
        except (OSError, ValueError):
            board = {"windows": []}
        windows = {w["start"]: w for w in board.get("windows", [])}
        start = event["window"]["start"]
        w = windows.setdefault(start, {"start": start, "end": event["window"]["end"], "shards": [],
                                       "reports": 0, "totals": {}})
        if "totals" not in w:
            return  # complete already: this is a retried final invoke
        if event.get("isWindowTerminatedEarly"):
            merge(w, state)  # the window goes on in this shard with a fresh state
        elif event["shardId"] not in w["shards"]:  # else a retried final invoke
            w["shards"] = sorted(w["shards"] + [event["shardId"]])
            merge(w, state)
        w["top"] = ranked(w["totals"])
        if shards and len(w["shards"]) >= shards:
            del w["totals"]
        board["windows"] = [windows[k] for k in sorted(windows)][-KEEP_WINDOWS:]
        fd, tmp = tempfile.mkstemp(prefix=".leaderboard-", dir=os.path.dirname(os.path.abspath(out)))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(board, f)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
    finally:
        lock.close()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "leaderboard.json"
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    for line in sys.stdin:
        try:
            event = json.loads(line)
            state = dict(event.get("state") or {})
            add_records(state, event.get("Records", []))
            if event.get("isFinalInvokeForWindow"):
                publish(out, shards, event, state)
            answer = {"result": {"state": state}}
        except Exception as e:  # the batch fails and sluice retries it
            answer = {"error": {"errorType": type(e).__name__, "errorMessage": str(e)}}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
