"""Do the default recipes learn data they were never tuned on? (issue 14; CPU; not a test)

Four data sets (tests/new_data.py): scikit-learn's 8x8 handwritten digits (real, shipped in
the pip package) and coloured shapes on noise for images, tones by pitch contour for audio, a
disc and a bar to segment; they go the way a user's data goes:
`hip shard --input FOLDER` -> `hip finetune --data SHARDS --task TYPE` with nothing else but
the run folder, so every setting is the task type's default recipe (hip/configs/recipes/).
With `--mae`, also `hip pretrain --data` (the MAE recipe) and a finetune from it.
Prints one row per data set: the held-out headline metric beside chance.

    .venv/bin/python bench/new_data_evidence.py [--work DIR] [--steps N] [--mae] [--threads N]
        [--only NAME] [--override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import hip.cli  # noqa: E402
from hip.evaluate.run import config_for_checkpoint, evaluate  # noqa: E402
from tests import new_data  # noqa: E402

QUIET = ["tracking.enabled=false", "run.progress=false"]

SETS: dict[str, dict[str, Any]] = {
    "shapes (image classification, 32x32 RGB)": {
        "build": lambda d: new_data.shapes_folder(d, {"train": 500, "test": 100}),
        "task": "classification",
        "metric": "top1",
        "chance": 0.25,
    },
    "digits (image classification, scikit-learn's 8x8 digits at 16x16)": {
        "build": lambda d: new_data.sklearn_digits_folder(d),
        "task": "classification",
        "metric": "top1",
        "chance": 0.1,
    },
    "tones (audio classification, 8 kHz, 0.5 s)": {
        "build": lambda d: new_data.tones_folder(d, {"train": 300, "test": 75}),
        "task": "classification",
        "metric": "top1",
        "chance": 0.25,
    },
    "regions (segmentation, 32x32 RGB, 3 classes)": {
        "build": lambda d: new_data.regions_segfolder(d, {"train": 1500, "test": 300}),
        "task": "segmentation",
        "metric": "mIoU",
        "chance": None,  # all background: computed from the test masks
    },
}


def _hip(*argv: object) -> None:
    code = hip.cli.main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"hip {' '.join(map(str, argv))} exited {code}")


def _final_eval(run: Path) -> dict[str, float]:
    """`hip evaluate` of the run's last checkpoint on the whole test split."""
    last = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    cfg = config_for_checkpoint(str(last), [f"eval.out={run / 'eval'}", *QUIET[:1]])
    return {f"eval_{k}": float(v) for k, v in evaluate(cfg).result.metrics.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--steps", type=int, default=None, help="instead of the recipes' steps")
    ap.add_argument("--mae", action="store_true", help="also MAE-pretrain and finetune from it")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="a substring of one data set's name")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="added to every training run (an experiment, not the default recipe)")  # fmt: skip
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="hip-new-data-"))
    extra = [*QUIET]
    if args.steps:
        extra.append(f"optim.total_steps={args.steps}")
    if args.threads:
        extra.append(f"run.threads={args.threads}")
    extra += args.override
    rows = []
    for name, spec in SETS.items():
        if args.only and args.only not in name:
            continue
        slug = name.split()[0]
        folder = spec["build"](work / "data" / slug)
        shards = work / "shards" / slug
        for split in ("train", "test"):
            _hip("shard", "--input", folder / split, "--split", split, "--output", shards, "-q")
        arms: dict[str, Any] = {}
        t0 = time.time()
        _hip("finetune", "--data", shards, "--task", spec["task"],
             f"run.out={work / 'runs' / slug / 'scratch'}", *extra)  # fmt: skip
        arms["scratch"] = {
            **_final_eval(work / "runs" / slug / "scratch"),
            "wall_s": time.time() - t0,
        }
        if args.mae:
            t0 = time.time()
            pre = work / "runs" / slug / "mae"
            _hip("pretrain", "--data", shards, f"run.out={pre}", *extra)
            ck = sorted((pre / "checkpoints").glob("step-*.pt"))[-1]
            _hip("finetune", "--data", shards, "--task", spec["task"], "--pretrained", ck,
                 f"run.out={work / 'runs' / slug / 'from-mae'}", *extra)  # fmt: skip
            arms["from MAE"] = {
                **_final_eval(work / "runs" / slug / "from-mae"),
                "wall_s": time.time() - t0,
            }
        chance = spec["chance"]
        if chance is None:  # "all background": IoU of class 0 = its pixel share, others 0
            masks = [
                np.asarray(Image.open(m)) for m in sorted((folder / "testannot").glob("*.png"))
            ]
            share = float(np.mean([(m == 0).mean() for m in masks]))
            chance = round(share / len(new_data.REGIONS), 3)
        rows.append({"data": name, "metric": spec["metric"], "chance": chance, **arms})
        print(json.dumps(rows[-1], default=float), flush=True)
    print("| data set | metric | default recipe, from scratch | from MAE | chance |")
    print("|---|---|---|---|---|")
    for r in rows:
        m = r["metric"]
        mae = f"{r['from MAE']['eval_' + m]:.3f}" if "from MAE" in r else "-"
        print(f"| {r['data']} | {m} | {r['scratch']['eval_' + m]:.3f} | {mae} | {r['chance']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
