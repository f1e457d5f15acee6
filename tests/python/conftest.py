"""Fixtures for the end-to-end suite of `sluice serve`.

Every test gets its own server process, started on a free loopback port
(`--listen 127.0.0.1:0`) with its own data directory under pytest's tmp_path,
and stopped (SIGTERM, then SIGKILL if it hangs) at teardown.  Nothing is
shared between tests, so the suite runs fine under `pytest -n 2`.

The binary comes from $SLUICE_BIN, default <repo>/target/debug/sluice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from sluice_helpers import make_client

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "sluice"
LISTEN_RE = re.compile(r"sluice: listening on (http://127\.0\.0\.1:(\d+))")
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def sluice_bin() -> str:
    return os.environ.get("SLUICE_BIN") or str(DEFAULT_BIN)


class SluiceServer:
    """One `sluice serve` process (restartable on the same data dir)."""

    _counter = 0

    def __init__(self, data_dir: Path, log_dir: Path, args=()):
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.expected_exit = False
        self.unexpected_exits: list[str] = []
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self, extra_args=None) -> "SluiceServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = sluice_bin()
        if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
            pytest.fail(
                f"sluice binary not found at {binary}: run `cargo build -p sluice` "
                "or set SLUICE_BIN",
                pytrace=False,
            )
        args = self.args if extra_args is None else list(extra_args)
        self.args = args
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        SluiceServer._counter += 1
        self.log_path = self.log_dir / f"sluice-{os.getpid()}-{SluiceServer._counter}.log"
        cmd = [
            binary,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.data_dir),
            *args,
        ]
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        logf = open(self.log_path, "ab", buffering=0)
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=logf,
            env=env,
            start_new_session=True,
        )
        self.expected_exit = False
        found = threading.Event()
        box = {}

        def reader(proc=self.proc, logf=logf):
            try:
                for raw in iter(proc.stdout.readline, b""):
                    logf.write(b"[stdout] " + raw)
                    if not found.is_set():
                        m = LISTEN_RE.search(raw.decode("utf-8", "replace"))
                        if m:
                            box["url"], box["port"] = m.group(1), int(m.group(2))
                            found.set()
            finally:
                found.set()
                try:
                    proc.stdout.close()
                except Exception:
                    pass

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        if not found.wait(STARTUP_TIMEOUT) or "url" not in box:
            rc = self.proc.poll()
            self._force_kill()
            pytest.fail(
                f"sluice did not print its listening line within {STARTUP_TIMEOUT}s "
                f"(exit code {rc}); log:\n{self.log_tail()}",
                pytrace=False,
            )
        self.url, self.port = box["url"], box["port"]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return self
                last = f"status {r.status_code}"
            except requests.RequestException as e:  # not up yet
                last = repr(e)
            time.sleep(0.05)
        rc = self.proc.poll()
        self._force_kill()
        pytest.fail(
            f"sluice at {self.url} never answered GET /health with 200 ({last}, exit code {rc});"
            f" log:\n{self.log_tail()}",
            pytrace=False,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _note_unexpected_exit(self):
        if self.proc is not None and not self.expected_exit:
            rc = self.proc.poll()
            if rc is not None:
                self.unexpected_exits.append(f"server exited by itself with code {rc}")

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT) -> int | None:
        """Send `sig` and wait for the exit; SIGKILL after `timeout`.

        Returns the exit code, or None if the process had to be killed.
        """
        if self.proc is None:
            return None
        self._note_unexpected_exit()
        self.expected_exit = True
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(sig)
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._force_kill()
            return None
        finally:
            self._join_reader()
        return rc

    def kill(self):
        """SIGKILL (crash simulation)."""
        if self.proc is None:
            return
        self._note_unexpected_exit()
        self.expected_exit = True
        self._force_kill()

    def _force_kill(self):
        if self.proc is None:
            return
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
        self._join_reader()

    def _join_reader(self):
        if self._reader is not None:
            self._reader.join(timeout=5)

    def restart(self, extra_args=None) -> "SluiceServer":
        self.stop()
        return self.start(extra_args)

    def log_tail(self, n=60) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])

    def client(self, **kw):
        return make_client(self.url, **kw)


# ---------------------------------------------------------------------------
# environment: dummy credentials, no user config leaking in
# ---------------------------------------------------------------------------

_AWS_VARS_TO_DROP = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


@pytest.fixture(autouse=True)
def aws_env(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "aws-config"
    cfg_dir.mkdir()
    config = cfg_dir / "config"
    # cli_binary_format: v2 behaviour for blobs; AWS CLI v1 ignores it (v1 always
    # takes raw input and base64-encodes it itself).
    config.write_text(
        "[default]\nregion = us-east-1\noutput = json\n"
        "cli_binary_format = raw-in-base64-out\n"
    )
    creds = cfg_dir / "credentials"
    creds.write_text("[default]\naws_access_key_id = test\naws_secret_access_key = test\n")
    for v in _AWS_VARS_TO_DROP:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PAGER", "")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield


# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------


@pytest.fixture
def server_factory(tmp_path, request):
    """Call with a list of extra CLI args; returns a started SluiceServer.

    Every server started through the factory is stopped at teardown.  A
    server that died on its own during the test is reported as an error.
    """
    servers: list[SluiceServer] = []
    request.node._sluice_servers = servers

    def start(args=(), data_dir=None):
        idx = len(servers)
        srv = SluiceServer(
            data_dir or tmp_path / f"data{idx}", tmp_path / "logs", args=args
        )
        servers.append(srv)
        return srv.start()

    yield start

    problems = []
    for srv in servers:
        srv._note_unexpected_exit()
        if srv.unexpected_exits:
            problems.append(f"{srv.url}: {srv.unexpected_exits}\n{srv.log_tail()}")
        srv.stop()
    if problems:
        pytest.fail("sluice crashed during the test:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def kinesis(server):
    """boto3 Kinesis client with client-side parameter validation on."""
    return server.client()


@pytest.fixture
def kinesis_novalidate(server):
    """boto3 client that sends whatever it is given (server-side validation tests)."""
    return server.client(validate=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        servers = getattr(item, "_sluice_servers", None) or []
        for i, srv in enumerate(servers):
            report.sections.append((f"sluice server #{i} log (tail)", srv.log_tail(40)))


# ---------------------------------------------------------------------------
# full disks
# ---------------------------------------------------------------------------


@pytest.fixture
def tmpfs():
    """`tmpfs(path, size)` mounts a small tmpfs there (skips the test where that is not allowed:
    it needs root); `tmpfs.resize(path, size)` remounts it; everything is unmounted at teardown."""
    mounted: list[Path] = []

    class Mounter:
        def __call__(self, path: Path, size: str):
            path.mkdir(parents=True, exist_ok=True)
            if os.geteuid() != 0:
                pytest.skip("mounting a tmpfs needs root: this full-disk test did not run")
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): this full-disk test did not run")
            mounted.append(path)

        def resize(self, path: Path, size: str):
            r = subprocess.run(["mount", "-o", f"remount,size={size}", str(path)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, f"remount failed: {r.stderr}"

    yield Mounter()
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
