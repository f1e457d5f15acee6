"""`sluice validate FILE`: a good pipeline file passes; a bad one exits non-zero with
`FILE:LINE:COL: FIELD.PATH: message` on stderr pointing at the offending line."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import sluice_bin

GOOD = """\
data_dir = "{data_dir}"

[api]
listen = "127.0.0.1:0"

[sources.race]
type = "websocket"
url = "ws://127.0.0.1:9/ws"
idle_timeout = "5s"
resume = {{ cursor = "/seq", url = "ws://127.0.0.1:9/ws?after={{cursor}}" }}

[sinks.out]
type = "kinesis"
inputs = ["race"]
stream_name = "race"
partition_key = "/racer"
shards = 2
"""

MISSING_VAR = "SLUICE_TEST_SURELY_UNSET_VARIABLE"

# (id, line to replace, replacement, field path expected in the message, other text expected)
BAD = [
    ("unknown-key-in-sink", "shards = 2", "shard = 2", "sinks.out.shard", "unknown field"),
    ("unknown-key-in-source", 'idle_timeout = "5s"', 'idle_timeot = "5s"', "sources.race.idle_timeot",
     "unknown field"),
    ("unknown-top-level-key", 'data_dir = "{data_dir}"', 'data_dri = "{data_dir}"', None,
     "unknown field `data_dri`"),
    ("wrong-type-in-sink", "shards = 2", 'shards = "two"', "sinks.out.shards", "invalid type"),
    ("wrong-type-in-source", 'idle_timeout = "5s"', "idle_timeout = 5", "sources.race.idle_timeout",
     "invalid type"),
    ("unknown-input", 'inputs = ["race"]', 'inputs = ["rcae"]', "sinks.out.inputs", "rcae"),
    ("missing-env-var", 'url = "ws://127.0.0.1:9/ws"', 'url = "ws://${' + MISSING_VAR + '}/ws"', None,
     MISSING_VAR),
    ("toml-syntax-error", 'stream_name = "race"', 'stream_name = "race', None, None),
]


def validate(path, env=None):
    env = dict(os.environ if env is None else env)
    env.pop(MISSING_VAR, None)
    env["RUST_LIB_BACKTRACE"] = "0"  # the error, not a backtrace
    return subprocess.run(
        [sluice_bin(), "validate", str(path)], capture_output=True, text=True, timeout=30, env=env
    )


def test_validate_accepts_a_good_file(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD.format(data_dir=tmp_path / "data"))
    r = validate(path)
    assert r.returncode == 0, f"exit {r.returncode}; stderr:\n{r.stderr}"
    assert f"{path}: ok (1 source, 1 sink)" in r.stdout, r.stdout


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_validate_points_at_the_bad_line(tmp_path, case):
    name, old, new, field, text = case
    good = GOOD.format(data_dir=tmp_path / "data")
    old = old.replace("{data_dir}", str(tmp_path / "data"))
    new = new.replace("{data_dir}", str(tmp_path / "data"))
    assert good.count(old) == 1, f"test bug: {old!r} is not a unique line of the file"
    bad = good.replace(old, new)
    line = bad.splitlines().index(new) + 1
    path = tmp_path / f"{name}.toml"
    path.write_text(bad)
    r = validate(path)
    assert r.returncode != 0, f"{name}: sluice validate accepted it; stdout: {r.stdout}"
    err = r.stderr
    assert f"{path}:{line}:" in err, f"{name}: expected `{path}:{line}:COL:` (line {line}: {new!r}) in:\n{err}"
    if field:
        assert f"{field}: " in err, f"{name}: expected the field path {field!r} in:\n{err}"
    if text:
        assert text in err, f"{name}: expected {text!r} in:\n{err}"
