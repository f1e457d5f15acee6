"""Helpers and fixtures for the `sluice run` end-to-end tests (test_pipeline*.py).

* `SluiceRun` - one `sluice run FILE` process: reads `sluice: metrics on http://ADDR` and
  `sluice: embedded stream on http://ADDR` from its stdout, answers `/health` and `/metrics`,
  can be SIGKILLed and restarted on the same file (and so the same data_dir).
* `StreamReader` - reads every shard of a stream incrementally with boto3 (tolerates the
  stream not existing yet and read throttling).
* `Process` - a helper process that prints its address (`sluice simulate`, `moto_server`).
* fixtures: `pipeline_factory`, `ws_feed_factory`, `sse_feed_factory`, `moto_server`,
  `simulate_factory`. Import them into a test module (`from pipeline_helpers import ...`).

Everything listens on 127.0.0.1 with port 0 (or a free port), lives under the test's
tmp_path, and is stopped at teardown, so tests run in parallel (`pytest -n 2`). Failure
reports get the tail of each process's log through conftest's report hook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError

from conftest import sluice_bin
from providers import Feed, SseFeed, WsFeed
from sluice_helpers import make_client

METRICS_RE = re.compile(r"sluice: metrics on (http://127\.0\.0\.1:\d+)")
EMBEDDED_RE = re.compile(r"sluice: embedded stream on (http://127\.0\.0\.1:\d+)")
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1, details=None):
    """Polls `predicate` until it returns a truthy value (returned) or `timeout` passes
    (AssertionError naming `what`, plus `details()` if given)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # not ready yet
            last_exc = e
        if time.monotonic() >= deadline:
            extra = details() if details else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
                + (f"\n{extra}" if extra else "")
            )
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(request, obj):
    """Adds `obj` to the list conftest's report hook prints log tails of (and that
    `server_factory` checks for unexpected exits)."""
    request.node.__dict__.setdefault("_sluice_servers", []).append(obj)


# ---------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def metric_sum(samples, name: str, **labels) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    return sum(
        v for n, l, v in samples if n == name and all(l.get(k) == str(x) for k, x in labels.items())
    )


# ---------------------------------------------------------------------------
# a process that prints where it listens
# ---------------------------------------------------------------------------


class Process:
    """A subprocess with its stdout+stderr in a log file; `wait_line(regex)` waits for a
    line of stdout matching `regex` and returns the match."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env=None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log_dir = Path(log_dir)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.lines: list[str] = []
        self.expected_exit = False
        self.unexpected_exits: list[str] = []
        self.url: str | None = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._starts = 0

    def start(self):
        assert not self.alive(), f"{self.name} already running"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        self.log_path = self.log_dir / f"{self.name}-{os.getpid()}-{self._starts}.log"
        logf = open(self.log_path, "ab", buffering=0)
        logf.write(("$ " + " ".join(self.cmd) + "\n").encode())
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("RUST_BACKTRACE", "1")  # panics show where
        env.setdefault("RUST_LIB_BACKTRACE", "0")  # error messages stay one line
        env.setdefault("NO_COLOR", "1")  # plain log files
        self.lines = []
        self.expected_exit = False
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=logf,
            env=env,
            start_new_session=True,
        )

        def reader(proc=self.proc, logf=logf):
            try:
                for raw in iter(proc.stdout.readline, b""):
                    logf.write(b"[stdout] " + raw)
                    with self._cond:
                        self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                        self._cond.notify_all()
            finally:
                with self._cond:
                    self._cond.notify_all()
                try:
                    proc.stdout.close()
                except Exception:
                    pass
                logf.close()

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        return self

    def wait_line(self, regex: re.Pattern, timeout=STARTUP_TIMEOUT, required=True):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.2))
        if not required:
            return None
        rc = self.proc.poll()
        self.expected_exit = True  # reported here, not again at teardown
        self.kill()
        pytest.fail(
            f"{self.name} did not print /{regex.pattern}/ within {timeout:.0f}s (exit code {rc}); "
            f"log:\n{self.log_tail()}",
            pytrace=False,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _note_unexpected_exit(self):
        if self.proc is not None and not self.expected_exit and self.proc.poll() is not None:
            msg = f"{self.name} exited by itself with code {self.proc.returncode}"
            if msg not in self.unexpected_exits:
                self.unexpected_exits.append(msg)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends `sig`, waits for the exit (SIGKILL after `timeout`); returns the exit code,
        or None if it had to be killed."""
        if self.proc is None:
            return None
        self._note_unexpected_exit()
        self.expected_exit = True
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            if self._reader is not None:
                self._reader.join(timeout=5)

    def kill(self):
        """SIGKILL (crash)."""
        if self.proc is None:
            return
        if not self.expected_exit:
            self._note_unexpected_exit()
        self.expected_exit = True
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._reader is not None:
            self._reader.join(timeout=5)

    def log_tail(self, n=60) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text("utf-8", "replace").splitlines()
        return f"[{self.name}: {self.log_path}]\n" + "\n".join(lines[-n:])


