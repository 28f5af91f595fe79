"""Training-step speed of HiP and its peers, measured side by side in one run (issue 6).

Every workload is one optimiser step (forward, backward, clip, AdamW) on random data of the
real shapes. HiP steps are the training loop's own (`hip.train.step.compute_loss`, `autocast`,
`hip.train.optim.build_optimizer`, `hip.train.step.clip_and_step`, one read of loss and
gradient norm per step). FLOPs are counted once per workload with `torch.utils.flop_counter`
on the meta device (no memory, no time: the same kernels' shapes; attention in its math form).

    python bench/perf.py                        # the main table: HiP-16/HiP-256 and the peers
    python bench/perf.py --ablate               # HiP-16 with each technique switched in turn
    python bench/perf.py --scaling              # time and FLOP per sample vs image side
    python bench/perf.py --flops-only           # GFLOP/img of every workload, no timing
    python bench/perf.py --tiny --device cpu    # every path on small models (smoke run, tests)

Peers come from PyPI: timm's ViT-B/16 (transformers' ViT when timm is missing: timm needs a
torchvision that matches torch), transformers' ViTMAE (75% mask, 8 x 512 decoder) and
transformers' Perceiver IO with learned positions on raw 224x224 pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hip.model import MAE, MAEConfig, create_model, create_task_model
from hip.model.blocks import HiPBlock
from hip.train.optim import build_optimizer
from hip.train.step import autocast, clip_and_step, compute_loss

HIP_WORKLOADS = ("hip16_mae", "hip16_full", "hip16_classify", "hip256_mae")
PEER_WORKLOADS = ("vit_b16", "mae_vit_b16", "perceiver_io")
WORKLOADS = HIP_WORKLOADS + PEER_WORKLOADS
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
# Reference points measured on an H100 on 2026-11-25 (issue 6): img/s of the train step.
REFERENCE_IMG_S = {
    "vit_b16": 2540,
    "mae_vit_b16": 3230,
    "perceiver_io": 88,
    "official_hip16_jax_bf16_full_b64": 631,
    "official_hip256_jax_bf16_full_b64": 611,
}
OPTIM = SimpleNamespace(weight_decay=0.05, betas=(0.9, 0.95), eps=1e-8)


@dataclass
class Settings:
    """How one workload is built and run."""

    device: torch.device
    precision: str = "bf16"  # bf16 autocast, or fp32
    batch: int = 64
    side: int = 224
    compile: str = "none"  # none | model | blocks
    cuda_graphs: bool = False  # torch.compile(mode="reduce-overhead")
    sdpa: str = "auto"  # auto | flash | efficient | cudnn | math
    fused: bool = True  # fused AdamW (and the on-device non-finite skip)
    read_each_step: bool = True  # the loop's one read of loss/grad norm per step
    mae_gather_first: bool = True  # MAE embeds only the kept tokens
    tiny: bool = False  # small models of the same families (smoke runs)
    profile: bool = False  # after timing, profile 3 steps: the top operators by device time


@dataclass
class Runner:
    """A built workload: `loss()` is forward + loss, `step()` one whole optimiser step."""

    model: nn.Module
    loss: Callable[[], torch.Tensor]
    step: Callable[[], None]
    impl: str


# -- workloads -----------------------------------------------------------------------------


def _hip_preset(name: str, s: Settings) -> str:
    return "tiny" if s.tiny else name.split("_")[0]


def _compiled(model: nn.Module, s: Settings) -> nn.Module:
    """The module to call: eager, compiled whole, or with every HiP block compiled."""
    if s.compile == "blocks":
        for m in model.modules():
            if isinstance(m, HiPBlock):
                m.compile()
        return model
    if s.compile == "model" or s.cuda_graphs:
        return torch.compile(model, mode="reduce-overhead" if s.cuda_graphs else None)
    return model


def _embed_then_gather(mae: MAE, inputs: Any, mask: Any) -> torch.Tensor:
    """The pre-issue-6 MAE input path (embed all tokens, then gather), for the ablation."""
    from hip.model.masking import gather_groups

    return gather_groups(mae.model.group_inputs(inputs), mask.keep)


def build_hip(name: str, s: Settings, batch: int) -> tuple[nn.Module, dict, str]:
    """A HiP workload: the model, one batch in the loop's format, and the loop's task name."""
    d = s.device
    tokens = s.side * s.side
    mods = {"image": (tokens, 3)}
    preset, kind = _hip_preset(name, s), name.split("_")[1]
    batch_data: dict[str, Any] = {"inputs": {"image": torch.rand(batch, tokens, 3, device=d)}}
    if kind == "mae":
        model: nn.Module = MAE(create_model(preset, mods), MAEConfig(mask_ratio=0.85))
        if not s.mae_gather_first:
            model.visible_tokens = _embed_then_gather.__get__(model)  # type: ignore[method-assign]
        task = "mae"
    elif kind == "full":  # the segmentation setting: every position decoded (21 VOC classes)
        model = create_task_model("segmentation", preset, mods, 21)
        batch_data["mask"] = torch.randint(0, 21, (batch, tokens), device=d)
        task = "segmentation"
    else:
        model = create_task_model("classification", preset, mods, 1000)
        batch_data["label"] = torch.randint(0, 1000, (batch,), device=d)
        task = "classification"
    return model.to(d), batch_data, task


def build_peer(name: str, s: Settings, batch: int) -> tuple[nn.Module, Callable, str]:
    """A peer from PyPI: the model, its loss function of (model, x, y), and what it is."""
    import transformers as tf

    d, side, tiny = s.device, s.side, s.tiny
    x = torch.rand(batch, 3, side, side, device=d)
    y = torch.randint(0, 1000, (batch,), device=d)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    small["intermediate_size"] = 128
    if name == "vit_b16":
        try:
            import timm

            size = "vit_tiny_patch16_224" if tiny else "vit_base_patch16_224"
            model = timm.create_model(size, pretrained=False, img_size=side, num_classes=1000)
            impl = f"timm {timm.__version__} {size}"
            hf = False
        except ImportError:
            cfg = tf.ViTConfig(
                image_size=side, patch_size=16, num_labels=1000, **(small if tiny else {})
            )
            model = tf.ViTForImageClassification(cfg)
            impl = f"transformers {tf.__version__} ViTForImageClassification (timm not installed)"
            hf = True

        def loss(m: nn.Module) -> torch.Tensor:  # m: the model as called (maybe compiled)
            logits = m(pixel_values=x).logits if hf else m(x)
            return F.cross_entropy(logits.float(), y)

    elif name == "mae_vit_b16":
        extra = {}
        if tiny:
            extra = {**small, "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1}
            extra.update(decoder_num_attention_heads=2, decoder_intermediate_size=64)
        cfg = tf.ViTMAEConfig(image_size=side, patch_size=16, mask_ratio=0.75, **extra)
        model = tf.ViTMAEForPreTraining(cfg)
        impl = f"transformers {tf.__version__} ViTMAEForPreTraining (75% mask, 8x512 decoder)"

        def loss(m: nn.Module) -> torch.Tensor:
            return m(pixel_values=x).loss

    elif name == "perceiver_io":
        # deepmind/vision-perceiver-learned's published shape: 512 x 1024 latents, 8 blocks of
        # 6 self-attention layers (weights shared across blocks), cross-attention to every pixel.
        shape = dict(num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6)
        if tiny:
            shape = dict(num_latents=16, d_latents=64, num_blocks=1, num_self_attends_per_block=1)
        cfg = tf.PerceiverConfig(
            d_model=512,
            num_self_attention_heads=8 if not tiny else 2,
            num_cross_attention_heads=1,
            image_size=side,
            num_labels=1000,
            **shape,
        )
        model = tf.PerceiverForImageClassificationLearned(cfg)
        impl = f"transformers {tf.__version__} PerceiverForImageClassificationLearned"

        def loss(m: nn.Module) -> torch.Tensor:
            return F.cross_entropy(m(inputs=x).logits.float(), y)

    else:
        raise ValueError(f"unknown peer {name!r}")
    return model.to(d), loss, impl


def build(name: str, s: Settings, batch: int | None = None) -> Runner:
    """Build workload `name` at `batch` (default `s.batch`) with the settings' techniques."""
    batch = batch or s.batch
    if name in HIP_WORKLOADS:
        model, data, task = build_hip(name, s, batch)
        # The loop's host-side mask generator (none on the meta device, where FLOPs are counted).
        generator = torch.Generator().manual_seed(0) if s.device.type != "meta" else None
        fwd = _compiled(model, s)
        preset = _hip_preset(name, s)

        def loss_fn() -> torch.Tensor:
            return compute_loss(fwd, data, task, generator)

        impl = f"hip {preset} ({task})"
    elif name in PEER_WORKLOADS:
        model, peer_loss, impl = build_peer(name, s, batch)
        fwd = _compiled(model, s)

        def loss_fn() -> torch.Tensor:
            return peer_loss(fwd)

    else:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(model, OPTIM, 1e-4, s.device)
    if not s.fused:
        groups = [
            {"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups
        ]
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=OPTIM.betas, eps=OPTIM.eps, foreach=True)

    def sdpa() -> contextlib.AbstractContextManager:  # a fresh one per use: not re-entrant
        if s.sdpa == "auto":
            return contextlib.nullcontext()
        return sdpa_kernel([SDPA_BACKENDS[s.sdpa]])

    def step() -> None:
        with sdpa(), autocast(s.device, "bf16" if s.precision == "bf16" else "fp32"):
            loss = loss_fn()
        with sdpa():
            loss.backward()
        norm, stepped = clip_and_step(params, opt, loss, 1.0)
        if s.read_each_step or not stepped:
            read = torch.stack([loss.detach().float(), norm.float()]).tolist()
            if not stepped and all(map(math.isfinite, read)):
                opt.step()
        opt.zero_grad(set_to_none=True)

    return Runner(model=model, loss=loss_fn, step=step, impl=impl)


