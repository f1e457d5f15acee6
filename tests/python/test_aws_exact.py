"""AWS-exact answers to wrong requests (issue 13), through boto3 against `sluice serve`.

Each case is what the real service answers (as recorded in kinesalite's tests and the botocore
model); every refused request must also leave the stream as it was.
"""

import pytest

from sluice_helpers import create_stream, expect_error, list_all_shards

ACCOUNT = "000000000000"
BAD_CHARS = "Some tags contain invalid characters. Valid characters: Unicode letters, digits, white space, _ . / = + - % @ :."


def tags_of(kinesis, name):
    return {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName=name)["Tags"]}


@pytest.mark.parametrize("bad", ["semi;colon", "tab\there", "new\nline", "com,ma", "emoji\U0001F600"])
def test_tags_with_invalid_characters_are_refused_and_change_nothing(kinesis, bad):
    name = create_stream(kinesis, shards=1)
    kinesis.add_tags_to_stream(StreamName=name, Tags={"keep": "me"})
    for tags in ({bad: "v"}, {"k": bad}):
        msg = expect_error("InvalidArgumentException", kinesis.add_tags_to_stream, StreamName=name, Tags=tags)
        assert msg == BAD_CHARS
    msg = expect_error("InvalidArgumentException", kinesis.remove_tags_from_stream, StreamName=name,
                       TagKeys=["keep", bad])
    assert msg == BAD_CHARS
    assert tags_of(kinesis, name) == {"keep": "me"}


def test_a_percent_sign_in_tags_gets_the_second_message(kinesis):
    name = create_stream(kinesis, shards=1)
    msg = expect_error("InvalidArgumentException", kinesis.add_tags_to_stream, StreamName=name,
                       Tags={"a%b": "v"})
    assert msg == (
        f"Failed to add tags to stream {name} under account {ACCOUNT} because some tags contained illegal "
        "characters. The allowed characters are Unicode letters, white-spaces, '_',',','/','=','+','-','@',':'."
    )
    msg = expect_error("InvalidArgumentException", kinesis.remove_tags_from_stream, StreamName=name,
                       TagKeys=["100%"])
    assert msg.startswith(f"Failed to remove tags from stream {name} under account {ACCOUNT} because")
    assert tags_of(kinesis, name) == {}
    # What AWS accepts: letters beyond ASCII, spaces, and the listed punctuation.
    ok = {"Größe é": "a_b.c/d=e+f-g@h:i", "名前": "値"}
    kinesis.add_tags_to_stream(StreamName=name, Tags=ok)
    assert tags_of(kinesis, name) == ok


def test_merge_needs_the_lower_shard_first(kinesis):
    name = create_stream(kinesis, shards=2)
    before = list_all_shards(kinesis, name)
    msg = expect_error("InvalidArgumentException", kinesis.merge_shards, StreamName=name,
                       ShardToMerge="shardId-000000000001", AdjacentShardToMerge="shardId-000000000000")
    assert msg == (
        f"Shards shardId-000000000001 and shardId-000000000000 in stream {name} under account {ACCOUNT} "
        "are not an adjacent pair of shards eligible for merging"
    )
    assert list_all_shards(kinesis, name) == before
    assert kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
    kinesis.merge_shards(StreamName=name, ShardToMerge="shardId-000000000000",
                         AdjacentShardToMerge="shardId-000000000001")


def test_shard_ids_are_named_normalized(kinesis):
    name = create_stream(kinesis, shards=1)
    for given in ("shardId-5", "5", "shardId-000000000005"):
        msg = expect_error("ResourceNotFoundException", kinesis.get_shard_iterator, StreamName=name,
                           ShardId=given, ShardIteratorType="TRIM_HORIZON")
        assert msg == f"Shard shardId-000000000005 in stream {name} under account {ACCOUNT} does not exist"
        msg = expect_error("ResourceNotFoundException", kinesis.split_shard, StreamName=name,
                           ShardToSplit=given, NewStartingHashKey="100")
        assert msg == f"Could not find shard shardId-000000000005 in stream {name} under account {ACCOUNT}."
    # An unknown stream with a valid shard id names the shard.
    msg = expect_error("ResourceNotFoundException", kinesis.get_shard_iterator, StreamName="no-such-stream",
                       ShardId="shardId-7", ShardIteratorType="TRIM_HORIZON")
    assert msg == f"Shard shardId-000000000007 in stream no-such-stream under account {ACCOUNT} does not exist"


def test_an_iterator_of_a_deleted_stream_names_the_shard(kinesis):
    name = create_stream(kinesis, shards=1)
    it = kinesis.get_shard_iterator(StreamName=name, ShardId="shardId-000000000000",
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    kinesis.delete_stream(StreamName=name)
    msg = expect_error("ResourceNotFoundException", kinesis.get_records, ShardIterator=it)
    assert msg == f"Shard shardId-000000000000 in stream {name} under account {ACCOUNT} does not exist"
