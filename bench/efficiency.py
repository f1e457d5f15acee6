"""Issue 12's benchmark: CPU per event, fsyncs, context switches, RSS and latency of the default
pipeline, side by side with a previous release build and the seed's batched Python bridge.

Contestants, each on a fresh `sluice simulate` websocket feed (~150-byte JSON events, 1,000
racer keys, resume from `/seq`):
  * `sluice run` of this build: the default pipeline (websocket source with resume -> kinesis
    sink without `endpoint`, i.e. the embedded stream in-process, fsync on);
  * the same pipeline run by `--baseline PATH` (a previous release build), if given;
  * `bench/bridge.py batched` (websockets + boto3 PutRecords of up to 500 records or 100 ms)
    writing to `sluice serve --durability fsync` over HTTP.

Per contestant, two runs:
  1. full speed: the provider emits as fast as the client takes (`--fast --count N`). events/s
     = N / seconds from launching the contestant until N are delivered; CPU = utime + stime of
     the contestant's process, all threads (`/proc/PID/stat` for sluice at that moment, the
     child's rusage for the bridge).
  2. steady: the provider at `--rate` (default 10,000/s). After a warm-up (`--warm-up`, 2 s) a
     window of `--seconds` (default 60) is measured on the contestant's process: CPU (utime +
     stime), fsync + fdatasync calls (`perf stat` on the syscall tracepoints of the sluice
     process doing them: `sluice run` itself, or the `sluice serve` behind the bridge; falls
     back to the `sluice_fsync_seconds_count` metric when perf is unavailable), context
     switches (voluntary + nonvoluntary summed over /proc/PID/task/*/status, at both ends of
     the window), peak RSS (VmHWM at the end). Then every record is read back with boto3 and
     latency = ApproximateArrivalTimestamp - the event's own `ts` (events of the first 2 s of
     the feed left out, as in pipeline_compare.py).
Both runs check completeness: every `seq` of the feed that should have landed is counted in the
stream (missing and duplicate counts are printed).

Run: .venv/bin/python bench/efficiency.py [--sluice target/release/sluice] [--baseline PATH]
     [--seconds 60] [--events 1000000] [--bridge-events 300000] [--rate 10000]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pipeline_compare import (  # noqa: E402
    embedded_url,
    kinesis,
    latencies,
    percentile,
    read_stream,
    start,
    stop,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')

GOALS = {
    "full_us": 2.0,  # µs of CPU per event at full speed
    "full_ratio": 15.0,  # events/s vs the batched bridge
    "steady_us": 5.0,  # µs per event at 10,000 events/s
    "steady_pct": 5.0,  # % of one core at 10,000 events/s
    "rss_mib": 64.0,
    "p99_ms": 20.0,
}


def cpu_seconds(pid):
    """utime + stime of a process, all its threads (live and exited)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def ctx_switches(pid):
    """Voluntary + nonvoluntary context switches summed over the process's live threads."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fsync_metric(metrics_url):
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("sluice_fsync_seconds_count"):
                    return float(line.split()[-1])
    except OSError:
        pass
    return None


class FsyncCounter:
    """Counts fsync/fdatasync syscalls of one process over a window: `perf stat` on the syscall
    tracepoints (all threads), else the process's `sluice_fsync_seconds_count` metric."""

    def __init__(self, pid, metrics_url):
        self.pid, self.metrics_url, self.perf, self.source = pid, metrics_url, None, "perf"
        self.m0 = fsync_metric(metrics_url) if metrics_url else None
        if shutil.which("perf"):
            self.perf = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                 "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(self):
        if self.perf is not None:
            self.perf.send_signal(2)
            try:
                _, err = self.perf.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.perf.kill()
                err = ""
            total, ok = 0, False
            for line in err.splitlines():
                parts = line.split(",")
                if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_f") and parts[0].strip().isdigit():
                    total += int(parts[0])
                    ok = True
            if ok:
                return total, "perf"
        if self.m0 is not None:
            m1 = fsync_metric(self.metrics_url)
            if m1 is not None:
                return m1 - self.m0, "metric"
        return None, "-"


def completeness(records, first, last):
    """(missing, duplicates) of seq first..last among the records' payloads."""
    seen = {}
    for _, data in records:
        m = SEQ.search(data)
        if m:
            s = int(m.group(1))
            seen[s] = seen.get(s, 0) + 1
    gone = [s for s in range(first, last + 1) if s not in seen]
    if gone:
        print(f"#   missing seq: {len(gone)}, from {gone[0]} to {gone[-1]}", file=sys.stderr)
    dups = sum(c - 1 for s, c in seen.items() if first <= s <= last and c > 1)
    return len(gone), dups


