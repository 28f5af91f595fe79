"""HiP forward + backward throughput at 224x224 (issue 2, section 5).

Measures a full-input training step (reconstruction MSE, the segmentation-like setting)
and an MAE step, with bf16 autocast on CUDA. Prints a table and writes JSON.

    python bench/hip_step.py                       # HiP-16, batch 32, CUDA
    python bench/hip_step.py --device cpu --batch-size 2 --steps 3 --preset tiny   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from hip.model import MAE, MAEConfig, create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    preset: str, mode: str, batch: int, steps: int, warmup: int, device: torch.device, side: int
) -> dict:
    """Time `steps` optimiser steps after `warmup`; returns img/s, step times and peak memory."""
    model = create_model(preset, {"image": (side * side, 3)}).to(device)
    mae = MAE(model, MAEConfig(mask_ratio=0.85)).to(device)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = {"image": torch.rand(batch, side * side, 3, device=device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            if mode == "mae":
                loss = mae(x).loss
            else:
                rec = model(x)["input_reconstruction"]["image"]
                loss = torch.nn.functional.mse_loss(rec.float(), x["image"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "preset": preset,
        "mode": mode,
        "batch": batch,
        "img_per_s": batch / med,
        "step_ms_median": 1e3 * med,
        "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
    }


def main() -> None:
    """Parse arguments, run each workload, print a table and write JSON."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="hip16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/hip_step.json")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = [
        measure(args.preset, mode, args.batch_size, args.steps, args.warmup, device, args.side)
        for mode in ("full", "mae")
    ]
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
    }
    print(f"{meta['device']}  torch {meta['torch']}  {meta['precision']}  {meta['date']}")
    print(
        f"{'workload':<16}{'batch':>6}{'img/s':>10}{'median ms':>11}{'min':>8}{'max':>8}{'peak GiB':>10}"
    )
    for r in rows:
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        print(
            f"{r['preset'] + ' ' + r['mode']:<16}{r['batch']:>6}{r['img_per_s']:>10.1f}"
            f"{r['step_ms_median']:>11.1f}{r['step_ms_min']:>8.1f}{r['step_ms_max']:>8.1f}{mem:>10}"
        )
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
