"""sluice run vs the seed-style Python bridge, side by side, each into the embedded stream.

sluice runs as a user would run it: no `endpoint`, so its sink writes to the embedded stream in
its own process (fsync on), which serves the Kinesis API on loopback. The Python bridges need an
HTTP endpoint, so they write to `sluice serve` (the same embedded stream, standalone, fsync on).
One extra row sends sluice through `sluice serve` over HTTP too, to show what the transport costs.

Per contestant, a fresh `sluice simulate` provider (~150-byte JSON events, 1,000 racer keys):
  1. throughput: the provider emits as fast as the client takes (`--fast --count N`); events/s
     until N are in the stream (Python bridges stop after --bridge-seconds);
  2. latency at a steady rate (`--rate`, default 10,000 events/s for --seconds): every record is
     read back and (ApproximateArrivalTimestamp - the event's own `ts`) gives the added latency
     (the first two seconds are warm-up: the provider starts before the contestant connects).
Prints a markdown table. Run: .venv/bin/python bench/pipeline_compare.py [--sluice target/release/sluice]
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import boto3

HERE = os.path.dirname(os.path.abspath(__file__))

# Sluice configurations compared: (row name, extra sink options, via HTTP to `sluice serve`).
SLUICE_RUNS = [
    ("sluice run: per-key order + KPL aggregation", 'aggregate = true', False),
    ("sluice run: ordering = \"none\"", 'ordering = "none"', False),
    ("sluice run: per-key order (the default)", '', False),
    ("sluice run -> sluice serve over HTTP: per-key + aggregation", 'aggregate = true', True),
]


def start(cmd, pattern, env=None):
    """Starts a process and waits for a stdout line matching pattern; returns (proc, match)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 60
    found = []
    lines = []

    def reader():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(pattern, line)
            if m and not found:
                found.append(m)

    threading.Thread(target=reader, daemon=True).start()
    proc.lines = lines
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[0]} did not start: {''.join(lines)[-2000:]}")
        time.sleep(0.02)
    return proc, found[0]


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def kinesis(endpoint):
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench")


KPL_MAGIC = b"\xf3\x89\x9a\xc2"