# -- measuring -----------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing boundaries only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(name: str, s: Settings) -> float:
    """FLOP of one forward + backward per sample, counted on the meta device at batch 2.

    The optimiser adds no matmul FLOPs; attention runs in its math form there, which the
    counter sees as the same two matmuls the fused kernels do. A model that reads values
    back (`.item()`, which the meta device cannot) is counted on the real device at batch 1.
    """
    plain = dataclasses.replace(s, compile="none", cuda_graphs=False)
    try:
        return _count(name, dataclasses.replace(plain, device=torch.device("meta")), 2)
    except (RuntimeError, NotImplementedError):
        return _count(name, plain, 1)


def _count(name: str, s: Settings, batch: int, parts: dict | None = None) -> float:
    with s.device:
        runner = build(name, s, batch)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel([SDPBackend.MATH]):
        runner.loss().backward()
    if parts is not None:
        parts.update(_breakdown(counter, batch))
    return counter.get_total_flops() / batch


def _breakdown(counter: FlopCounterMode, batch: int) -> dict[str, dict[str, float]]:
    """GFLOP per image of each HiP block and the reconstruction head, split into attention
    (the two SDPA matmuls) and the rest (projections and MLPs): where a HiP step's work is."""
    out: dict[str, dict[str, float]] = {}
    for module, ops in counter.get_flop_counts().items():
        parts = module.split(".")
        if "blocks" in parts and parts.index("blocks") == len(parts) - 2:
            key = "block " + parts[-1]
        elif parts[-1] == "reconstruction_head":
            key = "reconstruction head"
        else:
            continue
        attn = sum(v for op, v in ops.items() if "bmm" in str(op) or "attention" in str(op))
        total = sum(ops.values())
        out[key] = {"gflop": total / batch / 1e9, "attention_gflop": attn / batch / 1e9}
    return out


