"""Delivering a stream: sluice's `s3` sink and `handler` sink vs the usual boto3 consumer.

One stream of N shards (default 4) with M records (default 1,000,000), in a pipeline's embedded
stream (filled as bench/consume_compare.py fills it: `sluice simulate --fast --count M` -> a
`sluice run` producer pipeline -> its embedded stream, ~150-byte JSON events with a unique `seq`).
Then, one after the other, each reading the whole stream from TRIM_HORIZON:

  1. s3: `sluice run` on the same data directory, a `kinesis` source reading the embedded stream
     in-process -> `s3` sink into a local directory, gzip, `buffer_size = "5MiB"`,
     `buffer_interval = "1s"` (so the last object does not wait Firehose's 300 s). Wall time from
     launching the process until /health says M records delivered; CPU of the process. After a
     graceful stop the objects are checked: they decompress to M lines, every `seq` 1..M once.
  2. handler: the same source -> `handler` sink, `batch_size = 1000`, running a no-op Python
     command (answers `{"result": null}` to every event without parsing it). CPU of sluice and,
     separately, of its handler processes.
  3. boto3: `sluice serve` on the same data directory (over loopback HTTP, as any SDK reads it),
     and a child Python process with a thread per shard: GetShardIterator TRIM_HORIZON,
     GetRecords(Limit=10000) until drained, each record's data plus "\n" buffered, and every
     5 MiB (and at the end) written as a gzip object (level 6, as the sink's default) to a
     temporary file, fsynced and renamed under YYYY/MM/DD/HH/ as the s3 sink does. Checked the
     same way as 1.

Prints a markdown table. Run (after `cargo build --release -p sluice`):
  .venv/bin/python bench/deliver_compare.py [--records 1000000] [--shards 4] [--sluice PATH]
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from consume_compare import cpu_seconds, delivered, parse_seq, produce, write  # noqa: E402
from pipeline_compare import kinesis, start, stop  # noqa: E402

OBJECT_BYTES = 5 * 1024 * 1024

NOOP_HANDLER = """import sys
for _ in sys.stdin:
    sys.stdout.write('{"result": null}\\n')
    sys.stdout.flush()
"""


def children_cpu(pid):
    """utime + stime of the live child processes of `pid` (the handler's pool), in seconds."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            total += cpu_seconds(int(entry))
    return total


def pipeline_toml(data_dir, stream, source, sink_lines):
    return "\n".join([
        f'data_dir = "{data_dir}"',
        "[api]", 'listen = "127.0.0.1:0"',
        "[embedded]", 'listen = "127.0.0.1:0"',
        f"[sources.{source}]", 'type = "kinesis"', f'stream_name = "{stream}"',
        # Its own application (lease table) per contestant: each reads the stream from the start.
        f'application = "deliver-{source}-{os.getpid()}"', 'starting_position = "trim_horizon"', 'read = "polling"',
        *sink_lines,
    ]) + "\n"


def check_objects(root, count):
    """Objects under `root` decompressed: (objects, lines, distinct seq in 1..count, duplicates, bad)."""
    seen = bytearray(count + 1)
    objects = lines = dups = bad = 0
    for d, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".gz"):
                continue
            objects += 1
            with open(os.path.join(d, name), "rb") as f:
                for line in gzip.decompress(f.read()).splitlines():
                    lines += 1
                    seq = parse_seq(line)
                    if seq is None or not 1 <= seq <= count:
                        bad += 1
                    elif seen[seq]:
                        dups += 1
                    else:
                        seen[seq] = 1
    return objects, lines, sum(seen), dups, bad


def run_pipeline(args, text, sink, work, tag):
    """`sluice run` on `text` until `sink` has delivered args.records; a result dict."""
    cfg = os.path.join(work, f"{tag}.toml")
    write(cfg, text)
    proc = None
    try:
        t0 = time.monotonic()
        proc, m = start([args.sluice, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
        health = m.group(1) + "/health"
        n = 0
        while n < args.records and time.monotonic() - t0 < args.seconds:
            if proc.poll() is not None:
                raise RuntimeError("sluice run exited: " + "".join(proc.lines)[-2000:])
            time.sleep(0.02)
            n = delivered(health, sink)
        elapsed = time.monotonic() - t0
        cpu, helpers = cpu_seconds(proc.pid), children_cpu(proc.pid)
        stop(proc)  # graceful: checkpoints written, nothing half-written left
        return dict(records=n, seconds=elapsed, cpu=cpu, helper_cpu=helpers, capped=n < args.records)
    finally:
        stop(proc)


def run_peer(args, endpoint, serve_pid, stream, out_dir):
    """The boto3 consumer in a child process (its own GIL and CPU accounting)."""
    serve_cpu0 = cpu_seconds(serve_pid)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer", "--endpoint", endpoint,
                          "--stream", stream, "--records", str(args.records), "--seconds", str(args.seconds),
                          "--out", out_dir], stdout=subprocess.PIPE, text=True, check=True)
    elapsed = time.monotonic() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return dict(records=res["records"], seconds=elapsed, cpu=res["cpu"], helper_cpu=cpu_seconds(serve_pid) - serve_cpu0,
                capped=res["capped"])


