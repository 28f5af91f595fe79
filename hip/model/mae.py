"""Masked auto-encoding (MAE) pretraining for HiP: learn the dense position embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hip.errors import InputShapeError
from hip.model.grouping import group_modality, ungroup
from hip.model.hip import HiP
from hip.model.masking import (
    GroupMask,
    gather_groups,
    gather_positions,
    groupwise_mask,
    kept_per_group,
)

NORM_TARGETS = ("off", "group", "patch")


def norm_targets_mode(value: bool | str | None) -> str:
    """`mae.norm_targets` as one of NORM_TARGETS (booleans: true = group, false = off)."""
    text = str(value).strip().lower()
    mode = {"true": "group", "false": "off", "none": "off", "": "off"}.get(text, text)
    if mode not in NORM_TARGETS:
        raise ValueError(
            f"mae.norm_targets must be one of {NORM_TARGETS} or a boolean, got {value!r}"
        )
    return mode


@dataclass
class MAEConfig:
    """MAE settings: fraction of tokens hidden per group, and MAE's norm_pix_loss analogue.

    `norm_targets`: `off` (raw targets), `group` (per group and channel, as the official
    release would; `True` means this) or `patch` (ours: per non-overlapping `norm_patch` x
    `norm_patch` patch of the image and channel, MAE's per-patch norm; a modality without a
    2-D shape in `shapes` uses runs of `norm_patch**2` consecutive tokens).
    """

    mask_ratio: float = 0.85
    norm_targets: bool | str = False
    norm_patch: int = 4
    shapes: dict[str, tuple[int, int]] | None = None  # {modality: (height, width)} for `patch`

    def __post_init__(self) -> None:
        """Map booleans and names to one mode; check the patch side."""
        self.norm_targets = norm_targets_mode(self.norm_targets)
        if self.norm_patch < 1:
            raise ValueError(f"mae.norm_patch must be >= 1, got {self.norm_patch}")


def mae_options(meta: Mapping[str, Any]) -> dict[str, Any]:
    """MAEConfig's target-normalisation fields from a checkpoint's model meta."""
    mae = meta.get("mae") or {}
    shapes = {}  # rows x width; a video's frames stack as rows
    for name, lay in (meta.get("layout") or {}).items():
        tokens, width = int((meta.get("modalities") or {}).get(name, [0])[0]), lay.get("width")
        if width and tokens and tokens % int(width) == 0:
            shapes[name] = (tokens // int(width), int(width))
    return {
        "norm_targets": norm_targets_mode(mae.get("norm_targets", False)),
        "norm_patch": int(mae.get("norm_patch", 4)),
        "shapes": shapes or None,
    }


def patch_stats(
    x: torch.Tensor, height: int, width: int, size: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel mean and std of `x` `[B, H*W, C]`, broadcast back to `[B, H*W, C]`.

    Patches are `size` x `size` and do not overlap (`size**2` x 1 when `width` is 1); edge
    patches cut by the image border use only their pixels. std includes `eps` in the variance.
    """
    b, m, c = x.shape
    if m != height * width:
        raise InputShapeError(f"{m} tokens are not a {height}x{width} image")
    ph, pw = (size, size) if width > 1 else (size * size, 1)
    img = x.float().reshape(b, height, width, c).permute(0, 3, 1, 2)
    pad = (0, (-width) % pw, 0, (-height) % ph)
    ones = F.pad(torch.ones(1, 1, height, width, device=x.device), pad)
    count = F.avg_pool2d(ones, (ph, pw)) * (ph * pw)

    def pooled_mean(t: torch.Tensor) -> torch.Tensor:
        """Mean over each patch's real pixels, spread back over the patch."""
        s = F.avg_pool2d(F.pad(t, pad), (ph, pw)) * (ph * pw) / count
        return s.repeat_interleave(ph, 2).repeat_interleave(pw, 3)[..., :height, :width]

    mean = pooled_mean(img)
    std = (pooled_mean((img - mean) ** 2) + eps).sqrt()

    def dense(t: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` -> `[B, H*W, C]` in the input's dtype."""
        return t.permute(0, 2, 3, 1).reshape(b, m, c).to(x.dtype)

    return dense(mean), dense(std)


@dataclass
class MAEOutput:
    """What one MAE step produced."""

    loss: torch.Tensor  # scalar: MSE over masked real tokens
    predictions: dict[str, torch.Tensor]  # {name: [B, g, n_masked, C]} at the masked slots
    targets: dict[str, torch.Tensor]  # same shapes, the (optionally normalised) true values
    mask: GroupMask


def _same_device(have: torch.device, want: torch.device | str | None) -> bool:
    """True when `want` (None: wherever the inputs are) names `have` ('cuda' names 'cuda:0')."""
    if want is None:
        return True
    want = torch.device(want)
    return have.type == want.type and (want.index is None or want.index == have.index)


class MAE(nn.Module):
    """Groupwise-masked auto-encoder around a full (encoder-decoder) HiP.

    The encoder sees only the kept tokens of every group (embedding + position); the
    reconstruction head's queries are the position vectors of the masked tokens, each group
    attending to its own final latents; the loss is the MSE on masked tokens.
    """

    def __init__(self, model: HiP, config: MAEConfig | None = None):
        super().__init__()
        if not model.with_decoder:
            raise ValueError("MAE needs a HiP built with its decoder blocks")
        self.model = model
        self.config = config or MAEConfig()
        # Which grouped slots hold real tokens, kept on the model's device (not rebuilt and
        # copied to it at every step); not persistent: it follows from the plan.
        self.register_buffer("real", model.plan.real_tokens(), persistent=False)
        # Visible tokens per group (each group follows its own size); None when all groups
        # keep the same count, as a single evenly divided modality does.
        counts = kept_per_group(model.plan, self.config.mask_ratio)
        kept = torch.tensor(counts) if len(set(counts)) > 1 else None
        self.register_buffer("kept", kept, persistent=False)
        with torch.device("cpu"):  # plain counts, also when building on the meta device
            real = model.plan.real_tokens().sum(dim=1).tolist()
        for m in model.plan.modalities:
            if sum(real[m.groups]) == sum(counts[m.groups]):
                raise InputShapeError(
                    f"modality {m.name!r} has {m.length} element(s): at mask_ratio "
                    f"{self.config.mask_ratio} every one stays visible and MAE has nothing of it "
                    "to reconstruct (use larger inputs, e.g. `hip shard --resize`)"
                )

    def _targets(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw inputs grouped per modality: `{name: [B, g, L, C]}` with zero padding."""
        return {m.name: group_modality(m, inputs[m.name]) for m in self.model.plan.modalities}

    def _patch_stats(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`patch_stats` of one modality `[B, M, C]` with its 2-D shape (or 1-D runs)."""
        height, width = (self.config.shapes or {}).get(name, (x.shape[1], 1))
        return patch_stats(x, height, width, self.config.norm_patch)

    def target_stats(
        self, inputs: Mapping[str, torch.Tensor], mask: GroupMask
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Dense `{name: (mean, std)}` `[B, M, C]` that normalise the targets; {} when `off`."""
        mode = self.config.norm_targets
        if mode == "off":
            return {}
        if mode == "patch":
            return {
                m.name: self._patch_stats(m.name, inputs[m.name])
                for m in self.model.plan.modalities
            }
        raw = self._targets(inputs)
        means, stds = {}, {}
        for m in self.model.plan.modalities:
            _, mean, std = self._normalise(raw[m.name], mask.real[m.groups])
            means[m.name] = mean.expand_as(raw[m.name])
            stds[m.name] = std.expand_as(raw[m.name])
        means, stds = (
            self.model.ungroup_reconstruction(means),
            self.model.ungroup_reconstruction(stds),
        )
        return {k: (means[k], stds[k]) for k in means}

    def _normalise(
        self, target: torch.Tensor, real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-group, per-channel mean/std over real tokens (MAE's per-patch norm, a group here)."""
        w = real[None, :, :, None].to(target.dtype)
        count = w.sum(dim=2, keepdim=True).clamp_min(1.0)
        mean = (target * w).sum(dim=2, keepdim=True) / count
        var = (((target - mean) ** 2) * w).sum(dim=2, keepdim=True) / count
        std = (var + 1e-6).sqrt()
        return (target - mean) / std, mean, std

    def visible_tokens(self, inputs: Mapping[str, torch.Tensor], mask: GroupMask) -> torch.Tensor:
        """The encoder's input `[B, G, n_keep, E]`: embedding + position of the kept tokens.

        `inputs` are already preprocessed (`model.preprocess`; `forward` does it).

        Gathers the raw values and the position vectors first and embeds only the kept
        tokens, so the full-size `[B, G, L, E]` embedding is never built (the same numbers as
        `gather_groups(model.group_inputs(inputs), mask.keep)`: the embedding is per token).
        """
        # Shapes only, no device work: the inputs are preprocessed (front ends, norm).
        inputs = self.model.check_inputs(inputs, require_all=True, preprocessed=True)
        pos = self.model.positions()
        parts = []
        for m in self.model.plan.modalities:
            keep = mask.keep[:, m.groups]
            raw = gather_groups(group_modality(m, inputs[m.name]), keep)
            table = group_modality(m, pos[m.name].unsqueeze(0))[0]
            parts.append(self.model.embed[m.name](raw) + gather_positions(table, keep))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        valid = mask.keep_valid()
        if valid is not None:  # a group's slots past its own count are zeros, like padding
            x = x * valid[None, :, :, None].to(x.dtype)
        return x

    def encode_visible(self, inputs: Mapping[str, torch.Tensor], mask: GroupMask) -> torch.Tensor:
        """Encoder + decoder blocks on the kept tokens only; returns the last latents."""
        return self.model.decode(self.model.encode(self.visible_tokens(inputs, mask)))

    def sample_mask(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> GroupMask:
        """A fresh groupwise mask for a batch."""
        return groupwise_mask(
            self.model.plan,
            batch_size,
            self.config.mask_ratio,
            generator,
            device,
            real=self.real if _same_device(self.real.device, device) else None,
            kept=self.kept
            if self.kept is not None and _same_device(self.kept.device, device)
            else None,
        )

    def features(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All inputs, checked, through the model's front ends (the identity unless
        `front_ends` names one): the scale that reconstructions are compared on."""
        return self.model.apply_front_ends(self.model.check_inputs(inputs, require_all=True))

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        mask: GroupMask | None = None,
    ) -> MAEOutput:
        """One MAE pass: mask, encode the visible tokens, predict the masked ones, MSE loss."""
        # The model's front ends and input normalisation first: the encoder sees, and the loss
        # compares, preprocessed values (the identity unless `front_ends`/`input_norm` are set).
        inputs = self.model.preprocess(inputs, require_all=True)
        batch = next(iter(inputs.values()))
        if mask is None:
            mask = self.sample_mask(batch.shape[0], generator, batch.device)
        return self.loss_from_latents(inputs, mask, self.encode_visible(inputs, mask))

    def loss_from_latents(
        self, inputs: Mapping[str, torch.Tensor], mask: GroupMask, z: torch.Tensor
    ) -> MAEOutput:
        """Predict the masked tokens from the last latents `z` `[B, G, K, D]`; MSE loss.

        Split from `forward` so a model that runs the encoder itself (the class bottleneck's
        joint MAE + classification) shares the loss.
        """
        queries = gather_positions(self.model.grouped_positions()[0], mask.masked)
        preds = self.model.reconstruct(z, queries)
        weight = mask.masked_is_real()
        mode = self.config.norm_targets
        if mode == "patch":  # normalised in the image's layout, then grouped
            inputs = {
                k: (x - mean) / std
                for k, x in inputs.items()
                for mean, std in [self._patch_stats(k, x)]
            }
        raw = self._targets(inputs)
        targets, total, count = {}, 0.0, 0.0
        for m in self.model.plan.modalities:
            target = raw[m.name]
            if mode == "group":
                target = self._normalise(target, mask.real[m.groups])[0]
            target = gather_groups(target, mask.masked[:, m.groups])
            targets[m.name] = target
            w = weight[:, m.groups].to(target.dtype)
            per_token = ((preds[m.name].float() - target.float()) ** 2).mean(dim=-1)
            total = total + (per_token * w).sum()
            count = count + w.sum()
        loss = total / count.clamp_min(1.0)
        return MAEOutput(loss=loss, predictions=preds, targets=targets, mask=mask)

    @torch.no_grad()
    def reconstruct(
        self,
        inputs: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        mask: GroupMask | None = None,
        stats_only: bool = False,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Full reconstructions for pictures: `{"prediction", "masked", "composite"}` per modality.

        `prediction` is the model's output at every position (decoded from the visible
        tokens only), `masked` a bool `[B, M]` (True = hidden), `composite` the visible input
        with predictions pasted into the hidden positions (the MAE paper's figure).
        With normalised targets the output is un-normalised with the true statistics of the
        whole input (as the MAE paper's figures do), which hands the prediction those means;
        `stats_only=True` predicts zero in normalised space, i.e. the means alone (the
        baseline that leak gives for free; no model pass).
        """
        inputs = self.features(inputs)
        norm = self.model.input_norm
        normed = norm(inputs)
        batch = next(iter(inputs.values()))
        if mask is None:
            mask = self.sample_mask(batch.shape[0], generator, batch.device)
        if stats_only:
            pred = {k: torch.zeros_like(x) for k, x in normed.items()}
        else:
            z = self.encode_visible(normed, mask)
            pred = self.model.ungroup_reconstruction(
                self.model.reconstruct(z, self.model.grouped_positions())
            )
        # Undo the target normalisation with the true statistics.
        for name, (mean, std) in self.target_stats(normed, mask).items():
            pred[name] = pred[name] * std + mean
        for name, x in inputs.items():  # back to the raw input scale
            stats = norm.stats(name, x)
            if stats is not None:
                pred[name] = pred[name] * stats[1] + stats[0]
        hidden = ungroup(self.model.plan, mask.dense().unsqueeze(-1))
        out = {}
        for name, x in inputs.items():
            masked = hidden[name][..., 0]
            out[name] = {
                "prediction": pred[name],
                "masked": masked,
                "composite": torch.where(masked.unsqueeze(-1), pred[name], x),
            }
        return out