def time_steps(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> dict:
    """Per-step times after `warmup` (CUDA events, so timing adds no synchronisation)."""
    for _ in range(warmup):
        step()
    sync(device)
    times: list[float] = []
    t0 = time.perf_counter()
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        marks[0].record()
        for i in range(steps):
            step()
            marks[i + 1].record()
        sync(device)
        times = [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(steps)]
    else:
        for _ in range(steps):
            a = time.perf_counter()
            step()
            times.append(time.perf_counter() - a)
    wall = time.perf_counter() - t0
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": wall / steps,
    }


def profile_steps(step: Callable[[], None], device: torch.device, top: int = 25) -> list[dict]:
    """Where a step's time goes: the operators with the most self time over 3 steps
    (device time on CUDA, CPU time elsewhere), as share of the total."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [
        {
            "op": e.key,
            "ms_per_step": getattr(e, attr) / 1e3 / 3,
            "share": getattr(e, attr) / total,
            "calls_per_step": e.count / 3,
        }
        for e in events[:top]
    ]


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul TFLOP/s measured now (best of 3 timings), the denominator of MFU."""
    n, reps = (8192, 10) if device.type == "cuda" else (2048, 2)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12)
    return best


def measure(name: str, s: Settings, steps: int, warmup: int, peak: float) -> dict:
    """One row: img/s, step times, GFLOP/img, TFLOP/s, MFU, peak memory (or the error)."""
    row: dict[str, Any] = {"workload": name, "batch": s.batch, "side": s.side}
    row.update(compile=s.compile, precision=s.precision, sdpa=s.sdpa, fused=s.fused)
    try:
        flops = count_flops(name, s)
    except Exception as exc:  # noqa: BLE001 - a row says what failed, the run goes on
        flops = float("nan")
        row["flops_error"] = f"{type(exc).__name__}: {exc}"
    row["gflop_per_img"] = flops / 1e9
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(s.device)
    try:
        runner = build(name, s)
        row["impl"] = runner.impl
        row.update(time_steps(runner.step, s.device, steps, warmup))
        if s.profile:
            row["profile"] = profile_steps(runner.step, s.device)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        return row
    finally:
        runner = None  # free the model before the next workload
    row["img_per_s"] = s.batch / row["median_s"]
    row["tflops"] = flops * row["img_per_s"] / 1e12
    row["mfu"] = row["tflops"] / peak if peak > 0 else float("nan")
    row["peak_mem_gib"] = (
        torch.cuda.max_memory_allocated(s.device) / 2**30 if s.device.type == "cuda" else None
    )
    return row


