"""Loaders: exactly-once evaluation across ranks x workers, equal training epochs, batch format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hip.data import loader, shard


def make_folder(root: Path, classes: int = 3, per_class: int = 7) -> Path:
    rng = np.random.default_rng(2)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i}.png"
            )
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """21 RGB 4x4 samples: in 6 shards (shard-level split) and in 2 shards (sample striding)."""
    base = tmp_path_factory.mktemp("loader")
    src = make_folder(base / "src")
    many = shard("imagefolder", src, base / "many", max_count=4)
    few = shard("imagefolder", src, base / "few", max_count=16)
    assert len(many.splits["train"].shards) == 6 and len(few.splits["train"].shards) == 2
    all_keys = sorted(k for b in loader(many, "train", 100, train=False) for k in b["key"])
    assert len(all_keys) == 21
    return {"many": many, "few": few, "keys": all_keys}


@pytest.mark.parametrize("which", ["many", "few"])
def test_eval_every_sample_exactly_once_world2_workers2(shards, which):
    seen: Counter = Counter()
    per_rank = []
    for rank in range(2):
        batches = list(
            loader(shards[which], "train", 3, train=False, num_workers=2, rank=rank, world_size=2)
        )
        per_rank.append(sum(len(b["key"]) for b in batches))
        for b in batches:
            assert b["inputs"]["image"].shape[1:] == (16, 3) and len(b["label"]) == len(b["key"])
            seen.update(b["key"])
    assert sorted(seen) == shards["keys"] and set(seen.values()) == {1}
    assert sum(per_rank) == 21 and min(per_rank) > 0


def test_eval_world3_in_process(shards):
    keys = [
        k
        for r in range(3)
        for b in loader(shards["few"], "train", 5, train=False, rank=r, world_size=3)
        for k in b["key"]
    ]
    assert sorted(keys) == shards["keys"]


def test_train_equal_batches_per_rank_and_seeded(shards):
    def run(rank, seed=0, workers=0, **kw):
        dl = loader(
            shards["many"],
            "train",
            4,
            train=True,
            num_workers=workers,
            rank=rank,
            world_size=2,
            seed=seed,
            shuffle_buffer=8,
            **kw,
        )
        return dl, [b["key"] for b in dl]

    dl0, r0 = run(0)
    dl1, r1 = run(1)
    assert len(r0) == len(r1) == len(dl0) == 21 // (2 * 4)
    assert all(len(k) == 4 for k in r0 + r1)  # partial batches are dropped in training
    assert run(0)[1] == r0  # same seed, same rank: same stream
    assert run(0, seed=1)[1] != r0
    # ranks read disjoint shards (6 shards >= 2 ranks x 1 worker)
    assert not {k for b in r0 for k in b} & {k for b in r1 for k in b}
    # a second pass is the next epoch: same length, another order
    second = [b["key"] for b in dl0]
    assert len(second) == len(r0) and second != r0
    dl0.set_epoch(0)
    assert [b["key"] for b in dl0] == r0
    # with workers the count stays equal on every rank
    _, w0 = run(0, workers=2, batches_per_epoch=5)
    _, w1 = run(1, workers=2, batches_per_epoch=5)
    assert len(w0) == len(w1) == 6  # rounded up to a multiple of the worker count


def test_normalize_uses_manifest_stats(shards):
    m = shards["many"]
    plain = next(iter(loader(m, "train", 21, train=False)))["inputs"]["image"]
    norm = next(iter(loader(m, "train", 21, train=False, normalize=True)))["inputs"]["image"]
    mean = torch.tensor(m.modalities["image"]["mean"])
    std = torch.tensor(m.modalities["image"]["std"])
    assert torch.allclose(plain.reshape(-1, 3).mean(0).double(), mean.double(), atol=1e-5)
    assert torch.allclose(norm, (plain - mean) / std, atol=1e-5)
    assert torch.allclose(norm.reshape(-1, 3).std(0, unbiased=False), torch.ones(3), atol=1e-3)


def test_unknown_split_is_a_user_error(shards):
    from hip.errors import UserError

    with pytest.raises(UserError, match="split 'val'"):
        loader(shards["many"], "val", 2, train=False)


def test_workers_really_split_shards(shards):
    """Rank 0 of 2 with 2 workers owns slots 0 and 1 of 4: shards 0, 4 (worker 0) and 1, 5 (worker 1)."""
    from hip.data.shards import iter_tar_samples, shard_urls

    urls = shard_urls(shards["many"], "train")
    keys_of = []
    for u in urls:
        with open(u, "rb") as f:
            keys_of.append({s["__key__"] for s in iter_tar_samples(f, u)})
    got = {
        k
        for b in loader(
            shards["many"], "train", 2, train=False, num_workers=2, rank=0, world_size=2
        )
        for k in b["key"]
    }
    assert got == keys_of[0] | keys_of[4] | keys_of[1] | keys_of[5]
    got1 = {
        k
        for b in loader(
            shards["many"], "train", 2, train=False, num_workers=0, rank=0, world_size=2
        )
        for k in b["key"]
    }
    assert got1 == keys_of[0] | keys_of[2] | keys_of[4]
