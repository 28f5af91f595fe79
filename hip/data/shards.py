"""Shard writer, manifest and verification.

A split is written as WebDataset tar shards `{split}-{index:06d}.tar` plus `manifest.json`
beside them (local directory or `s3://bucket/prefix`). Each shard is built in memory with
fixed tar metadata (mtime/uid/gid/names), so the same samples always give the same bytes
and sha256; it is written under a temporary name and renamed (S3: temporary key, copy,
delete). The manifest is written last: a shard it does not name is never read.

The layout is fixed before writing: shard i holds positions [i*n, (i+1)*n) of the seeded,
global shuffle of the inputs (n from max_count/max_bytes), so the shards can be written in
partitions (processes, Dask workers) and are the same whatever their number; a final merge
writes the manifest (`plan_shards` -> `write_partition` per partition -> `merge_shards`).

Sharding resumes: after every shard a partition's progress file
`_progress-{split}-{first:06d}-{end:06d}.json` records its finished shards; a re-run with the
same inputs and options keeps those that still verify and writes the others. A run that
finds an up-to-date manifest does nothing.

Tar member layout per sample key `K` (keys are sanitized: `[A-Za-z0-9_-]` only):
`K.image.png|K.image.jpg` (uint8 image), `K.mask.png` (uint8 class indices, 255 = ignore),
`K.audio.npy` (int16 mono), `K.video.npy` (uint8 [T, H, W, 3]), `K.cls` (class index as
text) or `K.labels.json` (list of class indices, multi-label).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as _dt
import functools
import hashlib
import io
import json
import multiprocessing
import re
import struct
import tarfile
import threading
import warnings
import wave
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

import hip
from hip import storage
from hip.data.labels import label_encoder
from hip.data.manifest import (
    FORMAT,
    MANIFEST,
    Manifest,
    ShardInfo,
    SplitInfo,
    read_manifest,
)
from hip.data.sources import (
    DEFAULT_SHUFFLE_SEED,
    IMAGE_EXTS,
    Item,
    Source,
    SourceOptions,
    is_grey,
    names_without_ignored,
    open_source,
    shuffled,
    with_image_preset,
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
            "encoding": _image_encoding(opts),
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


def _image_encoding(opts: SourceOptions) -> str:
    """How images are stored: `jpeg` (also `auto` once resolved for mostly-JPEG inputs) or `png`."""
    return "jpeg" if opts.image_format in {"jpeg", "auto"} else "png"


def _encode(
    item: Item, raw: dict[str, np.ndarray], task: str, opts: SourceOptions
) -> list[tuple[str, bytes]]:
    k = item.key
    members: list[tuple[str, bytes]] = []
    if "image" in raw:
        if _image_encoding(opts) == "png":
            members.append((f"{k}.image.png", _png(raw["image"])))
        elif opts.image_format == "auto" and "_jpeg" in raw:  # the JPEG file as it is
            members.append((f"{k}.image.jpg", raw["_jpeg"].tobytes()))
        else:
            members.append((f"{k}.image.jpg", _jpeg(raw["image"])))
    if "mask" in raw:
        members.append((f"{k}.mask.png", _png(raw["mask"])))
    if "audio" in raw:
        members.append((f"{k}.audio.npy", _npy(raw["audio"].astype(np.int16))))
    if "video" in raw:
        members.append((f"{k}.video.npy", _npy(raw["video"].astype(np.uint8))))
    members.extend(label_encoder(task)(k, item.label))  # the task type's storage (hip.data.labels)
    return members


def _member_bytes(size: int) -> int:
    return _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK


def _ustar_header(name: bytes, size: int) -> bytes:
    """The one 512-byte header block tarfile writes (PAX format) for a plain member `name`.

    Fields as `build_tar` fixes them: mode 0644, uid/gid 0, empty owner names, mtime 0. Only
    for ASCII names of at most 100 bytes and sizes below 8 GiB (tarfile then writes no pax
    extended header); `build_tar` leaves anything else to tarfile.
    """
    head = b"".join(
        (
            name.ljust(100, b"\0"),
            b"0000644\0",
            b"0000000\0",
            b"0000000\0",
            b"%011o\0" % size,
            b"00000000000\0",
            b"        ",  # checksum, filled in below
            tarfile.REGTYPE,
            bytes(100),  # linkname
            tarfile.POSIX_MAGIC,
            bytes(32 + 32 + 8 + 8 + 155),  # uname, gname, devmajor, devminor, prefix
        )
    ).ljust(_BLOCK, b"\0")
    return head[:148] + b"%06o\0" % sum(head) + head[155:]


def build_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A deterministic tar: fixed mtime/uid/gid/owner/mode, names checked to be relative.

    Byte for byte what `tarfile` (PAX format) writes for these members, without its
    per-member Python overhead (a third of the CPU of sharding small images).
    """
    parts: list[bytes] = []
    for name, data in members:
        check_member_name(name)
        raw = name.encode("utf-8")
        if len(raw) > 100 or not raw.isascii() or len(data) >= 8**11:
            parts.append(_tarfile_member(name, data))
        else:
            parts += [_ustar_header(raw, len(data)), data, bytes(-len(data) % _BLOCK)]
    body = b"".join(parts)
    end = len(body) + 2 * _BLOCK
    return body + bytes(2 * _BLOCK + -end % tarfile.RECORDSIZE)


