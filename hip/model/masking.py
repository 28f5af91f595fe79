"""Groupwise random masking: every group keeps the same number of tokens, so shapes stay dense."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    """Tokens kept per group: round((1 - ratio) * real tokens of the smallest group), at least 1.

    Counted on the plan's host-side table, never on a device tensor (reading one back would
    make the host wait for the GPU).
    """
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
    real: torch.Tensor | None = None,
) -> GroupMask:
    """Sample a uniform random subset of `num_kept` real slots per (sample, group).

    Implemented as argsort of uniform noise (no scatter): padding slots get noise 2.0 so
    they sort last and are never visible. Deterministic for a seeded `generator`. `real`
    (`plan.real_tokens()` already on `device`) saves rebuilding and copying it every step.
    """
    device = torch.device(device) if device is not None else None
    if real is None:
        real = plan.real_tokens()
    n_keep = num_kept(plan, mask_ratio)
    shape = (batch_size, plan.num_groups, plan.group_length)
    if generator is not None and device is not None and generator.device != device:
        # A host generator for a GPU batch: draw one seed on the host and sample on the device,
        # instead of copying a [B, G, L] noise tensor (a blocking host-to-device copy) per step.
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        generator = _device_generator(device).manual_seed(seed)
    noise = torch.rand(
        shape, generator=generator, device=generator.device if generator is not None else device
    )
    real = real.to(noise.device)
    noise = noise.masked_fill(~real, 2.0)
    order = noise.argsort(dim=-1)
    return GroupMask(keep=order[..., :n_keep], masked=order[..., n_keep:], real=real)


_DEVICE_GENERATORS: dict[torch.device, torch.Generator] = {}


def _device_generator(device: torch.device) -> torch.Generator:
    """One reusable generator per device (reseeded on every use, so sharing it is safe)."""
    if device not in _DEVICE_GENERATORS:
        _DEVICE_GENERATORS[device] = torch.Generator(device=device)
    return _DEVICE_GENERATORS[device]


def gather_groups(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x `[B or 1, G, L, C]`, index `[B, G, N]` -> `[B, G, N, C]`."""
    x = x.expand(index.shape[0], -1, -1, -1)
    return torch.gather(x, 2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def gather_positions(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table `[G, L, E]` (a learned parameter), index `[B, G, N]` -> `[B, G, N, E]`.

    An embedding lookup on the flattened table: its backward accumulates straight into
    `[G*L, E]`, where `gather_groups` on a batch-expanded table would first materialise a
    `[B, G, L, E]` gradient and scatter into it.
    """
    g, n_slots, _ = table.shape
    offsets = torch.arange(g, device=index.device).mul_(n_slots).view(1, g, 1)
    return F.embedding(index + offsets, table.reshape(g * n_slots, -1))
