"""The `kinesis` source of `sluice run` vs the usual boto3 GetRecords consumer, same stream.

For each shard count (default 4 and 16), on a fresh `sluice serve` (fsync on, loopback):
  0. fill: a stream of N shards gets M records (default 2,000,000): `sluice simulate --fast
     --count M` (~150-byte JSON events with a unique `seq` and the send time `ts` in ms) through
     a `sluice run` pipeline (websocket source -> kinesis sink to that serve, plain records,
     `ordering = "none"`). Timed and reported, but not the measured figure.
  1. sluice: `sluice run` with a `kinesis` source (trim_horizon, polling, its own application)
     -> `file` sink. Wall time from launching the process until the sink has delivered M records
     (its /health), records/s, CPU seconds of the `sluice run` process (/proc/<pid>/stat) and of
     the serve process over the same interval. After a graceful stop the files are checked: M
     lines, every `seq` 1..M exactly once.
  2. boto3: a child Python process, one thread per shard, GetShardIterator TRIM_HORIZON and
     GetRecords(Limit=10000) until the shard is drained, every record json-decoded and written
     as a line to a per-shard file; capped at --peer-seconds (rate from what it read if capped).
  3. latency: a `sluice run` with `starting_position = "latest"` -> file sink; once it holds
     every lease, `sluice simulate --rate R` (default 10,000/s for 10 s) is produced into the
     stream through the same kind of producer pipeline. A thread tails the sink's files (the
     `.part` one included) every millisecond and stamps each complete line with the wall clock;
     afterwards the stream is read back with boto3 for every record's ApproximateArrivalTimestamp.
     Latency = seen-in-file time - arrival time (per `seq`); p50/p99/max over the records sent
     after the first 2 s (before that the provider replays what it emitted while the producer
     connected, in one burst).

Prints a markdown table and the latency lines. Run (after `cargo build --release -p sluice`):
  .venv/bin/python bench/consume_compare.py [--records 2000000] [--shards 4,16] [--sluice PATH]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pipeline_compare import WARM_UP_MS, kinesis, percentile, read_stream, start, stop  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def get_json(url):
    """A JSON body, also from a 503 (/health answers 503 while an alarm is up)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def metric_sum(metrics_url, name):
    """Sum of every sample of metric `name` (any labels); None if absent."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    total = None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total = (total or 0) + float(line.split()[-1])
    return total


def delivered(health_url, sink):
    return get_json(health_url)["pipeline"]["sinks"][sink]["delivered"]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def endpoint_line(endpoint):
    """`endpoint = ...`, or nothing for the pipeline's own embedded stream."""
    return f'endpoint = "{endpoint}"' if endpoint else ""


def producer_toml(data_dir, ws_url, endpoint, stream, shards):
    return f"""
data_dir = "{data_dir}"
[api]
listen = "127.0.0.1:0"
[embedded]
listen = "127.0.0.1:0"
[sources.feed]
type = "websocket"
url = "{ws_url}"
[sinks.stream]
type = "kinesis"
inputs = ["feed"]
{endpoint_line(endpoint)}
stream_name = "{stream}"
partition_key = "/racer"
shards = {shards}
ordering = "none"
linger = "5ms"
rate_limit = false
"""


def consumer_toml(data_dir, endpoint, stream, application, position, out_dir, extra=""):
    return f"""
data_dir = "{data_dir}"
[api]
listen = "127.0.0.1:0"
[embedded]
listen = "127.0.0.1:0"
[sources.in]
type = "kinesis"
stream_name = "{stream}"
{endpoint_line(endpoint)}
application = "{application}"
starting_position = "{position}"
read = "polling"
{extra}
[sinks.out]
type = "file"
inputs = ["in"]
path = "{out_dir}"
"""


def create_stream(endpoint, stream, shards):
    client = kinesis(endpoint)
    client.create_stream(StreamName=stream, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})


