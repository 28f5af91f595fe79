"""Issue 14 probe: what makes the tiny HiP classifier learn (CPU, seconds per run; not a test).

A bare loop with the trainer's pieces (AdamW param groups, warmup + cosine, grad clip 1.0) on
the built-in `mnist5k` digits (4,000 train / 1,000 held out), one knob changed at a time:

- `--norm none|dataset`: standardise the pixels (mean/std of the training split) first;
- `--pos-lr-mult F`: the position tables get F x the peak lr;
- `--pos-init official|coords`: official init (std 1/sqrt(M)) or 2-D sin/cos of the
  pixel coordinates (ours);
- `--pos-scale F`: multiply the position tables by F at init (the issue's "x30 at init");
- `--lr`, `--warmup`, `--steps`, `--batch`, `--label-smoothing`, `--pretrained CKPT`.

Prints one JSON line: held-out top-1, final train loss (mean of the last 20 steps), seconds.

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/probe_learning.py --steps 300 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F

from hip.data.dataset import builtin_dataset
from hip.model import create_task_model
from hip.train.optim import lr_factor, param_groups


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Train the tiny classifier once with `args`; return its numbers."""
    torch.manual_seed(args.seed)
    ds = builtin_dataset("mnist5k")
    tr, te = ds.arrays["train"], ds.arrays["test"]
    xtr, ytr = torch.from_numpy(tr["image"]), torch.from_numpy(tr["label"]).long()
    xte, yte = torch.from_numpy(te["image"]), torch.from_numpy(te["label"]).long()
    model = create_task_model("classification", "tiny", {"image": (784, 1)}, 10)
    if args.pretrained:
        from hip.checkpoint import load
        from hip.model import load_pretrained

        load_pretrained(model, load(args.pretrained)["model"])
    bb = model.backbone
    if args.norm == "dataset" and hasattr(bb, "input_norm"):
        bb.input_norm.set_mode("image", "dataset", xtr.mean(dim=(0, 1)), xtr.std(dim=(0, 1)))
    elif args.norm == "dataset":
        mean, std = xtr.mean(), xtr.std()
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if args.pos_init == "coords":
        from hip.model.positions import coordinate_table

        with torch.no_grad():
            bb.pos["image"].copy_(coordinate_table(784, 16, args.pos_coords_scale))
    if args.pos_scale != 1.0:
        with torch.no_grad():
            bb.pos["image"].mul_(args.pos_scale)
    groups = param_groups(model, 0.05)
    if args.pos_lr_mult != 1.0:
        pos = {id(p) for p in bb.pos.values()}
        nd = groups[1]["params"]
        groups[1]["params"] = [p for p in nd if id(p) not in pos]
        groups.append(
            {"params": [p for p in nd if id(p) in pos], "weight_decay": 0.0, "lr_mult": 1}
        )
    for g in groups:
        g["lr"] = args.lr * (args.pos_lr_mult if "lr_mult" in g else 1.0)
        g.pop("lr_mult", None)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, args.warmup, args.steps, 0.0)
    )
    gen = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.time()
    model.train()
    order = torch.randperm(len(xtr), generator=gen)
    pos = 0
    for _step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(xtr), generator=gen), 0
        idx = order[pos : pos + args.batch]
        pos += args.batch
        logits = model({"image": xtr[idx]})
        loss = F.cross_entropy(logits, ytr[idx], label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        if args.curve and (_step % 25 == 0 or _step == args.steps - 1):
            print(f"step {_step} loss {float(loss.detach()):.3f} grad_norm {gn:.2f}", flush=True)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    train_s = time.time() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(xte), 200):
            correct += int(
                (model({"image": xte[s : s + 200]}).argmax(-1) == yte[s : s + 200]).sum()
            )
    return {
        **{k: v for k, v in vars(args).items()},
        "top1": correct / len(xte),
        "loss_last20": sum(losses[-20:]) / 20,
        "loss_first20": sum(losses[:20]) / 20,
        "pos_std_end": float(bb.pos["image"].detach().std()),
        "train_s": round(train_s, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    """Parse the knobs, run once, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--norm", default="none", choices=("none", "dataset"))
    ap.add_argument("--pos-lr-mult", type=float, default=1.0)
    ap.add_argument("--pos-init", default="official", choices=("official", "coords"))
    ap.add_argument("--pos-coords-scale", type=float, default=1.0)
    ap.add_argument("--pos-scale", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--curve", action="store_true", help="print loss and grad norm every 25 steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(probe(args)), flush=True)


if __name__ == "__main__":
    main()
