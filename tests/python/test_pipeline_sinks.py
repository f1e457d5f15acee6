"""`sluice run`'s kinesis sink against other endpoints and modes: moto as a third-party
Kinesis, KPL aggregation read back with `aws-kinesis-agg`, and a throttling `sluice serve
--enforce-limits`."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict

import pytest

from pipeline_helpers import (  # noqa: F401  (fixtures)
    StreamReader,
    describe_seqs,
    kinesis_sink_toml,
    metric_sum,
    moto_server,
    pipeline_factory,
    pipeline_toml,
    read_until_complete,
    seqs_of,
    ws_feed_factory,
    ws_source_toml,
)
from providers import Feed
from sluice_helpers import create_stream, make_client

STREAM = "race"
KPL_MAGIC = b"\xf3\x89\x9a\xc2"


def md5_hash(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def shard_ranges(client, stream):
    shards = client.list_shards(StreamName=stream)["Shards"]
    return {
        s["ShardId"]: (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
        for s in shards
    }


def assert_per_key_order(pairs, what=""):
    """`pairs` = (partition key, seq) in stream order (per shard): within each key the seqs
    strictly increase (so no key's events are reordered or repeated)."""
    by_key = defaultdict(list)
    for key, seq in pairs:
        by_key[key].append(seq)
    bad = {k: v for k, v in by_key.items() if any(a >= b for a, b in zip(v, v[1:]))}
    assert not bad, (
        f"{what}: per-key order broken for {len(bad)} keys, e.g. "
        + "; ".join(
            f"{k}: {[(a, b) for a, b in zip(v, v[1:]) if a >= b][:3]}" for k, v in list(bad.items())[:3]
        )
    )


# ---------------------------------------------------------------------------
# 5. moto as a third-party Kinesis endpoint
# ---------------------------------------------------------------------------


def test_moto_endpoint_receives_every_event_with_racer_keys(
    tmp_path, moto_server, ws_feed_factory, pipeline_factory
):
    feed = Feed(1500, rate=1500)
    provider = ws_feed_factory(feed, plan=["close", "abort"], lifetime=(0.5, 1.0))
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="5s"),
        kinesis_sink_toml("out", ["race"], STREAM, endpoint=moto_server, extra="shards = 2"),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    run.wait_delivered("out", feed.total, timeout=45)
    client = make_client(moto_server)
    records = read_until_complete(StreamReader(client, STREAM), feed.total, timeout=20)
    seqs = seqs_of(records)
    assert len(seqs) == feed.total and set(seqs) == set(range(1, feed.total + 1)), (
        f"moto: {describe_seqs(seqs, feed.total)}"
    )
    assert all(r["Data"] == feed.payload_bytes(s) for r, s in zip(records, seqs)), "data differs"
    wrong = [(s, r["PartitionKey"]) for r, s in zip(records, seqs) if r["PartitionKey"] != feed.racer(s)]
    assert not wrong, f"partition keys are not the payloads' /racer: {wrong[:5]}"
    assert {r["PartitionKey"] for r in records} == {feed.racer(s) for s in range(1, 11)}
    assert len(shard_ranges(client, STREAM)) == 2, "the sink did not create the stream with shards = 2"
    assert_per_key_order([(r["PartitionKey"], s) for r, s in zip(records, seqs)], "moto")


# ---------------------------------------------------------------------------
# 6. KPL aggregation, de-aggregated with aws-kinesis-agg
# ---------------------------------------------------------------------------


