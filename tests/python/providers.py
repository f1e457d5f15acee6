"""Fault-injecting data providers for the `sluice run` end-to-end tests.

Each provider serves one numbered JSON feed on a free 127.0.0.1 port from an asyncio loop in
a daemon thread, and keeps a log of what it did (connections, resume positions, cuts, stalls)
for the tests' assertions and for failure reports:

    {"seq":17,"racer":"r7","ts":1700000000017,"speed_kph":38.17,"lap":1}

`seq` runs 1..total without gaps and is the resume cursor. Payloads are a pure function of
`seq`, so a message sent twice is byte-identical and a test can compare the stream with
`feed.payload(seq)` exactly.

* `WsFeed`  - WebSocket (Python `websockets`): resumes after `?after=N`; cuts connections with a
  close frame or by aborting the TCP socket, stalls (socket open, nothing sent), inserts non-JSON
  frames.
* `SseFeed` - Server-Sent Events over HTTP/1.1 chunked: `id:` lines, resumes after the
  `Last-Event-ID` header (or `?after=N`), cuts with the final chunk or an abort, stalls.

Faults follow a per-connection plan (`plan`), cycled over connection numbers, so a test knows
which kinds of faults happened and can assert on them exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

START_TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# the feed
# ---------------------------------------------------------------------------


class Feed:
    """Messages 1..total, released at `rate` per second (None: all at once) from the first
    connection on.

    `stall=(after_seq, seconds)` pauses the whole feed once: after `after_seq` is released
    nothing more is released (on any connection) for `seconds`, then the feed continues at
    `rate` (needs a rate). `stall_window()` says when that pause starts and ends."""

    def __init__(self, total: int, rate: float | None = None, racers: int = 10, pad: int = 0,
                 stall: tuple[int, float] | None = None):
        self.total = total
        self.rate = rate
        self.racers = racers
        self.pad = pad
        self.stall = stall
        if stall is not None and not rate:
            raise ValueError("a feed stall needs a rate")
        self.t0: float | None = None

    def start_clock(self):
        if self.t0 is None:
            self.t0 = time.monotonic()

    def available(self) -> int:
        """Highest seq released so far."""
        if self.t0 is None:
            return 0
        if self.rate is None:
            return self.total
        elapsed = time.monotonic() - self.t0
        if self.stall is not None:
            after_seq, seconds = self.stall
            stall_at = after_seq / self.rate
            if elapsed >= stall_at:
                elapsed = max(stall_at, elapsed - seconds)
        return min(self.total, int(elapsed * self.rate + 1e-9))

    def stall_window(self) -> tuple[float, float] | None:
        """(start, end) of the feed's stall on the time.monotonic() clock, once the clock runs."""
        if self.stall is None or self.t0 is None:
            return None
        start = self.t0 + self.stall[0] / self.rate
        return start, start + self.stall[1]

    def release_time(self, seq: int) -> float | None:
        """When `seq` is (or was) released, on the time.monotonic() clock."""
        if self.t0 is None or not self.rate:
            return self.t0
        at = seq / self.rate
        if self.stall is not None and seq > self.stall[0]:
            at += self.stall[1]
        return self.t0 + at

    def racer(self, seq: int) -> str:
        return f"r{seq % self.racers}"

    def payload(self, seq: int) -> str:
        msg = {
            "seq": seq,
            "racer": self.racer(seq),
            "ts": 1_700_000_000_000 + seq,
            "speed_kph": round(30 + (seq % 1000) / 100, 2),
            "lap": 1 + seq // 1000,
        }
        if self.pad:
            msg["pad"] = "x" * self.pad
        return json.dumps(msg, separators=(",", ":"))

    def payload_bytes(self, seq: int) -> bytes:
        return self.payload(seq).encode()


