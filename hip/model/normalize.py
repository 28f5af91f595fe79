"""Per-modality input normalisation: part of the model's preprocessing, kept in its state dict.

Raw inputs reach HiP on very different scales: pixels in [0, 1] with MNIST's mean 0.13, audio
waveforms with an RMS of ~0.04. Each modality's `Linear(C -> E)` embedding sees them as they
are, and the learned position tables (std 1/sqrt(M) at init) are added on top, so the scale of
the input decides how much of a token is "what" and how much is "where".

:class:`InputNorm` standardises every modality before the embedding, in one of three modes
per modality (`NORM_MODES`):

- `none`: the identity (the default, and what the official code does);
- `dataset`: `(x - mean) / std` with fixed per-channel constants, normally the training
  split's statistics (:func:`fit_input_norm`);
- `sample`: every sample on its own, per channel over its tokens (per-clip normalisation
  for audio).

The mode and the constants are buffers, so a checkpoint carries them and a reloaded model
preprocesses exactly as it trained; a state dict from before this module (no `input_norm.*`
keys) loads as the identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

NORM_MODES = ("none", "dataset", "sample")
_EPS = 1e-6


class InputNorm(nn.Module):
    """Per-modality standardisation `{name: [B, M, C]} -> {name: [B, M, C]}` (identity by default)."""

    def __init__(self, modalities: Mapping[str, tuple[int, int]]):
        super().__init__()
        self.names = list(modalities)
        # The modes as Python values too: reading the buffer in forward would be a host sync
        # every step (and fails on meta tensors). Kept equal to the buffers by set_mode and
        # state-dict loading, the only two ways the buffers change.
        self._modes = dict.fromkeys(self.names, "none")
        for k, (_, c) in modalities.items():
            self.register_buffer(f"{k}_mode", torch.zeros((), dtype=torch.long))
            self.register_buffer(f"{k}_mean", torch.zeros(c))
            self.register_buffer(f"{k}_std", torch.ones(c))

    def mode(self, name: str) -> str:
        """The mode of modality `name`: none, dataset or sample."""
        return self._modes[name]

    def modes(self) -> dict[str, str]:
        """`{name: mode}` for every modality."""
        return {k: self.mode(k) for k in self.names}

    def set_mode(
        self,
        name: str,
        mode: str,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> None:
        """Set one modality's mode (and, for `dataset`, its per-channel mean and std)."""
        if name not in self.names:
            raise ValueError(f"no modality {name!r}; the model has {self.names}")
        if mode not in NORM_MODES:
            raise ValueError(f"input norm mode {mode!r}: choose one of {', '.join(NORM_MODES)}")
        getattr(self, f"{name}_mode").fill_(NORM_MODES.index(mode))
        self._modes[name] = mode
        if mode == "dataset":
            if mean is None or std is None:
                raise ValueError("input norm mode 'dataset' needs a mean and a std")
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
            getattr(self, f"{name}_std").copy_(
                torch.as_tensor(std, dtype=torch.float32).clamp_min(_EPS)
            )

    def stats(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(mean, std)` broadcastable to `x` `[B, M, C]`, or None for the identity."""
        mode = self.mode(name)
        if mode == "none":
            return None
        if mode == "dataset":
            mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
            return mean.to(x.dtype), std.to(x.dtype)
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, unbiased=False).clamp_min(_EPS)
        return mean, std

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalised copies of `inputs` (modalities in the identity mode pass through)."""
        out = {}
        for k, x in inputs.items():
            s = self.stats(k, x)
            out[k] = x if s is None else (x - s[0]) / s[1]
        return out

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load as usual; a state dict without these buffers (older checkpoints) means identity."""
        before = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        mine = [k for k in missing_keys[before:] if k.startswith(prefix)]
        if mine and len(mine) == len(list(self.buffers())):
            for k in mine:
                missing_keys.remove(k)
        for name in self.names:  # once per load, not per step
            key = f"{prefix}{name}_mode"
            if key in state_dict and state_dict[key].device.type != "meta":
                self._modes[name] = NORM_MODES[int(state_dict[key])]


def input_norm_of(module: nn.Module) -> InputNorm | None:
    """The InputNorm inside a model (HiP, MAE, task model, or one wrapped by DDP)."""
    for m in module.modules():
        if isinstance(m, InputNorm):
            return m
    return None


def channel_stats(
    batches: Iterable[Mapping[str, torch.Tensor]], max_samples: int = 4096
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of every modality over at most `max_samples` samples."""
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    seen = 0
    for inputs in batches:
        for k, x in inputs.items():
            x = x.double().reshape(-1, x.shape[-1])
            sums[k] = sums.get(k, 0) + x.sum(0)
            squares[k] = squares.get(k, 0) + (x * x).sum(0)
            counts[k] = counts.get(k, 0) + x.shape[0]
        seen += next(iter(inputs.values())).shape[0]
        if seen >= max_samples:
            break
    out = {}
    for k in sums:
        mean = sums[k] / counts[k]
        var = (squares[k] / counts[k] - mean * mean).clamp_min(0.0)
        out[k] = (mean.float(), var.sqrt().float())
    return out


def fit_input_norm(
    model: nn.Module,
    modes: str | Mapping[str, str],
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    max_samples: int = 4096,
) -> dict[str, str]:
    """Set the model's input normalisation: one mode for all modalities, or `{name: mode}`.

    `dataset` modes take their statistics from `batches` (`{name: [B, M, C]}` inputs, e.g.
    the first training batches in a fixed order). Returns the modes set.
    """
    norm = input_norm_of(model)
    if norm is None:
        raise ValueError("this model has no InputNorm")
    per = {k: modes for k in norm.names} if isinstance(modes, str) else dict(modes)
    unknown = [k for k in per if k not in norm.names]
    if unknown:
        raise ValueError(f"input norm for unknown modalities {unknown}; the model has {norm.names}")
    stats = {}
    if any(m == "dataset" for m in per.values()):
        if batches is None:
            raise ValueError("input norm mode 'dataset' needs batches to measure")
        # Statistics of what the norm will see: the inputs after any front end.
        hip = next((m for m in model.modules() if hasattr(m, "apply_front_ends")), None)
        if hip is not None and len(hip.front_end):
            batches = (hip.apply_front_ends(b) for b in batches)
        stats = channel_stats(batches, max_samples)
    for k, mode in per.items():
        if mode == "dataset":
            norm.set_mode(k, mode, *stats[k])
        else:
            norm.set_mode(k, mode)
    return norm.modes()
