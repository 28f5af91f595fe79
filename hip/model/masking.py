"""Groupwise random masking: every group keeps the same number of tokens, so shapes stay dense."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hip.model.grouping import GroupPlan


@dataclass
class GroupMask:
    """Indices into the group axis of `[B, G, L, ...]`: what the encoder sees and what it predicts."""

    keep: torch.Tensor  # [B, G, n_keep] long: visible slots
    masked: (
        torch.Tensor
    )  # [B, G, L - n_keep] long: slots to reconstruct (padding included, see `real`)
    real: torch.Tensor  # [G, L] bool: False on padding slots (never kept, never in the loss)

    def masked_is_real(self) -> torch.Tensor:
        """Bool `[B, G, n_masked]`: which masked slots hold real tokens (the loss weight)."""
        g = torch.arange(self.real.shape[0], device=self.masked.device)[None, :, None]
        return self.real.to(self.masked.device)[g, self.masked]

    def dense(self) -> torch.Tensor:
        """Bool `[B, G, L]`, True where a slot is masked (for pictures and checks)."""
        b, g, n_keep = self.keep.shape
        out = torch.ones(b, g, self.real.shape[1], dtype=torch.bool, device=self.keep.device)
        return out.scatter_(2, self.keep, False)


def num_kept(plan: GroupPlan, mask_ratio: float) -> int:
    """Tokens kept per group: round((1 - ratio) * real tokens of the smallest group), at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    smallest = int(plan.real_tokens().sum(dim=1).min())
    return max(1, round((1.0 - mask_ratio) * smallest))


def groupwise_mask(
    plan: GroupPlan,
    batch_size: int,
    mask_ratio: float = 0.85,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> GroupMask:
    """Sample a uniform random subset of `num_kept` real slots per (sample, group).

    Implemented as argsort of uniform noise (no scatter): padding slots get noise 2.0 so
    they sort last and are never visible. Deterministic for a seeded `generator`.
    """
    real = plan.real_tokens()
    n_keep = num_kept(plan, mask_ratio)
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(
        batch_size, plan.num_groups, plan.group_length, generator=generator, device=gen_device
    )
    noise = noise.to(device) if device is not None else noise
    noise = noise.masked_fill(~real.to(noise.device), 2.0)
    order = noise.argsort(dim=-1)
    return GroupMask(
        keep=order[..., :n_keep], masked=order[..., n_keep:], real=real.to(noise.device)
    )


def gather_groups(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x `[B or 1, G, L, C]`, index `[B, G, N]` -> `[B, G, N, C]`."""
    x = x.expand(index.shape[0], -1, -1, -1)
    return torch.gather(x, 2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))
