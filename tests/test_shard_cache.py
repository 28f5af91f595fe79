"""The shard task's result cache is trusted only while what it produced is there and intact."""

from __future__ import annotations

import json

import pytest

from hip import data as hd
from tasks.data import _cache_key


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "shards"
    hd.shard("mnist5k", None, out, "train", limit=3, max_count=10)  # 30 digits, 3 shards
    hd.shard("mnist5k", None, out, "test", limit=1, max_count=10)
    return out


def _key(output, split: str) -> str:
    params = {"source": "mnist5k", "input": None, "output": str(output), "split": split}
    return _cache_key(None, {**params, "options": {"limit": 3, "max_count": 10}})


def test_an_intact_split_keeps_its_cache_key(output):
    assert hd.intact_split(output, "train").num_samples == 30
    assert _key(output, "train") == _key(output, "train")
    assert _key(output, "train").startswith("shard-")


def test_a_split_missing_from_a_rewritten_manifest_misses_the_cache(output):
    # What `rm -rf outputs` + a re-run of the train split alone left: a manifest without test.
    manifest = json.loads((output / "manifest.json").read_text())
    del manifest["splits"]["test"]
    (output / "manifest.json").write_text(json.dumps(manifest))
    assert hd.intact_split(output, "test") is None
    assert _key(output, "test").startswith("missing-")
    assert _key(output, "test") != _key(output, "test")  # never a hit


def test_a_missing_or_resized_shard_misses_the_cache(output):
    before = _key(output, "train")
    shard = output / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    assert hd.intact_split(output, "train") is None
    assert _key(output, "train").startswith("missing-")
    shard.unlink()
    assert _key(output, "train").startswith("missing-")
    hd.shard("mnist5k", None, output, "train", limit=3, max_count=10)  # rewritten, same bytes
    assert _key(output, "train") == before


def test_a_resharded_split_changes_the_cache_key(output):
    before = _key(output, "train")
    hd.shard("mnist5k", None, output, "train", limit=3, max_count=7)  # other shard boundaries
    assert hd.intact_split(output, "train") is not None
    assert _key(output, "train") != before
