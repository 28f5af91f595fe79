"""Data sets of each kind that no recipe was tuned on (issue 14: "the recipes are general").

Generated (or, for scikit-learn's 8x8 digits, read from inside the pip package), so they ship
with the tests and cost no download; each is a folder in the layout a
user would hand to `hip shard` (class folders of PNG or wav files; the paired segmentation
layout `<split>/` + `<split>annot/`). The tasks are easy for a model that uses what and where
(shape, pitch contour, region) and impossible for one that does not: chance is 1/4, and
"all background" for segmentation.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
TONES = ("rising", "falling", "steady", "warble")
REGIONS = ("background", "disc", "bar")


def _noise_background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                colour: tuple[int, int, int]) -> None:  # fmt: skip
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:  # cross
        w = max(1.0, r / 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


def shapes_folder(root: Path, per_class: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """`root/<split>/<shape>/*.png`: one coloured shape of random size and place on noise."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _noise_background(rng, size)
                r = rng.uniform(size * 0.18, size * 0.32)
                cx, cy = rng.uniform(r, size - r, 2)
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, colour)  # type: ignore[arg-type]
                img.save(folder / f"{i:05d}.png")
    return root


def sklearn_digits_folder(root: Path, scale: int = 2) -> Path:
    """`root/<split>/<digit>/*.png`: scikit-learn's 1,797 handwritten digits (8x8, 17 grey
    levels; a real data set shipped inside the pip package, not MNIST), upscaled `scale` times
    (nearest neighbour), split as the built-in sources split (test: row % 5 == 0)."""
    from hip.data.sources import package_digits, package_split_rows

    x, y = package_digits("digits")
    for split in ("train", "test"):
        for r in package_split_rows("digits", len(x), split):
            folder = root / split / str(int(y[r]))
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(x[r].reshape(8, 8), "L")
            img.resize((8 * scale, 8 * scale), Image.NEAREST).save(folder / f"{r:05d}.png")
    return root


def _write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def tones_folder(root: Path, per_class: dict[str, int], rate: int = 8000, seconds: float = 0.5,
                 seed: int = 0) -> Path:  # fmt: skip
    """`root/<split>/<contour>/*.wav`: a tone whose pitch rises, falls, stays or warbles, at a
    random base pitch, loudness and onset, in noise."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    for split, count in per_class.items():
        for tone in TONES:
            folder = root / split / tone
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                length = int(n * rng.uniform(0.5, 0.8))
                start = int(rng.integers(0, n - length))
                t = np.arange(length) / rate
                f0 = rng.uniform(300, 900)
                if tone == "rising":
                    f = f0 * (1 + 1.5 * t / t[-1])
                elif tone == "falling":
                    f = f0 * (2.5 - 1.5 * t / t[-1])
                elif tone == "steady":
                    f = np.full_like(t, f0 * 1.6)
                else:
                    f = f0 * 1.6 * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(6, 10) * t))
                phase = 2 * np.pi * np.cumsum(f) / rate
                x = np.zeros(n)
                x[start : start + length] = rng.uniform(0.1, 0.5) * np.sin(phase)
                x += rng.normal(0, 0.02, n)
                _write_wav(folder / f"{i:05d}.wav", x, rate)
    return root


def regions_segfolder(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """The paired layout `root/<split>/*.png` + `root/<split>annot/*.png`: a disc (1) and a
    bar (2) of random colours and places on noise (0)."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = _noise_background(rng, size)
            mask = Image.new("L", (size, size), 0)
            draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
            r = rng.uniform(size * 0.12, size * 0.25)
            cx, cy = rng.uniform(r, size - r, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)  # type: ignore[arg-type]
            mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
            w, h = rng.uniform(size * 0.08, size * 0.15), rng.uniform(size * 0.4, size * 0.8)
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)  # type: ignore[arg-type]
            mdraw.rectangle([x0, y0, x0 + w, y0 + h], fill=2)
            img.save(root / split / f"{i:05d}.png")
            mask.save(root / f"{split}annot" / f"{i:05d}.png")
    return root