def produce(sluice, endpoint, stream, shards, count, work, rate=None, limit=600, data_dir=None):
    """`sluice simulate` (fast, or at `rate`) -> producer pipeline -> the stream, until `count`
    records are delivered; returns the seconds it took (from launching the pipeline). With no
    `endpoint` the stream is the producer's embedded one, kept in `data_dir`."""
    d = tempfile.mkdtemp(dir=work, prefix="produce.")
    sim = proc = None
    try:
        pace = ["--rate", str(rate)] if rate else ["--fast"]
        sim, sm = start([sluice, "simulate", "--listen", "127.0.0.1:0", *pace, "--count", str(count)],
                        r"serving on (http://\S+)")
        # ?after=0: events emitted before the pipeline connects are replayed, so all `count` arrive
        ws = sm.group(1).replace("http://", "ws://") + "/ws?after=0"
        cfg = os.path.join(d, "produce.toml")
        write(cfg, producer_toml(data_dir or os.path.join(d, "data"), ws, endpoint, stream, shards))
        t0 = time.monotonic()
        proc, m = start([sluice, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
        health = m.group(1) + "/health"
        n = 0
        while n < count:
            if time.monotonic() - t0 > limit:
                raise RuntimeError(f"producer delivered only {n:,}/{count:,} in {limit}s")
            if proc.poll() is not None:
                raise RuntimeError("producer pipeline exited: " + "".join(proc.lines)[-2000:])
            time.sleep(0.05)
            n = delivered(health, "stream")
        return time.monotonic() - t0
    finally:
        stop(proc)
        stop(sim)
        shutil.rmtree(d, ignore_errors=True)


def parse_seq(line):
    """The `seq` of an NDJSON line (bytes) without decoding it all; None if there is none."""
    i = line.find(b'"seq":')
    if i < 0:
        return None
    j = i + 6
    while j < len(line) and line[j] == 32:
        j += 1
    k = j
    while k < len(line) and 48 <= line[k] <= 57:
        k += 1
    return int(line[j:k]) if k > j else None


def check_files(out_dir, count):
    """Lines in every file of out_dir and how the `seq`s cover 1..count:
    (lines, distinct in range, duplicates, out of range / unparsable)."""
    seen = bytearray(count + 1)
    lines = dups = bad = 0
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name), "rb") as f:
            for line in f:
                lines += 1
                seq = parse_seq(line)
                if seq is None or not 1 <= seq <= count:
                    bad += 1
                elif seen[seq]:
                    dups += 1
                else:
                    seen[seq] = 1
    return lines, sum(seen), dups, bad


def run_sluice(args, endpoint, serve_pid, stream, count, work, tag, data_dir=None):
    """The kinesis source -> file sink until `count` are delivered. Returns a result dict. With
    no `endpoint` (and no serve) it reads its own embedded stream in `data_dir`, in-process."""
    d = tempfile.mkdtemp(dir=work, prefix="sluice.")
    out_dir = os.path.join(d, "out")
    cfg = os.path.join(d, "consume.toml")
    write(cfg, consumer_toml(data_dir or os.path.join(d, "data"), endpoint, stream, f"bench-{tag}-{os.getpid()}",
                             "trim_horizon", out_dir, args.source_extra))
    proc = None
    cpu_of_serve = (lambda: cpu_seconds(serve_pid)) if serve_pid else (lambda: 0.0)
    try:
        serve_cpu0 = cpu_of_serve()
        t0 = time.monotonic()
        proc, m = start([args.sluice, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
        health = m.group(1) + "/health"
        n = 0
        first = None
        while n < count and time.monotonic() - t0 < args.sluice_seconds:
            if proc.poll() is not None:
                raise RuntimeError("sluice run exited: " + "".join(proc.lines)[-2000:])
            time.sleep(0.02)
            n = delivered(health, "out")
            if n and first is None:
                first = time.monotonic() - t0
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid)
        serve_cpu = cpu_of_serve() - serve_cpu0
        read = metric_sum(m.group(1) + "/metrics", "sluice_kinesis_records_read_total")
        stop(proc)  # graceful: the .part file is renamed, checkpoints written
        lines, distinct, dups, bad = check_files(out_dir, count)
        return dict(records=n, seconds=elapsed, first=first, cpu=cpu, serve_cpu=serve_cpu, read=read,
                    lines=lines, distinct=distinct, dups=dups, bad=bad, capped=n < count)
    finally:
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)


