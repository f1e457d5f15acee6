"""A numbered WebSocket feed for sluice-sources' tests (Python `websockets`, loopback only).

Every message is JSON `{"seq": N, "data": "..."}`, N = 1, 2, 3 ... A connection to
`/feed?after=N` starts after N (resume). Options shape the misbehaviour under test; the
server reports what it sees as JSON lines on stdout (`listening`, `connect`, `subscribe`,
`rejected`, `closed`), which the Rust test reads.
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import serve

p = argparse.ArgumentParser()
p.add_argument("--total", type=int, default=100)
p.add_argument("--cut-every", type=int, default=0, help="cut each connection after K messages")
p.add_argument("--cut-mode", default="close", choices=["close", "abort", "alternate"])
p.add_argument("--replay", type=int, default=0, help="resume R messages before the requested cursor")
p.add_argument("--skip", default="", help="A-B: never send seq A..B")
p.add_argument("--garbage", action="store_true", help="send unusable frames between messages")
p.add_argument("--interval-ms", type=float, default=0.0)
p.add_argument("--live", action="store_true", help="one shared clock: seq N is due at N*interval")
p.add_argument("--stall-after", type=int, default=0, help="1st connection: stop sending after K (socket open)")
p.add_argument("--half-dead-after", type=int, default=0, help="1st connection: stop reading and sending after K")
p.add_argument("--reject-first", type=int, default=0, help="answer the first N handshakes with 503")
p.add_argument("--healthy-ms", type=int, default=0, help="send one message ({\"seq\": connection number}), close after X ms")
p.add_argument("--empty-ms", type=int, default=0, help="close every connection after X ms, sending nothing")
p.add_argument("--subscribe", action="store_true", help="wait for {op: subscribe, after: N}")
p.add_argument("--pad", type=int, default=0, help="pad data to this many characters")
p.add_argument("--binary", action="store_true", help="send every other message as a binary frame")
args = p.parse_args()

skip = set()
if args.skip:
    a, b = args.skip.split("-")
    skip = set(range(int(a), int(b) + 1))

state = {"connections": 0, "handshakes": 0, "start": time.monotonic()}


def log(**event):
    event["t"] = time.monotonic()
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def message(seq):
    data = f"message {seq}"
    if args.pad:
        data = (data + " ") + ("abcdefgh" * (args.pad // 8 + 1))[: args.pad]
    return json.dumps({"seq": seq, "data": data})


def process_request(connection, request):
    state["handshakes"] += 1
    if state["handshakes"] <= args.reject_first:
        log(ev="rejected", n=state["handshakes"])
        return connection.respond(503, "try later\n")
    return None


async def handler(ws):
    state["connections"] += 1
    n = state["connections"]
    url = urlparse(ws.request.path)
    query = parse_qs(url.query)
    if "after" in query:
        after = int(query["after"][0])
    elif args.live:
        # No cursor: join the live feed where it is now.
        after = max(int((time.monotonic() - state["start"]) * 1000 / args.interval_ms), 0)
    else:
        after = 0
    ext = [e.name for e in ws.protocol.extensions]
    log(ev="connect", n=n, path=ws.request.path, ext=ext, auth=ws.request.headers.get("Authorization"))
    try:
        if args.subscribe:
            raw = await ws.recv()
            log(ev="subscribe", n=n, msg=raw)
            sub = json.loads(raw)
            after = int(sub.get("after", 0))
            # Any further subscribe messages are logged as they come.
            asyncio.ensure_future(log_more(ws, n))
        if args.healthy_ms or args.empty_ms:
            if args.healthy_ms:
                await ws.send(json.dumps({"seq": n}))
            await asyncio.sleep((args.healthy_ms or args.empty_ms) / 1000)
            await ws.close(1001, "rotate")
            return
        seq = max(after - args.replay, 0)
        sent = 0
        while seq < args.total:
            seq += 1
            if seq in skip:
                continue
            if args.live:
                due = state["start"] + seq * args.interval_ms / 1000
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif args.interval_ms:
                await asyncio.sleep(args.interval_ms / 1000)
            if args.garbage and seq % 10 == 5:
                await ws.send("this is not json")
                await ws.send(b"\x00\xffbinary garbage")
                await ws.send(json.dumps({"seq": -1, "big": "x" * 5000}))
            text = message(seq)
            if args.binary and seq % 2 == 0:
                await ws.send(text.encode())
            else:
                await ws.send(text)
            sent += 1
            if n == 1 and args.stall_after and sent == args.stall_after:
                log(ev="stalling", n=n)
                await asyncio.sleep(3600)
            if n == 1 and args.half_dead_after and sent == args.half_dead_after:
                log(ev="half_dead", n=n)
                ws.transport.pause_reading()
                await asyncio.sleep(3600)
            if args.cut_every and sent == args.cut_every and seq < args.total:
                abort = args.cut_mode == "abort" or (args.cut_mode == "alternate" and n % 2 == 0)
                log(ev="cut", n=n, abort=abort, seq=seq)
                if abort:
                    ws.transport.abort()
                else:
                    await ws.close(1001, "cut")
                return
        await ws.wait_closed()
    finally:
        log(ev="closed", n=n, code=ws.close_code)


async def log_more(ws, n):
    try:
        async for raw in ws:
            log(ev="subscribe", n=n, msg=raw)
    except Exception:
        pass


async def main():
    async with serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        ping_interval=None,
        max_size=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        log(ev="listening", port=port)
        await asyncio.Future()


asyncio.run(main())