def simulate(binary, *extra):
    """A provider; its URL asks for the feed from the start (`?after=0`), so events it emits
    before the contestant connects are replayed, not lost."""
    sim, m = start([binary, "simulate", "--listen", "127.0.0.1:0", *extra], r"serving on (http://\S+)")
    return sim, m.group(1).replace("http://", "ws://") + "/ws"


# Extra `[embedded]` lines (e.g. `linger = "5ms"`), from --embedded.
EMBEDDED_EXTRA = ""


def default_pipeline(path, data_dir, ws):
    """The default pipeline: websocket source resuming from `/seq` (`?after={cursor}`, as the
    demo does) -> kinesis sink without `endpoint` (the embedded stream, fsync on)."""
    with open(path, "w") as f:
        f.write(f"""
data_dir = "{data_dir}"
[api]
listen = "127.0.0.1:0"
[embedded]
listen = "127.0.0.1:0"{EMBEDDED_EXTRA}
[sources.race]
type = "websocket"
url = "{ws}?after=0"
[sources.race.resume]
cursor = "/seq"
url = "{ws}?after={{cursor}}"
[sinks.stream]
type = "kinesis"
inputs = ["race"]
stream_name = "race"
partition_key = "/racer"
shards = 4
linger = "5ms"
# The embedded stream enforces no shard limits here, so the sink need not pace itself to them.
rate_limit = false
""")


def health_delivered(api):
    # A 503 (an alarm such as `source_paused` while the provider outruns the pipeline at full
    # speed) still carries the counters.
    try:
        with urllib.request.urlopen(api + "/health", timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    return body["pipeline"]["sinks"]["stream"]["delivered"]


class SluiceRun:
    def __init__(self, name, binary, work):
        self.name, self.binary, self.work = name, binary, work

    def _start(self, ws, stream):
        d = tempfile.mkdtemp(dir=self.work)
        cfg = os.path.join(d, "pipeline.toml")
        default_pipeline(cfg, os.path.join(d, "data"), ws)
        t0 = time.monotonic()
        proc, m = start([self.binary, "run", cfg, "--status-secs", "0"], r"metrics on (http://\S+)")
        return d, proc, m.group(1), t0

    def _wait(self, api, count, limit):
        t_end = time.monotonic() + limit
        delivered = 0
        while delivered < count and time.monotonic() < t_end:
            time.sleep(0.02)
            delivered = health_delivered(api)
        return delivered

    def full(self, sim_bin, count):
        sim, ws = simulate(sim_bin, "--fast", "--count", str(count))
        d, proc, api, t0 = self._start(ws, "full")
        try:
            delivered = self._wait(api, count, 300)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid)
            records = read_stream(kinesis(embedded_url(proc)), "race")
        finally:
            stop(proc)
            stop(sim)
            shutil.rmtree(d, ignore_errors=True)
        missing, dups = completeness(records, 1, count)
        return dict(events=delivered, seconds=elapsed, cpu=cpu, missing=missing, dups=dups, serve_cpu=None)

    def steady(self, sim_bin, rate, seconds, warm):
        total = int(rate * (warm + seconds + 3))
        sim, ws = simulate(sim_bin, "--rate", str(rate), "--count", str(total))
        d, proc, api, _ = self._start(ws, "steady")
        try:
            time.sleep(warm)
            w = Window(proc.pid, api + "/metrics")
            time.sleep(seconds)
            result = w.finish()
            self._wait(api, total, seconds + 60)
            records = read_stream(kinesis(embedded_url(proc)), "race")
        finally:
            stop(proc)
            stop(sim)
            shutil.rmtree(d, ignore_errors=True)
        result["missing"], result["dups"] = completeness(records, 1, total)
        lat = latencies(records)
        lo, hi = result["wall"]
        result["in_window"] = sum(1 for arrival, _ in records if lo <= arrival < hi)
        result["p50"], result["p99"] = percentile(lat, 0.5), percentile(lat, 0.99)
        return result


class Window:
    """CPU, context switches, fsyncs and the clock of one process over a measured window;
    fsyncs may be counted on another process (the serve behind the bridge)."""

    def __init__(self, pid, metrics_url, fsync_pid=None):
        self.pid = pid
        self.t0, self.cpu0, self.ctx0 = time.monotonic(), cpu_seconds(pid), ctx_switches(pid)
        self.wall0 = time.time() * 1000
        self.fsyncs = FsyncCounter(fsync_pid or pid, metrics_url)

    def finish(self):
        t1, cpu1, ctx1 = time.monotonic(), cpu_seconds(self.pid), ctx_switches(self.pid)
        fsyncs, how = self.fsyncs.finish()
        dt = t1 - self.t0
        return dict(window=dt, wall=(self.wall0, time.time() * 1000), cpu=cpu1 - self.cpu0, ctx_per_s=(ctx1 - self.ctx0) / dt,
                    fsyncs_per_s=None if fsyncs is None else fsyncs / dt, fsync_source=how,
                    rss_mib=status_kib(self.pid, "VmHWM") / 1024)


