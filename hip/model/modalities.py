"""Turn raw signals into HiP's flat `[M, C]` modality arrays and back.

Every function accepts leading batch dimensions: `[..., H, W, C] -> [..., H*W, C]`.
Works on torch tensors and numpy arrays alike. Imports no torch itself (the sharder uses it in
processes that never load torch): a torch tensor passed in brings torch with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = TypeVar("Array", torch.Tensor, np.ndarray)
else:
    Array = TypeVar("Array")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Float32 inputs from a tensor in its stored dtype (uint8 / 255, int16 / 32768), on its device.

    The loader hands training batches over as stored (`hip.data.loader(..., as_stored=True)`);
    this is the same float32 division it does in numpy otherwise, so the values are identical.
    """
    import torch

    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.int16:
        return x.float() / 32768.0
    return x.float()


def image_to_tokens(image: Array, channels_last: bool = True) -> Array:
    """Image `[..., H, W, C]` (or `[..., H, W]` grey, or `[..., C, H, W]`) -> `[..., H*W, C]` in raster order."""
    if image.ndim < 2:
        raise ValueError(f"image must be [..., H, W(, C)], got shape {tuple(image.shape)}")
    if image.ndim == 2:
        image = image[..., None]
    elif not channels_last:
        image = image.swapaxes(-3, -1).swapaxes(-3, -2)  # [..., C, H, W] -> [..., H, W, C]
    *lead, h, w, c = image.shape
    return image.reshape(*lead, h * w, c)


def tokens_to_image(tokens: Array, height: int, width: int) -> Array:
    """`[..., H*W, C]` -> `[..., H, W, C]`."""
    *lead, m, c = tokens.shape
    if m != height * width:
        raise ValueError(f"{m} tokens cannot form a {height}x{width} image")
    return tokens.reshape(*lead, height, width, c)


# Ours: samples per audio token when nothing says otherwise. The official test feeds audio
# as [B, 128, 16]; docs/DATA.md says why 16.
AUDIO_SAMPLES_PER_TOKEN = 16


def audio_to_tokens(waveform: Array, samples_per_token: int = 1) -> Array:
    """Mono waveform `[..., T]` -> `[..., ceil(T/n), n]`: n consecutive samples per token.

    The end is padded with silence (zeros) to a multiple of n. n=1 is one sample per token.
    """
    if waveform.ndim == 0:
        raise ValueError("audio must be a waveform [..., T]")
    n = int(samples_per_token)
    if n < 1:
        raise ValueError(f"samples_per_token must be >= 1, got {samples_per_token}")
    *lead, t = waveform.shape
    pad = -t % n
    if pad:
        widths = [(0, 0)] * len(lead) + [(0, pad)]
        if isinstance(waveform, np.ndarray):
            waveform = np.pad(waveform, widths)
        else:  # a torch tensor
            import torch

            waveform = torch.nn.functional.pad(waveform, (0, pad))
    return waveform.reshape(*lead, (t + pad) // n, n)


def video_to_tokens(video: Array) -> Array:
    """Video `[..., T, H, W, C]` -> `[..., T*H*W, C]` (frame by frame, raster order)."""
    if video.ndim < 4:
        raise ValueError(f"video must be [..., T, H, W, C], got shape {tuple(video.shape)}")
    *lead, t, h, w, c = video.shape
    return video.reshape(*lead, t * h * w, c)


def tokens_to_video(tokens: Array, frames: int, height: int, width: int) -> Array:
    """`[..., T*H*W, C]` -> `[..., T, H, W, C]`."""
    *lead, m, c = tokens.shape
    if m != frames * height * width:
        raise ValueError(f"{m} tokens cannot form {frames}x{height}x{width} video")
    return tokens.reshape(*lead, frames, height, width, c)


def points_to_tokens(points: Array) -> Array:
    """Point set `[..., N, D]` is already flat: checked and returned."""
    if points.ndim < 2:
        raise ValueError(f"points must be [..., N, D], got shape {tuple(points.shape)}")
    return points


def modality_shapes(example: dict[str, Array]) -> dict[str, tuple[int, int]]:
    """`{name: [M, C] or [B, M, C]}` -> `{name: (M, C)}`, the `modalities` argument of create_model."""
    return {k: (int(v.shape[-2]), int(v.shape[-1])) for k, v in example.items()}
