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


def _key(output, split: str, **options) -> str:
    params = {"source": "mnist5k", "input": None, "output": str(output), "split": split}
    return _cache_key(None, {**params, "options": {"limit": 3, "max_count": 10, **options}})


def test_an_intact_split_is_found_with_its_entry(output):
    assert hd.intact_split(output, "train").num_samples == 30
    assert hd.intact_split(output, "test").num_samples == 10


def test_a_split_missing_from_a_rewritten_manifest_is_not_intact(output):
    # What `rm -rf outputs` + a re-run of the train split alone left: a manifest without test.
    manifest = json.loads((output / "manifest.json").read_text())
    del manifest["splits"]["test"]
    (output / "manifest.json").write_text(json.dumps(manifest))
    assert hd.intact_split(output, "test") is None
    assert hd.intact_split(output, "train") is not None


def test_a_missing_or_resized_shard_is_not_intact_until_resharded(output):
    shard = output / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    assert hd.intact_split(output, "train") is None
    shard.unlink()
    assert hd.intact_split(output, "train") is None
    hd.shard("mnist5k", None, output, "train", limit=3, max_count=10)  # resumes, same bytes
    assert hd.intact_split(output, "train") is not None
    assert hd.intact_split(tmp := output / "nothing-here", "train") is None and not tmp.exists()


def test_the_cache_key_follows_inputs_options_output_and_split(output, tmp_path):
    assert _key(output, "train") == _key(output, "train")  # stable across runs
    assert _key(output, "train") != _key(output, "test")
    assert _key(output, "train") != _key(output, "train", max_count=7)
    assert _key(output, "train") != _key(tmp_path / "elsewhere", "train")