def _tarfile_member(name: str, data: bytes) -> bytes:
    """One member (header(s), data, padding) as tarfile writes it, for what `_ustar_header` cannot."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
        end = tar.offset
    return buf.getvalue()[:end]


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")  # `key.ext...`: always safe


def check_member_name(name: str) -> None:
    """Raise UnsafeTarMember for absolute paths, `..`, backslashes or empty names."""
    if _PLAIN_NAME.fullmatch(name):
        return
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


# Options added in issue 15: recorded (manifest, fingerprint) only when set, so shards made
# before them keep their manifest bytes and fingerprint.
_NEW_OPTIONS = ("ignore_label", "label_names", "images", "labels")


def _recorded_options(opts: SourceOptions) -> dict[str, Any]:
    """The options as the manifest records them (options added later left out while unset)."""
    options = dataclasses.asdict(opts)
    for key in _NEW_OPTIONS:
        if options[key] is None:
            del options[key]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _fingerprint(
    src: Source, opts: SourceOptions, split: str, max_count: int, max_bytes: int, seed: int | None
) -> str:
    options = _recorded_options(opts)
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


def remove_stale_temp(
    output: str | Path, split: str, s3: storage.S3Config | None = None
) -> list[str]:
    """Delete a split's temporary files or keys left by a killed writer; returns their paths.

    `hip.storage.write_bytes` writes `.<name>.<random>.tmp` beside the final name (local) or
    uploads `<name>.tmp-<uuid>` and copies it to its key (S3). A SIGKILL between the write and
    the rename, or an S3 outage between the upload and the copy, leaves it behind. Readers
    never list it (they read only what the manifest names); this keeps the output clean.
    """
    name = (
        rf"({re.escape(split)}-\d{{6}}\.tar|_progress-{re.escape(split)}(-\d{{6}}-\d{{6}})?\.json)"
    )
    output = str(output)
    if storage.is_s3(output):
        pattern = re.compile(rf"^{name}\.tmp-[0-9a-f]+$")
    elif Path(output).is_dir():
        pattern = re.compile(rf"^\.{name}\..+\.tmp$")
    else:
        return []
    removed = []
    for child in storage.list_names(output, s3):
        if pattern.match(child):
            storage.delete(storage.join(output, child), s3)
            removed.append(storage.join(output, child))
    return removed


def _check_options(
    options: dict[str, Any], split: str, max_count: int, max_bytes: int
) -> SourceOptions:
    """Validate the shard options and turn them into SourceOptions (sizes parsed)."""
    fields = {f.name for f in dataclasses.fields(SourceOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UserError(f"unknown shard option(s): {', '.join(unknown)}")
    options = with_image_preset({k: v for k, v in options.items() if v is not None})
    for k in ("resize", "video_size"):
        if k in options:
            options[k] = _parse_size(options[k])
    if "label_names" in options:
        options["label_names"] = _parse_label_names(options["label_names"])
    opts = SourceOptions(**options)
    if opts.image_format not in {"auto", "png", "jpeg"}:
        raise UserError(f"--image-format must be auto, png or jpeg, not {opts.image_format!r}")
    if opts.ignore_label is not None and not 0 <= int(opts.ignore_label) <= 255:
        raise UserError(f"--ignore-label must be a mask value 0..255, not {opts.ignore_label}")
    if max_count < 1 or max_bytes < 1:
        raise UserError("--max-count and --max-bytes must be positive")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise UserError(f"split name must be letters, digits or _, not {split!r}")
    return opts


def _parse_label_names(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """`a,b,c`, a file with one name per line, or a list -> the names (a UserError if empty)."""
    if isinstance(value, (list, tuple)):
        names = [str(v).strip() for v in value]
    elif "," not in value and Path(value).is_file():
        names = [ln.strip() for ln in Path(value).read_text().splitlines() if ln.strip()]
    else:
        names = [v.strip() for v in value.split(",")]
    if not names or not all(names):
        raise UserError(
            f"--label-names: give names as a,b,c or a file of one per line, not {value!r}"
        )
    return names


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


# ------------------------------------------------------------------ partitioned writing
#
# The layout is fixed before any shard is written: shard i holds the inputs at positions
# [i * per_shard, (i + 1) * per_shard) of the globally shuffled order (`shuffled(items, seed)`),
# per_shard coming from max_count and max_bytes (see `_layout`). A partition is a set of shard
# indexes, so every partitioning - one process, N processes, N Dask workers - writes the same
# shards under the same names with the same bytes; the merge writes the manifest last.

# The (fingerprint, shuffled items) of the last split planned in this process (one entry only).
_LAST_ITEMS: tuple[str, list[Item]] | None = None

PLAN_SAMPLES = 16  # readable samples decoded to fix the reference spec and the bytes per sample
EARLY_FAIL_TRIES = 24  # _layout stops early when this many of its first inputs fail, and > 75%
MAX_SKIPPED_FRACTION = 0.5  # a split that skips more of its inputs than this is an error
_LAYOUT = 2  # progress-file format: one file per partition, one record per shard index


def _too_many_skipped(what: str, skipped: list[dict[str, str]]) -> None:
    """Raise the one-line UserError for a split that would drop most of its inputs."""
    examples = "; ".join(f"{Path(s['input']).name}: {s['reason']}" for s in skipped[:3])
    raise UserError(
        f"{what} cannot be used, more than {MAX_SKIPPED_FRACTION:.0%} of its inputs: "
        f"nothing written to the manifest (e.g. {examples})"
    )


def _mostly_jpeg(items: list[Item]) -> bool:
    """Whether more than half the inputs are JPEG files (by name): `--image-format auto`."""
    jpeg = sum(Path(i.origin).suffix.lower() in {".jpg", ".jpeg"} for i in items)
    return 2 * jpeg > len(items)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_header(path: Path) -> tuple[int, int, bool]:
    """(height, width, grey) of an image file from its header, as `Image.open` would say.

    A PNG's first 26 bytes hold its IHDR chunk: 4x cheaper than PIL's open, which matters
    because the scan is serial work before the partitions start. Colour type 0 is the only
    PNG type PIL opens as a grey mode (`is_grey`). Anything else goes through PIL."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width, head[25] == 0
    with Image.open(path) as img:
        return img.height, img.width, is_grey(img.mode)


