"""Batch loaders over the shards named in a manifest (local or s3://, streamed with boto3).

`loader(...)` yields dicts:

- `inputs`: `{modality: float32 [B, M, C]}` — images and video in [0, 1] (or standardised
  with the manifest's per-channel train mean/std when `normalize=True`), audio int16 / 32768
  in [-1, 1];
- `label`: int64 `[B]` (classification) or float32 multi-hot `[B, K]` (multilabel);
- `mask`: int64 `[B, M]` (segmentation, 255 = ignore);
- `key`: the B sample keys.

Training (`train=True`): each (rank, worker) gets a disjoint slice of the shard list when
there are at least `world_size * workers` shards (else every worker uses all shards),
resamples shards from its slice forever (seeded by seed, epoch, rank, worker), shuffles
samples in a buffer, drops partial batches, and stops after exactly `batches_per_epoch`
batches on every rank, so DDP ranks never wait for each other. Truncated or corrupt shards
are skipped with a warning (`handler=warn_and_skip`) and counted: each training batch
carries `corrupt_samples`, the number of samples lost to errors since the previous batch of
its worker (a sample that fails to decode counts 1; a shard that breaks off counts the
samples the manifest lists for it that were not read), which the training loop sums into
its `corrupt_samples` metric.

Evaluation (`train=False`): every sample is seen exactly once across all ranks and workers.
With `num_shards >= world_size * workers`, (rank, worker) `g = rank * workers + worker`
reads shards `g, g + W, g + 2W, ...` (`W = world_size * workers`); otherwise every worker
reads all shards in order and keeps samples `g, g + W, ...` (sample-level striding). Ranks
may get different numbers of batches (the last can be partial); each simply ends, so
gather metrics with a sum-reduction of counts, not a per-batch barrier.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from hip import storage
from hip.data.manifest import Manifest, read_manifest, task_type
from hip.data.shards import iter_tar_samples
from hip.model.modalities import audio_to_tokens, image_to_tokens, video_to_tokens


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """WebDataset opener for `s3://bucket/key`: a boto3 streaming body (credentials from env)."""
    if mode[0] != "r":
        raise ValueError(f"s3 opener is read-only, got mode {mode!r}")
    return storage.open_read(url, kw.get("s3"))


def register_s3_opener() -> None:
    """Let plain `wds.WebDataset("s3://...")` read S3 through boto3 (idempotent)."""
    wds.gopen_schemes["s3"] = gopen_s3


register_s3_opener()


def warn_and_skip(exn: Exception) -> bool:
    """Error handler: warn about the exception and go on (webdataset's also sleeps 0.5 s)."""
    warnings.warn(repr(exn), stacklevel=2)
    return True


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = 0, 1
    return (r if rank is None else rank), (w if world_size is None else world_size)


class Decoder:
    """Turns a raw sample `{ext: bytes}` into tensors checked against the manifest's shapes."""

    def __init__(
        self, manifest: Manifest, normalize: bool = False, as_stored: bool = False
    ) -> None:
        if normalize and as_stored:
            raise ValueError(
                "normalize=True needs float inputs; as_stored=True keeps them as stored"
            )
        self.modalities = manifest.modalities
        self.task = manifest.task
        self.labels = task_type(manifest.task)
        self.num_classes = len(manifest.label_names)
        self.normalize = normalize
        self.as_stored = as_stored

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Decode one sample."""
        inputs: dict[str, torch.Tensor] = {}
        for name, spec in self.modalities.items():
            if name == "image":
                data = sample.get("image.png", sample.get("image.jpg"))
                if data is None:
                    raise ValueError(f"sample {sample['__key__']} has no image")
                with Image.open(io.BytesIO(data)) as img:
                    arr = np.asarray(img, dtype=np.uint8)
                if self.as_stored:  # uint8: a quarter of the bytes to collate, pin and copy
                    x = torch.from_numpy(image_to_tokens(arr).copy())
                else:
                    x = torch.from_numpy(image_to_tokens(arr).astype(np.float32) / 255.0)
                if self.normalize and "mean" in spec:
                    x = (x - torch.tensor(spec["mean"])) / torch.tensor(spec["std"]).clamp_min(1e-6)
            elif name == "audio":
                arr = np.load(io.BytesIO(sample["audio.npy"]), allow_pickle=False)
                # Manifests from before samples_per_token stored one sample per token.
                n = int(spec.get("samples_per_token", 1))
                if self.as_stored:
                    x = torch.from_numpy(audio_to_tokens(arr.astype(np.int16), n))
                else:
                    x = torch.from_numpy(audio_to_tokens(arr.astype(np.float32) / 32768.0, n))
            elif name == "video":
                arr = np.load(io.BytesIO(sample["video.npy"]), allow_pickle=False)
                if self.as_stored:
                    x = torch.from_numpy(video_to_tokens(arr.astype(np.uint8)))
                else:
                    x = torch.from_numpy(video_to_tokens(arr.astype(np.float32) / 255.0))
            else:
                raise ValueError(f"unknown modality {name!r} in the manifest")
            if list(x.shape) != list(spec["shape"]):
                raise ValueError(
                    f"sample {sample['__key__']}: {name} shape {list(x.shape)} != manifest {spec['shape']}"
                )
            inputs[name] = x
        out: dict[str, Any] = {"inputs": inputs, "key": sample["__key__"]}
        if self.labels is not None:  # how labels are stored is the task type's to say
            out.update(self.labels.decode_label(sample, self.num_classes))
        return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples into a batch."""
    batch: dict[str, Any] = {
        "inputs": {k: torch.stack([s["inputs"][k] for s in samples]) for k in samples[0]["inputs"]},
        "key": [s["key"] for s in samples],
    }
    if "label" in samples[0]:
        lab = [s["label"] for s in samples]
        batch["label"] = (
            torch.stack(lab)
            if isinstance(lab[0], torch.Tensor)
            else torch.tensor(lab, dtype=torch.long)
        )
    if "mask" in samples[0]:
        batch["mask"] = torch.stack([s["mask"] for s in samples])
    return batch


class ShardStream(IterableDataset):
    """The per-worker sample pipeline (see the module docstring for the splitting rules)."""

    def __init__(
        self,
        urls: list[str],
        manifest: Manifest,
        *,
        train: bool,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
        shuffle_buffer: int,
        batches_per_worker: int | None,
        handler: Callable[[Exception], bool],
        normalize: bool,
        s3: storage.S3Config | None,
        as_stored: bool = False,
    ) -> None:
        super().__init__()
        # (seed, epoch) in shared memory: persistent workers keep their copy of this object
        # across epochs, and read the epoch the main process set here when they restart.
        self._state = multiprocessing.RawArray("q", [int(seed), 0])
        self.urls, self.train, self.batch_size = urls, train, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        self.shuffle_buffer, self.batches_per_worker = shuffle_buffer, batches_per_worker
        self.handler, self.s3 = handler, s3
        self.decode = Decoder(manifest, normalize, as_stored)
        self.expected = {  # samples per shard URL, to count what a broken shard loses
            storage.join(str(manifest.root), sh.name): sh.count
            for info in manifest.splits.values()
            for sh in info.shards
        }
        self.corrupt = 0  # samples lost since the last batch (per worker process)

    @property
    def seed(self) -> int:
        """The base seed of the sample order (shared with the worker processes)."""
        return int(self._state[0])

    @seed.setter
    def seed(self, value: int) -> None:
        self._state[0] = int(value)

    @property
    def epoch(self) -> int:
        """The epoch being read (shared with the worker processes)."""
        return int(self._state[1])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._state[1] = int(value)

    def _count(self, lost: int) -> None:
        """Record `lost` corrupt samples (reported with the next batch)."""
        self.corrupt += max(1, lost)

    def _on_decode_error(self, exn: Exception) -> bool:
        """Handler for samples that fail to decode: count, then defer to the user's handler."""
        ok = bool(self.handler(exn))
        if ok:
            self._count(1)
        return ok

    def _tag(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Attach the corrupt-sample count to each training batch."""
        for batch in batches:
            batch["corrupt_samples"], self.corrupt = self.corrupt, 0
            yield batch

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        return self.rank * workers + worker, self.world_size * workers

    def _expand(self, urls: Iterator[str]) -> Iterator[dict[str, Any]]:
        """Open each shard (boto3 streaming for s3://) and yield its samples safely."""
        for url in urls:
            got = 0
            try:
                with storage.open_read(url, self.s3) as stream:
                    for sample in iter_tar_samples(stream, url):
                        got += 1
                        yield sample
                if got < self.expected.get(url, 0):  # cut at a member boundary: no tar error
                    raise EOFError(
                        f"shard ended after {got} of the {self.expected[url]} samples the manifest lists"
                    )
            except Exception as exn:  # noqa: BLE001 - the handler decides
                exn.args = (f"{exn.args[0] if exn.args else exn!r} @ {url}",) + tuple(exn.args[1:])
                if not self.handler(exn):
                    raise
                self._count(self.expected.get(url, 0) - got)

    def _resampled(self, urls: list[str], rng: random.Random) -> Iterator[str]:
        while True:
            yield rng.choice(urls)

    def _train_samples(self, slot: int, total: int) -> Iterator[dict[str, Any]]:
        mine = self.urls[slot::total] if len(self.urls) >= total else list(self.urls)
        rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")
        empty_in_a_row = 0
        for url in self._resampled(mine, rng):
            got = False
            for sample in self._expand(iter([url])):
                got = True
                yield sample
            empty_in_a_row = 0 if got else empty_in_a_row + 1
            if empty_in_a_row > 4 * len(mine) + 8:
                raise RuntimeError(f"no readable samples in {len(mine)} shard(s), e.g. {mine[0]}")

    def _eval_samples(self, slot: int, total: int) -> Iterator[dict[str, Any]]:
        if len(self.urls) >= total:
            yield from self._expand(iter(self.urls[slot::total]))
            return
        for i, sample in enumerate(self._expand(iter(self.urls))):
            if i % total == slot:
                yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches for this (rank, worker)."""
        slot, total = self._slot()
        if self.train:
            stages: list[Any] = [
                lambda: self._train_samples(slot, total),
                wds.shuffle(
                    self.shuffle_buffer,
                    min(self.shuffle_buffer, 100),
                    rng=random.Random(f"shuffle/{self.seed}/{self.epoch}/{slot}"),
                ),
                wds.map(self.decode, handler=self._on_decode_error),
                wds.batched(self.batch_size, collation_fn=collate, partial=False),
                self._tag,
            ]
            pipe = wds.DataPipeline(*stages).with_epoch(self.batches_per_worker)
        else:
            pipe = wds.DataPipeline(
                lambda: self._eval_samples(slot, total),
                wds.map(self.decode, handler=self._on_decode_error),
                wds.batched(self.batch_size, collation_fn=collate, partial=True),
            )
        return iter(pipe)


class ShardLoader(DataLoader):
    """A DataLoader over a ShardStream; each new iteration is the next epoch (or `set_epoch`).

    Training loaders with workers keep them across epochs (`persistent_workers`): no worker
    start-up (process, imports, shard listing, shuffle-buffer fill) at every epoch.
    """

    def __init__(
        self, dataset: ShardStream, num_workers: int, batches_per_epoch: int | None, **kw: Any
    ) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kw)
        self.batches_per_epoch = batches_per_epoch
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use this epoch's seed for the next iteration."""
        self._next_epoch = epoch

    def __iter__(self) -> Any:
        """Start an epoch."""
        self.dataset.epoch = self._next_epoch  # type: ignore[attr-defined]
        self._next_epoch += 1
        return super().__iter__()

    def __len__(self) -> int:
        """Batches per epoch on this rank (training only)."""
        if self.batches_per_epoch is None:
            raise TypeError("evaluation loaders have no fixed length")
        return self.batches_per_epoch


def loader(
    manifest_or_path: Manifest | str | Path,
    split: str,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    batches_per_epoch: int | None = None,
    handler: Callable[[Exception], bool] | None = None,
    normalize: bool = False,
    s3: storage.S3Config | None = None,
    pin_memory: bool = False,
    as_stored: bool = False,
) -> ShardLoader:
    """Batches of a split (see the module docstring); rank/world_size default to torch.distributed.

    Training epochs have `batches_per_epoch` batches on every rank (default: num_samples //
    (world_size * batch_size), at least 1, rounded up to a multiple of num_workers).

    `as_stored=True` hands over inputs as stored (images and video uint8, audio int16 tokens)
    for `hip.model.modalities.to_float` to scale on the training device: the loader workers skip the float
    conversion and the batches are a quarter of the size (half for audio).
    """
    manifest = (
        manifest_or_path
        if isinstance(manifest_or_path, Manifest)
        else read_manifest(manifest_or_path, s3)
    )
    urls = manifest.shard_urls(split)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rank, world_size = _rank_world(rank, world_size)
    workers = max(1, num_workers)
    per_worker = None
    if train:
        if batches_per_epoch is None:
            n = manifest.splits[split].num_samples
            batches_per_epoch = max(1, n // (world_size * batch_size))
        per_worker = math.ceil(batches_per_epoch / workers)
        batches_per_epoch = per_worker * workers
        handler = handler or warn_and_skip
    else:
        handler = handler or wds.reraise_exception
    persistent = train and num_workers > 0
    ds = ShardStream(
        urls, manifest, train=train, batch_size=batch_size, rank=rank, world_size=world_size,
        num_workers=num_workers, seed=seed, shuffle_buffer=shuffle_buffer,
        batches_per_worker=per_worker, handler=handler, normalize=normalize, s3=s3,
        as_stored=as_stored,
    )  # fmt: skip
    return ShardLoader(
        ds,
        num_workers,
        batches_per_epoch if train else None,
        pin_memory=pin_memory,
        persistent_workers=persistent,
    )
