"""The official HiPClassBottleneck: labels enter and leave HiP at the processor block."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hip.model.blocks import CrossAttention
from hip.model.grouping import group, ungroup
from hip.model.hip import HiP, Modalities, check_modalities
from hip.model.layers import linear, trunc_normal_fan_in_
from hip.model.presets import HiPConfig


class HiPClassBottleneck(HiP):
    """HiP whose label modalities skip the encoder and decoder, numerically the official template.

    Every other modality goes through the usual embed -> encoder -> decoder -> reconstruction
    head. A label modality `[B, M, C]` (e.g. a one-hot `[B, 1, classes]`) is embedded at the
    width of the latents entering the processor (`num_z_channels[p - 1]`) with its own learned
    position table `[M, width]` (no projection), concatenated to the processor's one-group
    inputs, and read out of the processor's latents by its own reconstruction head (queries: its
    position table) and unembedding. `forward` returns the labels' reconstructions beside the
    other modalities', as the official model does.

    `with_decoder=False` keeps encoder + processor only: `forward` then returns the label
    reconstructions alone (all a classifier needs).
    """

    def __init__(self, config: HiPConfig, modalities: Modalities, with_decoder: bool = True):
        mods = check_modalities(modalities)
        wanted = set(config.label_modalities or ())
        labels = {k: v for k, v in mods.items() if k in wanted}
        if not labels:
            raise ValueError(
                f"HiPClassBottleneck: none of the modalities {list(mods)} is a label modality "
                f"(label_modalities={sorted(wanted)})"
            )
        others = {k: v for k, v in mods.items() if k not in wanted}
        if not others:
            raise ValueError("HiPClassBottleneck needs at least one non-label modality")
        super().__init__(config, others, with_decoder=with_decoder)
        self.labels = labels
        p = config.processor_index
        width = config.num_z_channels[p - 1]  # the processor's input width
        self.label_embed = nn.ModuleDict({k: linear(c, width) for k, (_, c) in labels.items()})
        self.label_pos = nn.ParameterDict(
            {k: nn.Parameter(torch.empty(m, width)) for k, (m, _) in labels.items()}
        )
        for k, (m, _) in labels.items():
            trunc_normal_fan_in_(self.label_pos[k], m)
        # One head shared by all label modalities (the official code calls one module per
        # label); queries are label positions, keys/values the processor's latents.
        self.label_head = CrossAttention(
            width, config.num_z_channels[p], 1, 1, False, config.activation_name
        )
        self.label_unembed = nn.ModuleDict(
            {k: linear(width, c, scale=0.0) for k, (_, c) in labels.items()}
        )

    def split_inputs(
        self, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`(non-label inputs, label inputs)`, each in the model's order."""
        unknown = [k for k in inputs if k not in self.modalities and k not in self.labels]
        if unknown:
            raise ValueError(
                f"HiPClassBottleneck inputs: unexpected modalities {unknown}; the model was "
                f"built for {list(self.modalities)} and labels {list(self.labels)}"
            )
        labels = {k: inputs[k] for k in self.labels if k in inputs}
        for k, x in labels.items():
            m, c = self.labels[k]
            if x.ndim != 3 or tuple(x.shape[1:]) != (m, c):
                raise ValueError(
                    f"HiPClassBottleneck inputs: label {k!r} must be [B, {m}, {c}], "
                    f"got {list(x.shape)}"
                )
        return self.check_inputs({k: v for k, v in inputs.items() if k in self.modalities}), labels

    def label_tokens(self, labels: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Embedded labels plus their positions, concatenated: `[B, 1, sum M, width]`."""
        if not labels:
            return None
        parts = [self.label_embed[k](x) + self.label_pos[k] for k, x in labels.items()]
        return torch.cat(parts, dim=1).unsqueeze(1)

    def read_labels(
        self, processor_latents: torch.Tensor, names: list[str]
    ) -> dict[str, torch.Tensor]:
        """Each label's reconstruction `[B, M, C]` from the processor's latents `[B, 1, K, D]`."""
        b = processor_latents.shape[0]
        out = {}
        for k in names:
            q = self.label_pos[k].view(1, 1, *self.label_pos[k].shape).expand(b, -1, -1, -1)
            out[k] = self.label_unembed[k](self.label_head(q, processor_latents))[:, 0]
        return out

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Full-input forward pass, as the official template in eval mode (no masking)."""
        others, labels = self.split_inputs(inputs)
        plan = self.plan_for(others)
        hidden = self.encode(
            group(plan, self.embed_inputs(others)), processor_extra=self.label_tokens(labels)
        )
        rec_labels = self.read_labels(hidden[-1], list(labels))
        if not self.with_decoder:
            return {"input_reconstruction": rec_labels, "latents": {}}
        z = self.decode(hidden)
        rec = self.reconstruct(z, self.grouped_positions(others), plan)
        return {
            "input_reconstruction": {**self.ungroup_reconstruction(rec, plan), **rec_labels},
            "latents": ungroup(plan, z),
        }