# name -> (what it measures, the settings it changes from the main run's)
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("the main run's settings", {}),
    "eager": ("no torch.compile", {"compile": "none"}),
    "compile-blocks": ("torch.compile per HiP block", {"compile": "blocks"}),
    "compile-model": ("torch.compile of the whole model", {"compile": "model"}),
    "cuda-graphs": ("CUDA graphs (compile mode reduce-overhead)", {"cuda_graphs": True}),
    "fp32": ("no bf16 autocast", {"precision": "fp32"}),
    "foreach-adamw": ("AdamW foreach, not fused (host decides the skip)", {"fused": False}),
    "no-step-read": ("without the loop's one read of loss per step", {"read_each_step": False}),
    "sdpa-flash": ("SDPA flash kernel only", {"sdpa": "flash"}),
    "sdpa-efficient": ("SDPA memory-efficient kernel only", {"sdpa": "efficient"}),
    "sdpa-cudnn": ("SDPA cuDNN kernel only", {"sdpa": "cudnn"}),
    "sdpa-math": ("SDPA math (unfused) only", {"sdpa": "math"}),
    "mae-embed-all": ("MAE embeds every token, then gathers", {"mae_gather_first": False}),
}


def ablate(s: Settings, steps: int, warmup: int, peak: float, names: list[str]) -> list[dict]:
    """HiP-16 full and MAE steps under each variant of the techniques (issue 6, section 3)."""
    rows = []
    for variant in names:
        changes = ABLATIONS[variant][1]
        for name in ("hip16_full", "hip16_mae"):
            if name == "hip16_full" and "mae_gather_first" in changes:
                continue
            if s.device.type != "cuda" and (
                changes.get("cuda_graphs") or changes.get("sdpa") in ("flash", "efficient", "cudnn")
            ):
                continue  # CUDA-only kernels
            _progress(f"ablation {variant}: {name}")
            row = measure(name, dataclasses.replace(s, **changes), steps, warmup, peak)
            rows.append({"variant": variant, **row})
    return rows


