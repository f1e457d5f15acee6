"""The `dynamodb` sink of `sluice run`: against moto (a third-party DynamoDB) and against the
pipeline's own embedded DynamoDB endpoint, read back with boto3."""

from __future__ import annotations

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