# ---------------------------------------------------------------------------
# sluice run
# ---------------------------------------------------------------------------


class SluiceRun(Process):
    """`sluice run FILE`, restartable on the same file."""

    def __init__(self, config_path: Path, log_dir: Path, name="sluice-run"):
        super().__init__(name, [sluice_bin(), "run", str(config_path), "--status-secs", "2"], log_dir)
        self.config_path = Path(config_path)
        self.metrics_url: str | None = None
        self.embedded_url: str | None = None

    def start(self, expect_embedded=True, expect_healthy=True):
        binary = sluice_bin()
        if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
            pytest.fail(
                f"sluice binary not found at {binary}: run `cargo build -p sluice` or set SLUICE_BIN",
                pytrace=False,
            )
        super().start()
        self.metrics_url = self.wait_line(METRICS_RE).group(1)
        self.url = self.metrics_url
        self.embedded_url = None
        if expect_embedded:
            self.embedded_url = self.wait_line(EMBEDDED_RE, timeout=5).group(1)
        wanted = (200,) if expect_healthy else (200, 503)
        wait_for(
            lambda: requests.get(self.metrics_url + "/health", timeout=2).status_code in wanted,
            STARTUP_TIMEOUT,
            f"GET {self.metrics_url}/health to answer {' or '.join(map(str, wanted))}",
            interval=0.05,
            details=self.log_tail,
        )
        return self

    def restart(self, expect_embedded=True):
        self.stop()
        return self.start(expect_embedded)

    def health(self) -> dict:
        r = requests.get(self.metrics_url + "/health", timeout=5)
        assert r.status_code == 200, f"/health answered {r.status_code}: {r.text[:300]}"
        return r.json()

    def health_response(self) -> tuple[int, dict | None]:
        """GET /health without judging it: (HTTP status, JSON body or None). /health answers
        503 while an alarm is up, which `health()` treats as a failure."""
        r = requests.get(self.metrics_url + "/health", timeout=5)
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body

    def sink(self, name: str) -> dict:
        return self.health()["pipeline"]["sinks"][name]

    def source(self, name: str) -> dict:
        return self.health()["pipeline"]["sources"][name]

    def metrics(self):
        r = requests.get(self.metrics_url + "/metrics", timeout=5)
        assert r.status_code == 200, f"/metrics answered {r.status_code}: {r.text[:300]}"
        return parse_metrics(r.text)

    def embedded_client(self, **kw):
        assert self.embedded_url, "this pipeline runs no embedded stream"
        return make_client(self.embedded_url, **kw)

    def wait_delivered(self, sink: str, count: int, timeout: float, dead_lettered: int = 0):
        """Waits until /health reports `count` records of `sink` delivered (since this start)
        and `dead_lettered` dead-lettered; fails at once if it reports more."""

        def check():
            self._assert_running()
            s = self.sink(sink)
            assert s["delivered"] <= count, (
                f"sink {sink} reports {s['delivered']} delivered, more than the {count} expected: {s}"
            )
            return s["delivered"] == count and s["dead_lettered"] == dead_lettered

        return wait_for(
            check,
            timeout,
            f"sink {sink} to report {count} delivered and {dead_lettered} dead-lettered",
            interval=0.1,
            details=lambda: f"/health: {self._safe_health()}\n{self.log_tail(30)}",
        )

    def _assert_running(self):
        if not self.alive():
            self._note_unexpected_exit()
            raise AssertionError(
                f"sluice run exited with code {self.proc.returncode}; log:\n{self.log_tail()}"
            )

    def _safe_health(self):
        try:
            return json.dumps(self.health())
        except Exception as e:
            return f"(no health: {e!r})"


def pipeline_toml(data_dir: Path, sources: str, sinks: str, embedded=True, extra="", api_extra="") -> str:
    """A pipeline file with `[api]` (plus `api_extra` lines) and `[embedded]` on free loopback ports."""
    text = f'data_dir = "{data_dir}"\n{extra}\n[api]\nlisten = "127.0.0.1:0"\n{api_extra}\n'
    if embedded:
        text += '\n[embedded]\nlisten = "127.0.0.1:0"\n'
    return text + "\n" + sources.strip() + "\n\n" + sinks.strip() + "\n"


