"""The `dynamodb` sink of `sluice run`: against moto (a third-party DynamoDB) and against the
pipeline's own embedded DynamoDB endpoint, read back with boto3."""

from __future__ import annotations

import json
import urllib.error

import boto3
from botocore.config import Config

from pipeline_helpers import (  # noqa: F401  (fixtures)
    metric_sum,
    moto_server,
    pipeline_factory,
    pipeline_toml,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed


def ddb(url):
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 2}))


def create(client, table, attr, ty):
    client.create_table(TableName=table, KeySchema=[{"AttributeName": attr, "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": attr, "AttributeType": ty}],
                        BillingMode="PAY_PER_REQUEST")
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


def scan_all(client, table):
    items, kw = [], {}
    while True:
        page = client.scan(TableName=table, **kw)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_moto_keeps_each_racers_newest_event_by_version(tmp_path, moto_server, ws_feed_factory, pipeline_factory):
    client = ddb(moto_server)
    create(client, "racers", "racer", "S")
    feed = Feed(1200, rate=2000, racers=12)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        f"""[sinks.board]
type = "dynamodb"
inputs = ["race"]
endpoint = "{moto_server}"
table = "racers"
key = {{ racer = "/racer" }}
version = "seq"
""",
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    run.wait_delivered("board", feed.total, timeout=60)
    items = scan_all(client, "racers")
    newest = {}
    for s in range(1, feed.total + 1):
        newest[feed.racer(s)] = s
    got = {i["racer"]["S"]: int(i["seq"]["N"]) for i in items}
    assert got == newest, f"items differ from each racer's newest seq: {got} vs {newest}"
    sample = next(i for i in items if i["racer"]["S"] == "r5")
    assert set(sample) >= {"racer", "seq", "ts", "speed_kph", "lap"} and "N" in sample["speed_kph"]


def test_embedded_endpoint_gets_every_event_once_the_table_exists(tmp_path, ws_feed_factory, pipeline_factory):
    feed = Feed(800, rate=None)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        """[sinks.events]
type = "dynamodb"
inputs = ["race"]
table = "events"
key = { seq = "/seq" }
""",
    )
    run = pipeline_factory(text)
    # The table does not exist yet: writes are retried and counted, nothing acknowledged.
    wait_for(lambda: metric_sum(run.metrics(), "sluice_dynamodb_sink_retries_total", sink="events", reason="no_table") >= 2,
             30, "writes to a missing table to be retried")
    assert run.sink("events")["delivered"] == 0
    client = ddb(run.embedded_url)
    create(client, "events", "seq", "N")
    run.wait_delivered("events", feed.total, timeout=60)
    items = scan_all(client, "events")
    assert sorted(int(i["seq"]["N"]) for i in items) == list(range(1, feed.total + 1))
    assert all(i["racer"]["S"] == feed.racer(int(i["seq"]["N"])) for i in items)


class UnprocessingProxy:
    """A loopback proxy in front of moto that, for its first `faults` BatchWriteItem calls,
    forwards only the first half of each table's requests and answers the rest as
    `UnprocessedItems`, as DynamoDB does under throttling (moto never does)."""

    def __init__(self, upstream: str, faults: int):
        import http.server
        import threading
        import urllib.request

        proxy = self
        self.faults = faults
        self.unprocessed = 0
        self.held_calls = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                held = {}
                if self.headers.get("X-Amz-Target", "").endswith(".BatchWriteItem") and proxy.faults > 0:
                    proxy.faults -= 1
                    req = json.loads(body)
                    for table, writes in req["RequestItems"].items():
                        keep = max(1, len(writes) // 2)
                        if len(writes) > keep:
                            held[table] = writes[keep:]
                            req["RequestItems"][table] = writes[:keep]
                            proxy.unprocessed += len(writes) - keep
                    proxy.held_calls += bool(held)
                    body = json.dumps(req).encode()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(upstream + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=10) as r:
                        status, out = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, out = e.code, e.read()
                if held and status == 200:
                    answer = json.loads(out)
                    answer["UnprocessedItems"] = held
                    out = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_unprocessed_items_are_retried_until_written(tmp_path, moto_server, ws_feed_factory, pipeline_factory):
    client = ddb(moto_server)
    create(client, "events", "seq", "N")
    proxy = UnprocessingProxy(moto_server, faults=6)
    try:
        feed = Feed(300, rate=None)
        provider = ws_feed_factory(feed)
        text = pipeline_toml(
            tmp_path / "data",
            ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
            f"""[sinks.events]
type = "dynamodb"
inputs = ["race"]
endpoint = "{proxy.url}"
table = "events"
key = {{ seq = "/seq" }}
""",
            embedded=False,
        )
        run = pipeline_factory(text, expect_embedded=False)
        run.wait_delivered("events", feed.total, timeout=60)
        assert proxy.unprocessed > 0 and proxy.faults == 0, "the proxy held items back"
        retries = metric_sum(run.metrics(), "sluice_dynamodb_sink_retries_total", sink="events", reason="unprocessed")
        assert retries == proxy.held_calls, f"each answer with unprocessed items retried once: {retries}"
        items = scan_all(client, "events")
        assert sorted(int(i["seq"]["N"]) for i in items) == list(range(1, feed.total + 1))
        print(f"dynamodb: {proxy.unprocessed} items answered unprocessed, {retries:.0f} retries, "
              f"{len(items)} of {feed.total} written")
    finally:
        proxy.close()


def test_records_that_cannot_be_items_are_dead_lettered_and_counted(tmp_path, ws_feed_factory, pipeline_factory):
    """Records without the table's sort key never reach the table: each is dead-lettered with
    its reason and counted."""
    feed = Feed(40, rate=None)
    provider = ws_feed_factory(feed)
    data_dir = tmp_path / "data"
    text = pipeline_toml(
        data_dir,
        ws_source_toml("race", provider.url, None, cursor=None, idle_timeout="5s"),
        """[sinks.events]
type = "dynamodb"
inputs = ["race"]
table = "events"
key = { racer = "/racer", lap = "/missing" }
""",
    )
    run = pipeline_factory(text)
    client = ddb(run.embedded_url)
    client.create_table(
        TableName="events",
        KeySchema=[{"AttributeName": "racer", "KeyType": "HASH"}, {"AttributeName": "lap", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "racer", "AttributeType": "S"},
                              {"AttributeName": "lap", "AttributeType": "N"}],
        BillingMode="PAY_PER_REQUEST",
    )
    # No record has /missing: every one is dead-lettered (`no_key`), none written, none lost.
    run.wait_delivered("events", 0, timeout=60, dead_lettered=feed.total)
    dead = [json.loads(line) for line in (data_dir / "dead-letter" / "events.ndjson").read_text().splitlines()]
    assert len(dead) == feed.total and {d["reason"] for d in dead} == {"no_key"}
    assert metric_sum(run.metrics(), "sluice_dead_letters_total", component="events", reason="no_key") == feed.total
    assert scan_all(client, "events") == []
