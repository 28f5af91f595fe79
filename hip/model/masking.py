"""Groupwise random masking: every group keeps the same number of tokens, so shapes stay dense."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hip.model.grouping import GroupPlan


@dataclass
class GroupMask:
    """Indices into the group axis of `[B, G, L, ...]`: what the encoder sees and what it predicts.

    Every group keeps its own count of tokens (`kept[g]`, from its own real-token count), so
    each modality is masked at the configured ratio whatever its group size. The index tensors
    stay dense: `keep` has the largest count of any group and `masked` everything after the
    smallest, so a group's slots past its own count are fillers (see `keep_valid` and
    `masked_is_real`). Slots hold real tokens first (random order), then padding.
    """

    keep: torch.Tensor  # [B, G, K_max] long: visible slots (fillers past kept[g])
    masked: torch.Tensor  # [B, G, L - K_min] long: slots to reconstruct (fillers: see below)
    real: torch.Tensor  # [G, L] bool: False on padding slots (never visible, never in the loss)
    kept: torch.Tensor | None = None  # [G] long: visible tokens per group (None: K_max in all)

    def keep_valid(self) -> torch.Tensor | None:
        """Bool `[G, K_max]`: which `keep` slots are really visible (None: all of them)."""
        if self.kept is None:
            return None
        rank = torch.arange(self.keep.shape[-1], device=self.keep.device)
        return rank[None, :] < self.kept.to(self.keep.device)[:, None]

    def masked_is_real(self) -> torch.Tensor:
        """Bool `[B, G, n_masked]`: which masked slots hold real hidden tokens (the loss weight)."""
        g = torch.arange(self.real.shape[0], device=self.masked.device)[None, :, None]
        weight = self.real.to(self.masked.device)[g, self.masked]
        if self.kept is not None:  # slots ranked before a group's own count are visible
            start = self.real.shape[1] - self.masked.shape[-1]
            rank = torch.arange(start, self.real.shape[1], device=self.masked.device)
            weight = weight & (rank[None, :] >= self.kept.to(self.masked.device)[:, None])
        return weight

    def dense(self) -> torch.Tensor:
        """Bool `[B, G, L]`, True where a slot is masked (for pictures and checks)."""
        b, g, n_keep = self.keep.shape
        out = torch.ones(b, g, self.real.shape[1], dtype=torch.bool, device=self.keep.device)
        valid = self.keep_valid()
        if valid is None:
            return out.scatter_(2, self.keep, False)
        return out.scatter_(2, self.keep, ~valid.expand(b, -1, -1))


def kept_per_group(plan: GroupPlan, mask_ratio: float) -> list[int]:
    """Visible tokens per group: round((1 - ratio) * its real tokens), at least 1 if it has any.

    Each group follows its own size, so a 7-token modality beside a 50,176-pixel image no
    longer sets the image's count; groups of nothing but padding keep none. Counted on the
    plan's host-side table, never on a device tensor (reading one back would make the host
    wait for the GPU).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return list(_kept_per_group(plan, mask_ratio))


@functools.lru_cache(maxsize=64)
def _kept_per_group(plan: GroupPlan, mask_ratio: float) -> tuple[int, ...]:
    # Cached: the plan is static, and this runs at every training step.
    real = plan.real_tokens().sum(dim=1).tolist()
    return tuple(max(1, round((1.0 - mask_ratio) * n)) if n else 0 for n in real)


def num_kept(plan: GroupPlan, mask_ratio: float) -> int:
    """Width of the `keep` index: the largest per-group count (every group's when balanced)."""
    return max(kept_per_group(plan, mask_ratio))


def groupwise_mask(
    plan: GroupPlan,
    batch_size: int,
    mask_ratio: float = 0.85,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    real: torch.Tensor | None = None,
    kept: torch.Tensor | None = None,
) -> GroupMask:
    """Sample a uniform random subset of each group's kept count of real slots per sample.

    Implemented as argsort of uniform noise (no scatter): padding slots get noise 2.0 so
    they sort last and are never visible. Deterministic for a seeded `generator`. `real`
    (`plan.real_tokens()`) and `kept` (`kept_per_group` as a tensor) already on `device`
    save rebuilding and copying them every step.
    """
    device = torch.device(device) if device is not None else None
    if real is None:
        real = plan.real_tokens()
    counts = kept_per_group(plan, mask_ratio)
    k_max, k_min = max(counts), min(counts)
    if k_max == k_min:
        kept = None  # balanced groups: the dense indices are exact, no fillers
    elif kept is None:
        kept = torch.tensor(counts)
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
    return GroupMask(
        keep=order[..., :k_max],
        masked=order[..., k_min:],
        real=real,
        kept=kept.to(noise.device) if kept is not None else None,
    )


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