def _input_defaults(
    src: Source, opts: SourceOptions, others: dict[str, Any] | None
) -> dict[str, Any]:
    """Resize and channels for images that differ when --resize / --channels were not given.

    A header scan (PIL reads only the file headers): sizes that differ are resized to cover
    the most common size (ties: the larger) and centre-cropped, as `--resize` does; grey and
    colour mixed become RGB. `others` (the image modality of other splits already in the
    output) wins, so the splits of one output keep one shape.
    """
    if opts.resize is not None and opts.channels is not None:
        return {}
    sizes: Counter[tuple[int, int]] = Counter()
    greys: Counter[bool] = Counter()
    for item in src.items:
        path = Path(item.origin)
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        try:
            height, width, grey = image_header(path)
        except Exception:  # noqa: BLE001, S112 - unreadable: reported when it is loaded
            continue
        sizes[(height, width)] += 1
        greys[grey] += 1
    out: dict[str, Any] = {"notes": []}
    n = sum(sizes.values())
    if opts.resize is None and sizes:
        (h, w), count = max(sizes.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0]))
        if others and (len(sizes) > 1 or (h, w) != (others["height"], others["width"])):
            h, w = others["height"], others["width"]
            out["resize"] = [h, w]
            out["notes"].append(
                f"images are {len(sizes)} size(s), the output's other splits {h}x{w}: each "
                f"image is resized to cover {h}x{w} and centre-cropped (no --resize given)"
            )
        elif len(sizes) > 1:
            out["resize"] = [h, w]
            out["notes"].append(
                f"images differ in size ({len(sizes)} sizes; {count} of {n} are {h}x{w}): each "
                f"image is resized to cover {h}x{w} and centre-cropped (no --resize given)"
            )
    if opts.channels is None and greys:
        grey_here = next(iter(greys)) if len(greys) == 1 else None
        if others and (grey_here is None or (others["channels"] == 1) != grey_here):
            out["channels"] = int(others["channels"])
            out["notes"].append(
                f"images stored with {out['channels']} channel(s) as the output's other splits"
            )
        elif grey_here is None:
            out["channels"] = 3
            out["notes"].append(
                f"grey and colour images mixed ({greys[True]} grey of {n}): all stored as RGB "
                "(no --channels given)"
            )
    return out if out["notes"] else {}


