"""AdamW with decoupled weight decay groups, and linear warmup followed by cosine decay."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

NO_DECAY_WORDS = ("pos", "latents", "queries", "norm", "bias")


def peak_lr(optim_cfg: Any, global_batch: int) -> float:
    """`optim.lr` if set, else MAE's rule: base_lr x global_batch / 256."""
    if optim_cfg.lr is not None:
        return float(optim_cfg.lr)
    return float(optim_cfg.base_lr) * global_batch / 256.0


def split_params(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, not decayed) trainable `(name, param)`: no decay on biases, norms, positions, latents."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(w in name.lower() for w in NO_DECAY_WORDS):
            no_decay.append((name, p))
        else:
            decay.append((name, p))
    return decay, no_decay


def is_position_table(name: str) -> bool:
    """Whether a parameter name is one of HiP's learned position tables (`...pos.<modality>`)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] == "pos"


def param_order(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Parameter names in the optimizer's order (index i of an optimizer state dict = name i).

    With `optimizer`, its own groups decide the order (whatever groups it was built with).
    """
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    decay, no_decay = split_params(model)
    return [n for n, _ in decay + no_decay]


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, position_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Weight decay on matrices only: no decay on biases, norms, position tables, latents.

    With `position_lr_mult` != 1 the position tables get a group of their own whose peak lr
    is `lr x position_lr_mult` (ours: the tables start ~30x smaller than a pixel embedding,
    and at the common lr they hardly move in a short run; docs/BENCHMARKS.md, issue 14).
    """
    decay, no_decay = split_params(model)
    groups = [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {
            "params": [
                p for n, p in no_decay if not (position_lr_mult != 1.0 and is_position_table(n))
            ],
            "weight_decay": 0.0,
        },
    ]
    if position_lr_mult != 1.0:
        if lr is None:
            raise ValueError("position_lr_mult needs the peak lr")
        tables = [p for n, p in no_decay if is_position_table(n)]
        if tables:
            groups.append({"params": tables, "weight_decay": 0.0, "lr": lr * position_lr_mult})
    return groups


def optim_state_to_names(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An index-keyed optimizer state dict re-keyed by parameter name (FSDP's full format)."""
    return {
        "state": {names[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]
        ],
    }


def optim_state_to_indices(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A name-keyed optimizer state dict re-keyed by index (torch.optim's own format)."""
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[k]: v for k, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]
        ],
    }


def build_optimizer(
    model: nn.Module, optim_cfg: Any, lr: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, with fused kernels on CUDA and CPU.

    Fused is one kernel per parameter group instead of a dozen foreach launches, and it can
    skip a non-finite step on the device (`hip.train.step`).
    """
    return torch.optim.AdamW(
        param_groups(
            model,
            float(optim_cfg.weight_decay),
            lr,
            float(getattr(optim_cfg, "position_lr_mult", 1.0)),
        ),
        lr=lr,
        betas=(float(optim_cfg.betas[0]), float(optim_cfg.betas[1])),
        eps=float(optim_cfg.eps),
        fused=device.type in ("cuda", "cpu"),
    )


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then cosine down to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: Any
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine as a LambdaLR (its state dict holds only plain numbers)."""
    warmup, total, floor = (
        int(optim_cfg.warmup_steps),
        int(optim_cfg.total_steps),
        float(optim_cfg.min_lr_ratio),
    )

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total, floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
