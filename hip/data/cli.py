"""`hip shard ...` (write shards) and `hip shard verify PATH` (re-check checksums)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hip.data.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT, shard, verify
from hip.data.sources import (
    AUDIO_PRESETS,
    DEFAULT_SHUFFLE_SEED,
    IMAGE_PRESETS,
    SOURCES,
    detect_source,
)

EPILOG = """examples:
  hip shard --source imagefolder --input data/mnist/train --output shards/mnist --split train
  hip shard --source audiofolder --preset fsdd --input data/fsdd --split test --output s3://bucket/fsdd
  hip shard --source mnist5k --split train --output shards/mnist5k --max-count 1000 --seed 0
  hip shard --source segfolder --input data/camvid --split train --output shards/camvid \
      --ignore-label 11 --label-names sky,building,pole,road,pavement,tree,sign,fence,car,person,bike
  hip shard --source segfolder --images data/x/img --labels data/x/lab --output shards/x
  hip shard --input data/my_photos --output shards/photos   # source type told from the layout
  hip shard verify shards/mnist
"""


def register(subparsers: Any) -> None:
    """Add the `shard` subcommand (write) with its `verify` action."""
    p = subparsers.add_parser(
        "shard",
        help="write a data set as WebDataset shards + manifest, or verify them",
        description="Write a source as WebDataset shards + manifest.json (local dir or s3://), "
        "or `hip shard verify PATH` to re-check every shard's sha256.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["write", "verify"],
        default="write",
        help="write (default) or verify",
    )
    p.add_argument(
        "path", nargs="?", help="verify: the shard directory, s3:// prefix or manifest.json"
    )
    p.add_argument(
        "--source",
        choices=sorted(SOURCES),
        help="source type (default: told from the --input folder's layout)",
    )
    p.add_argument("--input", help="input folder / CSV (not needed for mnist5k, digits)")
    p.add_argument("--output", help="output directory or s3://bucket/prefix")
    p.add_argument(
        "--split", default=None, help="split name (default train; verify: only this split)"
    )
    p.add_argument(
        "--max-count", type=int, default=DEFAULT_MAX_COUNT, help="samples per shard at most"
    )
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="bytes per shard at most (approx.)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SHUFFLE_SEED,
        help="shuffle the input order with this seed (default 0: deterministic, classes mixed)",
    )
    p.add_argument(
        "--no-shuffle",
        dest="seed",
        action="store_const",
        const=None,
        help="keep the sorted input order (class by class for folder sources)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes writing partitions of the shards in parallel (same shards for any N)",
    )
    p.add_argument(
        "--limit", type=int, help="first N inputs per class (per source without classes)"
    )
    p.add_argument("--resize", help="images: N or HxW (resize to cover, then center crop)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="images: 1 grey or 3 RGB")
    p.add_argument(
        "--image-format",
        choices=["auto", "png", "jpeg"],
        default=None,
        help="stored image encoding (default auto: JPEG inputs stay JPEG, unchanged ones byte "
        "for byte; the rest PNG)",
    )
    p.add_argument("--sample-rate", type=int, help="audio: resample to this rate")
    p.add_argument("--clip-seconds", type=float, help="audio: pad with silence / crop to S seconds")
    p.add_argument("--audio-length", type=int, help="audio: pad / crop to N samples")
    p.add_argument(
        "--audio-samples-per-token",
        type=int,
        help="audio: consecutive samples per token (default 16, see docs/DATA.md)",
    )
    p.add_argument(
        "--audio-crop", choices=["start", "center"], default=None, help="where long clips are cut"
    )
    p.add_argument("--fps", type=float, help="video: frames per second kept")
    p.add_argument("--video-size", help="video: HxW of the decoded frames")
    p.add_argument(
        "--pattern", help="audiofolder: file-name regex with a named group (?P<label>...)"
    )
    p.add_argument(
        "--split-pattern", help="audiofolder: file-name regex selecting this split's files"
    )
    p.add_argument(
        "--preset",
        choices=sorted({**AUDIO_PRESETS, **IMAGE_PRESETS}),
        help="audiofolder: fsdd (pattern, splits, rate); imagefolder/csv: imagenet "
        "(224x224 RGB JPEG shards unless --resize/--channels/--image-format say otherwise)",
    )
    p.add_argument("--segments-csv", help="audioset: segment CSV (YTID, start, end, labels)")
    p.add_argument("--class-index-csv", help="audioset: class CSV (index,mid,display_name)")
    p.add_argument(
        "--mask-mode", choices=["auto", "binary", "index"], default=None, help="segfolder masks"
    )
    p.add_argument(
        "--images", help="segfolder: folder of images (with --labels; instead of --input)"
    )
    p.add_argument("--labels", help="segfolder: folder of index-PNG labels named as the images")
    p.add_argument(
        "--ignore-label",
        type=int,
        help="segmentation: label value that counts in no class (stored as 255), e.g. 11",
    )
    p.add_argument(
        "--label-names",
        help="segmentation: class names by label value, a,b,c or a file with one per line "
        "(default class_0, class_1, ...)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run)


_OPTION_KEYS = [
    "limit", "resize", "channels", "image_format", "sample_rate", "clip_seconds", "audio_length",
    "audio_crop", "fps", "video_size", "pattern", "split_pattern", "preset", "segments_csv",
    "class_index_csv", "mask_mode", "audio_samples_per_token", "images", "labels",
    "ignore_label", "label_names",
]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Dispatch `hip shard` / `hip shard verify`; returns the exit code."""
    if args.action == "verify":
        target = args.path or args.output
        if not target:
            print(
                "hip shard verify: error: give PATH (directory, s3:// prefix or manifest.json)",
                file=sys.stderr,
            )
            return 2
        problems = verify(target, args.split)
        for p in problems:
            print(f"FAILED {p}")
        if problems:
            print(f"{len(problems)} problem(s) in {target}", file=sys.stderr)
            return 1
        print(f"OK: every shard in {target} matches the manifest")
        return 0
    if args.path:
        print(
            f"hip shard: error: unexpected argument {args.path!r} (did you mean --input?)",
            file=sys.stderr,
        )
        return 2
    if args.source is None and (args.images or args.labels):
        args.source = "segfolder"
    if not args.output:
        print("hip shard: error: --output is required", file=sys.stderr)
        return 2
    if args.source is None:
        if not args.input:
            print("hip shard: error: give --input PATH (or --source NAME)", file=sys.stderr)
            return 2
        args.source, why = detect_source(args.input, args.split or "train")
        if not args.quiet:
            print(f"source: {args.source} ({why}; --source to choose)", flush=True)
    options = {k: getattr(args, k) for k in _OPTION_KEYS if getattr(args, k) is not None}
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    split = args.split or "train"
    manifest = shard(
        args.source, args.input, args.output, split,
        max_count=args.max_count, max_bytes=args.max_bytes, seed=args.seed, workers=args.workers,
        log=log, **options,
    )  # fmt: skip
    info = manifest.splits[split]
    print(
        f"{split}: {info.num_samples} samples, {len(info.shards)} shard(s), "
        f"{len(info.skipped)} skipped -> {args.output}"
    )
    if args.quiet:  # otherwise the log said it already
        for note in info.options.get("defaults", []):
            print(f"  {note}")
    for s in info.skipped[:20]:
        print(f"  skipped {s['input']}: {s['reason']}")
    return 0
