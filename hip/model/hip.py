"""The Hierarchical Perceiver (HiP) model: embed -> group -> U-Net of HiP blocks -> reconstruct."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from hip.errors import InputShapeError
from hip.model.blocks import CrossAttention, HiPBlock, regroup
from hip.model.frontend import build_front_ends
from hip.model.grouping import GroupPlan, group, plan_groups, ungroup
from hip.model.layers import linear, trunc_normal_fan_in_
from hip.model.normalize import InputNorm
from hip.model.presets import HiPConfig, make_config

Modalities = Mapping[str, tuple[int, int]]


def check_modalities(modalities: Modalities) -> dict[str, tuple[int, int]]:
    """Validate `{name: (M, C)}` and return it as a plain dict."""
    if not modalities:
        raise ValueError("modalities is empty: give at least one {name: (M, C)}")
    out = {}
    for name, shape in modalities.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"modality name {name!r} must be a Python identifier (it names parameters)"
            )
        try:
            m, c = (int(v) for v in shape)
        except (TypeError, ValueError):
            raise ValueError(f"modality {name!r}: expected (M, C), got {shape!r}") from None
        if m < 1 or c < 1:
            raise ValueError(f"modality {name!r}: M and C must be positive, got {(m, c)}")
        out[name] = (m, c)
    return out


class HiP(nn.Module):
    """Hierarchical Perceiver, numerically the official `HiP` template.

    `forward(inputs)` maps `{name: [B, M, C]}` to `{"input_reconstruction": {name: [B, M, C]},
    "latents": {name: ...}}` like the official model. The pieces (`embed_inputs`,
    `group_inputs`, `encode`, `decode`, `reconstruct`) are public so MAE and the task heads
    can reuse them. `with_decoder=False` builds only encoder + processor (classification).
    """

    def __init__(self, config: HiPConfig, modalities: Modalities, with_decoder: bool = True):
        super().__init__()
        self.config = config
        self.modalities = check_modalities(modalities)
        self.with_decoder = with_decoder
        cfg, e = config, config.num_embedding_channels
        self._plans: dict[tuple[str, ...], GroupPlan] = {}
        self.plan: GroupPlan = self.plan_for(self.modalities)

        # Fixed front ends (ours; none unless config.front_ends names one): `features` holds
        # each modality's (M, C) after them, what the embedding sees and MAE reconstructs.
        self.front_end, self.features = build_front_ends(config.front_ends, self.modalities)
        # Per-modality standardisation before the embedding (identity unless set; ours).
        self.input_norm = InputNorm(self.features)
        self.embed = nn.ModuleDict({k: linear(c, e) for k, (_, c) in self.features.items()})
        # Learned position tables [M, E]: added to the embedding and reused as the MAE query.
        self.pos = nn.ParameterDict(
            {k: nn.Parameter(torch.empty(m, e)) for k, (m, _) in self.modalities.items()}
        )
        for k, (m, _) in self.modalities.items():
            trunc_normal_fan_in_(self.pos[k], m)
        pe = cfg.num_position_encoding_channels
        # Faithful to the official PositionEncoder: tables stay [M, E] and, when
        # num_position_encoding_channels differs from E, a bias-free E -> E projection follows.
        # Its comment says "shared", but Haiku names one per modality slot of a call
        # (position_encoding_linear, _1, ...): the i-th modality of any call uses projection i.
        slots = cfg.position_encoding_slots or len(self.modalities)
        self.pos_proj = (
            nn.ModuleList(linear(e, e, bias=False) for _ in range(slots))
            if pe is not None and pe != e
            else None
        )

        n_blocks = cfg.processor_index + 1 if not with_decoder else cfg.num_blocks
        blocks, in_ch = [], e
        for i in range(n_blocks):
            skip = cfg.num_z_channels[cfg.num_blocks - 1 - i] if i > cfg.processor_index else None
            # Only the processor may train on a random subset of its (eval-sized) latents.
            train_k, eval_k = (
                cfg.processor_latents()
                if i == cfg.processor_index
                else (cfg.z_index_dim[i], cfg.z_index_dim[i])
            )
            blocks.append(
                HiPBlock(
                    in_channels=in_ch,
                    num_groups=cfg.num_groups[i],
                    num_latents=eval_k,
                    num_latents_train=train_k,
                    channels=cfg.num_z_channels[i],
                    num_layers=cfg.num_self_attends_per_block[i],
                    num_heads=cfg.num_self_attend_heads[i],
                    cross_heads=cfg.num_cross_attend_heads[i],
                    cross_widening=cfg.cross_attend_widening_factor[i],
                    self_widening=cfg.self_attend_widening_factor[i],
                    skip_channels=skip,
                    regroup_inputs=i > 0,  # block 0 receives the grouper's output
                    regroup_type=cfg.regroup_type,
                    activation=cfg.activation_name,
                    dropout=cfg.dropout_prob,
                    drop_path=cfg.drop_path_rate,
                )
            )
            in_ch = cfg.num_z_channels[i]
        self.blocks = nn.ModuleList(blocks)
        if with_decoder:
            # Queries are the position vectors (E channels), no query residual, MLP widening 1.
            self.reconstruction_head = CrossAttention(
                e, cfg.num_z_channels[-1], 1, 1, False, cfg.activation_name
            )
            self.unembed = nn.ModuleDict(
                {k: linear(e, c, scale=0.0) for k, (_, c) in self.features.items()}
            )

    # -- pieces -------------------------------------------------------------------------
    def check_inputs(
        self,
        inputs: Mapping[str, torch.Tensor],
        require_all: bool = False,
        preprocessed: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Return inputs in modality order; raise ValueError naming any mismatch.

        Any non-empty subset of the modalities the model was built for is accepted (grouping
        is planned per call, as the official grouper does); `require_all` refuses subsets.
        `preprocessed` checks shapes after the front ends (`self.features`) instead.
        """
        missing = [k for k in self.modalities if k not in inputs]
        unexpected = [k for k in inputs if k not in self.modalities]
        if unexpected or len(missing) == len(self.modalities) or (missing and require_all):
            raise ValueError(
                f"HiP inputs: missing modalities {missing}, unexpected {unexpected}; "
                f"the model was built for {list(self.modalities)}"
            )
        out, batch = {}, None
        for k, (m, c) in (self.features if preprocessed else self.modalities).items():
            if k not in inputs:
                continue
            x = inputs[k]
            if x.ndim != 3 or tuple(x.shape[1:]) != (m, c):
                raise InputShapeError(
                    f"HiP inputs: modality {k!r} must be [B, {m}, {c}], got {list(x.shape)}"
                )
            if batch is not None and x.shape[0] != batch:
                raise ValueError(
                    f"HiP inputs: batch sizes differ ({batch} vs {x.shape[0]} for {k!r})"
                )
            batch = x.shape[0]
            out[k] = x
        return out

    def plan_for(self, names: Iterable[str]) -> GroupPlan:
        """The group layout of a call on `names` (cached; `self.plan` is the all-modality one)."""
        key = tuple(names)
        if key not in self._plans:
            self._plans[key] = plan_groups(
                self.config.num_groups[0], {k: self.modalities[k][0] for k in key}
            )
        return self._plans[key]

    def positions(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The position vectors of a call's modalities (default all), `{name: [M, E]}`.

        The i-th modality of the call goes through position projection i when there is one.
        """
        names = list(self.modalities) if names is None else list(names)
        if self.pos_proj is None:
            return {k: self.pos[k] for k in names}
        if len(names) > len(self.pos_proj):
            raise ValueError(
                f"HiP inputs: {len(names)} modalities in one call but only "
                f"{len(self.pos_proj)} position projection slot(s) (config position_encoding_slots)"
            )
        return {k: self.pos_proj[i](self.pos[k]) for i, k in enumerate(names)}

    def embed_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per modality Linear(C -> E) plus its position table: `{name: [B, M, E]}`."""
        pos = self.positions(inputs)
        return {k: self.embed[k](x) + pos[k] for k, x in inputs.items()}

    def grouped_positions(self, names: Iterable[str] | None = None) -> torch.Tensor:
        """The position tables grouped like the inputs: `[1, G, L, E]` (the MAE queries)."""
        pos = self.positions(names)
        return group(self.plan_for(pos), {k: v.unsqueeze(0) for k, v in pos.items()})

    def apply_front_ends(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checked inputs through their front ends: `{name: [B, M, C]}` -> `{name: [B, M, C']}`
        (C' per `self.features`; modalities without a front end pass through)."""
        return {k: self.front_end[k](x) if k in self.front_end else x for k, x in inputs.items()}

    def preprocess(
        self, inputs: Mapping[str, torch.Tensor], require_all: bool = False
    ) -> dict[str, torch.Tensor]:
        """Check, apply the front ends and normalise: what the embedding sees."""
        return self.input_norm(self.apply_front_ends(self.check_inputs(inputs, require_all)))

    def group_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Preprocess, embed, add positions and group: `{name: [B, M, C]}` -> `[B, G, L, E]`."""
        inputs = self.preprocess(inputs)
        return group(self.plan_for(inputs), self.embed_inputs(inputs))

    def encode(
        self, x: torch.Tensor, processor_extra: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Run encoder blocks and the processor on grouped tokens; return every block's output.

        `processor_extra` `[B, 1, N, D_in]` is concatenated to the processor's (one-group)
        inputs: the class bottleneck's embedded labels.
        """
        hidden, p = [], self.config.processor_index
        for i, block in enumerate(self.blocks[: p + 1]):
            if i == p and processor_extra is not None:
                x = regroup(x, 1, self.config.regroup_type)
                x = torch.cat([x, processor_extra.to(x.dtype)], dim=2)
            x = block(x)
            hidden.append(x)
        return hidden

    def decode(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Run decoder blocks with U-Net skips from the mirrored encoder blocks."""
        n, z = self.config.num_blocks, hidden[-1]
        for i in range(self.config.processor_index + 1, n):
            z = self.blocks[i](z, skip=hidden[n - 1 - i])
            hidden.append(z)
        return z

    def reconstruct(
        self, latents: torch.Tensor, queries: torch.Tensor, plan: GroupPlan | None = None
    ) -> dict[str, torch.Tensor]:
        """Cross-attend grouped queries `[B, G, N, E]` to the last latents; unembed per modality.

        Returns `{name: [B, g_name, N, C_name]}`, still grouped (callers ungroup or gather).
        """
        plan = plan or self.plan
        rec = self.reconstruction_head(queries.expand(latents.shape[0], -1, -1, -1), latents)
        return {m.name: self.unembed[m.name](rec[:, m.groups]) for m in plan.modalities}

    def ungroup_reconstruction(
        self, grouped: dict[str, torch.Tensor], plan: GroupPlan | None = None
    ) -> dict[str, torch.Tensor]:
        """Undo grouping on `{name: [B, g, L, C]}` outputs decoded from the full position queries."""
        plan = plan or self.plan
        out = {}
        for m in plan.modalities:
            if m.name not in grouped:
                continue
            x = grouped[m.name][:, :, : plan.group_length - m.group_padding]
            out[m.name] = x.reshape(x.shape[0], -1, x.shape[-1])[:, : m.length]
        return out

    # -- the official forward -------------------------------------------------------------
    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Full-input forward pass, as the official model in eval mode (no masking)."""
        if not self.with_decoder:
            raise RuntimeError("this HiP was built without decoder blocks; use encode()")
        inputs = self.apply_front_ends(self.check_inputs(inputs))
        plan = self.plan_for(inputs)
        hidden = self.encode(group(plan, self.embed_inputs(inputs)))
        z = self.decode(hidden)
        rec = self.reconstruct(z, self.grouped_positions(inputs), plan)
        return {
            "input_reconstruction": self.ungroup_reconstruction(rec, plan),
            "latents": ungroup(plan, z),
        }


def create_model(preset: str | Mapping[str, Any], modalities: Modalities, **overrides: Any) -> HiP:
    """Build a HiP from a preset name (`hip16`, `hip256`, `mini`, `tiny`) or an official-format dict.

    `modalities` maps a name to `(M, C)`; `overrides` replace single config fields, and
    `with_decoder=False` builds encoder + processor only. The config's `template`
    (`HiP` or `HiPClassBottleneck`) picks the class, so a golden-fixture JSON builds as is.
    """
    with_decoder = overrides.pop("with_decoder", True)
    config = make_config(preset, **overrides)
    if config.template == "HiPClassBottleneck":
        from hip.model.class_bottleneck import HiPClassBottleneck  # it subclasses HiP

        return HiPClassBottleneck(config, modalities, with_decoder=with_decoder)
    return HiP(config, modalities, with_decoder=with_decoder)