def scaling(s: Settings, sides: list[int], steps: int, warmup: int) -> dict:
    """Time and FLOP per sample vs image side for HiP-16 (full input) and ViT-B/16."""
    out: dict[str, Any] = {"sides": sides, "batch": s.batch, "series": {}}
    for name in ("hip16_full", "vit_b16"):
        series = []
        for side in sides:
            _progress(f"scaling {name} at {side}x{side}")
            row = measure(name, dataclasses.replace(s, side=side), steps, warmup, 0.0)
            series.append(
                {
                    "side": side,
                    "pixels": side * side,
                    "s_per_sample": row.get("median_s", float("nan")) / s.batch,
                    "gflop_per_sample": row["gflop_per_img"],
                    **({"error": row["error"]} if "error" in row else {}),
                }
            )
        out["series"][name] = series
        out.setdefault("slope_224_512", {})[name] = _slopes(series)
    return out


def _slopes(series: list[dict]) -> dict[str, float]:
    """log-log slopes of time and FLOP per sample against pixels, from 224 to 512."""
    by_side = {r["side"]: r for r in series}
    hi = by_side.get(512, series[-1])
    lo = by_side.get(224, series[-2])
    lo = series[0] if lo is hi else lo
    dx = math.log(hi["pixels"] / lo["pixels"])
    return {
        "from_side": lo["side"],
        "to_side": hi["side"],
        "time": math.log(hi["s_per_sample"] / lo["s_per_sample"]) / dx,
        "flops": math.log(hi["gflop_per_sample"] / lo["gflop_per_sample"]) / dx,
    }


