"""Masked auto-encoding (MAE) pretraining for HiP: learn the dense position embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
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


@dataclass
class MAEConfig:
    """MAE settings: fraction of tokens hidden per group, and MAE's norm_pix_loss analogue."""

    mask_ratio: float = 0.85
    norm_targets: bool = False


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

        `inputs` are already normalised (`model.input_norm`; `forward` does it).

        Gathers the raw values and the position vectors first and embeds only the kept
        tokens, so the full-size `[B, G, L, E]` embedding is never built (the same numbers as
        `gather_groups(model.group_inputs(inputs), mask.keep)`: the embedding is per token).
        """
        inputs = self.model.check_inputs(inputs, require_all=True)  # shapes only: no device work
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

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        mask: GroupMask | None = None,
    ) -> MAEOutput:
        """One MAE pass: mask, encode the visible tokens, predict the masked ones, MSE loss."""
        # The model's input normalisation first: the encoder sees, and the loss compares,
        # normalised values (the identity unless `model.input_norm` was set).
        inputs = self.model.input_norm(self.model.check_inputs(inputs, require_all=True))
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
        raw = self._targets(inputs)
        targets, total, count = {}, 0.0, 0.0
        for m in self.model.plan.modalities:
            target = raw[m.name]
            if self.config.norm_targets:
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
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Full reconstructions for pictures: `{"prediction", "masked", "composite"}` per modality.

        `prediction` is the model's output at every position (decoded from the visible
        tokens only), `masked` a bool `[B, M]` (True = hidden), `composite` the visible input
        with predictions pasted into the hidden positions (the MAE paper's figure).
        """
        inputs = self.model.check_inputs(inputs, require_all=True)
        norm = self.model.input_norm
        normed = norm(inputs)
        batch = next(iter(inputs.values()))
        if mask is None:
            mask = self.sample_mask(batch.shape[0], generator, batch.device)
        z = self.encode_visible(normed, mask)
        grouped = self.model.reconstruct(z, self.model.grouped_positions())
        if self.config.norm_targets:  # undo the per-group normalisation with the true statistics
            targets = self._targets(normed)
            for m in self.model.plan.modalities:
                _, mean, std = self._normalise(targets[m.name], mask.real[m.groups])
                grouped[m.name] = grouped[m.name] * std + mean
        pred = self.model.ungroup_reconstruction(grouped)
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