class Bridge:
    name = "Python bridge, batched PutRecords -> sluice serve"

    def __init__(self, binary, work):
        self.binary, self.work = binary, work

    def _serve(self):
        d = tempfile.mkdtemp(dir=self.work)
        serve, m = start([self.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", d,
                          "--durability", "fsync", "--status-secs", "0"], r"listening on (http://\S+)")
        return d, serve, m.group(1)

    def _bridge(self, ws, endpoint, stream, count, seconds):
        return subprocess.Popen([sys.executable, os.path.join(HERE, "bridge.py"), "batched", "--url", ws + "?after=0",
                                 "--endpoint", endpoint, "--stream", stream, "--count", str(count),
                                 "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)

    @staticmethod
    def _reap(proc):
        out = proc.stdout.read()
        _, _, ru = os.wait4(proc.pid, 0)
        proc.returncode = 0
        return json.loads(out.strip().splitlines()[-1]), ru.ru_utime + ru.ru_stime

    def full(self, sim_bin, count):
        d, serve, endpoint = self._serve()
        sim, ws = simulate(sim_bin, "--fast", "--count", str(count))
        try:
            kinesis(endpoint).create_stream(StreamName="full", ShardCount=4)
            s0 = cpu_seconds(serve.pid)
            out, cpu = self._reap(self._bridge(ws, endpoint, "full", count, 300))
            serve_cpu = cpu_seconds(serve.pid) - s0
            records = read_stream(kinesis(endpoint), "full")
        finally:
            stop(sim)
            stop(serve)
            shutil.rmtree(d, ignore_errors=True)
        missing, dups = completeness(records, 1, count)
        return dict(events=out["put"], seconds=out["seconds"], cpu=cpu, missing=missing, dups=dups,
                    serve_cpu=serve_cpu)

    def steady(self, sim_bin, rate, seconds, warm):
        total = int(rate * (warm + seconds + 3))
        d, serve, endpoint = self._serve()
        sim, ws = simulate(sim_bin, "--rate", str(rate), "--count", str(total))
        try:
            kinesis(endpoint).create_stream(StreamName="steady", ShardCount=4)
            proc = self._bridge(ws, endpoint, "steady", total, warm + seconds + 60)
            time.sleep(warm)
            s0 = cpu_seconds(serve.pid)
            w = Window(proc.pid, endpoint + "/metrics", fsync_pid=serve.pid)
            time.sleep(seconds)
            result = w.finish()
            result["serve_cpu"] = cpu_seconds(serve.pid) - s0
            self._reap(proc)
            records = read_stream(kinesis(endpoint), "steady")
        finally:
            stop(sim)
            stop(serve)
            shutil.rmtree(d, ignore_errors=True)
        result["missing"], result["dups"] = completeness(records, 1, total)
        lat = latencies(records)
        lo, hi = result["wall"]
        result["in_window"] = sum(1 for arrival, _ in records if lo <= arrival < hi)
        result["p50"], result["p99"] = percentile(lat, 0.5), percentile(lat, 0.99)
        return result


def mark(value, goal, lower_is_better=True):
    ok = value <= goal if lower_is_better else value >= goal
    return "" if ok else " ✗"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sluice", default=os.path.join(HERE, "..", "target", "release", "sluice"))
    p.add_argument("--baseline", help="a previous release build of sluice to run the same pipeline")
    p.add_argument("--events", type=int, default=1_000_000, help="full-speed events for sluice contestants")
    p.add_argument("--bridge-events", type=int, default=300_000, help="full-speed events for the bridge")
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=60, help="measured window at --rate")
    p.add_argument("--warm-up", type=float, default=2.0)
    p.add_argument("--skip", default="", help="comma-separated: baseline, bridge")
    p.add_argument("--embedded", default="", help='extra [embedded] settings for the sluice pipelines, e.g. \'linger = "5ms"\'')
    args = p.parse_args()
    global EMBEDDED_EXTRA
    EMBEDDED_EXTRA = "\n" + args.embedded if args.embedded else ""
    skip = set(filter(None, args.skip.split(",")))
    work = tempfile.mkdtemp(prefix="sluice-efficiency.")
    contestants = [SluiceRun("sluice run (this build)", args.sluice, work)]
    if args.baseline and "baseline" not in skip:
        contestants.append(SluiceRun(f"sluice run (baseline {os.path.basename(os.path.dirname(args.baseline)) or args.baseline})",
                                     args.baseline, work))
    if "bridge" not in skip:
        contestants.append(Bridge(args.sluice, work))
    rows = []
    try:
        for c in contestants:
            count = args.bridge_events if isinstance(c, Bridge) else args.events
            full = c.full(args.sluice, count)
            print(f"# {c.name}: full speed {full}", file=sys.stderr, flush=True)
            steady = c.steady(args.sluice, args.rate, args.seconds, args.warm_up)
            print(f"# {c.name}: steady {steady}", file=sys.stderr, flush=True)
            rows.append((c, full, steady))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bridge_rate = next((f["events"] / f["seconds"] for c, f, _ in rows if isinstance(c, Bridge)), None)
    n = args.rate * args.seconds
    print(f"Full speed: `sluice simulate --fast`, {args.events:,} events for sluice, {args.bridge_events:,} for the "
          f"bridge. Steady: {args.rate:,} events/s, {args.seconds:.0f} s window after {args.warm_up:.0f} s warm-up. "
          "✗ marks a missed goal.\n")
    print("| contestant | events/s (full) | vs bridge | µs CPU/event (full) | missing / dup (full) "
          f"| CPU % of a core @{args.rate:,}/s | µs/event @{args.rate:,}/s | fsyncs/s | context switches/s "
          "| peak RSS MiB | p50 ms | p99 ms | missing / dup (steady) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, f, s in rows:
        rate = f["events"] / f["seconds"] if f["seconds"] else 0
        us = f["cpu"] / f["events"] * 1e6 if f["events"] else float("nan")
        ratio = f"{rate / bridge_rate:.1f}x" if bridge_rate else "-"
        is_bridge = isinstance(c, Bridge)
        pct = s["cpu"] / s["window"] * 100
        # Per event stored during the window (by ApproximateArrivalTimestamp): a contestant that
        # falls behind the offered rate is charged for what it managed.
        sus = s["cpu"] / max(s["in_window"], 1) * 1e6
        fs = "-" if s["fsyncs_per_s"] is None else f"{s['fsyncs_per_s']:,.0f}"
        if is_bridge:
            us_txt = f"{us:.1f} (+ serve {f['serve_cpu'] / f['events'] * 1e6:.1f})"
            pct_txt = f"{pct:.1f} (+ serve {s['serve_cpu'] / s['window'] * 100:.1f})"
            fs += " (serve)"
            r_txt, ratio_txt = f"{rate:,.0f}", "1.0x"
        else:
            us_txt = f"{us:.2f}{mark(us, GOALS['full_us'])}"
            pct_txt = f"{pct:.1f}{mark(pct, GOALS['steady_pct'])}"
            r_txt = f"{rate:,.0f}"
            ratio_txt = ratio + (mark(rate / bridge_rate, GOALS["full_ratio"], False) if bridge_rate else "")
        sus_txt = f"{sus:.1f}" + ("" if is_bridge else mark(sus, GOALS["steady_us"]))
        rss_txt = f"{s['rss_mib']:.0f}" + ("" if is_bridge else mark(s["rss_mib"], GOALS["rss_mib"]))
        p99_txt = f"{s['p99']:.1f}" + ("" if is_bridge else mark(s["p99"], GOALS["p99_ms"]))
        print(f"| {c.name} | {r_txt} | {ratio_txt} | {us_txt} | {f['missing']} / {f['dups']} | {pct_txt} | {sus_txt} "
              f"| {fs} | {s['ctx_per_s']:,.0f} | {rss_txt} | {s['p50']:.1f} | {p99_txt} | {s['missing']} / {s['dups']} |")
    print(f"| **goal** | | ≥ {GOALS['full_ratio']:.0f}x | ≤ {GOALS['full_us']:.0f} | 0 / 0 | ≤ {GOALS['steady_pct']:.0f} "
          f"| ≤ {GOALS['steady_us']:.0f} | | | ≤ {GOALS['rss_mib']:.0f} | | ≤ {GOALS['p99_ms']:.0f} | 0 / 0 |")
    how = {s["fsync_source"] for _, _, s in rows}
    print(f"\nfsyncs counted by: {', '.join(sorted(how))}; {n:,.0f} events in each steady window.")


if __name__ == "__main__":
    main()
