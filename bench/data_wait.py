"""Data side of the GPU throughput issue (issue 6, section 5): decode cost, loader workers, data wait.

In one run, on real data from ../shared/data (read-only; everything else goes to a temp
folder or --work):

1. shards the 60 ISBI 2012 EM images (512x512 grey), resized to 224x224 and replicated to
   RGB, repeated until the set has --samples images, with the project's own writer
   (`hip.data.shard`, imagefolder source over a folder of symlinks), once per encoding;
2. times the training loader's stages in one process over every sample: tar read, image
   decode (PIL), tensor conversion (`hip.data.loader.Decoder`) and batch collation
   (phases 2 and 3 use one torch thread, as a DataLoader worker does);
3. measures the training loader (`hip.data.loader`, what `hip.data.dataset` calls) in img/s
   with 0..--max-workers workers, and the data wait of a simulated consumer that needs
   one batch every batch/--target-img-s seconds (a GPU step: sleeps, leaving the CPUs free);
4. derives the workers needed to keep the data wait under --wait-frac of the step time
   at --target-img-s (measured when a tried worker count reaches it, else extrapolated
   from the per-worker rate, and said so);
5. runs the training loop (`hip.train.trainer.train`, `tiny` preset, MAE) on the 224x224
   shards with 0 and 1 workers and reads the data-wait fraction of its StepTimer from
   metrics.jsonl, plus the CPU regression baseline of docs/BENCHMARKS.md: `tiny` MAE at
   28x28, batch 32, 85% masking, 0 workers (mnist_png_subset shards, and the in-memory
   mnist5k source for comparison).

Prints a table last and writes JSON. Progress goes to stderr.

    .venv/bin/python bench/data_wait.py --out /tmp/data_wait.json
    .venv/bin/python bench/data_wait.py --samples 64 --side 64 --max-workers 1 --train-steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import hip.data as hd
from hip import storage
from hip.config import load_config
from hip.data.loader import Decoder, collate
from hip.data.shards import iter_tar_samples, shard_urls
from hip.model.modalities import to_float
from hip.runlog import read_metrics
from hip.train import trainer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = "isbi2012_em_membrane"
MNIST = "mnist_png_subset"
QUIET = ["tracking.enabled=false", "run.progress=false"]
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """One progress line on stderr, with the seconds since start."""
    print(f"[data_wait {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Any:
    """Run the block with `n` torch threads (None: unchanged), then restore the count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _int_list(what: str, low: int) -> Any:
    def parse(text: str) -> list[int]:
        try:
            values = sorted({int(t) for t in text.split(",") if t.strip()})
        except ValueError:
            raise argparse.ArgumentTypeError(f"comma-separated {what}, not {text!r}") from None
        if not values or values[0] < low:
            raise argparse.ArgumentTypeError(f"{what} must be >= {low}, got {text!r}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (argparse exits with a message on bad values)."""
    p = argparse.ArgumentParser(
        prog="data_wait.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pos, posf = _positive(int), _positive(float)
    p.add_argument("--out", default="bench/results/data_wait.json", help="JSON results file")
    p.add_argument("--work", help="keep shards and runs here (default: a temp dir, removed)")
    p.add_argument("--shared-data", default=str(SHARED_DATA), help="the read-only real data")
    p.add_argument("--samples", type=pos, default=1024, help="images in the set (ISBI repeated)")
    p.add_argument("--side", type=pos, default=224, help="images are resized to SIDE x SIDE")
    p.add_argument(
        "--formats", default="jpeg,png", help="stored encodings to measure (jpeg, png or both)"
    )
    p.add_argument("--shard-size", type=pos, default=128, help="samples per shard")
    p.add_argument("--batch-size", type=pos, default=64, help="loader batch (HiP-16 per GPU: 64)")
    p.add_argument(
        "--max-workers", type=int, default=os.cpu_count() or 1, help="loader workers tried: 0..N"
    )
    p.add_argument("--loader-batches", type=pos, default=16, help="batches timed per setting")
    p.add_argument(
        "--repeats", type=pos, default=2, help="loader throughput runs per setting (best kept)"
    )
    p.add_argument("--target-img-s", type=posf, default=1800.0, help="consumer rate to feed")
    p.add_argument("--wait-frac", type=posf, default=0.05, help="allowed data wait / step time")
    p.add_argument("--train-steps", type=int, default=30, help="training-loop steps (0: skip)")
    p.add_argument("--train-batch", type=pos, default=8, help="training-loop batch at SIDE")
    p.add_argument(
        "--train-workers", type=_int_list("worker counts", 0), default=[0, 1], help="e.g. 0,1"
    )
    p.add_argument("--train-format", default="jpeg", help="encoding the training loop reads")
    p.add_argument("--mnist-steps", type=int, default=60, help="28x28 baseline steps (0: skip)")
    p.add_argument(
        "--mnist-limit", type=pos, default=400, help="28x28 baseline: train digits per class"
    )
    p.add_argument(
        "--mnist-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="28x28 baseline also from the in-memory mnist5k source (no loader; ~5 s to load)",
    )
    p.add_argument(
        "--threads", type=pos, help="torch threads of the training loop (default: torch's)"
    )
    p.add_argument(
        "--mnist-threads",
        type=_int_list("thread counts", 1),
        help="28x28 baseline: one run per torch thread count, e.g. 1,2 (default: --threads)",
    )
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not args.formats or set(args.formats) - {"jpeg", "png"}:
        p.error(f"--formats: jpeg and/or png, not {','.join(args.formats)!r}")
    if args.max_workers < 0:
        p.error(f"--max-workers must be >= 0, got {args.max_workers}")
    if args.train_steps < 0 or args.mnist_steps < 0:
        p.error("--train-steps and --mnist-steps must be >= 0")
    if not args.wait_frac < 1:
        p.error(f"--wait-frac is a fraction below 1, got {args.wait_frac}")
    if args.train_steps and args.train_format not in args.formats:
        p.error(f"--train-format {args.train_format!r} is not among --formats")
    if args.samples < args.batch_size:
        p.error(f"--samples ({args.samples}) must be at least --batch-size ({args.batch_size})")
    for name in (ISBI, MNIST) if args.mnist_steps else (ISBI,):
        if not (Path(args.shared_data) / name).is_dir():
            p.error(f"--shared-data: no {name} folder in {args.shared_data}")
    return args


# ------------------------------------------------------------------ data


def isbi_folder(shared: Path, root: Path, samples: int) -> Path:
    """An imagefolder of symlinks: the 60 ISBI images repeated over class folders to `samples`."""
    src = shared / ISBI
    images = sorted((src / "train" / "image").glob("*.png")) + sorted((src / "test").glob("*.png"))
    if not images:
        raise SystemExit(f"no ISBI images under {src}")
    folder = root / "isbi_repeated"
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(samples):
        cls = folder / f"c{i // len(images):03d}"  # classes only to hold the repeats apart
        cls.mkdir(parents=True, exist_ok=True)
        f = images[i % len(images)]
        (cls / f"{f.parent.name}_{f.stem}{f.suffix}").symlink_to(f)
    return folder


def write_shards(folder: Path, out: Path, fmt: str, side: int, shard_size: int) -> dict[str, Any]:
    """Shard the folder with the project's writer; returns the manifest plus size and time."""
    t0 = time.perf_counter()
    # channels=3: the source keeps grey images grey; HiP-16's image input is (224*224, 3)
    manifest = hd.shard(
        "imagefolder",
        folder,
        out,
        "train",
        max_count=shard_size,
        seed=0,
        resize=side,
        channels=3,
        image_format=fmt,
    )
    seconds = time.perf_counter() - t0
    info = manifest.splits["train"]
    nbytes = sum(s.bytes for s in info.shards)
    return {
        "manifest": manifest,
        "path": str(out),
        "num_samples": info.num_samples,
        "num_shards": len(info.shards),
        "bytes": nbytes,
        "bytes_per_image": nbytes / info.num_samples,
        "token_shape": manifest.modalities["image"]["shape"],
        "shard_seconds": seconds,
        "skipped": len(info.skipped),
    }


# ------------------------------------------------------------------ decode cost


def decode_cost(
    manifest: hd.Manifest, batch: int, passes: int = 2, as_stored: bool = False
) -> dict[str, float]:
    """Per-image ms of each loader stage in this process, over every sample (best of `passes`).

    read: tar streaming (`iter_tar_samples`, page cache warm); image: PIL decode to uint8
    (what the Decoder does first); tensor: the rest of `Decoder` (tokens, float32, shape
    check); collate: stacking a batch; with `as_stored` (issue 17: uint8 batches) the
    tensor stage keeps uint8 and `to_float_ms` is the float conversion the training device
    then does (here on this CPU). Batches are decoded, collated and dropped one at a
    time like in the loader (holding every decoded float32 image, 600 KB each at 224x224,
    would add page faults the loader does not have). Best of several passes, because a
    shared machine only ever adds time.
    """
    urls = shard_urls(manifest, "train")
    decoder = Decoder(manifest, as_stored=as_stored)
    best: dict[str, float] = {}
    for _ in range(passes):
        t0 = time.perf_counter()
        raw = []
        for url in urls:
            with storage.open_read(url) as stream:
                raw.extend(iter_tar_samples(stream, url))
        t_read = time.perf_counter() - t0
        t_img = t_dec = t_col = t_float = 0.0
        for i in range(0, len(raw), batch):
            decoded = []
            for sample in raw[i : i + batch]:
                data = sample.get("image.jpg", sample.get("image.png"))
                t0 = time.perf_counter()
                with Image.open(io.BytesIO(data)) as img:
                    np.asarray(img, dtype=np.uint8)
                t1 = time.perf_counter()
                decoded.append(decoder(sample))
                t_img, t_dec = t_img + t1 - t0, t_dec + time.perf_counter() - t1
            t0 = time.perf_counter()
            collated = collate(decoded)
            t_col += time.perf_counter() - t0
            if as_stored:
                t0 = time.perf_counter()
                {k: to_float(v) for k, v in collated["inputs"].items()}
                t_float += time.perf_counter() - t0
        n = len(raw)
        # Decoder repeats the PIL decode: tensor time is its excess over the bare decode.
        this = {
            "read_ms": 1e3 * t_read / n,
            "image_decode_ms": 1e3 * t_img / n,
            "tensor_ms": 1e3 * max(0.0, t_dec - t_img) / n,
            "collate_ms": 1e3 * t_col / n,
            **({"to_float_ms": 1e3 * t_float / n} if as_stored else {}),
        }
        best = {k: min(v, best.get(k, math.inf)) for k, v in this.items()}
    best["total_ms"] = sum(best.values())
    best["one_process_img_s"] = 1e3 / best["total_ms"]
    best["images"] = n
    return best


# ------------------------------------------------------------------ loader


def loader_run(
    manifest: hd.Manifest,
    workers: int,
    batch: int,
    batches: int,
    step_s: float = 0.0,
    as_stored: bool = False,
) -> dict[str, float]:
    """Iterate the training loader; with `step_s` > 0 a consumer sleeps that long per batch.

    Throughput counts from the batch after the first `max(1, workers)` (worker start-up and
    the shuffle buffer's first fill are reported separately as `first_batch_s`).
    """
    it = hd.loader(
        manifest, "train", batch, train=True, num_workers=workers, batches_per_epoch=batches,
        as_stored=as_stored,
    )  # fmt: skip
    t_start = ready = time.perf_counter()
    stamps, waits = [], []
    for b in it:
        if as_stored:  # the consumer's (the training device's) conversion counts as its time
            {k: to_float(v) for k, v in b["inputs"].items()}
        got = time.perf_counter()
        stamps.append(got)
        waits.append(got - ready)  # time blocked in next(): the consumer's data wait
        if step_s:
            time.sleep(step_s)
        ready = time.perf_counter()
    skip = min(max(1, workers), len(stamps) - 1)
    span = stamps[-1] - stamps[skip - 1] if skip else stamps[-1] - t_start
    out = {
        "workers": workers,
        "batches": len(stamps),
        "first_batch_s": stamps[0] - t_start if stamps else math.nan,
    }
    if step_s:  # the StepTimer's definition: wait / (wait + step)
        steady = waits[skip:] or waits
        out["step_ms"] = 1e3 * step_s
        out["data_wait_frac"] = sum(steady) / (sum(steady) + step_s * len(steady))
    else:
        out["img_s"] = (len(stamps) - skip) * batch / span
    return out


def workers_needed(
    rates: dict[int, float], target: float, wait_frac: float, batch: int, one_process_img_s: float
) -> dict[str, Any]:
    """Smallest worker count feeding `target` img/s with wait < wait_frac of the step time.

    A loader delivering R img/s makes a consumer that needs batch/target seconds per step
    wait batch/R - batch/target per step, so it needs R >= target / (1 + wait_frac).
    Measured when a tried count reaches that; else extrapolated linearly from the best
    per-worker rate seen (one core per worker, the main process not counted).
    """
    step_s = batch / target
    need = target / (1.0 + wait_frac)
    out: dict[str, Any] = {
        "target_img_s": target,
        "step_ms": 1e3 * step_s,
        "wait_budget_ms": 1e3 * wait_frac * step_s,
        "required_img_s": need,
    }
    ok = [n for n, r in sorted(rates.items()) if r >= need]
    per_worker = max((r / n for n, r in rates.items() if n > 0), default=one_process_img_s)
    out["per_worker_img_s"] = per_worker
    out["per_worker_basis"] = (
        "best measured img/s per loader worker"
        if any(n > 0 for n in rates)
        else "one-process decode rate (no workers tried)"
    )
    if ok:
        out["workers"], out["basis"] = ok[0], "measured"
    else:
        out["workers"] = math.ceil(need / per_worker)
        out["basis"] = "extrapolated"
    # the same from the bare one-process decode cost: the floor if IPC and scheduling were free
    out["workers_from_decode_cost"] = math.ceil(need / one_process_img_s)
    if 1 in rates and 2 in rates:
        out["scaling_2_vs_1"] = rates[2] / (2 * rates[1])
    return out


# ------------------------------------------------------------------ training loop


def train_wait(
    run_dir: Path, overrides: list[str], steps: int, warm: int = 1
) -> dict[str, float | int]:
    """Run the training loop (tiny_mnist recipe + overrides); StepTimer numbers from metrics.jsonl.

    `*_after_warmup` leave out the first `warm` steps (model warm-up, worker start-up and
    the shuffle buffer's first fill); `data_wait_frac_overall` is the total wait over the
    total step time.
    """
    cfg = load_config(
        "pretrain",
        "tiny_mnist",
        [f"run.out={run_dir}", f"optim.total_steps={steps}", "run.checkpoint_every=100000"]
        + QUIET
        + overrides,
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines: stdout keeps the table
        result = trainer.train(cfg)
    wall = time.perf_counter() - t0
    recs = read_metrics(run_dir / "metrics.jsonl")
    if len(recs) != steps or result.step != steps:
        raise RuntimeError(f"expected {steps} metric records, got {len(recs)}")
    later = recs[warm:] if len(recs) > warm else recs
    step_time = sum(r["step_time_s"] for r in recs)
    return {
        "steps": steps,
        "batch": int(cfg.data.batch_size),
        "num_workers": int(cfg.data.num_workers),
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall,
        "samples_per_s_median": statistics.median(r["samples_per_s"] for r in later),
        "samples_per_s_overall": len(recs) * int(cfg.data.batch_size) / step_time,
        "step_s_median": statistics.median(r["step_time_s"] for r in later),
        "data_wait_frac_overall": sum(r["data_wait_frac"] * r["step_time_s"] for r in recs)
        / step_time,
        "data_wait_frac_after_warmup": sum(r["data_wait_frac"] * r["step_time_s"] for r in later)
        / sum(r["step_time_s"] for r in later),
        "data_wait_frac_max_after_warmup": max(r["data_wait_frac"] for r in later),
        "first_step_data_wait_s": recs[0]["data_wait_frac"] * recs[0]["step_time_s"],
    }


# ------------------------------------------------------------------ report


def table(res: dict[str, Any]) -> str:
    """The human-readable summary."""
    m, s = res["machine"], res["settings"]
    lines = [
        f"data wait benchmark  {m['date_utc']}  {m['platform']}",
        f"{m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load average {m['loadavg_start']:.2f} -> {m['loadavg_end']:.2f}",
        f"{s['samples']} ISBI EM images {s['side']}x{s['side']} RGB, {s['shard_size']}/shard, "
        f"loader batch {s['batch_size']}",
        "",
        "decode cost, one process, ms per image (best of 2 passes over all samples):",
        f"{'format':<7}{'KB/img':>8}{'read':>8}{'decode':>8}{'tensor':>8}{'collate':>9}"
        f"{'total':>8}{'img/s':>8}",
    ]
    for fmt, r in res["formats"].items():
        d = r["decode"]
        lines.append(
            f"{fmt:<7}{r['shards']['bytes_per_image'] / 1024:>8.1f}{d['read_ms']:>8.3f}"
            f"{d['image_decode_ms']:>8.3f}{d['tensor_ms']:>8.3f}{d['collate_ms']:>9.3f}"
            f"{d['total_ms']:>8.3f}{d['one_process_img_s']:>8.0f}"
        )
    lines += [
        "",
        "issue 17: batches as stored (uint8), converted to float32 by the consumer; ms per image:",
        f"{'format':<7}{'tensor':>8}{'collate':>9}{'to_float':>9}{'total':>8}{'img/s':>8}"
        f"   loader img/s by workers (float32 -> uint8)",
    ]
    for fmt, r in res["formats"].items():
        d = r["decode_uint8"]
        pairs = ", ".join(
            f"{a['workers']}: {a['img_s']:.0f} -> {b['img_s']:.0f}"
            for a, b in zip(r["loader"], r["loader_uint8"], strict=True)
        )
        lines.append(
            f"{fmt:<7}{d['tensor_ms']:>8.3f}{d['collate_ms']:>9.3f}{d['to_float_ms']:>9.3f}"
            f"{d['total_ms']:>8.3f}{d['one_process_img_s']:>8.0f}   {pairs}"
        )
    w = next(iter(res["formats"].values()))["workers_needed"]
    lines += [
        "",
        f"training loader, img/s with N workers; data wait of a consumer needing a batch every "
        f"{w['step_ms']:.1f} ms ({w['target_img_s']:.0f} img/s):",
        f"{'format':<7}{'workers':>8}{'img/s':>9}{'first batch s':>15}{'wait @target':>14}",
    ]
    for fmt, r in res["formats"].items():
        for row, sim in zip(r["loader"], r["simulated_consumer"]):
            lines.append(
                f"{fmt:<7}{row['workers']:>8}{row['img_s']:>9.0f}{row['first_batch_s']:>15.2f}"
                f"{sim['data_wait_frac']:>13.0%}"
            )
    lines += [
        "",
        f"workers for {w['target_img_s']:.0f} img/s with data wait < "
        f"{s['wait_frac']:.0%} of the step ({w['wait_budget_ms']:.2f} ms of "
        f"{w['step_ms']:.1f} ms): need >= {w['required_img_s']:.0f} img/s",
    ]
    for fmt, r in res["formats"].items():
        w = r["workers_needed"]
        how = "MEASURED" if w["basis"] == "measured" else "EXTRAPOLATED (too few cores here)"
        lines.append(
            f"  {fmt}: {w['workers']} workers, {how}; {w['per_worker_img_s']:.0f} img/s per "
            f"worker measured; {w['workers_from_decode_cost']} from the bare decode cost"
        )
    if res.get("training"):
        lines += [
            "",
            "training loop (tiny preset, MAE 85%, CPU fp32), StepTimer from metrics.jsonl:",
            f"{'run':<28}{'workers':>8}{'threads':>8}{'batch':>6}{'steps':>6}{'samples/s':>10}"
            f"{'wait':>8}{'wait>1':>8}",
        ]
        for name, r in res["training"].items():
            lines.append(
                f"{name:<28}{r['num_workers']:>8}{r['torch_threads']:>8}{r['batch']:>6}{r['steps']:>6}"
                f"{r['samples_per_s_median']:>10.1f}{r['data_wait_frac_overall']:>8.1%}"
                f"{r['data_wait_frac_after_warmup']:>8.1%}"
            )
        lines.append("(samples/s: median step; wait: all steps; wait>1: after the first step)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every phase, print the table, write the JSON; returns the results."""
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    own_work = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="data_wait_"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "loadavg_start": os.getloadavg()[0],
        },
        "settings": {
            k: v for k, v in vars(args).items() if k not in {"out", "work", "shared_data"}
        },
        "data": {
            "source": f"{args.shared_data}/{ISBI} (train/image + test, 60 images)",
            "decode_and_loader_torch_threads": 1,
        },
        "formats": {},
        "training": {},
    }
    try:
        folder = isbi_folder(Path(args.shared_data), work, args.samples)
        step_s = args.batch_size / args.target_img_s
        for fmt in args.formats:
            log(f"{fmt}: sharding {args.samples} images at {args.side}x{args.side}")
            sh = write_shards(folder, work / f"shards_{fmt}", fmt, args.side, args.shard_size)
            manifest = sh.pop("manifest")
            log(
                f"{fmt}: {sh['num_shards']} shards, {sh['bytes_per_image'] / 1024:.1f} KB/img; "
                "timing decode stages"
            )
            # One torch thread, as in a DataLoader worker: the per-core cost. (Two OpenMP
            # threads on a busy 2-core machine made torch.stack in collate ~10x slower.)
            with torch_threads(1):
                dec = decode_cost(manifest, args.batch_size)
                dec_u8 = decode_cost(manifest, args.batch_size, as_stored=True)
                rows_u8 = [
                    max(
                        (
                            loader_run(manifest, n, args.batch_size, args.loader_batches, 0, True)
                            for _ in range(args.repeats)
                        ),
                        key=lambda r: r["img_s"],
                    )
                    for n in range(args.max_workers + 1)
                ]
                rows, sims = [], []
                for n in range(args.max_workers + 1):
                    log(f"{fmt}: loader with {n} worker(s)")
                    runs = [
                        loader_run(manifest, n, args.batch_size, args.loader_batches)
                        for _ in range(args.repeats)
                    ]
                    row = max(runs, key=lambda r: r["img_s"])  # a busy machine only slows
                    rows.append({**row, "img_s_all": [r["img_s"] for r in runs]})
                    sims.append(
                        loader_run(
                            manifest, n, args.batch_size, max(4, args.loader_batches // 2), step_s
                        )
                    )
            rates = {r["workers"]: r["img_s"] for r in rows}
            res["formats"][fmt] = {
                "shards": sh,
                "decode": dec,
                "decode_uint8": dec_u8,
                "loader": rows,
                "loader_uint8": rows_u8,
                "simulated_consumer": sims,
                "workers_needed": workers_needed(
                    rates,
                    args.target_img_s,
                    args.wait_frac,
                    args.batch_size,
                    dec["one_process_img_s"],
                ),
            }
        if args.train_steps:
            path = res["formats"][args.train_format]["shards"]["path"]
            for n in args.train_workers:
                log(
                    f"training loop: tiny on {args.side}x{args.side} {args.train_format}, "
                    f"{n} worker(s), {args.train_steps} steps"
                )
                res["training"][f"tiny {args.side}px {args.train_format} w{n}"] = train_wait(
                    work / f"run_{args.train_format}_w{n}",
                    [
                        f"data.manifest={path}",
                        f"data.batch_size={args.train_batch}",
                        f"data.num_workers={n}",
                        "data.eval_split=train",
                        "run.eval_batches=1",
                    ],
                    args.train_steps,
                )
        if args.mnist_steps:
            log("mnist baseline: sharding mnist_png_subset (28x28 grey)")
            mnist, limit = work / "shards_mnist", args.mnist_limit
            for split, n in (("train", limit), ("test", max(1, limit // 5))):
                # test: read by the loop's final evaluation (one batch)
                hd.shard("imagefolder", Path(args.shared_data) / MNIST, mnist, split, limit=n)
            base = ["data.batch_size=32", "mae.mask_ratio=0.85", "run.eval_batches=1"]
            for t in args.mnist_threads or [None]:
                tag = f" t{t}" if args.mnist_threads else ""
                log(f"mnist baseline: tiny_mnist, batch 32, {args.mnist_steps} steps, shards{tag}")
                with torch_threads(t):
                    res["training"][f"tiny 28px mnist shards{tag}"] = train_wait(
                        work / f"run_mnist_shards{tag.strip()}",
                        [f"data.manifest={mnist}", *base],
                        args.mnist_steps,
                    )
            if args.mnist_memory:
                log(f"mnist baseline: built-in mnist5k from memory ({args.mnist_steps} steps)")
                res["training"]["tiny 28px mnist5k memory"] = train_wait(
                    work / "run_mnist_memory", ["data.source=mnist5k", *base], args.mnist_steps
                )
    finally:
        torch.set_num_threads(threads_before)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    print(table(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        log(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
