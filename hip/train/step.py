"""One training step's pieces: precision, loss, and an update queued without waiting.

Imports only torch and the model code, so benchmarks (`bench/perf.py`) run the loop's own
step on a machine without the pipeline's services.

Reading a number back from the GPU (`float(loss)`, `.item()`, `if tensor:`) makes the host
wait until every queued kernel has run, so the next kernels start late. The update therefore
decides "skip this non-finite step" on the device where the optimizer can: fused AdamW
honours a `found_inf` tensor (the protocol `torch.amp.GradScaler` uses) and leaves
parameters, moments and its step count untouched when it is 1. The loop reads the loss and
gradient norm once, after the whole update is queued.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from hip.task import get_task


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` can skip a non-finite update by itself (fused kernels)."""
    return bool(optimizer.defaults.get("fused")) and getattr(
        optimizer, "_step_supports_amp_scaling", False
    )


def clip_and_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    clip: float,
    on_device: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Clip gradients to norm `clip` (0: no clipping), then step when it can skip on device.

    Returns the total gradient norm (a device tensor) and whether the optimizer step was
    taken here. When it was not (a non-fused optimizer, or `on_device=False`, as for FSDP's
    sharded parameters), the caller checks the numbers and calls `optimizer.step()` itself.
    """
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if not (on_device and skips_on_device(optimizer)):
        return norm, False
    bad = ~(torch.isfinite(norm) & torch.isfinite(loss.detach()))
    optimizer.found_inf = bad.to(torch.float32)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]
    return norm, True


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (precision auto or bf16); fp32 elsewhere."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def targets_of(batch: dict[str, Any], task: str) -> torch.Tensor:
    """The tensor a task trains on (its task type says which)."""
    return get_task(task).targets(batch)


def compute_loss(
    model: nn.Module, batch: dict[str, Any], task: str, generator: torch.Generator | None
) -> torch.Tensor:
    """The training loss of one batch, as the task type defines it."""
    return get_task(task).loss(model, batch, generator)
