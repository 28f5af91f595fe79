"""Evidence that MAE pretraining helps, on the real data sets in ../shared/data (CPU; not a test).

For each data set the project's own stages run end to end: `hip.data.shard` writes shards,
`hip.train.trainer.train` MAE-pretrains the `tiny` preset on them, then finetunes it, and the same
finetuning recipe (same steps, batch, lr, seed) is trained from scratch for comparison; the
held-out metrics come from the training loop's final evaluation and from `hip.evaluate`.

- mnist_png_subset: 28x28 grey digits (ImageNet-style class folders), top-1 on the test folders.
- fsdd: spoken digits at 8 kHz, padded/cropped to 1 s at shard time, 64 samples per token seen
  through the log_spectrum front end; official
  split (recording index 0-4 = test), top-1.
- isbi2012_em_membrane: the 30 labelled EM images resized to 128x128 (`--isbi-size`); images 0-23 train, 24-29
  held out (the challenge's 30 test images have no labels; they join the MAE pretraining set
  only). mIoU (membrane / cell) against predicting "cell" everywhere.

Nothing is copied: shards, symlinked split folders and runs go to a temporary folder.
On a busy shared CPU use `--threads 1` (two torch threads competing with other jobs made each
step ~15x slower here). Results and timings: docs/BENCHMARKS.md.

Usage: .venv/bin/python bench/evidence_real_data.py [--shared-data PATH] [--out JSON]
       [--work DIR] [--datasets isbi,fsdd,mnist] [--steps-scale F] [--threads N] [--quick]

`--quick` runs a quarter of every budget on one thread: it checks that the table
regenerates and shows the direction, not the final numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hip.data as hd
from hip.evaluate.run import config_for_checkpoint, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_evidence import run as run_stage  # noqa: E402  (the shared stage runner)

REPO = Path(__file__).resolve().parent.parent
COMMON = ["tracking.enabled=false", "run.progress=false", "data.source=null"]
# Shuffle the input order at shard time: the sources list samples class by class, and the
# training loader's 1,000-sample shuffle buffer cannot mix a class-sorted 10,000-sample shard
# (every batch would hold one or two classes and the classifier would not learn).
SHARD_SEED = 0


@dataclasses.dataclass
class Recipe:
    """One data set: how to shard it and the pretraining / finetuning budgets."""

    name: str
    folder: str
    benchmark: str  # finetuning preset in hip/configs/benchmarks
    metric: str  # headline metric of the finetuned model
    pretrain_steps: int
    finetune_steps: int
    pretrain: list[str]  # overrides on the tiny_mnist pretraining preset
    finetune: list[str]  # overrides on the benchmark preset (both arms)
    prepare: Callable[[Path, Path], dict[str, Any]]  # (data folder, work dir) -> manifests, setup


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _counts(manifest: hd.Manifest) -> dict[str, int]:
    return {k: int(v.num_samples) for k, v in manifest.splits.items()}


def prepare_mnist(data: Path, work: Path) -> dict[str, Any]:
    """Shard the 10,000 train and 2,000 test PNGs (28x28 grey); pretraining uses the train split."""
    out = work / "shards" / "mnist"
    for split in ("train", "test"):
        man = hd.shard("imagefolder", data, out, split=split, seed=SHARD_SEED)
    return {
        "pretrain_manifest": str(out / "manifest.json"),
        "finetune_manifest": str(out / "manifest.json"),
        "samples": _counts(man),
        "input": "28x28 grey image = 784 tokens",
    }


def prepare_fsdd(data: Path, work: Path) -> dict[str, Any]:
    """Shard FSDD at its own 8 kHz, 1 s (8,000 samples; padded with silence or cropped at the end)."""
    out = work / "shards" / "fsdd"
    for split in ("train", "test"):
        man = hd.shard(
            "audiofolder",
            data,
            out,
            split=split,
            preset="fsdd",
            sample_rate=8000,
            audio_length=8000,
            seed=SHARD_SEED,
        )
    return {
        "pretrain_manifest": str(out / "manifest.json"),
        "finetune_manifest": str(out / "manifest.json"),
        "samples": _counts(man),
        "input": "8 kHz waveform padded/cropped to 1 s, 64 samples per token = 125 log spectra",
    }


def _link_split(src: Path, dst: Path, names: list[str], subdirs: tuple[str, ...]) -> None:
    for sub in subdirs:
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            link = dst / sub / n
            if not link.exists():
                link.symlink_to((src / sub / n).resolve())


def prepare_isbi(data: Path, work: Path, size: int = 128, n_train: int = 24) -> dict[str, Any]:
    """Held-out split of the 30 labelled images by symlinks; MAE set = train + unlabelled test."""
    labelled = sorted((data / "train" / "image").glob("*.png"), key=lambda p: int(p.stem))
    names = [p.name for p in labelled]
    views = work / "isbi_views"
    _link_split(data / "train", views / "seg" / "train", names[:n_train], ("image", "label"))
    _link_split(data / "train", views / "seg" / "test", names[n_train:], ("image", "label"))
    # MAE pretraining set (no labels): the train images plus the 30 unlabelled challenge test
    # images, as one imagefolder class; the held-out images are never in it.
    # Its `test` split (the held-out images, never trained on) only measures reconstruction.
    mae_sets = {
        "train": [("train", p) for p in labelled[:n_train]]
        + [("test", p) for p in sorted((data / "test").glob("*.png"))],
        "test": [("train", p) for p in labelled[n_train:]],
    }
    for split, files in mae_sets.items():
        folder = views / "mae" / split / "em"
        folder.mkdir(parents=True, exist_ok=True)
        for prefix, p in files:
            link = folder / f"{prefix}_{p.name}"
            if not link.exists():
                link.symlink_to(p.resolve())
    suffix = "" if size == 64 else f"_{size}"  # one --work can hold several sizes (64: as before)
    seg = work / "shards" / f"isbi{suffix}"
    for split in ("train", "test"):
        man = hd.shard("segfolder", views / "seg", seg, split=split, resize=size)
    mae = work / "shards" / f"isbi_mae{suffix}"
    for split in ("train", "test"):
        pre = hd.shard("imagefolder", views / "mae", mae, split=split, resize=size)
    return {
        "pretrain_manifest": str(mae / "manifest.json"),
        "finetune_manifest": str(seg / "manifest.json"),
        "samples": {**_counts(man), "mae_pretrain": _counts(pre)["train"]},
        "input": f"{size}x{size} grey image = {size * size} tokens (resized from 512x512)",
        "baseline": majority_baseline(str(seg / "manifest.json")),
    }


def majority_baseline(manifest: str) -> dict[str, float]:
    """mIoU / pixel accuracy on the test split of predicting the train split's majority class."""
    import torch

    from hip.task.metrics import confusion_matrix, mean_iou

    counts = torch.zeros(2, dtype=torch.long)
    for batch in hd.loader(manifest, "train", 8, train=False):
        m = batch["mask"]
        counts += torch.bincount(m[m != 255].reshape(-1), minlength=2)[:2]
    major = int(counts.argmax())
    cm = torch.zeros(2, 2, dtype=torch.long)
    for batch in hd.loader(manifest, "test", 8, train=False):
        cm += confusion_matrix(torch.full_like(batch["mask"], major), batch["mask"], 2)
    return {
        "class": major,
        "mIoU": mean_iou(cm),
        "pixel_acc": float(cm.diag().sum() / cm.sum()),
    }


