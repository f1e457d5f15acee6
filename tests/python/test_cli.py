"""The AWS CLI against sluice (`aws --endpoint-url URL kinesis ...`)."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI_TIMEOUT = 60


def aws_cli():
    local = Path(sys.executable).parent / "aws"
    if local.exists():
        return str(local)
    found = shutil.which("aws")
    if not found:
        pytest.fail("the AWS CLI (`aws`) is not installed: pip install -r tests/python/requirements.txt")
    return found


_VERSION = {}


def cli_major():
    if "v" not in _VERSION:
        out = subprocess.run([aws_cli(), "--version"], capture_output=True, text=True,
                             timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        text = (out.stdout + out.stderr).strip()
        _VERSION["v"] = 2 if text.startswith("aws-cli/2") else 1
    return _VERSION["v"]


def aws(url, *args, expect_ok=True):
    cmd = [aws_cli(), "--endpoint-url", url, "--output", "json", "--region", "us-east-1",
           "kinesis", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                       stdin=subprocess.DEVNULL, env=dict(os.environ))
    if expect_ok:
        assert p.returncode == 0, f"{' '.join(args)} failed ({p.returncode}): {p.stderr}"
        return json.loads(p.stdout) if p.stdout.strip() else None
    return p


def test_cli_workflow(server):
    url = server.url
    assert aws(url, "create-stream", "--stream-name", "cli", "--shard-count", "2") is None
    assert aws(url, "wait", "stream-exists", "--stream-name", "cli") is None

    s = aws(url, "describe-stream-summary", "--stream-name", "cli")["StreamDescriptionSummary"]
    assert s["StreamName"] == "cli"
    assert s["StreamStatus"] == "ACTIVE"
    assert s["OpenShardCount"] == 2
    assert s["StreamARN"].endswith(":stream/cli")

    put_args = ["put-record", "--stream-name", "cli", "--partition-key", "a",
                "--data", "hello from the cli"]
    if cli_major() == 2:
        put_args += ["--cli-binary-format", "raw-in-base64-out"]
    put = aws(url, *put_args)
    assert put["ShardId"] == "shardId-000000000000"  # md5("a") is in the lower half
    assert put["SequenceNumber"].isdigit()

    it = aws(url, "get-shard-iterator", "--stream-name", "cli", "--shard-id", put["ShardId"],
             "--shard-iterator-type", "AT_SEQUENCE_NUMBER",
             "--starting-sequence-number", put["SequenceNumber"])["ShardIterator"]
    recs = aws(url, "get-records", "--shard-iterator", it)
    assert len(recs["Records"]) == 1
    rec = recs["Records"][0]
    assert base64.b64decode(rec["Data"]) == b"hello from the cli"
    assert rec["PartitionKey"] == "a"
    assert rec["SequenceNumber"] == put["SequenceNumber"]
    assert recs["NextShardIterator"]
    assert recs["MillisBehindLatest"] == 0

    ls = aws(url, "list-streams")
    assert ls["StreamNames"] == ["cli"]
    shards = aws(url, "list-shards", "--stream-name", "cli")["Shards"]
    assert [x["ShardId"] for x in shards] == ["shardId-000000000000", "shardId-000000000001"]
    assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert shards[1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)

    assert aws(url, "delete-stream", "--stream-name", "cli") is None
    deadline = time.monotonic() + 20
    while True:
        p = aws(url, "describe-stream-summary", "--stream-name", "cli", expect_ok=False)
        if p.returncode != 0:
            assert "ResourceNotFoundException" in p.stderr, p.stderr
            break
        # may briefly be DELETING; eventually gone
        assert json.loads(p.stdout)["StreamDescriptionSummary"]["StreamStatus"] == "DELETING"
        assert time.monotonic() < deadline, "stream still there after delete-stream"
        time.sleep(0.2)
    assert aws(url, "list-streams")["StreamNames"] == []


def test_cli_error_exit_code(server):
    p = aws(server.url, "describe-stream", "--stream-name", "nope", expect_ok=False)
    assert p.returncode != 0
    assert "ResourceNotFoundException" in p.stderr, p.stderr
