"""The `kinesis` source with `read = "fanout"` (enhanced fan-out) in `sluice run`, against
`sluice serve`: it delivers exactly what `read = "polling"` delivers, registers its stream
consumer, resubscribes when the server ends subscriptions, and resumes from its checkpoints.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

from pipeline_helpers import (  # noqa: F401  (fixtures)
    kinesis_sink_toml,
    metric_sum,
    pipeline_factory,
    pipeline_toml,
    wait_for,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed

KEYS = [f"k{j}" for j in range(40)]


def archived(path: Path) -> list[dict]:
    out = []
    # Files being written carry a `.part` suffix; their complete lines count too.
    for f in sorted(path.glob("*.ndjson*")):
        text = f.read_text("utf-8")
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def put_keyed(client, stream, start, end):
    recs = [{"Data": json.dumps({"i": i, "k": KEYS[i % len(KEYS)]}).encode(), "PartitionKey": KEYS[i % len(KEYS)]}
            for i in range(start, end)]
    for s in range(0, len(recs), 500):
        assert client.put_records(StreamName=stream, Records=recs[s:s + 500])["FailedRecordCount"] == 0


def consumer_toml(tmp_path, name, endpoint, application, extra=()):
    archive = tmp_path / f"archive-{name}"
    source = "\n".join([
        "[sources.in]", 'type = "kinesis"', 'stream_name = "src"', f'endpoint = "{endpoint}"',
        f'application = "{application}"', f'worker_id = "{name}"', 'starting_position = "trim_horizon"',
        'checkpoint_interval = "200ms"', 'idle_between_reads = "50ms"', *extra,
    ]) + "\n"
    sinks = "\n".join(["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"']) + "\n"
    return pipeline_toml(tmp_path / f"data-{name}", source, sinks, embedded=False), archive


def per_key(records) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r["k"], []).append(r["i"])
    return out


def test_fanout_delivers_exactly_what_polling_delivers(server_factory, tmp_path, pipeline_factory):
    # Subscriptions end every 2 s (Kinesis: 5 minutes), so the read spans many of them.
    server = server_factory(["--subscription-secs", "2"])
    kinesis = server.client()
    kinesis.create_stream(StreamName="src", ShardCount=4)
    put_keyed(kinesis, "src", 0, 3000)

    fan_text, fan_archive = consumer_toml(
        tmp_path, "fan", server.url, "fan-app", ['read = "fanout"', 'consumer_name = "fan-copier"'])
    poll_text, poll_archive = consumer_toml(tmp_path, "poll", server.url, "poll-app")
    fan = pipeline_factory(fan_text, name="fan", expect_embedded=False)
    poll = pipeline_factory(poll_text, name="poll", expect_embedded=False)

    # More records while both read: 2,000 in 20 batches over ~4 s.
    def writer():
        for b in range(20):
            put_keyed(kinesis, "src", 3000 + b * 100, 3100 + b * 100)
            time.sleep(0.2)

    t = threading.Thread(target=writer)
    t.start()
    wait_for(lambda: len(archived(fan_archive)) >= 1, 30, "the first fan-out record",
             details=lambda: fan.log_tail(20))
    t.join(timeout=60)
    assert not t.is_alive()
    total = 5000
    for run, archive in ((fan, fan_archive), (poll, poll_archive)):
        wait_for(lambda: len(archived(archive)) >= total, 90, f"{total} records in {archive.name}",
                 details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    time.sleep(1)  # late duplicates would show now
    fan_got, poll_got = archived(fan_archive), archived(poll_archive)

    def multiset(records):
        return Counter(json.dumps(r, sort_keys=True) for r in records)

    assert multiset(fan_got) == multiset(poll_got), "fan-out and polling delivered different records"
    assert sorted(r["i"] for r in fan_got) == list(range(total)), "every record exactly once"
    fan_keys, poll_keys = per_key(fan_got), per_key(poll_got)
    assert fan_keys == poll_keys, "per-partition-key order differs between fan-out and polling"
    for k, order in fan_keys.items():
        assert order == sorted(order), f"key {k} out of put order"

    # The consumer is registered on the stream, and the fan-out pipeline read through it.
    arn = kinesis.describe_stream_summary(StreamName="src")["StreamDescriptionSummary"]["StreamARN"]
    consumers = kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]
    assert [(c["ConsumerName"], c["ConsumerStatus"]) for c in consumers] == [("fan-copier", "ACTIVE")]
    m = fan.metrics()
    assert metric_sum(m, "sluice_kinesis_records_read_total", read="fanout") == total
    assert metric_sum(m, "sluice_kinesis_records_read_total", read="polling") == 0
    subs = metric_sum(m, "sluice_kinesis_subscriptions_total", read="fanout")
    assert subs >= 8, f"4 shards over several 2-s subscriptions, yet only {subs} subscriptions"
    assert metric_sum(poll.metrics(), "sluice_kinesis_records_read_total", read="polling") == total
    print(f"fan-out: {subs:.0f} subscriptions for {total} records on 4 shards")

    # A graceful stop checkpoints; a restart subscribes from the checkpoints and reads only
    # what came after (no duplicates, none lost).
    fan.stop()
    put_keyed(kinesis, "src", total, total + 200)
    fan.start(expect_embedded=False)
    wait_for(lambda: len(archived(fan_archive)) >= total + 200, 60, "the 200 records after the restart",
             details=lambda: f"{len(archived(fan_archive))} so far\n{fan.log_tail(20)}")
    time.sleep(1)
    got = [r["i"] for r in archived(fan_archive)]
    assert sorted(got) == list(range(total + 200)), f"{len(got)} records, {len(got) - len(set(got))} duplicates"
    # The restart found the consumer registered before (no second one).
    assert len(kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]) == 1


def test_fanout_follows_a_split(server_factory, tmp_path, pipeline_factory):
    server = server_factory(["--subscription-secs", "2"])
    kinesis = server.client()
    kinesis.create_stream(StreamName="src", ShardCount=1)
    put_keyed(kinesis, "src", 0, 300)
    text, archive = consumer_toml(tmp_path, "fan", server.url, "fan-split", ['read = "fanout"'])
    run = pipeline_factory(text, name="fan", expect_embedded=False)
    wait_for(lambda: len(archived(archive)) >= 300, 60, "the records before the split",
             details=lambda: run.log_tail(20))
    kinesis.split_shard(StreamName="src", ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
    put_keyed(kinesis, "src", 300, 600)
    wait_for(lambda: len(archived(archive)) >= 600, 90, "the records after the split",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    got = archived(archive)
    assert sorted(r["i"] for r in got) == list(range(600))
    for k, order in per_key(got).items():
        assert order == sorted(order), f"key {k} out of order across the split"
    # consumer_name defaults to the application.
    arn = kinesis.describe_stream_summary(StreamName="src")["StreamDescriptionSummary"]["StreamARN"]
    assert [c["ConsumerName"] for c in kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]] == ["fan-split"]


def test_fanout_on_the_pipelines_own_embedded_stream(tmp_path, ws_feed_factory, pipeline_factory):
    """Without `endpoint` the source reaches the embedded stream over its URL, as polling does:
    the consumer is registered there and subscriptions run on the embedded server."""
    feed = Feed(total=200)
    provider = ws_feed_factory(feed)
    archive = tmp_path / "archive"
    sources = ws_source_toml("feed", provider.url, resume_url=provider.url + "?after={cursor}") + "\n".join([
        "[sources.in]", 'type = "kinesis"', 'stream_name = "race"', 'application = "self"',
        'starting_position = "trim_horizon"', 'read = "fanout"',
    ]) + "\n"
    sinks = kinesis_sink_toml("out", ["feed"], "race") + "\n" + "\n".join(
        ["[sinks.archive]", 'type = "file"', 'inputs = ["in"]', f'path = "{archive}"']) + "\n"
    run = pipeline_factory(pipeline_toml(tmp_path / "data", sources, sinks))
    wait_for(lambda: len(archived(archive)) >= feed.total, 90, f"{feed.total} events archived",
             details=lambda: f"{len(archived(archive))} so far\n{run.log_tail(20)}")
    assert sorted(r["seq"] for r in archived(archive)) == list(range(1, feed.total + 1))
    client = run.embedded_client()
    arn = client.describe_stream_summary(StreamName="race")["StreamDescriptionSummary"]["StreamARN"]
    assert [c["ConsumerName"] for c in client.list_stream_consumers(StreamARN=arn)["Consumers"]] == ["self"]
    assert metric_sum(run.metrics(), "sluice_kinesis_records_read_total", read="fanout") == feed.total