def test_kpl_aggregates_deaggregate_to_exactly_the_input(tmp_path, ws_feed_factory, pipeline_factory):
    deagg = pytest.importorskip("aws_kinesis_agg.deaggregator")
    feed = Feed(3000, racers=16)
    provider = ws_feed_factory(feed)
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="30s"),
        kinesis_sink_toml("out", ["race"], STREAM, extra="aggregate = true\nshards = 3"),
    )
    run = pipeline_factory(text)
    run.wait_delivered("out", feed.total, timeout=30)
    client = run.embedded_client()
    reader = StreamReader(client, STREAM)
    reader.poll()
    raw = reader.records
    ranges = shard_ranges(client, STREAM)

    aggregated = [r for r in raw if r["Data"].startswith(KPL_MAGIC)]
    assert aggregated, f"aggregate = true but none of the {len(raw)} Kinesis records is a KPL aggregate"
    assert len(raw) < feed.total, f"{len(raw)} Kinesis records for {feed.total} events: nothing was packed"

    users = []  # (shard, partition key, data) in stream order
    for r in raw:
        subs = list(deagg.iter_deaggregate_records([r], data_format="Boto3"))
        if r["Data"].startswith(KPL_MAGIC):
            assert all(s["kinesis"].get("aggregated") for s in subs), (
                f"record {r['SequenceNumber']} has the KPL magic but aws-kinesis-agg cannot read it"
            )
            assert len(subs) > 1, f"aggregate {r['SequenceNumber']} holds a single record (send it as is)"
        for s in subs:
            k = s["kinesis"]
            data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
            users.append((r["ShardId"], k["partitionKey"], data))

    seqs = [json.loads(d)["seq"] for _, _, d in users]
    assert len(seqs) == feed.total and set(seqs) == set(range(1, feed.total + 1)), (
        f"de-aggregated: {describe_seqs(seqs, feed.total)} (from {len(raw)} Kinesis records, "
        f"{len(aggregated)} aggregates)"
    )
    assert all(d == feed.payload_bytes(s) for (_, _, d), s in zip(users, seqs)), "data differs from the input"
    wrong = [(s, pk) for (_, pk, _), s in zip(users, seqs) if pk != feed.racer(s)]
    assert not wrong, f"user records' partition keys are not /racer: {wrong[:5]}"
    # Every user record sits on the shard its own key hashes to (the KCL drops whole aggregates
    # otherwise).
    misrouted = [(pk, sid) for sid, pk, _ in users if not ranges[sid][0] <= md5_hash(pk) <= ranges[sid][1]]
    assert not misrouted, f"{len(misrouted)} user records on a shard their key does not hash to: {misrouted[:5]}"
    assert_per_key_order([(pk, s) for (_, pk, _), s in zip(users, seqs)], "de-aggregated")


# ---------------------------------------------------------------------------
# 7. throttling: `sluice serve --enforce-limits`, one shard, ~3,000 events/s
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate_limit", [False, True], ids=["rate_limit-off", "rate_limit-on"])
def test_throttling_endpoint_loses_nothing_and_keeps_per_key_order(
    tmp_path, server_factory, ws_feed_factory, pipeline_factory, rate_limit
):
    """9,000 events at 3,000/s into one shard that takes 1,000 records/s. With the sink's own
    rate limiter off, the endpoint must throttle and the sink must retry (and the metrics say
    so); with it on, the sink paces itself. Either way nothing is lost and each key keeps its
    order."""
    server = server_factory(["--enforce-limits", "--durability", "os"])
    create_stream(server.client(), STREAM, shards=1)
    feed = Feed(9000, rate=3000)
    provider = ws_feed_factory(feed)
    sink_extra = (
        "create_stream = false\n"
        f"rate_limit = {'true' if rate_limit else 'false'}\n"
        'retry_backoff = { base = "50ms", max = "1s" }'
    )
    text = pipeline_toml(
        tmp_path / "data",
        ws_source_toml("race", provider.url, provider.url + "?after={cursor}", idle_timeout="30s"),
        kinesis_sink_toml("out", ["race"], STREAM, endpoint=server.url, extra=sink_extra),
        embedded=False,
    )
    run = pipeline_factory(text, expect_embedded=False)
    run.wait_delivered("out", feed.total, timeout=60)
    m = run.metrics()
    throttled = metric_sum(m, "sluice_sink_records_throttled_total", sink="out")
    retried = metric_sum(m, "sluice_sink_records_retried_total", sink="out")
    put = metric_sum(m, "sluice_sink_records_put_total", sink="out")
    print(f"rate_limit={rate_limit}: put {put}, throttled {throttled}, retried {retried}")
    if not rate_limit:
        assert throttled > 0 and retried > 0, (
            f"9,000 records at 3,000/s into a 1,000 records/s shard without the sink's rate limiter, yet "
            f"throttled = {throttled}, retried = {retried}"
        )
    assert put == feed.total, f"sluice_sink_records_put_total = {put}, expected {feed.total}"

    records = read_until_complete(StreamReader(server.client(), STREAM), feed.total, timeout=30)
    seqs = seqs_of(records)
    assert len(seqs) == feed.total and set(seqs) == set(range(1, feed.total + 1)), (
        f"{describe_seqs(seqs, feed.total)} (throttled {throttled}, retried {retried})"
    )
    wrong = [(s, r["PartitionKey"]) for r, s in zip(records, seqs) if r["PartitionKey"] != feed.racer(s)]
    assert not wrong, f"partition keys are not /racer: {wrong[:5]}"
    assert_per_key_order([(r["PartitionKey"], s) for r, s in zip(records, seqs)],
                         f"throttled {throttled}, retried {retried}")