def ws_source_toml(name: str, url: str, resume_url: str | None = None, cursor: str | None = "/seq",
                   idle_timeout="1s", extra="") -> str:
    """A websocket source with fast reconnects (a provider that cuts every second would
    otherwise push the default backoff towards 30 s)."""
    lines = [f"[sources.{name}]", 'type = "websocket"', f'url = "{url}"']
    lines += [f'idle_timeout = "{idle_timeout}"', 'backoff_initial = "50ms"', 'backoff_max = "500ms"']
    if cursor or resume_url:
        parts = []
        if cursor:
            parts.append(f'cursor = "{cursor}"')
        if resume_url:
            parts.append(f'url = "{resume_url}"')
        lines.append("resume = { " + ", ".join(parts) + " }")
    if extra:
        lines.append(extra.strip())
    return "\n".join(lines) + "\n"


def kinesis_sink_toml(name: str, inputs, stream: str, endpoint: str | None = None,
                      partition_key="/racer", extra="") -> str:
    lines = [
        f"[sinks.{name}]",
        'type = "kinesis"',
        "inputs = [" + ", ".join(f'"{i}"' for i in inputs) + "]",
        f'stream_name = "{stream}"',
        f'partition_key = "{partition_key}"',
        'linger = "20ms"',
    ]
    if endpoint:
        lines.append(f'endpoint = "{endpoint}"')
    if extra:
        lines.append(extra.strip())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# reading a stream back
# ---------------------------------------------------------------------------


class StreamReader:
    """Reads every shard of `stream` from TRIM_HORIZON, incrementally: `poll()` returns the
    records that arrived since the last call. `records` holds everything read, per shard in
    shard order."""

    def __init__(self, client, stream: str):
        self.client = client
        self.stream = stream
        self.iterators: dict[str, str | None] = {}
        self.shards: dict[str, dict] = {}
        self.by_shard: dict[str, list] = defaultdict(list)

    def _refresh_shards(self):
        token = None
        while True:
            resp = (
                self.client.list_shards(NextToken=token)
                if token
                else self.client.list_shards(StreamName=self.stream)
            )
            for s in resp["Shards"]:
                if s["ShardId"] not in self.shards:
                    self.shards[s["ShardId"]] = s
                    self.iterators[s["ShardId"]] = self.client.get_shard_iterator(
                        StreamName=self.stream, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
                    )["ShardIterator"]
            token = resp.get("NextToken")
            if not token:
                return

    def poll(self, max_calls_per_shard=200) -> list:
        try:
            self._refresh_shards()
        except ClientError as e:
            if e.response["Error"]["Code"] == "ResourceNotFoundException":
                return []
            raise
        new = []
        for shard_id in sorted(self.iterators):
            for _ in range(max_calls_per_shard):
                it = self.iterators[shard_id]
                if not it:
                    break
                try:
                    resp = self.client.get_records(ShardIterator=it, Limit=10000)
                except ClientError as e:
                    code = e.response["Error"]["Code"]
                    if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                        time.sleep(0.25)
                        continue
                    raise
                self.iterators[shard_id] = resp.get("NextShardIterator")
                for r in resp["Records"]:
                    r["ShardId"] = shard_id
                self.by_shard[shard_id].extend(resp["Records"])
                new.extend(resp["Records"])
                if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                    break
        return new

    @property
    def records(self) -> list:
        return [r for sid in sorted(self.by_shard) for r in self.by_shard[sid]]


def seqs_of(records) -> list[int]:
    return [json.loads(r["Data"])["seq"] for r in records]


def describe_seqs(got: list[int], total: int) -> str:
    """One line: how far `got` is from exactly 1..total."""
    want = set(range(1, total + 1))
    have = set(got)
    missing = sorted(want - have)
    extra = sorted(have - want)
    dups = len(got) - len(have)
    return (
        f"{len(got)} records, {len(have)} distinct of {total} expected; "
        f"{len(missing)} missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
        f"{dups} duplicates, {len(extra)} unexpected {extra[:10]}"
    )