@dataclass
class Conn:
    """What happened on one provider connection."""

    index: int
    path: str
    after: int | None  # resume position asked for (None: from the start)
    plan: str  # close | abort | stall | none
    lifetime: float
    first_seq: int | None = None
    last_seq: int | None = None
    sent: int = 0
    garbage: int = 0
    ended: str = "open"  # close | abort | stall-detected | stall-timeout | client | done
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    headers: dict = field(default_factory=dict)
    cut_at: float | None = None  # when the provider began cutting it (close / abort / stall)
    replay_lost: int = 0  # seqs asked for by `after` but older than the replay window
    first_sent_at: float | None = None  # broadcast feeds: when its first message was sent
    cutting: bool = False  # broadcast feeds: no longer counts as a live copy
    marks: list = field(default_factory=list)  # broadcast feeds: (time, last_seq) per batch

    @property
    def ended_at(self) -> float | None:
        return None if self.ended == "open" else self.started + self.duration


class _Provider:
    """An asyncio server in a daemon thread."""

    kind = "provider"

    def __init__(self, feed: Feed, plan=("none",), lifetime=(0.5, 1.0), stall_for=2.5,
                 replay_overlap: int = 0, garbage_every: int | None = None, seed: int = 7,
                 batch: int = 50, replay_window: float | None = None):
        self.feed = feed
        # Resume history kept, in seconds of feed (None: all of it). `?after=N` older than
        # that replays from the oldest kept seq: the rest is lost to the client (Conn.replay_lost).
        self.replay_window = replay_window
        self.plan = list(plan)
        self.lifetime = lifetime
        self.stall_for = stall_for
        self.replay_overlap = replay_overlap
        self.garbage_every = garbage_every
        self.seed = seed
        self.batch = batch
        self.conns: list[Conn] = []
        self.garbage_sent: list[str] = []
        self.port: int | None = None
        self.errors: list[str] = []
        self._log: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-provider", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self.port is None:
            raise RuntimeError(f"{self.kind} provider did not start: {self.errors}")
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception as e:  # reported through errors / the log
            self.errors.append(repr(e))
            self._ready.set()
        finally:
            self._loop.close()

    def stop(self):
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- bookkeeping -----------------------------------------------------
    def log(self, text: str):
        with self._lock:
            self._log.append(f"{time.strftime('%H:%M:%S')} [{self.kind} provider] {text}")

    def log_tail(self, n=60) -> str:
        with self._lock:
            return "\n".join(self._log[-n:]) or "(nothing logged)"

    def _new_conn(self, path: str, after: int | None, headers=None) -> Conn:
        with self._lock:
            index = len(self.conns)
            rng = random.Random(self.seed * 1000 + index)
            conn = Conn(
                index=index,
                path=path,
                after=after,
                plan=self.plan[index % len(self.plan)],
                lifetime=rng.uniform(*self.lifetime),
                headers=dict(headers or {}),
            )
            self.conns.append(conn)
        self.feed.start_clock()
        self.log(f"conn #{index} {path} after={after} plan={conn.plan} lifetime={conn.lifetime:.2f}s")
        return conn

    def _end(self, conn: Conn, how: str):
        if conn.ended == "open":
            conn.ended = how
            conn.duration = time.monotonic() - conn.started
            self.log(
                f"conn #{conn.index} ended: {how} after {conn.duration:.2f}s, sent {conn.sent} "
                f"(seq {conn.first_seq}..{conn.last_seq}), garbage {conn.garbage}"
            )

    def ended(self, how: str) -> list[Conn]:
        return [c for c in self.conns if c.ended == how]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for c in self.conns:
            counts[c.ended] = counts.get(c.ended, 0) + 1
        return f"{len(self.conns)} connections, endings {counts}"

    def start_seq(self, after: int | None) -> int:
        """First seq a connection sends: after+1, minus `replay_overlap` already-sent messages
        when resuming (providers that replay a little are common)."""
        if after is None:
            return 1
        return max(1, after + 1 - self.replay_overlap)

    def oldest_kept(self) -> int:
        """The oldest seq still replayable under `replay_window` (1 without a window)."""
        if self.replay_window is None or not self.feed.rate or self.feed.t0 is None:
            return 1
        newest = self.feed.available()
        # Released more than replay_window seconds ago: gone (stall-aware via release_time).
        horizon = time.monotonic() - self.replay_window
        lo, hi = 1, newest
        while lo <= hi:  # the first seq released after the horizon
            mid = (lo + hi) // 2
            if self.feed.release_time(mid) > horizon:
                hi = mid - 1
            else:
                lo = mid + 1
        return max(1, lo)

    def _first_seq_for(self, conn: Conn) -> int:
        """start_seq(), limited by the replay window."""
        nxt = self.start_seq(conn.after)
        if self.replay_window is not None:
            oldest = self.oldest_kept()
            if nxt < oldest:
                conn.replay_lost = oldest - nxt
                self.log(
                    f"conn #{conn.index} asked for seq {nxt}, older than the {self.replay_window}s "
                    f"replay window: replaying from {oldest} ({conn.replay_lost} lost)"
                )
                nxt = oldest
        return nxt

    # -- the send loop shared by both transports -------------------------
    async def _feed_loop(self, conn: Conn, send, abort, close, closed):
        """Sends messages until the plan ends the connection. `send(seq|None, text)` sends one
        message (None: a garbage frame); `closed()` is true once the client went away."""
        nxt = self._first_seq_for(conn)
        deadline = conn.started + conn.lifetime if conn.plan != "none" else float("inf")
        since_garbage = 0
        while not self._stop.is_set():
            if closed():
                self._end(conn, "client")
                return
            if time.monotonic() >= deadline:
                break
            avail = self.feed.available()
            if nxt <= avail:
                upto = min(avail, nxt + self.batch - 1)
                for seq in range(nxt, upto + 1):
                    await send(seq, self.feed.payload(seq))
                    conn.sent += 1
                    conn.first_seq = conn.first_seq or seq
                    conn.last_seq = seq
                    since_garbage += 1
                    if self.garbage_every and since_garbage >= self.garbage_every:
                        since_garbage = 0
                        text = f"garbage after seq {seq}: this is not JSON {{"
                        await send(None, text)
                        conn.garbage += 1
                        with self._lock:
                            self.garbage_sent.append(text)
                nxt = upto + 1
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.005)
        if self._stop.is_set():
            await abort()
            self._end(conn, "shutdown")
            return
        conn.cut_at = time.monotonic()
        if conn.plan == "close":
            await close()
            self._end(conn, "close")
        elif conn.plan == "abort":
            await abort()
            self._end(conn, "abort")
        elif conn.plan == "stall":
            # Keep the socket open and send nothing: the client's idle timeout must notice.
            self.log(f"conn #{conn.index} stalling for {self.stall_for}s")
            t = time.monotonic()
            while time.monotonic() - t < self.stall_for and not self._stop.is_set():
                if closed():
                    self._end(conn, "stall-detected")
                    return
                await asyncio.sleep(0.01)
            await abort()
            self._end(conn, "stall-timeout")


