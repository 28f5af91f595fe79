"""The typed shard manifest: what `shard` writes reads back as the same `Manifest`, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hip.data import Manifest, ShardInfo, SplitInfo, loader, read_manifest, shard
from hip.data.dataset import manifest_dataset
from hip.errors import UserError


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two splits of a 2-class image folder, 3 shards of train."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for c in range(2):
            d = tmp_path / "src" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "o"
    shard("imagefolder", tmp_path / "src", out, "train", max_count=4)
    shard("imagefolder", tmp_path / "src", out, "test")
    return out


def test_manifest_reads_back_as_the_bytes_on_disk(shards):
    on_disk = (shards / "manifest.json").read_bytes()
    m = read_manifest(shards)
    assert m.to_json().encode() == on_disk
    assert m.root == str(shards)
    assert isinstance(m.splits["train"], SplitInfo)
    assert all(isinstance(s, ShardInfo) for s in m.splits["train"].shards)
    assert [s.count for s in m.splits["train"].shards] == [4, 4, 2]
    assert m.splits["train"].num_samples == 10 and m.splits["test"].num_samples == 4
    assert (m.task, m.label_names, m.num_classes) == ("classification", ["c0", "c1"], 2)
    # the same JSON as before: this key order, `json.dumps(indent=1)` and a newline
    data = json.loads(on_disk)
    assert on_disk == (json.dumps(data, indent=1) + "\n").encode()
    assert list(data) == [
        "format", "tool", "tool_version", "created", "task", "label_names", "num_classes",
        "modalities", "targets", "splits",
    ]  # fmt: skip
    assert list(data["splits"]["train"]) == [
        "num_samples", "shards", "skipped", "source", "options", "fingerprint", "created",
    ]  # fmt: skip
    assert list(data["splits"]["train"]["shards"][0]) == ["name", "count", "bytes", "sha256"]


def test_shard_returns_the_manifest_it_wrote(tmp_path, shards):
    again = shard("imagefolder", tmp_path / "src", shards, "test")  # up to date: nothing written
    assert isinstance(again, Manifest) and again == read_manifest(shards)
    via_file = read_manifest(shards / "manifest.json")
    assert via_file.root == str(shards) and via_file.splits == again.splits


def test_adding_a_split_keeps_the_other_splits_bytes(tmp_path, shards):
    before = json.loads((shards / "manifest.json").read_text())["splits"]["train"]
    shard("imagefolder", tmp_path / "src" / "test", shards, "val")
    after = json.loads((shards / "manifest.json").read_text())
    assert after["splits"]["train"] == before
    assert sorted(after["splits"]) == ["test", "train", "val"]


def test_old_manifest_with_count_reads_as_num_samples(shards):
    path = shards / "manifest.json"
    data = json.loads(path.read_text())
    for info in data["splits"].values():  # an older writer named the sample count `count`
        info["count"] = info.pop("num_samples")
    path.write_text(json.dumps(data, indent=1) + "\n")
    m = read_manifest(shards)
    assert m.splits["train"].num_samples == 10 and m.splits["test"].num_samples == 4
    assert '"count": 10' not in m.to_json() and '"num_samples": 10' in m.to_json()
    assert manifest_dataset(str(shards)).num_samples("train") == 10
    batches = list(loader(shards, "train", 5, train=True))  # the epoch length uses the count
    assert len(batches) == 2


def test_unknown_manifest_keys_are_kept(shards):
    path = shards / "manifest.json"
    data = json.loads(path.read_text())
    data["note"] = {"by": "hand"}
    data["splits"]["test"]["reviewed"] = True
    text = json.dumps(data, indent=1) + "\n"
    path.write_text(text)
    assert read_manifest(shards).to_json() == text


def test_foreign_or_missing_manifest_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no manifest at"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a hip-shards/1 manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)