def put_object(out_dir, data):
    """One gzip object, as the s3 sink writes one into a directory: temp file, fsync, rename."""
    now = time.gmtime()
    d = os.path.join(out_dir, time.strftime("%Y/%m/%d/%H", now))
    os.makedirs(d, exist_ok=True)
    name = f"boto3-1-{time.strftime('%Y-%m-%d-%H-%M-%S', now)}-{uuid.uuid4()}.gz"
    tmp = os.path.join(d, name + "#0")
    with open(tmp, "wb") as f:
        f.write(gzip.compress(bytes(data), compresslevel=6))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(d, name))


def peer_main(args):
    """A thread per shard: GetRecords from TRIM_HORIZON until drained, gzip objects of 5 MiB."""
    import boto3

    t0 = time.monotonic()
    deadline = t0 + args.seconds
    shards = kinesis(args.endpoint).list_shards(StreamName=args.stream)["Shards"]
    counts = [0] * len(shards)

    def consume(i, shard_id):
        client = boto3.session.Session().client(
            "kinesis", endpoint_url=args.endpoint, region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench")
        it = client.get_shard_iterator(StreamName=args.stream, ShardId=shard_id,
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        buf = bytearray()
        while it and time.monotonic() < deadline:
            page = client.get_records(ShardIterator=it, Limit=10000)
            for r in page["Records"]:
                buf += r["Data"]
                buf += b"\n"
                if len(buf) >= OBJECT_BYTES:
                    put_object(args.out, buf)
                    buf.clear()
            counts[i] += len(page["Records"])
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break  # drained: nothing is being written to this stream any more
            it = page.get("NextShardIterator")
        if buf:
            put_object(args.out, buf)

    threads = [threading.Thread(target=consume, args=(i, s["ShardId"])) for i, s in enumerate(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"records": sum(counts), "seconds": time.monotonic() - t0, "cpu": time.process_time(),
                      "capped": sum(counts) < args.records}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sluice", default=os.path.join(HERE, "..", "target", "release", "sluice"))
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seconds", type=float, default=600, help="cap on each contestant")
    p.add_argument("--skip", default="", help="comma-separated: s3, handler, boto3")
    p.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
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
    work = tempfile.mkdtemp(prefix="sluice-deliver-bench.")
    data_dir = os.path.join(work, "data")
    stream = f"deliver-{args.shards}"
    rows = []
    try:
        fill = produce(args.sluice, None, stream, args.shards, args.records, work, data_dir=data_dir)
        print(f"# filled {args.records:,} records into {args.shards} shards in {fill:.1f}s", file=sys.stderr)
        if "s3" not in skip:
            out = os.path.join(work, "lake-s3")
            r = run_pipeline(args, pipeline_toml(data_dir, stream, "s3in", [
                "[sinks.lake]", 'type = "s3"', 'inputs = ["s3in"]', f'url = "{out}"', 'compression = "gzip"',
                'buffer_size = "5MiB"', 'buffer_interval = "1s"']), "lake", work, "s3")
            r["check"] = check_objects(out, args.records)
            rows.append(("sluice run: kinesis source (in-process) -> s3 sink, gzip, local dir", r))
            print(f"# s3: {r}", file=sys.stderr)
        if "handler" not in skip:
            script = os.path.join(work, "noop.py")
            write(script, NOOP_HANDLER)
            r = run_pipeline(args, pipeline_toml(data_dir, stream, "fnin", [
                "[sinks.fn]", 'type = "handler"', 'inputs = ["fnin"]',
                f"command = [{json.dumps(sys.executable)}, {json.dumps(script)}]", "batch_size = 1000"]),
                "fn", work, "handler")
            r["check"] = None
            rows.append(("sluice run: kinesis source (in-process) -> handler sink, no-op python, batch 1000", r))
            print(f"# handler: {r}", file=sys.stderr)
        if "boto3" not in skip:
            serve = None
            out = os.path.join(work, "lake-boto3")
            os.makedirs(out)
            try:
                serve, m = start([args.sluice, "serve", "--listen", "127.0.0.1:0", "--data-dir",
                                  os.path.join(data_dir, "stream"), "--status-secs", "0"], r"listening on (http://\S+)")
                r = run_peer(args, m.group(1), serve.pid, stream, out)
            finally:
                stop(serve)
            r["check"] = check_objects(out, args.records)
            rows.append(("boto3 GetRecords, thread per shard (sluice serve) -> gzip objects, local dir", r))
            print(f"# boto3: {r}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"# work directory kept: {work}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)

    base = next((r for name, r in rows if name.startswith("boto3")), None)
    print(f"{args.records:,} records, {args.shards} shards, read from TRIM_HORIZON\n")
    print("| contestant | records | seconds | records/s | vs boto3 | CPU s | CPU s (handlers / serve) | output checked |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r in rows:
        rate = r["records"] / r["seconds"]
        ratio = f"{rate / (base['records'] / base['seconds']):.1f}x" if base else ""
        c = r["check"]
        check = (f"{c[0]:,} objects, {c[1]:,} lines, {c[2]:,} distinct seq, {c[3]} dup"
                 + (f", {c[4]} bad" if c[4] else "")) if c else "(no output: counted by /health)"
        note = " (capped)" if r["capped"] else ""
        print(f"| {name} | {r['records']:,}{note} | {r['seconds']:.1f} | {rate:,.0f} | {ratio} | {r['cpu']:.1f} "
              f"| {r['helper_cpu']:.1f} | {check} |")
    print(f"\nfill: {args.records:,} records in {fill:.1f}s via sluice simulate --fast -> sluice run -> its embedded stream")


if __name__ == "__main__":
    main()
