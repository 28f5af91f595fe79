"""Ours, not the official code: position tables initialised from the inputs' coordinates.

The official HiP initialises each learned position table `[M, E]` as truncated normal with
std 1/sqrt(M) (0.036 for 28x28 pixels), 30x smaller than a pixel's embedding, so a model
trained from scratch starts nearly blind to where a token is. `coordinate_table` gives the
tables a smooth start instead: sin/cos of the token's coordinates at a few frequencies
(Perceiver-style Fourier features), each channel with std `scale`. Opt-in
(`model.position_init: coords` in a run config); official presets keep the official init.
"""

from __future__ import annotations

import math

import torch

POSITION_INITS = ("official", "coords")


def grid_shape(length: int) -> tuple[int, ...]:
    """The coordinate grid of a modality of `length` tokens: a square if it is one, else 1-D."""
    side = math.isqrt(length)
    return (side, side) if side * side == length and side > 1 else (length,)


def layout_grid(spec: dict | None, length: int) -> tuple[int, ...]:
    """The coordinate grid of `length` tokens from a checkpoint/manifest layout entry.

    Images are `(H, W)`, video `(T, H, W)`, audio `(length,)` (a time line even when `length`
    is a perfect square); without a layout that fits, `grid_shape`'s guess."""
    spec = spec or {}
    h, w, t = spec.get("height"), spec.get("width"), spec.get("frames")
    if spec.get("kind") == "audio":
        return (length,)
    if spec.get("kind") == "image" and h and w and h * w == length:
        return (int(h), int(w))
    if spec.get("kind") == "video" and h and w and t and t * h * w == length:
        return (int(t), int(h), int(w))
    return grid_shape(length)


def coordinate_table(
    length: int, channels: int, scale: float = 1.0, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """`[length, channels]` sin/cos features of the raster-order coordinates on `shape`.

    Each axis gets `channels // (2 * ndim)` frequency bands, spaced geometrically from 1 to an
    eighth of the axis' resolution (cycles over the axis, so neighbouring tokens stay
    alike); left-over channels are zero. Every feature has std `scale` over the table.
    """
    shape = shape or grid_shape(length)
    if math.prod(shape) != length:
        raise ValueError(f"grid {shape} does not hold {length} tokens")
    bands = max(1, channels // (2 * len(shape)))
    axes = torch.meshgrid(
        *[torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape], indexing="ij"
    )
    feats = []
    for n, coord in zip(shape, axes, strict=True):
        freqs = torch.logspace(0.0, math.log10(max(1.0, n / 8)), bands, dtype=torch.float64)
        angle = math.pi * coord.reshape(-1, 1) * freqs
        feats += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(feats, dim=1)[:, :channels]
    table = (table - table.mean(0)) / table.std(0).clamp_min(1e-6) * scale
    if table.shape[1] < channels:
        table = torch.cat([table, table.new_zeros(length, channels - table.shape[1])], dim=1)
    return table.float()