def run_peer(args, endpoint, serve_pid, stream, count, work):
    """The boto3 consumer in a child process (its own GIL and CPU accounting)."""
    out_dir = tempfile.mkdtemp(dir=work, prefix="boto3.")
    try:
        serve_cpu0 = cpu_seconds(serve_pid)
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer", "--endpoint", endpoint,
                              "--stream", stream, "--records", str(count), "--peer-seconds", str(args.peer_seconds),
                              "--out", out_dir], stdout=subprocess.PIPE, text=True, check=True)
        elapsed = time.monotonic() - t0
        serve_cpu = cpu_seconds(serve_pid) - serve_cpu0
        res = json.loads(out.stdout.strip().splitlines()[-1])
        lines, distinct, dups, bad = check_files(out_dir, count)
        return dict(records=res["records"], seconds=elapsed, reading_seconds=res["seconds"], cpu=res["cpu"],
                    serve_cpu=serve_cpu, lines=lines, distinct=distinct, dups=dups, bad=bad, capped=res["capped"])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def peer_main(args):
    """The usual boto3 consumer: a thread per shard, TRIM_HORIZON, GetRecords(Limit=10000),
    json.loads every record, one line per record into a file per shard."""
    import boto3

    t0 = time.monotonic()
    deadline = t0 + args.peer_seconds
    shards = kinesis(args.endpoint).list_shards(StreamName=args.stream)["Shards"]
    counts = [0] * len(shards)
    stop_all = threading.Event()

    def consume(i, shard_id):
        client = boto3.session.Session().client(
            "kinesis", endpoint_url=args.endpoint, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench")
        it = client.get_shard_iterator(StreamName=args.stream, ShardId=shard_id,
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        with open(os.path.join(args.out, f"{shard_id}.ndjson"), "w") as f:
            while it and not stop_all.is_set():
                page = client.get_records(ShardIterator=it, Limit=10000)
                for r in page["Records"]:
                    event = json.loads(r["Data"])
                    f.write(json.dumps(event) + "\n")
                counts[i] += len(page["Records"])
                if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                    break  # drained: nothing is being written to this stream any more
                if sum(counts) >= args.records:
                    stop_all.set()
                if time.monotonic() > deadline:
                    stop_all.set()
                it = page.get("NextShardIterator")

    threads = [threading.Thread(target=consume, args=(i, s["ShardId"])) for i, s in enumerate(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    print(json.dumps({"records": sum(counts), "seconds": elapsed, "cpu": time.process_time(),
                      "capped": sum(counts) < args.records}))


class Tailer:
    """Follows every file in a directory (the file sink's `.part` included), stamping each
    complete line with the wall clock (ms) when it is first read; polls every `interval` s."""

    def __init__(self, directory, interval=0.001):
        self.dir, self.interval = directory, interval
        self.seen = {}  # seq -> first time seen (ms)
        self.files = {}  # inode -> [fd, partial line]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def scan(self):
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                ino = os.stat(path).st_ino
                if ino not in self.files:
                    self.files[ino] = [os.open(path, os.O_RDONLY), b""]
            except FileNotFoundError:
                pass  # renamed between listdir and stat/open: found under its new name next scan

    def poll(self):
        for entry in self.files.values():
            while True:
                chunk = os.read(entry[0], 1 << 20)
                if not chunk:
                    break
                now = time.time() * 1000.0
                data = entry[1] + chunk
                *complete, entry[1] = data.split(b"\n")
                for line in complete:
                    seq = parse_seq(line)
                    if seq is not None:
                        self.seen.setdefault(seq, now)

    def loop(self):
        last_scan = 0.0
        while not self.done.is_set():
            if time.monotonic() - last_scan > 0.05:
                self.scan()
                last_scan = time.monotonic()
            self.poll()
            time.sleep(self.interval)

    def close(self):
        self.done.set()
        self.thread.join()
        self.scan()
        self.poll()
        for fd, _ in self.files.values():
            os.close(fd)


def run_latency(args, endpoint, stream, shards, work, extra, tag):
    """Records produced at args.rate into a fresh stream while a `latest` consumer writes files."""
    count = int(args.rate * args.latency_seconds)
    create_stream(endpoint, stream, shards)
    d = tempfile.mkdtemp(dir=work, prefix="latency.")
    out_dir = os.path.join(d, "out")
    cfg = os.path.join(d, "consume.toml")
    write(cfg, consumer_toml(os.path.join(d, "data"), endpoint, stream, f"lat-{tag}-{os.getpid()}", "latest",
                             out_dir, extra))
    proc = tailer = None
    try:
        proc, m = start([args.sluice, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
        metrics = m.group(1) + "/metrics"
        t0 = time.monotonic()
        while (metric_sum(metrics, "sluice_kinesis_leases_held") or 0) < shards:
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the latency consumer did not take every lease in 60 s")
            time.sleep(0.1)
        time.sleep(2)  # let every shard reader get its LATEST iterator
        tailer = Tailer(out_dir)
        produce(args.sluice, endpoint, stream, shards, count, work, rate=args.rate, limit=args.latency_seconds + 60)
        health = m.group(1) + "/health"
        t1 = time.monotonic()
        while delivered(health, "out") < count and time.monotonic() - t1 < 10:
            time.sleep(0.05)
        time.sleep(0.2)
        tailer.close()
        seen = tailer.seen
        tailer = None
    finally:
        if tailer:
            tailer.close()
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)
    arrivals = {}
    ts = {}
    for arrival, data in read_stream(kinesis(endpoint), stream):
        event = json.loads(data)
        arrivals[event["seq"]] = arrival
        ts[event["seq"]] = event["ts"]
    return latency_stats(count, arrivals, ts, seen)


def latency_stats(count, arrivals, ts, seen):
    """Percentiles of seen-in-file minus arrival (and minus send time), per `seq`."""
    # Warm-up left out: the provider starts before the producer pipeline connects and replays
    # what it emitted meanwhile in one burst; events sent in the first 2 s are not "at the rate".
    first_ts = min(ts.values(), default=0)
    steady = [s for s in ts if s in seen and ts[s] >= first_ts + WARM_UP_MS]
    from_arrival = [seen[s] - arrivals[s] for s in steady]
    from_send = [seen[s] - ts[s] for s in steady]
    return dict(count=count, in_stream=len(arrivals), in_files=len(seen), matched=len(from_arrival),
                p50=percentile(from_arrival, 0.5), p99=percentile(from_arrival, 0.99),
                max=max(from_arrival, default=float("nan")),
                send_p50=percentile(from_send, 0.5), send_p99=percentile(from_send, 0.99))


def run_latency_embedded(args, shards, work):
    """One pipeline, the default deployment: a provider at args.rate -> kinesis sink into its
    embedded stream, and a `latest` kinesis source reading that stream in-process -> file sink.
    Latency as in run_latency (seen in file - ApproximateArrivalTimestamp)."""
    count = int(args.rate * args.latency_seconds)
    d = tempfile.mkdtemp(dir=work, prefix="latency-embedded.")
    out_dir = os.path.join(d, "out")
    cfg = os.path.join(d, "pipeline.toml")
    sim = proc = tailer = None
    stream = f"latency-embedded-{shards}"
    try:
        sim, sm = start([args.sluice, "simulate", "--listen", "127.0.0.1:0", "--rate", str(args.rate),
                         "--count", str(count)], r"serving on (http://\S+)")
        ws = sm.group(1).replace("http://", "ws://") + "/ws?after=0"
        produce_text = producer_toml(os.path.join(d, "data"), ws, None, stream, shards)
        consume_text = consumer_toml(os.path.join(d, "data"), None, stream, "lat-embedded", "latest", out_dir)
        # One file: the producer's, plus the consumer's source and sink tables.
        write(cfg, produce_text + "\n" + consume_text[consume_text.index("[sources.in]"):])
        tailer = Tailer(out_dir)
        proc, m = start([args.sluice, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
        health = m.group(1) + "/health"
        embedded = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.latency_seconds + 60:
            if embedded is None:
                embedded = next((re.search(r"embedded stream on (http://\S+)", line).group(1)
                                 for line in proc.lines if "embedded stream on" in line), None)
            if delivered(health, "stream") >= count and time.monotonic() - t0 > args.latency_seconds:
                break
            time.sleep(0.1)
        time.sleep(1)
        tailer.close()
        seen = tailer.seen
        tailer = None
        arrivals, ts = {}, {}
        for arrival, data in read_stream(kinesis(embedded), stream):
            event = json.loads(data)
            arrivals[event["seq"]] = arrival
            ts[event["seq"]] = event["ts"]
    finally:
        if tailer:
            tailer.close()
        stop(proc)
        stop(sim)
        shutil.rmtree(d, ignore_errors=True)
    return latency_stats(count, arrivals, ts, seen)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sluice", default=os.path.join(HERE, "..", "target", "release", "sluice"))
    p.add_argument("--records", type=int, default=int(os.environ.get("CONSUME_RECORDS", 2_000_000)))
    p.add_argument("--shards", default=os.environ.get("CONSUME_SHARDS", "4,16"))
    p.add_argument("--peer-seconds", type=float, default=60, help="cap on the boto3 consumer")
    p.add_argument("--sluice-seconds", type=float, default=300, help="cap on the sluice consumer")
    p.add_argument("--rate", type=int, default=10_000, help="records/s for the latency run")
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--latency-idle", default="10ms",
                   help="comma-separated idle_between_reads values for extra latency runs after the one with "
                        "the default (250ms); '' for none")
    p.add_argument("--source-extra", default="", help="extra TOML lines for the throughput run's kinesis source")
    p.add_argument("--skip", default="",
                   help="comma-separated: sluice, boto3, embedded, latency, latency-embedded")
    # child mode: the boto3 consumer
    p.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--stream", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer:
        return peer_main(args)
    args.sluice = os.path.abspath(args.sluice)
    skip = set(filter(None, args.skip.split(",")))
    rows, lat_rows, fills = [], [], []
    for shards in [int(s) for s in args.shards.split(",")]:
        work = tempfile.mkdtemp(prefix="sluice-consume-bench.")
        serve = None
        try:
            serve, m = start([args.sluice, "serve", "--listen", "127.0.0.1:0", "--data-dir",
                              os.path.join(work, "stream"), "--status-secs", "0"], r"listening on (http://\S+)")
            endpoint = m.group(1)
            stream = f"consume-{shards}"
            create_stream(endpoint, stream, shards)
            fill = produce(args.sluice, endpoint, stream, shards, args.records, work)
            fills.append((shards, fill))
            print(f"# {shards} shards: filled {args.records:,} records in {fill:.1f}s "
                  f"({args.records / fill:,.0f}/s)", file=sys.stderr)
            results = {}
            if "sluice" not in skip:
                results["sluice run (kinesis source -> file sink)"] = r = run_sluice(
                    args, endpoint, serve.pid, stream, args.records, work, shards)
                print(f"# {shards} shards, sluice: {r}", file=sys.stderr)
            if "boto3" not in skip:
                results["boto3 GetRecords, thread per shard -> file"] = r = run_peer(
                    args, endpoint, serve.pid, stream, args.records, work)
                print(f"# {shards} shards, boto3: {r}", file=sys.stderr)
            if "embedded" not in skip:
                # The same records in a pipeline's own embedded stream, read in-process.
                data_dir = os.path.join(work, "embedded-data")
                efill = produce(args.sluice, None, stream, shards, args.records, work, data_dir=data_dir)
                print(f"# {shards} shards: filled the embedded stream in {efill:.1f}s", file=sys.stderr)
                results["sluice run (embedded stream, in-process) -> file sink"] = r = run_sluice(
                    args, None, None, stream, args.records, work, f"{shards}-embedded", data_dir=data_dir)
                print(f"# {shards} shards, sluice embedded: {r}", file=sys.stderr)
            for name, r in results.items():
                rows.append((shards, name, r))
            if "latency-embedded" not in skip:
                r = run_latency_embedded(args, shards, work)
                label = "one pipeline: provider -> embedded stream -> kinesis source in-process (defaults)"
                lat_rows.append((shards, label, r))
                print(f"# {shards} shards, latency, {label}: {r}", file=sys.stderr)
            if "latency" not in skip:
                for idle in [None] + list(filter(None, args.latency_idle.split(","))):
                    extra = f'idle_between_reads = "{idle}"' if idle else ""
                    label = f'idle_between_reads = "{idle}"' if idle else "defaults (idle_between_reads 250ms)"
                    r = run_latency(args, endpoint, f"latency-{shards}-{idle or 'default'}", shards, work, extra,
                                    f"{shards}-{idle or 'default'}")
                    lat_rows.append((shards, label, r))
                    print(f"# {shards} shards, latency, {label}: {r}", file=sys.stderr)
        finally:
            stop(serve)
            shutil.rmtree(work, ignore_errors=True)

    print("| shards | contestant | records | seconds | records/s | vs boto3 | CPU s (consumer) | CPU s (serve) "
          "| files checked |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for shards, name, r in rows:
        base = next((x for s, n, x in rows if s == shards and n.startswith("boto3")), None)
        rate = r["records"] / r["seconds"]
        ratio = f"{rate / (base['records'] / base['seconds']):.1f}x" if base else ""
        check = (f"{r['lines']:,} lines, {r['distinct']:,} distinct seq, {r['dups']} dup"
                 + (f", {r['bad']} bad" if r["bad"] else ""))
        note = " (capped)" if r["capped"] else ""
        print(f"| {shards} | {name} | {r['records']:,}{note} | {r['seconds']:.1f} | {rate:,.0f} | {ratio} "
              f"| {r['cpu']:.1f} | {r['serve_cpu']:.1f} | {check} |")
    for shards, fill in fills:
        print(f"\nfill ({shards} shards): {args.records:,} records in {fill:.1f}s via sluice simulate --fast -> "
              f"sluice run -> sluice serve")
    for shards, label, r in lat_rows:
        print(f"\nlatency, {shards} shards, {args.rate:,}/s for {args.latency_seconds:.0f}s, {label}: "
              f"seen in file - ApproximateArrivalTimestamp p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
              f"max {r['max']:.1f} ms over the {r['matched']:,} records sent after the first 2 s "
              f"({r['in_stream']:,} in the stream, {r['in_files']:,} seen in files); from the event's send ts: "
              f"p50 {r['send_p50']:.1f} ms, p99 {r['send_p99']:.1f} ms")


if __name__ == "__main__":
    main()
