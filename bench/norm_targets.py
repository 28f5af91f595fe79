"""Issue 16: MAE target normalisation off / per group / per image patch, on real data (CPU).

For each data set (../shared/data: mnist_png_subset, isbi2012_em_membrane) and each
`mae.norm_targets` variant, the project's own stages run with one fixed budget: MAE pretraining
of the `tiny` preset (`tiny_mnist` recipe) on shards, then the data set's finetuning preset from
that checkpoint; a from-scratch finetune with the same recipe and the trivial baseline are the
floor. Sharding and splits are `bench/evidence_real_data.py`'s (isbi: 64x64, images 0-23 train,
24-29 held out, the 30 unlabelled challenge images join MAE pretraining only).

The patch side is chosen per data set so a patch holds as many pixels as a group does
(mnist 28x28: 16 groups of 49 pixels = 1.75-row stripes vs 7x7 patches; isbi 64x64: 16 groups
of 256 pixels = 4-row stripes vs 16x16 patches, MAE's patch): only the shape differs.

Reported per variant: held-out masked MSE in pixel space (the reconstruction un-normalised with
the true statistics of the whole image, as MAE's figures do, so the normalised variants get
the local means of the hidden pixels for free), that leak alone as a baseline (predict the
group / patch mean), and the finetuned metric (mnist top-1; isbi mIoU and membrane IoU).

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/norm_targets.py [--datasets mnist,isbi]
       [--mnist-steps 300,300] [--isbi-steps 600,300] [--variants off,group,patch]
       [--seed 0] [--threads 1] [--out JSON] [--work DIR] [--shared-data PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_real_data import (  # noqa: E402  (the shared sharding and stage runner)
    COMMON,
    RECIPES,
    majority_baseline,
)
from learning_evidence import run as run_stage  # noqa: E402

from hip.evaluate.run import config_for_checkpoint, evaluate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PATCH = {"mnist": 7, "isbi": 16}  # pixels per patch = pixels per group (see the docstring)
VARIANTS = ("off", "group", "patch")


def finetune(
    name: str, setup: dict[str, Any], out: Path, steps: int, seed: int, extra: list[str]
) -> dict[str, Any]:
    """One finetune of the data set's preset; its held-out metrics (isbi: + per-class IoU)."""
    r = RECIPES[name]
    over = [
        *COMMON,
        f"data.manifest={setup['finetune_manifest']}",
        f"run.checkpoint_every={steps}",
        f"run.seed={seed}",
        *r.finetune,
        *extra,
    ]
    t0 = time.time()
    res, _ = run_stage("finetune", r.benchmark, out, steps, over)
    metrics = {k: float(v) for k, v in res.eval_metrics.items()}
    if name == "isbi":  # 0 = membrane, 1 = cell interior
        cfg = config_for_checkpoint(
            res.checkpoint, [f"eval.out={out / 'eval'}", "tracking.enabled=false"]
        )
        iou = [float(x) for x in evaluate(cfg).result.per_class["iou"]]
        metrics["membrane_iou"] = iou[0]
    return {"metrics": metrics, "wall_s": time.time() - t0}