def _audio_defaults(src: Source, opts: SourceOptions) -> dict[str, Any]:
    """Sample rate and length for an audio folder given neither: from the wav headers.

    Clips of one length and rate need nothing. Rates that differ are resampled to the most
    common one (ties: the higher); lengths that differ are padded with silence or cropped to
    the most common length (ties: the longer), as `--audio-length` does. Inputs that are not
    wav files have no cheap header: then a length must be given."""
    if src.type != "audiofolder" or opts.audio_length is not None or opts.clip_seconds:
        return {}
    rates: Counter[int] = Counter()
    clips: list[tuple[int, int]] = []
    for item in src.items:
        path = Path(item.origin)
        if path.suffix.lower() != ".wav":
            raise UserError(
                f"audiofolder: {path.name} is not a wav file, so clip lengths are not known "
                "before decoding; pass --clip-seconds S or --audio-length N (clips are padded "
                "with silence or cropped)"
            )
        try:
            with wave.open(str(path), "rb") as w:
                rate, frames = w.getframerate(), w.getnframes()
        except (wave.Error, EOFError, OSError):
            continue  # unreadable: reported when it is loaded
        rates[rate] += 1
        clips.append((rate, frames))
    if not clips:
        return {}
    out: dict[str, Any] = {"notes": []}
    target = opts.sample_rate
    if target is None and len(rates) > 1:
        target, count = max(rates.items(), key=lambda kv: (kv[1], kv[0]))
        out["sample_rate"] = target
        out["notes"].append(
            f"clips have {len(rates)} sample rates ({count} of {len(clips)} at {target} Hz): "
            f"all resampled to {target} Hz (no --sample-rate given)"
        )
    target = target or next(iter(rates))
    lengths = Counter(round(frames * target / rate) for rate, frames in clips)
    if len(lengths) > 1 or any(rate != target for rate in rates):
        length, count = max(lengths.items(), key=lambda kv: (kv[1], kv[0]))
        out["audio_length"] = length
        out["notes"].append(
            f"clips differ in length ({len(lengths)} lengths; {count} of {len(clips)} are "
            f"{length} samples = {length / target:.3f} s at {target} Hz): each is padded with "
            "silence or cropped to that (no --clip-seconds given)"
        )
    return out if out["notes"] else {}


def _resolve(opts: SourceOptions, defaults: dict[str, Any]) -> SourceOptions:
    """`opts` with the choices made for what the user left out (the source's loaders share it)."""
    if "sample_rate" in defaults:
        opts.sample_rate = int(defaults["sample_rate"])
    if "audio_length" in defaults:
        opts.audio_length = int(defaults["audio_length"])
    if "image_format" in defaults:
        opts.image_format = defaults["image_format"]
    if "resize" in defaults:
        opts.resize = (int(defaults["resize"][0]), int(defaults["resize"][1]))
    if "channels" in defaults:
        opts.channels = int(defaults["channels"])
    return opts