def read_until_complete(reader: StreamReader, total: int, timeout: float, settle: float = 0.5,
                        details=None) -> list:
    """Polls the stream until every seq 1..total is in it, then once more after `settle`
    seconds (to catch late duplicates); returns all records."""

    def complete():
        reader.poll()
        return set(range(1, total + 1)) <= set(seqs_of(reader.records))

    wait_for(
        complete,
        timeout,
        f"all {total} events in stream {reader.stream}",
        interval=0.2,
        details=lambda: describe_seqs(seqs_of(reader.records), total)
        + ("\n" + details() if details else ""),
    )
    time.sleep(settle)
    reader.poll()
    return reader.records


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def pipeline_factory(tmp_path, request):
    """`pipeline_factory(toml_text, name="pipeline")` writes the file and starts `sluice run`
    on it; every pipeline is stopped at teardown, and one that died by itself fails the test."""
    runs: list[SluiceRun] = []

    def start(text: str, name="pipeline", expect_embedded=True, expect_healthy=True) -> SluiceRun:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        run = SluiceRun(path, tmp_path / "logs", name=f"sluice-run-{name}")
        runs.append(run)
        _register(request, run)
        return run.start(expect_embedded=expect_embedded, expect_healthy=expect_healthy)

    yield start

    problems = []
    for run in runs:
        run._note_unexpected_exit()
        if run.unexpected_exits:
            problems.append(f"{run.unexpected_exits}\n{run.log_tail()}")
        run.stop()
    if problems:
        pytest.fail("sluice run crashed during the test:\n" + "\n".join(problems), pytrace=False)


class _ProviderLog:
    """Lets conftest's report hook show a provider's log."""

    def __init__(self, provider):
        self.provider = provider
        self.unexpected_exits: list[str] = []
        self.url = f"{provider.kind} provider"

    def log_tail(self, n=40):
        errors = f"\nerrors: {self.provider.errors}" if self.provider.errors else ""
        return f"{self.provider.summary()}{errors}\n{self.provider.log_tail(n)}"

    def _note_unexpected_exit(self):
        pass

    def stop(self):
        pass


def _provider_factory(cls, request):
    started = []

    def start(feed: Feed, **kw):
        p = cls(feed, **kw).start()
        started.append(p)
        _register(request, _ProviderLog(p))
        return p

    return started, start


@pytest.fixture
def ws_feed_factory(request):
    """`ws_feed_factory(Feed(...), plan=[...], ...)` -> a started `WsFeed`."""
    started, start = _provider_factory(WsFeed, request)
    yield start
    for p in started:
        p.stop()


@pytest.fixture
def sse_feed_factory(request):
    """`sse_feed_factory(Feed(...), plan=[...], ...)` -> a started `SseFeed`."""
    started, start = _provider_factory(SseFeed, request)
    yield start
    for p in started:
        p.stop()


def _moto_command(port: int) -> list[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture
def moto_server(tmp_path, request):
    """A `moto_server` on a free loopback port; yields its URL."""
    pytest.importorskip("moto", reason="moto[server] is in tests/python/requirements.txt")
    proc = None
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        proc = Process("moto", _moto_command(port), tmp_path / "logs")
        _register(request, proc)
        proc.start()
        url = f"http://127.0.0.1:{port}"

        def up():
            if not proc.alive():
                return "dead"
            try:
                return requests.get(url + "/moto-api/", timeout=2).status_code < 500
            except (requests.RequestException, EndpointConnectionError):
                return False

        deadline = time.monotonic() + 30
        state = False
        while time.monotonic() < deadline:
            state = up()
            if state:
                break
            time.sleep(0.1)
        if state is True:
            break
        proc.stop()
    else:
        pytest.fail(f"moto_server did not start; log:\n{proc.log_tail()}", pytrace=False)
    proc.url = url
    yield url
    proc.stop()


SIMULATE_RE = re.compile(r"sluice simulate: serving on (http://127\.0\.0\.1:\d+)")


@pytest.fixture
def simulate_factory(tmp_path, request):
    """`simulate_factory(*args)` starts `sluice simulate --listen 127.0.0.1:0 ARGS` and
    returns the Process with `.url` set."""
    procs = []

    def start(*args) -> Process:
        help_rc = subprocess.run(
            [sluice_bin(), "simulate", "--help"], capture_output=True, timeout=30
        ).returncode
        if help_rc != 0:
            pytest.fail("this sluice binary has no `sluice simulate` command", pytrace=False)
        p = Process(
            "sluice-simulate", [sluice_bin(), "simulate", "--listen", "127.0.0.1:0", *args],
            tmp_path / "logs",
        )
        procs.append(p)
        _register(request, p)
        p.start()
        p.url = p.wait_line(SIMULATE_RE).group(1)
        return p

    yield start
    for p in procs:
        p.stop()