def plot_scaling(result: dict, path: Path) -> None:
    """Log-log plot of time and GFLOP per sample against pixels, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, series in result["series"].items():
        px = [r["pixels"] for r in series]
        slope = result["slope_224_512"][name]
        axes[0].loglog(
            px,
            [r["s_per_sample"] * 1e3 for r in series],
            "o-",
            label=f"{name} (slope {slope['time']:.2f})",
        )
        axes[1].loglog(
            px,
            [r["gflop_per_sample"] for r in series],
            "o-",
            label=f"{name} (slope {slope['flops']:.2f})",
        )
    for ax, what in zip(axes, ("ms per sample (train step)", "GFLOP per sample (train step)")):
        ax.set_xlabel("pixels per image")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(result.get("title", "cost vs input size"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# -- the run -------------------------------------------------------------------------------


def _progress(msg: str) -> None:
    print(f"[perf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def environment(device: torch.device) -> dict:
    """Machine, card and versions, stored with every result."""
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    for pkg in ("transformers", "timm"):
        try:
            meta[pkg] = __import__(pkg).__version__
        except ImportError:
            meta[pkg] = None
    return meta


def format_table(rows: list[dict], title: str) -> str:
    """The rows as an aligned text table."""
    head = f"{'workload':<34}{'batch':>6}{'img/s':>10}{'med ms':>9}{'min':>8}{'max':>8}{'GFLOP/img':>11}{'TFLOP/s':>9}{'MFU':>6}{'GiB':>7}"
    lines = [title, head]
    for r in rows:
        label = (r.get("variant", "") + ": " if "variant" in r else "") + r["workload"]
        if "error" in r:
            lines.append(f"{label:<34}{r['batch']:>6}  error: {r['error'][:90]}")
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        lines.append(
            f"{label[:33]:<34}{r['batch']:>6}{r['img_per_s']:>10.1f}{1e3 * r['median_s']:>9.1f}"
            f"{1e3 * r['min_s']:>8.1f}{1e3 * r['max_s']:>8.1f}{r['gflop_per_img']:>11.1f}"
            f"{r['tflops']:>9.2f}{r['mfu']:>6.2f}{mem:>7}"
        )
    return "\n".join(lines)


def format_profile(row: dict) -> str:
    """A workload's top operators, one line each."""
    lines = [f"profile {row['workload']}: top operators by self time"]
    for p in row["profile"]:
        lines.append(
            f"  {p['share']:>5.1%} {p['ms_per_step']:>9.2f} ms/step {p['calls_per_step']:>6.0f}x  {p['op'][:70]}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; every list is checked before any model is built."""
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batch-size", type=int, default=64 if cuda else 2)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--steps", type=int, default=20 if cuda else 3)
    p.add_argument("--warmup", type=int, default=5 if cuda else 1)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    p.add_argument(
        "--compile", choices=("none", "model", "blocks"), default="model" if cuda else "none"
    )
    p.add_argument("--sdpa", choices=("auto", *SDPA_BACKENDS), default="auto")
    p.add_argument("--tiny", action="store_true", help="small models of every family (smoke run)")
    p.add_argument(
        "--profile", action="store_true", help="also profile 3 steps per workload (top operators)"
    )
    p.add_argument("--flops-only", action="store_true", help="count GFLOP/img, time nothing")
    p.add_argument(
        "--ablate",
        nargs="?",
        const="all",
        default=None,
        metavar="VARIANTS",
        help="comma-separated variants or 'all': "
        + "; ".join(f"{k} ({v[0]})" for k, v in ABLATIONS.items()),
    )
    p.add_argument(
        "--scaling", nargs="?", const="64,128,224,384,512", default=None, metavar="SIDES"
    )
    p.add_argument("--out", default="bench/results/perf.json")
    p.add_argument("--plot", default="docs/scaling.png", help="where --scaling writes its PNG")
    args = p.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    if args.ablate is not None:
        args.ablate = list(ABLATIONS) if args.ablate == "all" else args.ablate.split(",")
        bad = [v for v in args.ablate if v not in ABLATIONS]
        if bad:
            p.error(f"unknown ablation(s) {bad}; choose from {', '.join(ABLATIONS)}")
    if args.scaling is not None:
        try:
            args.scaling = [int(v) for v in args.scaling.split(",")]
        except ValueError:
            p.error(f"--scaling takes comma-separated image sides, got {args.scaling!r}")
        if len(args.scaling) < 2 or min(args.scaling) < 16:
            p.error("--scaling needs at least two image sides of 16 pixels or more")
    if min(args.batch_size, args.steps, args.side) < 1 or args.warmup < 0:
        p.error("--batch-size, --steps and --side must be positive, --warmup >= 0")
    if args.device.startswith("cuda"):
        want = torch.device(args.device).index or 0
        seen = torch.cuda.device_count() if cuda else 0
        if want >= seen:
            p.error(f"--device {args.device}: no such CUDA device ({seen} visible)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen measurements; print a table last and write JSON to `--out`."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    s = Settings(
        device=device,
        precision=args.precision,
        batch=args.batch_size,
        side=args.side,
        compile=args.compile,
        sdpa=args.sdpa,
        tiny=args.tiny,
        profile=args.profile,
    )
    result: dict[str, Any] = {"meta": environment(device), "settings": vars(args).copy()}
    result["settings"]["device"] = str(device)
    tables = []
    if args.flops_only:
        rows = []
        for name in args.workloads:
            _progress(f"counting FLOPs: {name}")
            row: dict[str, Any] = {"workload": name, "gflop_per_img": count_flops(name, s) / 1e9}
            if name in HIP_WORKLOADS:
                row["parts"] = {}
                meta = dataclasses.replace(s, device=torch.device("meta"))
                _count(name, meta, 2, row["parts"])
            rows.append(row)
        result["flops"] = rows
        lines = ["GFLOP per image, one train step (forward + backward)"]
        for r in rows:
            lines.append(f"{r['workload']:<20}{r['gflop_per_img']:>10.1f}")
            for part, v in r.get("parts", {}).items():
                share = v["gflop"] / r["gflop_per_img"]
                lines.append(
                    f"    {part:<22}{v['gflop']:>8.1f} ({share:>4.0%}; attention {v['attention_gflop']:.1f})"
                )
        tables.append("\n".join(lines))
    else:
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        peak = matmul_peak_tflops(device, dtype)
        result["peak_tflops"] = {"dtype": str(dtype), "value": peak}
        _progress(f"{dtype} matmul peak: {peak:.1f} TFLOP/s")
        if args.ablate is None and args.scaling is None:
            rows = []
            for name in args.workloads:
                _progress(f"measuring {name}")
                rows.append(measure(name, s, args.steps, args.warmup, peak))
            result["results"] = rows
            result["comparisons"] = compare(rows, device)
            tables.append(
                format_table(
                    rows, f"training steps ({args.precision}, matmul peak {peak:.3g} TFLOP/s)"
                )
            )
            tables += [f"{k}: {v:.2f}" for k, v in result["comparisons"].items()]
            for r in rows:
                if r.get("profile"):
                    tables.append(format_profile(r))
        if args.ablate is not None:
            rows = ablate(s, args.steps, args.warmup, peak, args.ablate)
            result["ablations"] = rows
            tables.append(format_table(rows, "HiP-16 steps per technique variant"))
        if args.scaling is not None:
            sc = scaling(s, args.scaling, args.steps, args.warmup)
            sc["title"] = f"{result['meta']['device']}, {args.precision}, batch {args.batch_size}"
            result["scaling"] = sc
            plot_scaling(sc, Path(args.plot))
            lines = [f"time and FLOP per sample vs side (plot: {args.plot})"]
            for name, series in sc["series"].items():
                cells = "  ".join(
                    f"{r['side']}: {1e3 * r['s_per_sample']:.2f} ms / {r['gflop_per_sample']:.1f} GF"
                    for r in series
                )
                sl = sc["slope_224_512"][name]
                lines.append(
                    f"{name:<12}{cells}  slope {sl['from_side']}->{sl['to_side']}: time {sl['time']:.2f}, FLOP {sl['flops']:.2f}"
                )
            tables.append("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    m = result["meta"]
    print(
        f"\n{m['device']} | torch {m['torch']} | transformers {m['transformers']} | timm {m['timm']} | {m['date']}"
    )
    print("\n\n".join(tables))
    print(f"\nwrote {out}")
    return result


def compare(rows: list[dict], device: torch.device) -> dict[str, float]:
    """The issue's ratios: HiP-16 over the flat Perceiver (same run), and on a GPU over the
    official JAX bf16 step measured on an H100 (issue 6's reference)."""
    ips = {r["workload"]: r.get("img_per_s") for r in rows if r.get("img_per_s")}
    out = {}
    if "hip16_full" in ips and "perceiver_io" in ips:
        out["hip16_full / perceiver_io (target >= 10)"] = ips["hip16_full"] / ips["perceiver_io"]
    if "hip16_full" in ips and device.type == "cuda":
        ref = REFERENCE_IMG_S["official_hip16_jax_bf16_full_b64"]
        out["hip16_full / official JAX bf16 H100 (target >= 2.5)"] = ips["hip16_full"] / ref
    return out


if __name__ == "__main__":
    main()