@dataclasses.dataclass
class ShardPlan:
    """Everything a partition needs to write its shards, and the merge its manifest (picklable).

    `done` maps shard index -> the record a previous (interrupted) run left in a progress
    file; a partition reuses such a shard only after re-checking its sha256. `current` is the
    output's manifest when it is already up to date (nothing to write).
    """

    source: str
    input: str | None
    output: str
    split: str
    options: dict[str, Any]
    max_count: int
    max_bytes: int
    seed: int | None
    fingerprint: str
    num_items: int = 0
    per_shard: int = 1
    spec: dict[str, Any] | None = None
    task: str = ""
    label_names: list[str] = dataclasses.field(default_factory=list)
    source_type: str = ""
    description: dict[str, Any] = dataclasses.field(default_factory=dict)
    listing_skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    # Options the user left out, chosen from the inputs (`_input_defaults`): `resize`,
    # `channels`, `notes` saying why (logged, kept in the split's manifest options), and
    # `image_format` png when `auto` meets inputs that are not mostly JPEG files.
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    done: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    current: Manifest | None = None

    @property
    def num_shards(self) -> int:
        """Shard slots in the layout (a slot whose inputs are all unreadable writes no file)."""
        return -(-self.num_items // self.per_shard)

    def positions(self, index: int) -> range:
        """Positions in the shuffled input order that shard `index` holds."""
        return range(index * self.per_shard, min((index + 1) * self.per_shard, self.num_items))


def partitions(num_shards: int, n: int) -> list[list[int]]:
    """`num_shards` shard indexes cut into at most `n` contiguous, near-equal partitions."""
    n = max(1, min(n, num_shards))
    bounds = [num_shards * k // n for k in range(n + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _progress_uri(output: str, split: str, indexes: list[int]) -> str:
    return storage.join(output, f"_progress-{split}-{min(indexes):06d}-{max(indexes) + 1:06d}.json")


def _progress_names(output: str, split: str, s3: storage.S3Config | None) -> list[str]:
    """This split's progress files in `output` (one per partition; the old single file too)."""
    pattern = re.compile(rf"^_progress-{re.escape(split)}(-\d{{6}}-\d{{6}})?\.json$")
    return [n for n in storage.list_names(output, s3) if pattern.match(n)]


def _recorded(
    output: str, split: str, fingerprint: str, per_shard: int, s3: storage.S3Config | None
) -> dict[int, dict[str, Any]]:
    """Shard records that earlier runs of the same inputs left in progress files (unverified)."""
    done: dict[int, dict[str, Any]] = {}
    for name in _progress_names(output, split, s3):
        done.update(_records_in(storage.join(output, name), fingerprint, per_shard, s3))
    return done


def _records_in(
    uri: str, fingerprint: str, per_shard: int, s3: storage.S3Config | None
) -> dict[int, dict[str, Any]]:
    """Shard records of one progress file, if written for this layout (unverified).

    The records are only hints (each shard is re-checked before it is reused), so a progress
    file the server cannot return (SeaweedFS answered InternalError for one written as it was
    killed) is ignored and that partition's shards are written again."""
    try:
        progress = _load_json(uri, s3) or {}
    except storage.S3ObjectError as exc:
        warnings.warn(f"ignoring an unreadable progress file: {exc}", stacklevel=2)
        return {}
    if (progress.get("layout"), progress.get("fingerprint"), progress.get("per_shard")) != (
        _LAYOUT,
        fingerprint,
        per_shard,
    ):
        return {}
    return {int(rec["index"]): rec for rec in progress.get("shards", [])}


def _load_item(item: Item, task: str, opts: SourceOptions) -> tuple[Any, dict, list] | str:
    """(raw arrays, spec, tar members) of one input, or the reason it cannot be read."""
    try:
        raw = item.load()
        s = _spec(raw, opts)
        if not s:
            raise ValueError("no modality decoded")
        return raw, s, _encode(item, raw, task, opts)
    except Exception as exc:  # noqa: BLE001 - any bad input is reported and skipped
        return f"{type(exc).__name__}: {exc}"


def _layout(
    items: list[Item], task: str, opts: SourceOptions, max_count: int, max_bytes: int
) -> tuple[dict[str, Any] | None, int]:
    """The reference spec (the first readable input's) and the samples per shard.

    Samples per shard is max_count, lowered so that PLAN_SAMPLES readable inputs at the head of
    the shuffled order, the largest of them times per_shard, fit in max_bytes: a function of
    the inputs and options alone, never of the number of workers.
    """
    spec, largest, seen = None, 0, 0
    failed: list[dict[str, str]] = []
    for item in items:
        loaded = _load_item(item, task, opts)
        if isinstance(loaded, str):
            failed.append({"input": item.origin, "reason": loaded})
        else:
            _, s, enc = loaded
            spec = spec or s
            if s == spec:
                largest = max(largest, sum(_member_bytes(len(d)) for _, d in enc))
                seen += 1
            else:
                failed.append({"input": item.origin, "reason": "shape/format differs"})
        if len(failed) >= EARLY_FAIL_TRIES and len(failed) > 3 * seen:
            # Most of the head of the shuffled order is unusable: say so before the full pass.
            _too_many_skipped(f"{len(failed)} of the first {len(failed) + seen} inputs", failed)
        if seen >= PLAN_SAMPLES:
            break
    per_shard = max_count if not largest else max(1, min(max_count, max_bytes // largest))
    return spec, per_shard


def plan_shards(
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
) -> ShardPlan:
    """Fix a split's shard layout from the seeded global order; find what earlier runs left.

    `plan.current` is set (and nothing else needs doing) when the output's manifest already
    holds this split from the same inputs and every shard of it verifies.
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
    if src.task != "segmentation" and (opts.ignore_label is not None or opts.label_names):
        raise UserError(
            f"{source}: --ignore-label / --label-names are for segmentation sources (segfolder, voc)"
        )
    total = len(items) + len(src.skipped)
    if len(src.skipped) > MAX_SKIPPED_FRACTION * total:
        _too_many_skipped(f"{len(src.skipped)} of {total} inputs of split {split!r}", src.skipped)
    old = _read_existing(storage.join(output, MANIFEST), output, s3)
    others = None
    if old is not None and set(old.splits) - {split}:
        others = old.modalities.get("image")
    defaults = _input_defaults(src, opts, others)
    audio = _audio_defaults(src, opts)
    defaults = {**defaults, **audio, "notes": defaults.get("notes", []) + audio.get("notes", [])}
    if not defaults["notes"]:
        del defaults["notes"]
    if opts.image_format == "auto" and not _mostly_jpeg(src.items):
        defaults["image_format"] = "png"  # the same bytes (and manifest) as an explicit png
    opts = _resolve(opts, defaults)
    if opts.label_names is not None:
        src.label_names = names_without_ignored(opts.label_names, opts.ignore_label)
    for note in defaults.get("notes", []):
        log(f"{split}: {note}")
    fp = _fingerprint(src, opts, split, max_count, max_bytes, seed)
    global _LAST_ITEMS
    _LAST_ITEMS = (fp, items)  # partitions written in this process need not list the inputs again
    plan = ShardPlan(
        source=source, input=None if input is None else str(input), output=output, split=split,
        options=dict(options), max_count=max_count, max_bytes=max_bytes, seed=seed,
        fingerprint=fp, num_items=len(items), task=src.task, label_names=list(src.label_names),
        source_type=src.type, description=dict(src.description),
        listing_skipped=list(src.skipped), defaults=defaults,
    )  # fmt: skip
    for stale in remove_stale_temp(output, split, s3):
        log(f"{split}: removed {Path(stale).name} (left by an interrupted write)")
    if old is not None and _up_to_date(old.splits.get(split), fp, output, s3):
        log(f"{split}: up to date ({len(old.splits[split].shards)} shards verify)")
        if not storage.is_s3(output):  # a run killed after its manifest left these behind
            for name in _progress_names(output, split, s3):
                storage.delete(storage.join(output, name))
        plan.current = old
        return plan
    plan.spec, plan.per_shard = _layout(items, src.task, opts, max_count, max_bytes)
    plan.done = _recorded(output, split, fp, plan.per_shard, s3)
    if plan.done:
        log(
            f"{split}: resuming after {len(plan.done)} of {plan.num_shards} recorded shard(s) "
            "(each re-checked before it is kept)"
        )
    return plan


def _write_shard(
    plan: ShardPlan, index: int, items: list[Item], opts: SourceOptions, s3: storage.S3Config | None
) -> dict[str, Any]:
    """Decode, encode and write shard `index`; returns its record (name None: nothing readable).

    An input that fails to decode, or whose shape/format differs from the plan's reference
    spec (the first readable input's), is recorded as skipped.
    """
    members: list[tuple[str, bytes]] = []
    skipped: list[dict[str, str]] = []
    stats, count = _Stats(), 0
    for pos in plan.positions(index):
        item = items[pos]
        loaded = _load_item(item, plan.task, opts)
        if isinstance(loaded, str):
            skipped.append({"input": item.origin, "reason": loaded})
            continue
        raw, s, enc = loaded
        if s != plan.spec:
            spec = plan.spec or {}
            diff = {
                k: s.get(k, {}).get("shape") for k in set(s) | set(spec) if s.get(k) != spec.get(k)
            }
            skipped.append(
                {
                    "input": item.origin,
                    "reason": f"shape/format {diff} differs from the first sample's; pass --resize / --clip-seconds",
                }
            )
            continue
        members.extend(enc)
        count += 1
        stats.add(raw)
    rec: dict[str, Any] = {"index": index, "name": None, "count": 0, "skipped": skipped}
    if count:
        name = shard_name(plan.split, index)
        data = build_tar(members)
        storage.write_bytes(storage.join(plan.output, name), data, s3)
        rec.update(
            name=name, count=count, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            stats=dataclasses.asdict(stats),
        )  # fmt: skip
    return rec


def _reusable(plan: ShardPlan, rec: dict[str, Any] | None, s3: storage.S3Config | None) -> bool:
    """Whether a recorded shard is still there with its recorded sha256 (or wrote no file)."""
    if rec is None:
        return False
    if rec.get("name") is None:
        return True
    return _shard_ok(storage.join(plan.output, rec["name"]), rec["sha256"], rec["bytes"], s3)


def write_partition(
    plan: ShardPlan,
    indexes: list[int],
    s3: storage.S3Config | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Write the shards `indexes` of `plan` (skipping recorded ones that verify); their records.

    Runs anywhere the inputs and output are reachable (another process, a Dask worker): it
    re-opens the source and checks it still has the plan's fingerprint. After each shard, the
    partition's progress file `_progress-{split}-{first:06d}-{end:06d}.json` is rewritten, so a
    killed partition loses at most the shard it was writing: the next attempt reads that file
    and keeps the shards it lists that still verify.
    """
    global _LAST_ITEMS
    log = log or (lambda msg: None)
    if not indexes:
        return []
    opts = _check_options(plan.options, plan.split, plan.max_count, plan.max_bytes)
    if _LAST_ITEMS is not None and _LAST_ITEMS[0] == plan.fingerprint:
        items = _LAST_ITEMS[1]  # planned in this process: the listing is a moment old
        opts = _resolve(opts, plan.defaults)
    else:
        src = open_source(plan.source, plan.input, plan.split, opts)
        opts = _resolve(opts, plan.defaults)
        if _fingerprint(src, opts, plan.split, plan.max_count, plan.max_bytes, plan.seed) != (
            plan.fingerprint
        ):
            raise UserError(
                f"{plan.source}: the inputs of split {plan.split!r} changed while sharding"
            )
        items = shuffled(src.items, plan.seed)
        _LAST_ITEMS = (plan.fingerprint, items)  # this worker's next partition reuses it
    uri = _progress_uri(plan.output, plan.split, indexes)
    # A retried or rescheduled partition (Prefect retry, Dask after a lost worker) finds what
    # its killed attempt recorded since the plan was made.
    done = {**plan.done, **_records_in(uri, plan.fingerprint, plan.per_shard, s3)}
    records: list[dict[str, Any]] = []
    for index in indexes:
        rec = done.get(index)
        if not _reusable(plan, rec, s3):
            rec = _write_shard(plan, index, items, opts, s3)
            progress = {
                "layout": _LAYOUT, "fingerprint": plan.fingerprint, "per_shard": plan.per_shard,
                "shards": [*records, rec],
            }  # fmt: skip
            storage.write_bytes(uri, _dump(progress), s3)
            what = f"{rec['count']} samples, {rec.get('bytes', 0)} bytes"
            log(f"{plan.split}: wrote {rec['name'] or f'nothing for shard {index}'} ({what})")
        assert rec is not None
        records.append(rec)
    return records


def _split_entry(plan: ShardPlan, done: list[dict[str, Any]], now: str) -> SplitInfo:
    """The manifest entry of the written split; an error if no sample could be read."""
    all_skipped = list(plan.listing_skipped) + [s for r in done for s in r.get("skipped", [])]
    shards = [
        ShardInfo(r["name"], r["count"], r["bytes"], r["sha256"]) for r in done if r.get("name")
    ]
    if not shards or plan.spec is None:
        reasons = "; ".join(f"{s['input']}: {s['reason']}" for s in all_skipped[:5])
        raise UserError(
            f"{plan.source}: no readable samples for split {plan.split!r} (e.g. {reasons})"
        )
    total = plan.num_items + len(plan.listing_skipped)
    if len(all_skipped) > MAX_SKIPPED_FRACTION * total:
        what = f"{len(all_skipped)} of {total} inputs of split {plan.split!r}"
        _too_many_skipped(what, all_skipped)
    opts = _resolve(
        _check_options(plan.options, plan.split, plan.max_count, plan.max_bytes), plan.defaults
    )
    defaults = {"defaults": plan.defaults["notes"]} if plan.defaults.get("notes") else {}
    return SplitInfo(
        num_samples=sum(s.count for s in shards),
        shards=shards,
        skipped=all_skipped,
        source={"type": plan.source_type, "input": plan.input, **plan.description},
        options={
            **_recorded_options(opts),
            "max_count": plan.max_count,
            "max_bytes": plan.max_bytes,
            "seed": plan.seed,
            **defaults,
        },
        fingerprint=plan.fingerprint,
        created=now,
    )


def _new_manifest(plan: ShardPlan, done: list[dict[str, Any]], now: str) -> Manifest:
    """The manifest of this split alone: task, labels, modalities (with image mean/std), targets."""
    assert plan.spec is not None
    spec = plan.spec
    total = _Stats()
    for r in done:
        if "stats" in r:
            total.merge(r["stats"])
    label_names = list(plan.label_names)
    opts = _check_options(plan.options, plan.split, plan.max_count, plan.max_bytes)
    if plan.task == "segmentation" and not label_names:
        # the paired layout is new in issue 15: class_0, ...; the others keep 0, 1, ...
        prefix = "class_" if plan.description.get("layout") == "paired" else ""
        label_names = [f"{prefix}{i}" for i in range(total.mask_max + 1)]
    elif plan.task == "segmentation" and total.mask_max >= len(label_names):
        raise UserError(
            f"{plan.source}: the labels of split {plan.split!r} hold class {total.mask_max} "
            f"(after --ignore-label), but there are {len(label_names)} label names "
            f"({', '.join(label_names[:5])}{', ...' if len(label_names) > 5 else ''})"
        )
    modalities = json.loads(json.dumps(spec))
    if "image" in modalities and total.n:
        mean = [a / total.n for a in total.s]
        modalities["image"]["mean"] = mean
        modalities["image"]["std"] = [
            max(b / total.n - m * m, 0.0) ** 0.5 for b, m in zip(total.ss, mean, strict=True)
        ]
    targets: dict[str, Any] = {}
    if plan.task == "segmentation":
        img = spec["image"]
        targets = {
            "mask": {"shape": [img["height"] * img["width"]], "dtype": "int64", "ignore_index": 255}
        }
        if opts.ignore_label is not None:  # the value in the label files stored as 255
            targets["mask"]["ignore_label"] = int(opts.ignore_label)
    return Manifest(
        format=FORMAT,
        tool="hip",
        tool_version=hip.__version__,
        created=now,
        task=plan.task,
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


def merge_shards(
    plan: ShardPlan,
    records: Iterable[dict[str, Any]],
    s3: storage.S3Config | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Write the manifest from every partition's shard records, last and atomically.

    Every shard slot of the plan must have a record; the split replaces its old entry in the
    output's manifest (other splits are kept), then the progress files and any temporary file
    a killed partition left (local output) are deleted.
    """
    log = log or (lambda msg: None)
    if plan.current is not None:
        return plan.current
    done = sorted(records, key=lambda r: int(r["index"]))
    missing = sorted(set(range(plan.num_shards)) - {int(r["index"]) for r in done})
    if missing or len(done) != plan.num_shards:
        raise UserError(
            f"{plan.split}: cannot write the manifest, shard(s) {missing[:10]} have no record"
        )
    manifest_uri = storage.join(plan.output, MANIFEST)
    old = _read_existing(manifest_uri, plan.output, s3)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    entry = _split_entry(plan, done, now)
    manifest = _new_manifest(plan, done, now)
    if old is not None:
        _merge_existing(manifest, old, plan.split, manifest_uri)
    manifest.splits[plan.split] = entry
    manifest.splits = dict(sorted(manifest.splits.items()))
    manifest.write(plan.output, s3)
    for name in _progress_names(plan.output, plan.split, s3):
        storage.delete(storage.join(plan.output, name), s3)
    for stale in remove_stale_temp(plan.output, plan.split, s3):  # a worker killed mid-write
        log(f"{plan.split}: removed {PurePosixPath(stale).name} (left by an interrupted write)")
    log(
        f"{plan.split}: {entry.num_samples} samples in {len(entry.shards)} shard(s), "
        f"{len(entry.skipped)} skipped"
    )
    return manifest


def worker_start_method() -> str:
    """`fork` when this process runs one thread on a platform that forks, else `spawn`.

    A forked worker starts in milliseconds and inherits the imports and the input listing of
    the plan (`_LAST_ITEMS`); a spawned one starts a fresh interpreter (~0.3 s of CPU on 2
    cores) and lists the inputs again. Forking a process with other threads could copy a lock
    one of them holds (a Prefect flow, a training loop), so those spawn.
    """
    forks = "fork" in multiprocessing.get_all_start_methods()
    return "fork" if forks and threading.active_count() == 1 else "spawn"


def _child_partition(
    plan: ShardPlan, indexes: list[int], s3: storage.S3Config | None, verbose: bool
) -> list[dict[str, Any]]:
    """`write_partition` in a worker process (printing its progress when `verbose`)."""
    return write_partition(
        plan, indexes, s3, functools.partial(print, flush=True) if verbose else None
    )


def shard(
    source: str,
    input: str | Path | None,
    output: str | Path,
    split: str = "train",
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    seed: int | None = DEFAULT_SHUFFLE_SEED,
    workers: int = 1,
    start_method: str | None = None,
    s3: storage.S3Config | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Manifest:
    """Write `source` (read from `input`) as WebDataset shards + manifest into `output`.

    Inputs are shuffled with `seed` (default 0, so the order is still deterministic):
    sorted inputs are sorted by class, and class-sorted shards starve training of mixed
    batches (a shuffle buffer cannot mix a large single-class run). `seed=None` keeps the
    sorted input order.

    `workers` > 1 writes contiguous partitions of the shard layout in that many processes; the
    shards and manifest are the same for every `workers`. `start_method` (`fork`, `forkserver`,
    `spawn`; default: see `worker_start_method`) is how those processes start.

    `options` are SourceOptions fields (limit, resize, channels, image_format, sample_rate,
    clip_seconds, audio_length, audio_crop, fps, video_size, pattern, split_pattern, preset,
    segments_csv, class_index_csv, mask_mode, images, labels, ignore_label, label_names).
    Images that differ in size or colour without `resize` / `channels` take the most common
    size (and RGB), as logged and recorded in the split's options (`defaults`); a split that
    would skip more than half its inputs is a UserError. Returns the manifest (with `root`).
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    plan = plan_shards(
        source, input, output, split, max_count=max_count, max_bytes=max_bytes, seed=seed,
        s3=s3, log=log, **options,
    )  # fmt: skip
    if plan.current is not None:
        return plan.current
    parts = partitions(plan.num_shards, workers)
    if len(parts) == 1:
        records = write_partition(plan, parts[0], s3, log)
    else:
        ctx = multiprocessing.get_context(start_method or worker_start_method())
        with concurrent.futures.ProcessPoolExecutor(len(parts), mp_context=ctx) as pool:
            futures = [
                pool.submit(_child_partition, plan, part, s3, log is not None) for part in parts
            ]
            records = [rec for f in futures for rec in f.result()]
    return merge_shards(plan, records, s3, log)
