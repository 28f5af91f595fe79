"""Shard writer, manifest and verification.

A split is written as WebDataset tar shards `{split}-{index:06d}.tar` plus `manifest.json`
beside them (local directory or `s3://bucket/prefix`). Each shard is built in memory with
fixed tar metadata (mtime/uid/gid/names), so the same samples always give the same bytes
and sha256; it is written under a temporary name and renamed (S3: temporary key, copy,
delete). The manifest is written last: a shard it does not name is never read.

Sharding resumes: after every shard a small progress file `_progress-{split}.json` records
the finished shards; a re-run with the same inputs and options keeps those that still
verify and continues after them. A run that finds an up-to-date manifest does nothing.

Tar member layout per sample key `K` (keys are sanitized: `[A-Za-z0-9_-]` only):
`K.image.png|K.image.jpg` (uint8 image), `K.mask.png` (uint8 class indices, 255 = ignore),
`K.audio.npy` (int16 mono), `K.video.npy` (uint8 [T, H, W, 3]), `K.cls` (class index as
text) or `K.labels.json` (list of class indices, multi-label).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

import hip
from hip import storage
from hip.data.manifest import (
    FORMAT,
    MANIFEST,
    Manifest,
    ShardInfo,
    SplitInfo,
    read_manifest,
    task_type,
)
from hip.data.sources import (
    DEFAULT_SHUFFLE_SEED,
    Item,
    Source,
    SourceOptions,
    open_source,
    shuffled,
)
from hip.errors import UserError
from hip.model.modalities import (
    AUDIO_SAMPLES_PER_TOKEN,
    audio_to_tokens,
    image_to_tokens,
    video_to_tokens,
)

DEFAULT_MAX_COUNT = 10_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


class UnsafeTarMember(ValueError):
    """A tar member with an absolute path, `..`, or a link: never read."""


def shard_name(split: str, index: int) -> str:
    """`train-000000.tar`."""
    return f"{split}-{index:06d}.tar"


# ------------------------------------------------------------------ encoding


def _png(arr: np.ndarray) -> bytes:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _spec(raw: dict[str, np.ndarray], opts: SourceOptions) -> dict[str, dict[str, Any]]:
    """Per-modality description of one sample: loader shape [M, C] and storage details."""
    spec: dict[str, dict[str, Any]] = {}
    if "image" in raw:
        h, w, c = raw["image"].shape
        m, c2 = image_to_tokens(raw["image"]).shape
        spec["image"] = {
            "shape": [m, c2], "dtype": "float32", "stored_dtype": "uint8",
            "encoding": "jpeg" if opts.image_format == "jpeg" else "png",
            "height": h, "width": w, "channels": c, "range": [0.0, 1.0],
        }  # fmt: skip
    if "audio" in raw:
        t = raw["audio"].shape[0]
        n = opts.audio_samples_per_token  # the stored waveform stays raw: the loader cuts tokens
        spec["audio"] = {
            "shape": list(audio_to_tokens(raw["audio"], n).shape), "dtype": "float32",
            "stored_dtype": "int16", "encoding": "npy", "length": t,
            "sample_rate": int(raw["_sample_rate"]), "range": [-1.0, 1.0],
            "samples_per_token": n,
        }  # fmt: skip
    if "video" in raw:
        t, h, w, c = raw["video"].shape
        spec["video"] = {
            "shape": list(video_to_tokens(raw["video"]).shape), "dtype": "float32",
            "stored_dtype": "uint8", "encoding": "npy", "frames": t, "height": h, "width": w,
            "channels": c, "fps": opts.fps, "range": [0.0, 1.0],
        }  # fmt: skip
    return spec


def _encode(
    item: Item, raw: dict[str, np.ndarray], task: str, opts: SourceOptions
) -> list[tuple[str, bytes]]:
    k = item.key
    members: list[tuple[str, bytes]] = []
    if "image" in raw:
        enc = _jpeg if opts.image_format == "jpeg" else _png
        members.append(
            (f"{k}.image.{'jpg' if opts.image_format == 'jpeg' else 'png'}", enc(raw["image"]))
        )
    if "mask" in raw:
        members.append((f"{k}.mask.png", _png(raw["mask"])))
    if "audio" in raw:
        members.append((f"{k}.audio.npy", _npy(raw["audio"].astype(np.int16))))
    if "video" in raw:
        members.append((f"{k}.video.npy", _npy(raw["video"].astype(np.uint8))))
    labels = task_type(task)  # how labels are stored is the task type's to say
    if labels is not None:
        members.extend(labels.encode_label(k, item.label))
    return members


def _member_bytes(size: int) -> int:
    return _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK


def build_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A deterministic tar: fixed mtime/uid/gid/owner/mode, names checked to be relative."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            check_member_name(name)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def check_member_name(name: str) -> None:
    """Raise UnsafeTarMember for absolute paths, `..`, backslashes or empty names."""
    p = PurePosixPath(name)
    if (
        not name
        or name.startswith(("/", "\\"))
        or p.is_absolute()
        or ".." in p.parts
        or "\\" in name
    ):
        raise UnsafeTarMember(f"unsafe tar member name {name!r}")
    if re.match(r"^[A-Za-z]:", name):
        raise UnsafeTarMember(f"unsafe tar member name {name!r}")


# ------------------------------------------------------------------ reading


def iter_tar_samples(stream: IO[bytes], where: str = "") -> Iterator[dict[str, Any]]:
    """Stream a shard: yield `{"__key__", "__url__", ext: bytes...}` per sample.

    Members with absolute or `..` paths, links and devices raise UnsafeTarMember; a truncated
    or corrupt tar raises tarfile.ReadError / EOFError (the caller's handler decides).
    """
    current: dict[str, Any] | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            check_member_name(info.name)
            if not info.isreg():
                if info.isdir():
                    continue
                raise UnsafeTarMember(f"tar member {info.name!r} is a link or device ({where})")
            base = info.name.rsplit("/", 1)[-1]
            key, dot, ext = base.partition(".")
            if not dot or key.startswith("__"):
                continue
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise EOFError(f"truncated member {info.name!r} in {where}")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": where}
            current[ext] = data
    if current is not None:
        yield current


def shard_urls(manifest: Manifest, split: str) -> list[str]:
    """Full paths/URIs of a split's shards, in manifest order."""
    return manifest.shard_urls(split)


def _sha256_of(uri: str, s3: storage.S3Config | None) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for chunk in storage.iter_chunks(uri, s3):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _shard_ok(uri: str, sha: str, size: int, s3: storage.S3Config | None) -> bool:
    try:
        return _sha256_of(uri, s3) == (sha, size)
    except (FileNotFoundError, OSError):
        return False


def intact_split(
    path: str | Path, split: str, s3: storage.S3Config | None = None
) -> SplitInfo | None:
    """The manifest's entry for `split` if every shard it lists exists with its listed size.

    A cheap check (no reading of the shards, unlike :func:`verify`) for whether a split that
    was written earlier is still there: None when the manifest, the split or a shard is
    missing or a shard's size differs.
    """
    try:
        manifest = read_manifest(path, s3)
    except UserError:
        return None
    info = manifest.splits.get(split)
    if info is None or not info.shards:
        return None
    for s in info.shards:
        if storage.size(storage.join(manifest.root, s.name), s3) != s.bytes:
            return None
    return info


def verify(
    path: str | Path, split: str | None = None, s3: storage.S3Config | None = None
) -> list[str]:
    """Re-check every shard's size and sha256 against the manifest; returns the problems found."""
    manifest = read_manifest(path, s3)
    problems = []
    for name, info in manifest.splits.items():
        if split is not None and name != split:
            continue
        for s in info.shards:
            uri = storage.join(str(manifest.root), s.name)
            try:
                sha, size = _sha256_of(uri, s3)
            except (FileNotFoundError, OSError) as exc:
                problems.append(f"{s.name}: missing or unreadable ({exc})")
                continue
            if size != s.bytes:
                problems.append(f"{s.name}: size {size} bytes, manifest says {s.bytes}")
            elif sha != s.sha256:
                problems.append(
                    f"{s.name}: sha256 {sha[:12]}... does not match the manifest's {s.sha256[:12]}..."
                )
    if split is not None and split not in manifest.splits:
        problems.append(f"split {split!r} not in the manifest")
    return problems


# ------------------------------------------------------------------ writing


@dataclasses.dataclass
class _Stats:
    """Running per-channel image sums (for mean/std) and the largest mask class seen."""

    n: int = 0
    s: list[float] = dataclasses.field(default_factory=list)
    ss: list[float] = dataclasses.field(default_factory=list)
    mask_max: int = -1

    def add(self, raw: dict[str, np.ndarray]) -> None:
        if "image" in raw:
            x = raw["image"].reshape(-1, raw["image"].shape[-1]).astype(np.float64) / 255.0
            if not self.s:
                self.s, self.ss = [0.0] * x.shape[1], [0.0] * x.shape[1]
            self.s = [a + b for a, b in zip(self.s, x.sum(0).tolist(), strict=True)]
            self.ss = [a + b for a, b in zip(self.ss, (x * x).sum(0).tolist(), strict=True)]
            self.n += x.shape[0]
        if "mask" in raw:
            valid = raw["mask"][raw["mask"] != 255]
            if valid.size:
                self.mask_max = max(self.mask_max, int(valid.max()))

    def merge(self, d: dict[str, Any]) -> None:
        if d.get("s"):
            if not self.s:
                self.s, self.ss = [0.0] * len(d["s"]), [0.0] * len(d["s"])
            self.s = [a + b for a, b in zip(self.s, d["s"], strict=True)]
            self.ss = [a + b for a, b in zip(self.ss, d["ss"], strict=True)]
        self.n += d.get("n", 0)
        self.mask_max = max(self.mask_max, d.get("mask_max", -1))


# Sources that can yield audio (csv can too, but only with an explicit audio column list).
AUDIO_SOURCES = ("audiofolder", "audioset", "csv")


def _fingerprint(
    src: Source, opts: SourceOptions, split: str, max_count: int, max_bytes: int, seed: int | None
) -> str:
    options = dataclasses.asdict(opts)
    # Added in issue 16: left out where it cannot matter (no audio, default value) so image
    # shards made before it keep their fingerprint and are not re-sharded.
    if src.type not in AUDIO_SOURCES and opts.audio_samples_per_token == AUDIO_SAMPLES_PER_TOKEN:
        del options["audio_samples_per_token"]
    blob = json.dumps(
        {
            "type": src.type, "description": src.description, "options": options,
            "split": split, "max_count": max_count, "max_bytes": max_bytes, "seed": seed,
            "keys": [(i.key, i.label, i.origin) for i in src.items],
        },
        sort_keys=True, default=str,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_json(uri: str, s3: storage.S3Config | None) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri, s3))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def _parse_size(value: str | tuple[int, int] | list[int] | int | None) -> tuple[int, int] | None:
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list):
        return (int(value[0]), int(value[1]))
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(value))
    if not m:
        raise UserError(f"size must be N or HxW, not {value!r}")
    h = int(m.group(1))
    return (h, int(m.group(2) or h))


