"""Partitioned sharding (issue 17): the same shards whatever the partitioning, resume by partition.

The reference is the single-process `hip shard`; partitions written in any order, by two
spawned processes (`--workers 2`) or after an interrupted partition must give the same shard
names, counts, bytes and sha256, and the same manifest apart from its timestamps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hip.data as hd
from hip import storage
from hip.cli import main
from tests.test_data_shards import make_imagefolder

OPTS = {"limit": 30, "max_count": 40}  # 300 real MNIST digits -> 8 shards (7 x 40 + 20)


def shards_of(m: hd.Manifest, split: str = "train") -> list[tuple[str, int, int, str]]:
    """(name, count, bytes, sha256) of every shard of `split`."""
    return [(s.name, s.count, s.bytes, s.sha256) for s in m.splits[split].shards]


def manifest_json(folder: Path) -> dict:
    """manifest.json without its timestamps."""
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("created")
    for info in data["splits"].values():
        info.pop("created")
    return data


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    m = hd.shard("mnist5k", None, out, "train", **OPTS)
    assert [s[1] for s in shards_of(m)] == [40] * 7 + [20]
    return out


def test_partitions_are_contiguous_whole_shards():
    assert hd.partitions(8, 3) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert hd.partitions(2, 5) == [[0], [1]]
    assert sum(hd.partitions(1000, 7), []) == list(range(1000))


@pytest.mark.parametrize("n", [2, 3, 8])
def test_partitions_in_any_order_give_the_single_process_shards(reference, tmp_path, n):
    out = tmp_path / "o"
    plan = hd.plan_shards("mnist5k", None, out, "train", **OPTS)
    assert plan.num_shards == 8 and plan.per_shard == 40
    records = []
    for part in reversed(hd.partitions(plan.num_shards, n)):  # last partition first
        records += hd.write_partition(plan, part)
    m = hd.merge_shards(plan, records)
    assert shards_of(m) == shards_of(hd.read_manifest(reference))
    assert manifest_json(out) == manifest_json(reference)
    assert files_of(out) == files_of(reference)  # no progress or temp files left


def test_workers_2_equals_workers_1_byte_for_byte(tmp_path, capsys):
    src = make_imagefolder(tmp_path / "src", classes=4, per_class=10)
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"w{n}"
        args = ["--input", str(src), "--max-count", "7", "--workers", str(n)]
        assert main(["shard", "--source", "imagefolder", "--output", str(outs[n]), *args]) == 0
        assert "train: 40 samples, 6 shard(s)" in capsys.readouterr().out
    assert manifest_json(outs[2]) == manifest_json(outs[1])
    assert files_of(outs[2]) == files_of(outs[1])
    assert hd.verify(outs[2]) == []


def test_a_lost_partition_is_all_a_rerun_writes(reference, tmp_path, monkeypatch):
    out = tmp_path / "o"
    plan = hd.plan_shards("mnist5k", None, out, "train", **OPTS)
    parts = hd.partitions(plan.num_shards, 3)
    hd.write_partition(plan, parts[0])
    hd.write_partition(plan, parts[2])
    # partition 1 was killed after its first shard: its progress file names that shard alone
    hd.write_partition(plan, parts[1][:1])
    (out / "train-000004.tar").write_bytes(b"half a shard")  # and left a stray, unrecorded file
    assert not (out / "manifest.json").exists()
    written: list[str] = []
    real = storage.write_bytes

    def spy(uri, data, config=None):
        written.append(Path(uri).name)
        return real(uri, data, config)

    monkeypatch.setattr(storage, "write_bytes", spy)
    logs: list[str] = []
    m = hd.shard("mnist5k", None, out, "train", workers=1, log=logs.append, **OPTS)
    assert [w for w in written if w.endswith(".tar")] == ["train-000003.tar", "train-000004.tar"]
    assert any("resuming after 6 of 8 recorded shard(s)" in line for line in logs)
    assert shards_of(m) == shards_of(hd.read_manifest(reference))
    assert files_of(out) == files_of(reference)


def folder_with_an_unreadable_class(root: Path, bad: bytes) -> Path:
    """An image folder of 3 classes x 4 small PNGs whose middle class is all `bad` bytes: with
    4 samples per shard and 3 partitions, one whole partition is unreadable."""
    src = root / "src"
    rng = np.random.default_rng(0)
    for c in range(3):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(4):
            path = src / f"c{c}" / f"{i}.png"
            if c == 1:
                path.write_bytes(bad)
            else:
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
    return src


def test_a_partition_of_unreadable_inputs_is_reported_and_the_others_are_written(tmp_path):
    src = folder_with_an_unreadable_class(tmp_path, b"not a png")  # a whole partition
    ref = hd.shard("imagefolder", src, tmp_path / "ref", max_count=4, seed=None)
    plan = hd.plan_shards("imagefolder", src, tmp_path / "two", max_count=4, seed=None)
    parts = hd.partitions(plan.num_shards, 3)
    assert parts == [[0], [1], [2]]
    two = hd.merge_shards(plan, [r for part in parts for r in hd.write_partition(plan, part)])
    info = two.splits["train"]
    assert [s.name for s in info.shards] == ["train-000000.tar", "train-000002.tar"]
    assert info.num_samples == 8 and len(info.skipped) == 4
    assert all("c1" in s["input"] for s in info.skipped)
    assert shards_of(two) == shards_of(ref)
    assert manifest_json(tmp_path / "two") == manifest_json(tmp_path / "ref")


def test_max_bytes_sets_the_samples_per_shard_from_the_head_of_the_order(reference, tmp_path):
    plan = hd.plan_shards("mnist5k", None, tmp_path / "o", "train", limit=30, max_bytes=20_000)
    assert plan.spec["image"]["shape"] == [784, 1]
    # the largest of the first 16 digits, in tar blocks, sets it: the same for every partitioning
    assert 1 <= plan.per_shard < 20 and plan.num_shards == -(-300 // plan.per_shard)