def read_stream(client, stream):
    """Every user record of every shard (KPL aggregates unpacked): list of (arrival_ms, data)."""
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    out = []
    shards = client.list_shards(StreamName=stream)["Shards"]
    for s in shards:
        it = client.get_shard_iterator(StreamName=stream, ShardId=s["ShardId"],
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            page = client.get_records(ShardIterator=it, Limit=10000)
            for r in page["Records"]:
                arrival = r["ApproximateArrivalTimestamp"].timestamp() * 1000.0
                if r["Data"].startswith(KPL_MAGIC):
                    for sub in iter_deaggregate_records([r], data_format="Boto3"):
                        out.append((arrival, base64.b64decode(sub["kinesis"]["data"])))
                else:
                    out.append((arrival, r["Data"]))
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            it = page.get("NextShardIterator")
    return out


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def pipeline_file(path, data_dir, ws_url, endpoint, stream, extra):
    endpoint_line = f'endpoint = "{endpoint}"' if endpoint else "# no endpoint: the embedded stream"
    with open(path, "w") as f:
        f.write(f"""
data_dir = "{data_dir}"
[api]
listen = "127.0.0.1:0"
[embedded]
listen = "127.0.0.1:0"
[sources.race]
type = "websocket"
url = "{ws_url}"
[sources.race.resume]
cursor = "/seq"
[sinks.stream]
type = "kinesis"
inputs = ["race"]
{endpoint_line}
stream_name = "{stream}"
partition_key = "/racer"
shards = 4
linger = "5ms"
# The streams here enforce no shard limits, so the sink need not pace itself to them.
rate_limit = false
{extra}
""")


class Contestant:
    def __init__(self, name, args, serve_endpoint, work, extra="", via_http=True):
        self.name, self.args, self.serve_endpoint, self.work = name, args, serve_endpoint, work
        self.extra, self.via_http = extra, via_http
        self.slow_fsyncs = None

    def run(self, ws_url, stream, count, seconds, read_back=False):
        """Runs until `count` events are delivered or `seconds` pass; returns
        (delivered, elapsed, peak_rss, records read back or None)."""
        peak = 0.0
        if self.name.startswith("sluice"):
            d = tempfile.mkdtemp(dir=self.work)
            cfg = os.path.join(d, "pipeline.toml")
            pipeline_file(cfg, os.path.join(d, "data"), ws_url, self.serve_endpoint if self.via_http else None,
                          stream, self.extra)
            if self.via_http:
                kinesis(self.serve_endpoint).create_stream(StreamName=stream, ShardCount=4)
            proc, m = start([self.args.sluice, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
            health = m.group(1) + "/health"
            delivered = 0
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < seconds and delivered < count:
                    time.sleep(0.1)
                    peak = max(peak, rss_mib(proc.pid))
                    with urllib.request.urlopen(health, timeout=5) as r:
                        body = json.load(r)
                    delivered = body["pipeline"]["sinks"]["stream"]["delivered"]
                elapsed = time.monotonic() - t0
                self.slow_fsyncs = slow_fsyncs(m.group(1) + "/metrics")
                records = None
                if read_back:
                    endpoint = self.serve_endpoint if self.via_http else embedded_url(proc)
                    records = read_stream(kinesis(endpoint), stream)
            finally:
                stop(proc)
                shutil.rmtree(d, ignore_errors=True)
            return delivered, elapsed, peak, records
        kinesis(self.serve_endpoint).create_stream(StreamName=stream, ShardCount=4)
        mode = "seed" if self.name.startswith("Python, one") else "batched"
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bridge.py"), mode, "--url", ws_url,
                                 "--endpoint", self.serve_endpoint, "--stream", stream, "--count", str(count),
                                 "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
        while proc.poll() is None:
            peak = max(peak, rss_mib(proc.pid))
            time.sleep(0.1)
        out = json.loads(proc.stdout.read().strip().splitlines()[-1])
        records = read_stream(kinesis(self.serve_endpoint), stream) if read_back else None
        return out["put"], out["seconds"], peak, records


def slow_fsyncs(metrics_url, over="0.05"):
    """How many fsyncs took longer than `over` seconds in this process (its spool and, when
    embedded, its stream): the disk's stalls, which no pipeline can hide from latency."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = under = 0
    for line in text.splitlines():
        if line.startswith('sluice_fsync_seconds_bucket{le="+Inf"}'):
            total = float(line.split()[-1])
        elif line.startswith(f'sluice_fsync_seconds_bucket{{le="{over}"}}'):
            under = float(line.split()[-1])
    return int(total - under)


def embedded_url(proc):
    """The embedded stream's URL, from the line `sluice run` printed at start."""
    for line in proc.lines:
        m = re.search(r"embedded stream on (http://\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError("sluice run did not say where its embedded stream is")


WARM_UP_MS = 2000


def latencies(records):
    """Added latency per record (ms). The first two seconds of events are left out: the provider
    starts before the contestant has connected, so its first events wait for the connection."""
    pairs = []
    for arrival, data in records:
        try:
            pairs.append((arrival, json.loads(data)["ts"]))
        except (ValueError, KeyError):
            pass
    first = min((ts for _, ts in pairs), default=0)
    return [arrival - ts for arrival, ts in pairs if ts >= first + WARM_UP_MS]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sluice", default=os.path.join(HERE, "..", "target", "release", "sluice"))
    p.add_argument("--events", type=int, default=3_000_000, help="fast-provider events for sluice")
    p.add_argument("--bridge-seconds", type=float, default=15)
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-pipeline-bench.")
    serve, m = start([args.sluice, "serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(work, "stream"),
                      "--durability", "fsync", "--status-secs", "0"], r"listening on (http://\S+)")
    endpoint = m.group(1)
    contestants = [Contestant(name, args, endpoint, work, extra, via_http) for name, extra, via_http in SLUICE_RUNS]
    contestants += [Contestant(name, args, endpoint, work) for name in
                    ["Python, batched PutRecords (500 / 100 ms)", "Python, one PutRecord per message (the seed)"]]
    rows = []
    try:
        for i, c in enumerate(contestants):
            is_sluice = c.name.startswith("sluice")
            # 1. throughput from a fast provider
            limit = 120 if is_sluice else args.bridge_seconds
            sim, sm = start([args.sluice, "simulate", "--listen", "127.0.0.1:0", "--fast", "--count", str(args.events)],
                            r"serving on (http://\S+)")
            ws = sm.group(1).replace("http://", "ws://") + "/ws"
            try:
                delivered, elapsed, peak, _ = c.run(ws, f"tp-{i}", args.events, limit)
            finally:
                stop(sim)
            rate = delivered / elapsed if elapsed > 0 else 0
            # 2. latency at a steady rate
            n = int(args.rate * args.seconds)
            sim, sm = start([args.sluice, "simulate", "--listen", "127.0.0.1:0", "--rate", str(args.rate),
                             "--count", str(n)], r"serving on (http://\S+)")
            ws = sm.group(1).replace("http://", "ws://") + "/ws"
            try:
                _, _, peak2, records = c.run(ws, f"lat-{i}", n, args.seconds + 10, read_back=True)
            finally:
                stop(sim)
            lat = latencies(records or [])
            stalls = "" if c.slow_fsyncs is None else f"{c.slow_fsyncs}"
            rows.append((c.name, rate, delivered, elapsed, percentile(lat, 0.5), percentile(lat, 0.99), len(lat), n,
                         max(peak, peak2), stalls))
            print(f"# {c.name}: {rate:,.0f} events/s; latency p50 {percentile(lat, 0.5):.1f} ms "
                  f"p99 {percentile(lat, 0.99):.1f} ms ({len(lat)}/{n} at {args.rate}/s)", file=sys.stderr)
    finally:
        stop(serve)
        shutil.rmtree(work, ignore_errors=True)
    base = next((r[1] for r in rows if r[0].startswith("Python, batched")), 0) or float("nan")
    print("| contestant | events/s (fast provider) | vs batched Python | p50 ms @ %d/s | p99 ms @ %d/s "
          "| events measured @ %d/s (%.0fs, first 2s excluded) | fsyncs > 50 ms during it | peak RSS MiB |"
          % (args.rate, args.rate, args.rate, args.seconds))
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rate, delivered, elapsed, p50, p99, got, n, peak, stalls in rows:
        print(f"| {name} | {rate:,.0f} ({delivered:,} in {elapsed:.1f}s) | {rate / base:.1f}x | {p50:.1f} | {p99:.1f} "
              f"| {got:,}/{n:,} | {stalls} | {peak:.0f} |")


if __name__ == "__main__":
    main()
