"""Sharding throughput (issue 17): `hip shard` with 1 and N worker processes vs a plain tar.

    .venv/bin/python bench/shard_throughput.py [--input ../shared/data/mnist_png_subset/train]
        [--workers 1 2] [--image-format png] [--max-count 1000]

Prints images/s and MB/s (input bytes read per second) for each worker count, and for
Python's tarfile packing the same input files unchanged (no decode/encode): the ceiling of
pure I/O + tar framing. Every run writes to a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

from hip.data import shard


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def main() -> None:
    """Measure and print one JSON line per configuration."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="../shared/data/mnist_png_subset/train")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--image-format", default="png")
    ap.add_argument("--max-count", type=int, default=1000)
    args = ap.parse_args()
    root = Path(args.input)
    files = _files(root)
    mb = sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with tarfile.open(Path(tmp) / "plain.tar", "w") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(root)))
        dt = time.perf_counter() - t
        print(json.dumps({"what": "plain tar", "images": len(files), "s": round(dt, 2),
                          "images_per_s": round(len(files) / dt), "MB_per_s": round(mb / dt, 1)}))  # fmt: skip
        for n in args.workers:
            out = Path(tmp) / f"w{n}"
            t = time.perf_counter()
            m = shard("imagefolder", root, out, "train", max_count=args.max_count,
                      image_format=args.image_format, workers=n)  # fmt: skip
            dt = time.perf_counter() - t
            k = m.splits["train"].num_samples
            print(json.dumps({"what": f"hip shard --workers {n}", "images": k, "s": round(dt, 2),
                              "images_per_s": round(k / dt), "MB_per_s": round(mb / dt, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