def run_dataset(
    name: str, data_root: Path, work: Path, steps: tuple[int, int], variants: list[str], seed: int
) -> dict[str, Any]:
    """Shard once, then MAE + finetune per variant and one scratch finetune."""
    r = RECIPES[name]
    print(f"== {name}: sharding", flush=True)
    setup = r.prepare(data_root / r.folder, work)
    pre_steps, ft_steps = steps
    runs = work / "runs" / name
    out: dict[str, Any] = {
        "pretrain_steps": pre_steps,
        "finetune_steps": ft_steps,
        "patch": PATCH[name],
        "samples": setup["samples"],
        "trivial": 0.1 if name == "mnist" else majority_baseline(setup["finetune_manifest"]),
        "variants": {},
    }
    for v in variants:
        print(f"== {name}: MAE norm_targets={v}, {pre_steps} steps", flush=True)
        t0 = time.time()
        pre, _ = run_stage(
            "pretrain",
            "tiny_mnist",
            runs / f"pre_{v}",
            pre_steps,
            [
                *COMMON,
                f"data.manifest={setup['pretrain_manifest']}",
                f"run.checkpoint_every={pre_steps}",
                f"run.seed={seed}",
                f"mae.norm_targets={v}",
                f"mae.norm_patch={PATCH[name]}",
                *r.pretrain,
            ],
        )
        mae = {k: float(x) for k, x in pre.eval_metrics.items()}
        mae["wall_s"] = time.time() - t0
        print(f"== {name}: finetune from the {v} MAE, {ft_steps} steps", flush=True)
        ft = finetune(
            name, setup, runs / f"ft_{v}", ft_steps, seed, [f"task.pretrained={pre.checkpoint}"]
        )
        out["variants"][v] = {"mae": mae, "finetune": ft}
    print(f"== {name}: finetune from scratch, {ft_steps} steps", flush=True)
    out["scratch"] = finetune(name, setup, runs / "scratch", ft_steps, seed, [])
    return out


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per (data set, variant) plus the scratch and trivial rows."""
    head = (
        "| data set | norm_targets | MAE / finetune steps | held-out masked MSE, pixel space "
        "(/ per-pixel-mean baseline) | predict the leaked group/patch means | finetuned "
        "metric |\n|---|---|---|---|---|---|"
    )
    rows = []
    for name, r in results.items():
        if name.startswith("_"):
            continue
        budget = f"{r['pretrain_steps']} / {r['finetune_steps']}"

        def metric(m: dict[str, Any], name: str = name) -> str:
            """The headline metric of one finetune."""
            if name == "mnist":
                return f"top-1 {m['top1']:.3f}"
            return f"mIoU {m['mIoU']:.3f}, membrane IoU {m['membrane_iou']:.3f}"

        for v, res in r["variants"].items():
            mae = res["mae"]
            label = f"patch {r['patch']}x{r['patch']}" if v == "patch" else v
            leak = mae.get("target_stats_baseline_mse")
            rows.append(
                f"| {name} | {label} | {budget} | {mae['masked_mse']:.4f} "
                f"({mae['mse_vs_baseline']:.2f}) | {'-' if leak is None else f'{leak:.4f}'} | "
                f"{metric(res['finetune']['metrics'])} |"
            )
        rows.append(
            f"| {name} | (no MAE: scratch) | - / {r['finetune_steps']} | - | - | "
            f"{metric(r['scratch']['metrics'])} |"
        )
        t = r["trivial"]
        trivial = "top-1 0.100 (chance)" if name == "mnist" else f"mIoU {t['mIoU']:.3f} (all cell)"
        rows.append(f"| {name} | (trivial) | - | - | - | {trivial} |")
    return "\n".join([head, *rows])


def main() -> int:
    """Run the chosen data sets and variants; print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--datasets", default="mnist,isbi")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--mnist-steps", default="300,300", help="MAE steps,finetune steps")
    ap.add_argument("--isbi-steps", default="600,300", help="MAE steps,finetune steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/norm_targets.json")
    ap.add_argument("--work", default=None, help="shards and runs (default: a temporary folder)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        ap.error(f"variants must be among {VARIANTS}")
    work = Path(args.work or tempfile.mkdtemp(prefix="hip-norm-targets-")).resolve()
    results: dict[str, Any] = {}
    t0 = time.time()
    for name in [d for d in args.datasets.split(",") if d]:
        pre, ft = (int(s) for s in getattr(args, f"{name}_steps").split(","))
        results[name] = run_dataset(
            name, Path(args.shared_data), work, (pre, ft), variants, args.seed
        )
        Path(args.out).write_text(json.dumps(results, indent=1))
    results["_run"] = {"wall_s": time.time() - t0, "torch": torch.__version__, "work": str(work)}
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"total {results['_run']['wall_s']:.0f} s wall; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