def remove_stale_temp(output: str | Path, split: str) -> list[str]:
    """Delete a split's temp files left by a killed writer in a local output folder; returns them.

    `hip.storage.atomic_write_bytes` writes `.<name>.<random>.tmp` beside the final name; a
    SIGKILL between the write and the rename leaves it behind. Readers never list it (they
    read only what the manifest names); this keeps the folder clean. S3 is left alone.
    """
    folder = Path(str(output))
    if storage.is_s3(str(output)) or not folder.is_dir():
        return []
    pattern = re.compile(
        rf"^\.({re.escape(split)}-\d{{6}}\.tar|_progress-{re.escape(split)}\.json)\..+\.tmp$"
    )
    removed = []
    for child in folder.iterdir():
        if pattern.match(child.name):
            child.unlink(missing_ok=True)
            removed.append(str(child))
    return removed


def _check_options(
    options: dict[str, Any], split: str, max_count: int, max_bytes: int
) -> SourceOptions:
    """Validate the shard options and turn them into SourceOptions (sizes parsed)."""
    fields = {f.name for f in dataclasses.fields(SourceOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UserError(f"unknown shard option(s): {', '.join(unknown)}")
    options = {k: v for k, v in options.items() if v is not None}
    for k in ("resize", "video_size"):
        if k in options:
            options[k] = _parse_size(options[k])
    opts = SourceOptions(**options)
    if opts.image_format not in {"png", "jpeg"}:
        raise UserError(f"--image-format must be png or jpeg, not {opts.image_format!r}")
    if max_count < 1 or max_bytes < 1:
        raise UserError("--max-count and --max-bytes must be positive")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise UserError(f"split name must be letters, digits or _, not {split!r}")
    return opts


def _read_existing(manifest_uri: str, output: str, s3: storage.S3Config | None) -> Manifest | None:
    """The manifest already in `output`, or None; a foreign `manifest.json` is an error."""
    old_json = _load_json(manifest_uri, s3)
    if old_json and (not isinstance(old_json, dict) or old_json.get("format") != FORMAT):
        raise UserError(f"{manifest_uri} exists and is not a {FORMAT} manifest")
    return Manifest.from_json(old_json, output) if old_json else None


def _up_to_date(entry: SplitInfo | None, fp: str, output: str, s3: storage.S3Config | None) -> bool:
    """Whether the manifest's split was written from the same inputs and all its shards verify."""
    return (
        entry is not None
        and entry.fingerprint == fp
        and all(
            _shard_ok(storage.join(output, s.name), s.sha256, s.bytes, s3) for s in entry.shards
        )
    )


@dataclasses.dataclass
class _Pending:
    """The shard being filled: its tar members, size, sample count, first item and skips."""

    start: int
    members: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    size: int = 0
    count: int = 0
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    stats: _Stats = dataclasses.field(default_factory=_Stats)


@dataclasses.dataclass
class _Progress:
    """A split's finished shard records and sample spec, saved to its progress file after each."""

    output: str
    split: str
    fingerprint: str
    s3: storage.S3Config | None
    done: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    spec: dict[str, Any] | None = None

    @property
    def uri(self) -> str:
        return storage.join(self.output, f"_progress-{self.split}.json")

    def resume(self, log: Callable[[str], None]) -> int:
        """Keep the recorded shards that still verify (same fingerprint); returns the next item."""
        progress = _load_json(self.uri, self.s3) or {}
        if progress.get("fingerprint") == self.fingerprint:
            for rec in progress.get("shards", []):
                uri = storage.join(self.output, rec["name"])
                if not _shard_ok(uri, rec["sha256"], rec["bytes"], self.s3):
                    break
                self.done.append(rec)
            if self.done:
                log(f"{self.split}: resuming after {len(self.done)} verified shard(s)")
        self.spec = progress.get("spec") if self.done else None
        return self.done[-1]["end_item"] if self.done else 0

    def flush(self, pending: _Pending, end: int, log: Callable[[str], None]) -> None:
        """Write `pending` as the next shard, then record it in the progress file."""
        name = shard_name(self.split, len(self.done))
        data = build_tar(pending.members)
        storage.write_bytes(storage.join(self.output, name), data, self.s3)
        rec = {
            "name": name, "count": pending.count, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "start_item": pending.start,
            "end_item": end, "skipped": pending.skipped, "stats": dataclasses.asdict(pending.stats),
        }  # fmt: skip
        self.done.append(rec)
        storage.write_bytes(
            self.uri,
            _dump({"fingerprint": self.fingerprint, "spec": self.spec, "shards": self.done}),
            self.s3,
        )
        log(f"{self.split}: wrote {name} ({pending.count} samples, {len(data)} bytes)")


def _write_items(
    progress: _Progress,
    items: list[Item],
    position: int,
    task: str,
    opts: SourceOptions,
    max_count: int,
    max_bytes: int,
    log: Callable[[str], None],
) -> None:
    """Decode and encode `items[position:]`, writing a shard each time one is full.

    An input that fails to decode, or whose shape/format differs from the first sample's,
    is recorded as skipped in the shard being filled.
    """
    pending = _Pending(position)
    for i in range(position, len(items)):
        item = items[i]
        try:
            raw = item.load()
            s = _spec(raw, opts)
            if not s:
                raise ValueError("no modality decoded")
            enc = _encode(item, raw, task, opts)
        except Exception as exc:  # noqa: BLE001 - any bad input is reported and skipped
            pending.skipped.append({"input": item.origin, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        if progress.spec is None:
            progress.spec = s
        elif s != progress.spec:
            spec = progress.spec
            diff = {
                k: s.get(k, {}).get("shape") for k in set(s) | set(spec) if s.get(k) != spec.get(k)
            }
            pending.skipped.append(
                {
                    "input": item.origin,
                    "reason": f"shape/format {diff} differs from the first sample's; pass --resize / --clip-seconds",
                }
            )
            continue
        nbytes = sum(_member_bytes(len(d)) for _, d in enc)
        if pending.count and (pending.count >= max_count or pending.size + nbytes > max_bytes):
            progress.flush(pending, i, log)
            pending = _Pending(i)
        pending.members.extend(enc)
        pending.size += nbytes
        pending.count += 1
        pending.stats.add(raw)
    if pending.count:
        progress.flush(pending, len(items), log)
    elif pending.skipped:
        progress.done.append({"name": None, "skipped": pending.skipped, "count": 0})


def _split_entry(
    source: str,
    src: Source,
    input: str | Path | None,
    opts: SourceOptions,
    progress: _Progress,
    now: str,
    max_count: int,
    max_bytes: int,
    seed: int | None,
) -> SplitInfo:
    """The manifest entry of the written split; an error if no sample could be read."""
    all_skipped = list(src.skipped) + [s for r in progress.done for s in r.get("skipped", [])]
    shards = [
        ShardInfo(r["name"], r["count"], r["bytes"], r["sha256"])
        for r in progress.done
        if r.get("name")
    ]
    if not shards or progress.spec is None:
        reasons = "; ".join(f"{s['input']}: {s['reason']}" for s in all_skipped[:5])
        raise UserError(
            f"{source}: no readable samples for split {progress.split!r} (e.g. {reasons})"
        )
    return SplitInfo(
        num_samples=sum(s.count for s in shards),
        shards=shards,
        skipped=all_skipped,
        source={
            "type": src.type,
            "input": None if input is None else str(input),
            **src.description,
        },
        options={
            **dataclasses.asdict(opts),
            "max_count": max_count,
            "max_bytes": max_bytes,
            "seed": seed,
        },
        fingerprint=progress.fingerprint,
        created=now,
    )


def _new_manifest(
    src: Source, spec: dict[str, Any], done: list[dict[str, Any]], now: str
) -> Manifest:
    """The manifest of this split alone: task, labels, modalities (with image mean/std), targets."""
    total = _Stats()
    for r in done:
        if "stats" in r:
            total.merge(r["stats"])
    label_names = list(src.label_names)
    if src.task == "segmentation" and not label_names:
        label_names = [str(i) for i in range(total.mask_max + 1)]
    modalities = json.loads(json.dumps(spec))
    if "image" in modalities and total.n:
        mean = [a / total.n for a in total.s]
        modalities["image"]["mean"] = mean
        modalities["image"]["std"] = [
            max(b / total.n - m * m, 0.0) ** 0.5 for b, m in zip(total.ss, mean, strict=True)
        ]
    targets: dict[str, Any] = {}
    if src.task == "segmentation":
        img = spec["image"]
        targets = {
            "mask": {"shape": [img["height"] * img["width"]], "dtype": "int64", "ignore_index": 255}
        }
    return Manifest(
        format=FORMAT,
        tool="hip",
        tool_version=hip.__version__,
        created=now,
        task=src.task,
        label_names=label_names,
        num_classes=len(label_names),
        modalities={k: {kk: vv for kk, vv in v.items()} for k, v in modalities.items()},
        targets=targets,
        splits={},
    )


def _merge_existing(manifest: Manifest, old: Manifest, split: str, manifest_uri: str) -> None:
    """Carry `old`'s other splits into `manifest`; a task, label or shape mismatch is an error."""
    modalities = manifest.modalities
    for key in ("task", "label_names"):
        if getattr(old, key) != getattr(manifest, key) and set(old.splits) - {split}:
            raise UserError(
                f"{manifest_uri}: existing splits have {key}={getattr(old, key)!r}, this "
                f"split has {getattr(manifest, key)!r}; write to another output"
            )
    manifest.splits = {k: v for k, v in old.splits.items() if k != split}
    for k, v in old.modalities.items():
        if k in modalities and v.get("shape") != modalities[k]["shape"] and manifest.splits:
            raise UserError(
                f"{manifest_uri}: modality {k} shape {v.get('shape')} differs from {modalities[k]['shape']}"
            )
    if split != "train" and "train" in manifest.splits:
        manifest.modalities = {
            k: {
                **modalities[k],
                **{
                    s: old.modalities[k][s]
                    for s in ("mean", "std")
                    if s in old.modalities.get(k, {})
                },
            }
            for k in modalities
        }  # mean/std come from the train split when it exists


def shard(
    source: str,
    input: str | Path | None,
    output: str | Path,
    split: str = "train",
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    seed: int | None = DEFAULT_SHUFFLE_SEED,
    s3: storage.S3Config | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Manifest:
    """Write `source` (read from `input`) as WebDataset shards + manifest into `output`.

    Inputs are shuffled with `seed` (default 0, so the order is still deterministic):
    sorted inputs are sorted by class, and class-sorted shards starve training of mixed
    batches (a shuffle buffer cannot mix a large single-class run). `seed=None` keeps the
    sorted input order.

    `options` are SourceOptions fields (limit, resize, channels, image_format, sample_rate,
    clip_seconds, audio_length, audio_crop, fps, video_size, pattern, split_pattern, preset,
    segments_csv, class_index_csv, mask_mode). Returns the manifest (with `root`).
    """
    log = log or (lambda msg: None)
    opts = _check_options(options, split, max_count, max_bytes)
    output = str(output)
    if storage.is_s3(output):
        storage.check_bucket(output, s3)

    src = open_source(source, str(input) if input is not None else None, split, opts)
    items = shuffled(src.items, seed)
    if not items:
        raise UserError(f"{source}: no inputs found for split {split!r} in {input}")
    fp = _fingerprint(src, opts, split, max_count, max_bytes, seed)

    for stale in remove_stale_temp(output, split):
        log(f"{split}: removed {Path(stale).name} (left by an interrupted write)")
    progress = _Progress(output, split, fp, s3)
    manifest_uri = storage.join(output, MANIFEST)
    old = _read_existing(manifest_uri, output, s3)
    if old is not None and _up_to_date(old.splits.get(split), fp, output, s3):
        log(f"{split}: up to date ({len(old.splits[split].shards)} shards verify)")
        if not storage.is_s3(output):  # a run killed after its manifest left this behind
            storage.delete(progress.uri)
        return old

    position = progress.resume(log)
    _write_items(progress, items, position, src.task, opts, max_count, max_bytes, log)

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    entry = _split_entry(source, src, input, opts, progress, now, max_count, max_bytes, seed)
    manifest = _new_manifest(src, progress.spec, progress.done, now)
    if old is not None:
        _merge_existing(manifest, old, split, manifest_uri)
    manifest.splits[split] = entry
    manifest.splits = dict(sorted(manifest.splits.items()))
    manifest.write(output, s3)
    storage.delete(progress.uri, s3)
    log(
        f"{split}: {entry.num_samples} samples in {len(entry.shards)} shard(s), {len(entry.skipped)} skipped"
    )
    return manifest
