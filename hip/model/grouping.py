"""Contiguous grouping of one or several modalities, exactly as the official ConstNumGrouper."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ModalityGroups:
    """Where one modality lives in the grouped tensor."""

    name: str
    length: int  # M: tokens of this modality
    first_group: int
    num_groups: int
    final_padding: int  # zeros appended to the modality so num_groups divides it
    group_padding: int  # zeros appended to each of its groups up to the common length

    @property
    def tokens_per_group(self) -> int:
        """Real (plus final-padding) tokens in each of this modality's groups."""
        return (self.length + self.final_padding) // self.num_groups

    @property
    def groups(self) -> slice:
        """This modality's slice of the group axis."""
        return slice(self.first_group, self.first_group + self.num_groups)


@dataclass(frozen=True)
class GroupPlan:
    """Static layout of `[B, G, L, C]` built from the modality lengths."""

    num_groups: int
    group_length: int  # L
    modalities: tuple[ModalityGroups, ...]

    def real_tokens(self) -> torch.Tensor:
        """Bool `[G, L]`: True where a slot holds a real token, False where it is padding."""
        real = torch.zeros(self.num_groups, self.group_length, dtype=torch.bool)
        for m in self.modalities:
            # Token i of the modality's group j is real when j * tokens_per_group + i < length
            # (the final padding can span more than the last group when length ~ groups).
            flat = torch.arange(m.num_groups * m.tokens_per_group).view(m.num_groups, -1)
            real[m.groups, : m.tokens_per_group] = flat < m.length
        return real


def assign_groups(num_groups: int, lengths: list[int]) -> tuple[list[int], int]:
    """Share `num_groups` among modalities greedily so the largest group is smallest."""
    if len(lengths) > num_groups:
        raise ValueError(
            f"{len(lengths)} modalities but only {num_groups} groups in block 0: "
            "a group never mixes modalities"
        )
    counts = [1] * len(lengths)
    per_group = [float(n) for n in lengths]
    for _ in range(num_groups - len(lengths)):
        i = max(range(len(lengths)), key=lambda j: (per_group[j], -j))  # first on ties
        counts[i] += 1
        per_group[i] = lengths[i] / counts[i]
    return counts, math.ceil(max(per_group))


def plan_groups(num_groups: int, lengths: dict[str, int]) -> GroupPlan:
    """Build the group layout for modalities in insertion order."""
    counts, group_length = assign_groups(num_groups, list(lengths.values()))
    # A modality shorter than its share of groups is padded like any other: its last groups
    # hold nothing but zeros (the official grouper does the same; attention has no mask).
    mods, first = [], 0
    for (name, length), count in zip(lengths.items(), counts):
        final_padding = count * math.ceil(length / count) - length
        per_group = (length + final_padding) // count
        mods.append(
            ModalityGroups(name, length, first, count, final_padding, group_length - per_group)
        )
        first += count
    return GroupPlan(num_groups, group_length, tuple(mods))


def group_modality(m: ModalityGroups, x: torch.Tensor) -> torch.Tensor:
    """One modality `[B, M, C]` -> its groups `[B, g, L, C]` (final + per-group zero padding)."""
    if m.final_padding:
        x = F.pad(x, (0, 0, 0, m.final_padding))
    x = x.reshape(x.shape[0], m.num_groups, m.tokens_per_group, x.shape[-1])
    if m.group_padding:
        x = F.pad(x, (0, 0, 0, m.group_padding))
    return x


def group(plan: GroupPlan, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """{name: [B, M, C]} -> [B, G, L, C] (zero padding; a pure view when nothing is padded)."""
    parts = [group_modality(m, inputs[m.name]) for m in plan.modalities]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def ungroup(plan: GroupPlan, grouped: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B, G, N, C] -> {name: [B, ~M, C]}, dropping the padding amounts the plan added."""
    out = {}
    for m in plan.modalities:
        x = grouped[:, m.groups]
        x = x[:, :, : x.shape[2] - m.group_padding]
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        out[m.name] = x[:, : x.shape[1] - m.final_padding]
    return out