RECIPES = {
    "mnist": Recipe(
        "mnist",
        "mnist_png_subset",
        "mnist",
        "top1",
        1000,
        3000,  # the mnist preset's steps (shifts + label smoothing: BENCHMARKS.md, sessions 4, 6)
        ["data.batch_size=32"],
        ["data.batch_size=32"],
        prepare_mnist,
    ),
    "fsdd": Recipe(
        "fsdd",
        "fsdd",
        "fsdd",
        "top1",
        2000,
        3000,  # the fsdd preset's steps
        # The MAE sees what the finetune sees: 64-sample tokens through the log_spectrum
        # front end, standardised per bin (the fsdd preset's model settings).
        [
            "data.batch_size=16",
            "data.audio_samples_per_token=64",
            "model.overrides.front_ends.audio=log_spectrum",
            "mae.norm_targets=off",
        ],
        ["data.batch_size=16"],
        prepare_fsdd,
    ),
    "isbi": Recipe(
        "isbi",
        "isbi2012_em_membrane",
        "isbi",
        "mIoU",
        600,
        1500,  # the isbi preset: 128x128, token queries, flips and quarter turns, 8-view eval
        ["data.batch_size=8"],
        ["data.batch_size=4"],
        prepare_isbi,
    ),
}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run `fn`; return its result, wall seconds and CPU seconds."""
    w0, c0 = time.time(), cpu_seconds()
    out = fn()
    return out, time.time() - w0, cpu_seconds() - c0


def run_recipe(
    r: Recipe,
    data_root: Path,
    work: Path,
    scale: float,
    tag: str = "",
    arms_to_run: tuple[str, ...] = ("pretrained", "scratch"),
) -> dict[str, Any]:
    """Shard, MAE-pretrain, finetune (pretrained and scratch) one data set; return its results.

    `tag` names the finetune runs' folders (`<arm>-<tag>`): a run folder resumes, so runs with
    other finetune overrides in the same --work need their own tag. The MAE run's folder is
    named by the hash of its overrides, so identical pretraining is done once per --work."""
    import hashlib

    print(f"== {r.name}: sharding {data_root / r.folder}", flush=True)
    setup, w_shard, c_shard = timed(lambda: r.prepare(data_root / r.folder, work))
    p_steps = max(1, round(r.pretrain_steps * scale))
    f_steps = max(1, round(r.finetune_steps * scale))
    runs = work / "runs" / r.name
    pre_over = [*COMMON, f"data.manifest={setup['pretrain_manifest']}", *r.pretrain]
    ft_over = [
        *COMMON,
        f"data.manifest={setup['finetune_manifest']}",
        f"run.checkpoint_every={f_steps}",
        *r.finetune,
    ]
    print(f"== {r.name}: MAE pretraining, {p_steps} steps", flush=True)
    pre_id = hashlib.sha256(repr((p_steps, pre_over)).encode()).hexdigest()[:8]
    (pre, _), w_pre, c_pre = timed(
        lambda: run_stage(
            "pretrain",
            "tiny_mnist",
            runs / f"pretrain-{pre_id}",
            p_steps,
            [*pre_over, f"run.checkpoint_every={p_steps}"],
        )
    )
    arms: dict[str, Any] = {}
    for arm, extra in (("pretrained", [f"task.pretrained={pre.checkpoint}"]), ("scratch", [])):
        if arm not in arms_to_run:
            continue
        print(f"== {r.name}: finetuning ({arm}), {f_steps} steps", flush=True)
        folder = runs / (f"{arm}-{tag}" if tag else arm)
        (res, _), w, c = timed(
            lambda extra=extra, folder=folder: run_stage(
                "finetune", r.benchmark, folder, f_steps, [*ft_over, *extra]
            )
        )
        metrics = dict(res.eval_metrics)
        if r.metric == "mIoU":  # per-class IoU from the evaluate stage
            cfg = config_for_checkpoint(
                res.checkpoint, [f"eval.out={folder / 'eval'}", "tracking.enabled=false"]
            )
            ev = evaluate(cfg)
            metrics["iou_per_class"] = [float(x) for x in ev.result.per_class["iou"]]
        first = sum(h["loss"] for h in res.history[:10]) / min(10, len(res.history))
        last = sum(h["loss"] for h in res.history[-10:]) / min(10, len(res.history))
        arms[arm] = {
            "metrics": metrics,
            "train_loss_first10": first,
            "train_loss_last10": last,
            "wall_s": w,
            "cpu_s": c,
        }
    hist = pre.history or [{"loss": float("nan")}]  # empty: the MAE run was already done
    k = min(10, len(hist))
    return {
        "setup": {
            **{k2: v for k2, v in setup.items() if not k2.endswith("_manifest")},
            "pretrain_steps": p_steps,
            "finetune_steps": f_steps,
            "pretrain_overrides": r.pretrain,
            "finetune_overrides": r.finetune,
            "benchmark_preset": r.benchmark,
        },
        "pretrain": {
            "metrics": pre.eval_metrics,
            "train_loss_first10": sum(h["loss"] for h in hist[:k]) / k,
            "train_loss_last10": sum(h["loss"] for h in hist[-k:]) / k,
            "wall_s": w_pre,
            "cpu_s": c_pre,
        },
        **arms,
        "shard_wall_s": w_shard,
        "shard_cpu_s": c_shard,
        "metric": r.metric,
    }


def _arm(result: dict[str, Any], arm: str, metric: str) -> str:
    return f"{result[arm]['metrics'][metric]:.3f}" if arm in result else "-"


def table(results: dict[str, Any]) -> str:
    """Markdown table: one row per data set, pretrained vs scratch on the headline metric."""
    head = (
        "| data set | train / test | input | pretrain steps | finetune steps | MAE masked MSE "
        "(/ per-pixel-mean baseline) | metric | finetuned from MAE | from scratch | "
        "trivial baseline |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for name, r in results.items():
        s, m = r["setup"], r["metric"]
        pm = r["pretrain"]["metrics"]
        base = "0.100 (chance)"
        if "baseline" in s:  # isbi masks: 0 = membrane, 1 = cell interior
            b = s["baseline"]
            base = f"{b['mIoU']:.3f} (all {['membrane', 'cell'][b['class']]})"
        rows.append(
            f"| {name} | {s['samples'].get('train')} / {s['samples'].get('test')} | {s['input']} | "
            f"{s['pretrain_steps']} | {s['finetune_steps']} | {pm['masked_mse']:.4g} "
            f"({pm['mse_vs_baseline']:.2f}) | {m} | {_arm(r, 'pretrained', m)} | "
            f"{_arm(r, 'scratch', m)} | {base} |"
        )
    return "\n".join([head, *rows])


def main() -> int:
    """Run the chosen data sets, print a table last and write the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/evidence_real_data.json", help="results JSON")
    ap.add_argument("--work", default=None, help="shards and runs (default: a temporary folder)")
    ap.add_argument("--datasets", default="isbi,fsdd,mnist", help="comma-separated subset")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step budget")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a quarter of every step budget, one torch thread (a smoke run of the table)",
    )
    ap.add_argument(
        "--pretrain-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="added to every data set's MAE overrides (repeatable)",
    )
    ap.add_argument(
        "--finetune-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="added to every data set's finetune overrides, both arms (repeatable)",
    )
    ap.add_argument("--pretrain-steps", type=int, default=None, help="instead of the recipe's")
    ap.add_argument("--finetune-steps", type=int, default=None, help="instead of the recipe's")
    ap.add_argument("--tag", default="", help="names the finetune run folders in --work")
    ap.add_argument("--arms", default="pretrained,scratch", help="which finetune arms to run")
    ap.add_argument("--isbi-size", type=int, default=128, help="isbi images resized to NxN")
    args = ap.parse_args()  # fmt: skip
    if args.quick:
        args.steps_scale = min(args.steps_scale, 0.25)
        args.threads = args.threads or 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data_root = Path(args.shared_data).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="hip-evidence-real-")).resolve()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        ap.error(f"unknown data set(s) {unknown}; known: {sorted(RECIPES)}")
    import torch

    results: dict[str, Any] = {}
    w0, c0 = time.time(), cpu_seconds()
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    for name in names:
        recipe = dataclasses.replace(
            RECIPES[name],
            pretrain=[*RECIPES[name].pretrain, *args.pretrain_override],
            finetune=[*RECIPES[name].finetune, *args.finetune_override],
            pretrain_steps=args.pretrain_steps or RECIPES[name].pretrain_steps,
            finetune_steps=args.finetune_steps or RECIPES[name].finetune_steps,
        )
        if name == "isbi" and args.isbi_size != 128:
            size = args.isbi_size
            recipe.prepare = lambda d, w, size=size: prepare_isbi(d, w, size=size)
        results[name] = run_recipe(recipe, data_root, work, args.steps_scale, args.tag, arms)
        Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    summary = {
        "wall_s": time.time() - w0,
        "cpu_s": cpu_seconds() - c0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "work": str(work),
    }
    Path(args.out).write_text(json.dumps({**results, "_run": summary}, indent=1, default=float))
    print(f"shards and runs in {work}; results in {args.out}")
    print(
        f"total: {summary['wall_s']:.0f} s wall, {summary['cpu_s']:.0f} s CPU "
        f"({summary['threads']} torch threads)"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
