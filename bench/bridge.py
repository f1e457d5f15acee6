"""The seed-style bridge sluice replaces, as a benchmark peer (not part of sluice).

`seed` mode is the usual script: one WebSocket, one synchronous boto3 PutRecord per message.
`batched` mode is its best plain-Python variant: PutRecords of up to 500 records or 100 ms.
Neither resumes, retries failed entries, or survives a dropped connection; that is the point
of the comparison. Prints one JSON line with counts when it stops (after --count messages or
--seconds).
"""

import argparse
import asyncio
import json
import sys
import time

import boto3
import websockets


def client(endpoint):
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


async def messages(ws, deadline):
    """Messages until the deadline, even when the feed goes quiet."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            yield await asyncio.wait_for(ws.recv(), remaining)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            return


async def seed(args):
    kinesis = client(args.endpoint)
    put = 0
    deadline = time.monotonic() + args.seconds
    async with websockets.connect(args.url, max_size=None) as ws:
        async for msg in messages(ws, deadline):
            data = msg.encode() if isinstance(msg, str) else msg
            key = json.loads(data).get("racer", "k")
            kinesis.put_record(StreamName=args.stream, Data=data, PartitionKey=key)
            put += 1
            if put >= args.count or time.monotonic() > deadline:
                break
        args.done_at = time.monotonic()
    return put, 0


async def batched(args):
    kinesis = client(args.endpoint)
    put = failed = 0
    batch = []
    last = time.monotonic()
    deadline = time.monotonic() + args.seconds

    def flush():
        nonlocal put, failed, batch, last
        if batch:
            resp = kinesis.put_records(StreamName=args.stream, Records=batch)
            failed += resp["FailedRecordCount"]
            put += len(batch) - resp["FailedRecordCount"]
            batch = []
        last = time.monotonic()

    async with websockets.connect(args.url, max_size=None) as ws:
        async for msg in messages(ws, deadline):
            data = msg.encode() if isinstance(msg, str) else msg
            batch.append({"Data": data, "PartitionKey": json.loads(data).get("racer", "k")})
            if len(batch) >= 500 or time.monotonic() - last > 0.1:
                flush()
            if put + len(batch) >= args.count or time.monotonic() > deadline:
                break
        flush()
        args.done_at = time.monotonic()
    return put, failed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["seed", "batched"])
    p.add_argument("--url", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--count", type=int, default=10**12)
    p.add_argument("--seconds", type=float, default=30)
    args = p.parse_args()
    start = time.monotonic()
    args.done_at = None
    put, failed = asyncio.run(seed(args) if args.mode == "seed" else batched(args))
    # Up to the last put, not the WebSocket closing handshake after it.
    elapsed = (args.done_at or time.monotonic()) - start
    print(json.dumps({"mode": args.mode, "put": put, "failed": failed, "seconds": round(elapsed, 3)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