# ---------------------------------------------------------------------------
# WebSocket
# ---------------------------------------------------------------------------


class WsFeed(_Provider):
    """`ws://127.0.0.1:PORT/ws`; `?after=N` resumes after seq N."""

    kind = "ws"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _main(self):
        self._stop = asyncio.Event()
        self._tasks = set()
        async with ws_serve(
            self._handler,
            "127.0.0.1",
            0,
            ping_interval=None,  # the provider never pings: liveness is the client's job
            close_timeout=2,
            max_size=2**20,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close(close_connections=False)
            for t in list(self._tasks):
                t.cancel()

    async def _handler(self, ws):
        task = asyncio.current_task()
        self._tasks.add(task)
        path = ws.request.path
        q = parse_qs(urlsplit(path).query)
        after = int(q["after"][0]) if "after" in q else None
        conn = self._new_conn(path, after, headers=dict(ws.request.headers.raw_items()))

        async def send(seq, text):
            await ws.send(text)

        async def abort():
            ws.transport.abort()

        async def close():
            try:
                await ws.close(1001, "provider cut")
            except Exception:
                pass

        def closed():
            return ws.state.name in ("CLOSING", "CLOSED")

        try:
            await self._feed_loop(conn, send, abort, close, closed)
        except ConnectionClosed:
            self._end(conn, "client")
        except asyncio.CancelledError:
            ws.transport.abort()
            self._end(conn, "shutdown")
        except Exception as e:
            self.errors.append(f"conn #{conn.index}: {e!r}")
            self._end(conn, f"error {e!r}")
            ws.transport.abort()
        finally:
            self._tasks.discard(task)


# ---------------------------------------------------------------------------
# Server-Sent Events
# ---------------------------------------------------------------------------


class SseFeed(_Provider):
    """`http://127.0.0.1:PORT/sse`: `id: N` + `data: JSON` per event over a chunked body;
    the `Last-Event-ID` header (or `?after=N`) resumes after N."""

    kind = "sse"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse"

    async def _main(self):
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            writer.transport.abort()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if method != "GET" or not urlsplit(target).path.startswith("/sse"):
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        q = parse_qs(urlsplit(target).query)
        after = None
        if headers.get("last-event-id"):
            after = int(headers["last-event-id"])
        elif "after" in q:
            after = int(q["after"][0])
        conn = self._new_conn(target, after, headers=headers)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        eof = asyncio.ensure_future(reader.read())  # completes when the client goes away

        def chunk(data: bytes) -> bytes:
            return b"%x\r\n%s\r\n" % (len(data), data)

        async def send(seq, text):
            if seq is None:
                event = f"data: {text}\n\n"
            else:
                event = f"id: {seq}\ndata: {text}\n\n"
            writer.write(chunk(event.encode()))
            await writer.drain()

        async def abort():
            writer.transport.abort()

        async def close():
            writer.write(b"0\r\n\r\n")
            try:
                await writer.drain()
            finally:
                writer.close()

        def closed():
            return eof.done() or writer.transport.is_closing()

        try:
            await self._feed_loop(conn, send, abort, close, closed)
        except (ConnectionError, asyncio.CancelledError):
            self._end(conn, "client")
            writer.transport.abort()
        except Exception as e:
            self.errors.append(f"conn #{conn.index}: {e!r}")
            self._end(conn, f"error {e!r}")
            writer.transport.abort()
        finally:
            eof.cancel()


# ---------------------------------------------------------------------------
# live broadcast feeds (no resume)
# ---------------------------------------------------------------------------


class RepeatingFeed(Feed):
    """A feed without any cursor whose payloads repeat: message i (1-based position) is
    `{"racer":"r07","v":3}` drawn (seeded) from `racers` x `values` combinations, so most
    payloads occur many times. `released()` is the exact sequence released so far."""

    def __init__(self, total: int, rate: float | None = None, racers: int = 10, values: int = 5,
                 seed: int = 11, stall: tuple[int, float] | None = None):
        super().__init__(total, rate=rate, racers=racers, stall=stall)
        rng = random.Random(seed)
        self._racers = [f"r{rng.randrange(racers):02d}" for _ in range(total)]
        self._payloads = [
            json.dumps({"racer": r, "v": rng.randrange(values)}, separators=(",", ":"))
            for r in self._racers
        ]

    def racer(self, seq: int) -> str:
        return self._racers[seq - 1]

    def payload(self, seq: int) -> str:
        return self._payloads[seq - 1]

    def released(self) -> list[str]:
        return self._payloads[: self.available()]


class BroadcastWsFeed(WsFeed):
    """One live feed broadcast to every connected client, without resume: a client gets each
    message as it is released from the moment it connects (no history; `?after=` is ignored).
    The clock starts when the provider starts (`clock_at_start`), so the first client joins
    mid-feed.

    Each connection is cut independently (`plan` cycled over connection numbers: close | abort
    | none) once its random `lifetime` has passed, but never all at once: with
    `keep_one_live` a connection is cut only while another open connection already holds
    everything it has been sent for less than `overlap` seconds (the other copy's first seq is
    at or before that point), so with two replicas a live copy of every message always exists.
    No cut is made in the last `quiet_tail` seconds of the feed, so the end is deterministic.
    Every connection and what it got (first..last seq, count) is logged (`conns`)."""

    kind = "ws-broadcast"

    def __init__(self, feed: Feed, plan=("close", "abort"), lifetime=(1.0, 2.0),
                 keep_one_live: bool = True, overlap: float = 0.5, quiet_tail: float = 1.0,
                 clock_at_start: bool = True, seed: int = 7, batch: int = 50):
        super().__init__(feed, plan=plan, lifetime=lifetime, seed=seed, batch=batch)
        self.keep_one_live = keep_one_live
        self.overlap = overlap
        self.quiet_tail = quiet_tail
        self.clock_at_start = clock_at_start
        self.deferred_cuts = 0

    def start(self):
        super().start()
        if self.clock_at_start:
            self.feed.start_clock()
        return self

    def _cuts_over(self) -> bool:
        if not self.feed.rate:
            return False
        return self.feed.available() >= self.feed.total - int(self.quiet_tail * self.feed.rate)

    @staticmethod
    def _safe_point(conn: Conn, before: float) -> int:
        """The last seq `conn` had been sent by time `before` (0: none)."""
        last = 0
        for t, seq in conn.marks:
            if t > before:
                break
            last = seq
        return last

    def _may_cut(self, conn: Conn) -> bool:
        if self._cuts_over():
            return False
        if not self.keep_one_live:
            return True
        if conn.last_seq is None:
            return True  # holds nothing another copy would have to cover
        safe = self._safe_point(conn, time.monotonic() - self.overlap)
        return any(
            other is not conn and other.ended == "open" and not other.cutting
            and other.first_seq is not None and other.first_seq <= safe + 1
            for other in self.conns
        )

    async def _feed_loop(self, conn: Conn, send, abort, close, closed):
        nxt = self.feed.available() + 1  # joins the live feed: no history
        deadline = conn.started + conn.lifetime if conn.plan != "none" else float("inf")
        deferred = False
        while not self._stop.is_set():
            if closed():
                self._end(conn, "client")
                return
            avail = self.feed.available()
            if nxt <= avail:
                upto = min(avail, nxt + self.batch - 1)
                for seq in range(nxt, upto + 1):
                    await send(seq, self.feed.payload(seq))
                    conn.sent += 1
                    if conn.first_seq is None:
                        conn.first_seq = seq
                        conn.first_sent_at = time.monotonic()
                    conn.last_seq = seq
                conn.marks.append((time.monotonic(), upto))
                nxt = upto + 1
            if time.monotonic() >= deadline:
                # Decide and mark in one step (no await in between): the other connections'
                # tasks see `cutting` before they decide about themselves.
                if self._may_cut(conn):
                    conn.cutting = True
                    break
                if not deferred:
                    deferred = True
                    self.deferred_cuts += 1
                    self.log(f"conn #{conn.index} cut deferred: no other live copy yet")
            await asyncio.sleep(0 if nxt <= self.feed.available() else 0.005)
        if self._stop.is_set():
            await abort()
            self._end(conn, "shutdown")
            return
        conn.cut_at = time.monotonic()
        if conn.plan == "close":
            await close()
            self._end(conn, "close")
        else:
            await abort()
            self._end(conn, "abort")

    def max_concurrent(self) -> int:
        """Most connections open at the same time (from the log)."""
        points = []
        for c in self.conns:
            points.append((c.started, 1))
            points.append((c.ended_at if c.ended_at is not None else float("inf"), -1))
        best = now = 0
        for _, d in sorted(points, key=lambda p: (p[0], p[1])):
            now += d
            best = max(best, now)
        return best


__all__ = ["Feed", "RepeatingFeed", "WsFeed", "BroadcastWsFeed", "SseFeed", "Conn", "websockets"]


# ---------------------------------------------------------------------------
# a scripted feed for bad frames (test_pipeline_bad_frames.py)
# ---------------------------------------------------------------------------


class ScriptedFeed:
    """Serves a fixed list of `(position, payload)` items over `kind` = "websocket", "sse"
    (`data:` lines) or "http" (NDJSON over a close-delimited HTTP/1.1 body). A connection
    resumes after `?after=X`: it sends the items whose position is above X (positions are
    floats, so an item whose cursor is not a number can sit between two that are).
    `cut_after(conn_index, position) -> bool` is asked after each item: True ends the
    connection there (a close frame, or the end of the body). After the last item a
    connection stays open, silent. Records each connection's `after` and the time it began in
    `self.conns`, and how many items over `big` bytes were sent in `self.big_sent`."""

    def __init__(self, kind: str, items, cut_after=lambda conn, pos: False, big: int = 1 << 20,
                 gap: float = 0.002):
        self.kind = kind
        self.items = list(items)
        self.cut_after = cut_after
        self.big = big
        self.gap = gap
        self.conns: list[dict] = []
        self.big_sent = 0
        self.errors: list[str] = []
        self.port: int | None = None
        self._log: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = None
        self._stop = None
        self._thread = None

    @property
    def url(self) -> str:
        scheme = "ws" if self.kind == "websocket" else "http"
        return f"{scheme}://127.0.0.1:{self.port}/feed"

    def start(self):
        self._thread = threading.Thread(target=self._run, name="scripted-feed", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self.port is None:
            raise RuntimeError(f"scripted feed did not start: {self.errors}")
        return self

    def stop(self):
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def log(self, text: str):
        with self._lock:
            self._log.append(f"{time.strftime('%H:%M:%S')} [scripted {self.kind}] {text}")

    def log_tail(self, n=60) -> str:
        with self._lock:
            return "\n".join(self._log[-n:]) or "(nothing logged)"

    def summary(self) -> str:
        return f"{len(self.conns)} connections, afters {[c['after'] for c in self.conns]}, big sent {self.big_sent}"

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception as e:
            self.errors.append(repr(e))
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self):
        self._stop = asyncio.Event()
        if self.kind == "websocket":
            async with ws_serve(self._ws, "127.0.0.1", 0, max_size=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._ready.set()
                await self._stop.wait()
        else:
            server = await asyncio.start_server(self._http, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await self._stop.wait()

    def _begin(self, path: str):
        query = parse_qs(urlsplit(path).query)
        after = query.get("after", [None])[0]
        with self._lock:
            index = len(self.conns)
            self.conns.append({"index": index, "after": after, "started": time.monotonic()})
        self.log(f"conn #{index} {path}")
        start = float(after) if after is not None else float("-inf")
        return index, [(p, payload) for p, payload in self.items if p > start]

    def _sent(self, payload):
        if len(payload) > self.big:
            with self._lock:
                self.big_sent += 1

    async def _ws(self, ws):
        index, items = self._begin(ws.request.path)
        try:
            for pos, payload in items:
                await ws.send(payload)
                self._sent(payload)
                if self.cut_after(index, pos):
                    self.log(f"conn #{index} cut after {pos}")
                    await ws.close()
                    return
                await asyncio.sleep(self.gap)
            await self._stop.wait()
        except ConnectionClosed:
            pass

    async def _http(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            index, items = self._begin(path)
            ctype = "text/event-stream" if self.kind == "sse" else "application/x-ndjson"
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n".encode())
            for pos, payload in items:
                data = payload.encode() if isinstance(payload, str) else payload
                writer.write(b"data: " + data + b"\n\n" if self.kind == "sse" else data + b"\n")
                await writer.drain()
                self._sent(data)
                if self.cut_after(index, pos):
                    self.log(f"conn #{index} cut after {pos}")
                    return
                await asyncio.sleep(self.gap)
            await self._stop.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
