"""Fixed per-modality front ends before the embedding (ours, not the official model).

The official HiP embeds every token with one `Linear(C -> E)`. For raw audio that is a linear
map of n consecutive samples, and the cross-attention that follows averages such maps over
tokens, so the sign of the waveform (its phase) cancels before the first nonlinearity: the
model has to learn its own energy detector, and a short CPU run does not (docs/BENCHMARKS.md,
issue 14: spoken digits stay near 0.3-0.5 top-1 from raw samples).

`log_spectrum` hands each audio token to the embedding as the log power spectrum of its own
n samples (Hann window, n // 2 + 1 bins): a spectrogram with one frame per token, still one
token per n samples, so grouping, masking and positions are unchanged. MAE then reconstructs
the hidden frames' spectra, which are predictable, instead of their phase, which is not.

Front ends are chosen per modality name in the HiP config (`front_ends: {audio:
log_spectrum}`), so a recipe can set one for audio and leave images alone; they have no
parameters, and the checkpoint's config rebuilds them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hip.errors import UserError, unknown_name

FRONT_ENDS = ("none", "log_spectrum")
# Power floor: silence (padding) maps to log(1e-6); int16 quantisation noise is ~1e-8.
_POWER_FLOOR = 1e-6


class LogSpectrum(nn.Module):
    """Waveform tokens `[B, M, n]` -> log power spectra `[B, M, n // 2 + 1]` (one frame each)."""

    def __init__(self, samples: int):
        super().__init__()
        if samples < 2:
            raise UserError(
                f"front end log_spectrum needs at least 2 samples per token, got {samples} "
                "(set data.audio_samples_per_token)"
            )
        self.register_buffer("window", torch.hann_window(samples), persistent=False)

    @staticmethod
    def channels(samples: int) -> int:
        """Bins per token for `samples` samples per token."""
        return samples // 2 + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft(x.float() * self.window).abs().square()
        return torch.log(power + _POWER_FLOOR).to(x.dtype)


def check_front_ends(front_ends: Mapping[str, str] | None) -> dict[str, str]:
    """`{modality: front end}` with every name known (UserError naming the first that is not)."""
    out = {}
    for name, kind in dict(front_ends or {}).items():
        if kind not in FRONT_ENDS:
            raise UserError(unknown_name(f"front end for modality {name!r}", str(kind), FRONT_ENDS))
        if kind != "none":
            out[str(name)] = str(kind)
    return out


def build_front_ends(
    front_ends: Mapping[str, str] | None, modalities: Mapping[str, tuple[int, int]]
) -> tuple[nn.ModuleDict, dict[str, tuple[int, int]]]:
    """The front-end modules of the modalities present, and every modality's `(M, C)` after them.

    Front ends named for modalities the model does not have are ignored (a recipe sets one for
    `audio` whatever the data holds)."""
    modules, shapes = nn.ModuleDict(), {}
    wanted = check_front_ends(front_ends)
    for name, (m, c) in modalities.items():
        if wanted.get(name) == "log_spectrum":
            modules[name] = LogSpectrum(c)
            c = LogSpectrum.channels(c)
        shapes[name] = (m, c)
    return modules, shapes
