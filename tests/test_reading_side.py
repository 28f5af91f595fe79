"""The reading side of issue 17: training batches leave the loader workers as stored (uint8
images, int16 audio) and become float32 on the training device with the same values; the
ImageNet image preset writes 224x224 RGB JPEG shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hip.data as hd
from hip.data.dataset import infinite, manifest_dataset
from hip.model.modalities import to_float
from hip.task.base import inputs_to_device
from hip.train.trainer import to_device


def _pairs(path, split: str, n: int = 3):  # noqa: ANN001, ANN202
    """The first n training batches, as stored and as float32, from the same seed."""
    kw = {"batch_size": 8, "train": True, "seed": 3, "num_workers": 0}
    stored = hd.loader(path, split, as_stored=True, **kw)
    floats = hd.loader(path, split, **kw)
    return list(zip(list(stored)[:n], list(floats)[:n], strict=True))


def test_image_batches_come_as_uint8_and_scale_to_the_same_floats(shared_data, tmp_path):
    src = shared_data / "mnist_png_subset" / "train"
    hd.shard("imagefolder", src, tmp_path / "s", limit=8, max_count=40)
    for stored, floats in _pairs(tmp_path / "s", "train"):
        assert stored["key"] == floats["key"]
        x = stored["inputs"]["image"]
        assert x.dtype == torch.uint8 and x.shape == (8, 784, 1) and int(x.max()) > 200
        assert floats["inputs"]["image"].dtype == torch.float32
        assert torch.equal(to_float(x), floats["inputs"]["image"])  # bit for bit
        moved = to_device(stored, torch.device("cpu"))
        assert torch.equal(moved["inputs"]["image"], floats["inputs"]["image"])
        assert torch.equal(moved["label"], floats["label"])


def test_audio_batches_come_as_int16_and_scale_to_the_same_floats(shared_data, tmp_path):
    src = shared_data / "fsdd"
    hd.shard("audiofolder", src, tmp_path / "a", "test", preset="fsdd", limit=2, max_count=10)
    for stored, floats in _pairs(tmp_path / "a", "test", n=2):
        x = stored["inputs"]["audio"]
        assert x.dtype == torch.int16 and x.shape[-1] == 16
        got = inputs_to_device(stored["inputs"], torch.device("cpu"))["audio"]
        assert torch.equal(got, floats["inputs"]["audio"])


def test_the_training_stream_hands_over_uint8(shared_data, tmp_path):
    hd.shard("imagefolder", shared_data / "mnist_png_subset" / "test", tmp_path / "s", limit=4)
    epoch, index, batch = next(
        iter(infinite(manifest_dataset(str(tmp_path / "s")), "train", 8, 0, 0, 1))
    )
    assert (epoch, index) == (0, 0) and batch["inputs"]["image"].dtype == torch.uint8


def test_normalize_needs_float_inputs(tmp_path):
    hd.shard("digits", None, tmp_path / "d", limit=2)
    with pytest.raises(ValueError, match="normalize"):
        hd.loader(tmp_path / "d", "train", 4, train=True, normalize=True, as_stored=True)


def test_the_imagenet_preset_writes_224_rgb_jpeg_unless_told_otherwise(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "in" / c).mkdir(parents=True)
        for i in range(2):
            photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(photo).save(tmp_path / "in" / c / f"{i}.jpg", quality=90)
    m = hd.shard("imagefolder", tmp_path / "in", tmp_path / "j", preset="imagenet")
    image = m.modalities["image"]
    assert (image["encoding"], image["height"], image["width"], image["channels"]) == (
        "jpeg", 224, 224, 3,
    )  # fmt: skip
    assert list(m.splits["train"].options["resize"]) == [224, 224]
    m = hd.shard(
        "imagefolder",
        tmp_path / "in",
        tmp_path / "p",
        preset="imagenet",
        image_format="png",
        resize=32,
    )
    image = m.modalities["image"]
    assert (image["encoding"], image["height"], image["channels"]) == ("png", 32, 3)
    with pytest.raises(hd.shards.UserError, match="unknown preset 'fsdd'"):
        hd.shard("imagefolder", tmp_path / "in", tmp_path / "x", preset="fsdd")


def test_training_loader_workers_persist_across_epochs_and_read_the_same_batches(
    shared_data, tmp_path
):
    hd.shard(
        "imagefolder",
        shared_data / "mnist_png_subset" / "test",
        tmp_path / "s",
        limit=8,
        max_count=10,
    )
    ds = manifest_dataset(str(tmp_path / "s"))
    kw = {"seed": 5, "num_workers": 2, "as_stored": True}
    keys, pids = [], []
    for epoch in range(3):
        keys.append([b["key"] for b in ds.batches("train", 4, True, epoch=epoch, **kw)])
        (it,) = ds._loaders.values()  # one loader, reused
        pids.append(sorted(w.pid for w in it._iterator._workers))  # torch's worker processes
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 2
    for epoch in range(3):  # a fresh loader per epoch (the order before workers persisted)
        fresh = hd.loader(tmp_path / "s", "train", 4, train=True, num_workers=2, seed=5 + epoch)
        assert keys[epoch] == [b["key"] for b in fresh]
    assert keys[0] != keys[1]
    resumed = list(ds.batches("train", 4, True, epoch=1, skip=3, **kw))  # resumption mid-epoch
    assert [b["key"] for b in resumed] == keys[1][3:]
