"""Finetuning heads on a HiP backbone: classification, multi-label and dense (segmentation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hip.model.blocks import CrossAttention
from hip.model.hip import HiP, Modalities, create_model
from hip.model.layers import layer_norm, linear, trunc_normal_fan_in_


@dataclass
class TrainLoss:
    """Cross-entropy options for training only (`task.label_smoothing`, `task.class_weights`).

    Not part of the state dict: the run's config (stored in every checkpoint) says what they
    were, and evaluation in eval mode always scores the plain cross-entropy."""

    label_smoothing: float = 0.0
    weight: torch.Tensor | None = None  # [num_classes]

    def options(self, training: bool, device: torch.device) -> dict[str, Any]:
        """Keyword arguments for `F.cross_entropy` on `device`."""
        if not training:
            return {}
        weight = None if self.weight is None else self.weight.to(device, torch.float32)
        return {"label_smoothing": self.label_smoothing, "weight": weight}


class HiPClassifier(nn.Module):
    """Encoder + processor, then a Perceiver IO style decoder: learned queries read the processor.

    The decoder blocks are not built (classification needs none). `multilabel` only switches
    the loss (sigmoid/BCE instead of softmax/CE); the logits are the same.
    """

    def __init__(
        self, backbone: HiP, num_classes: int, multilabel: bool = False, num_queries: int = 1
    ):
        super().__init__()
        self.backbone = backbone
        self.multilabel = multilabel
        width = backbone.config.num_z_channels[backbone.config.processor_index]
        self.queries = nn.Parameter(torch.empty(num_queries, width))
        trunc_normal_fan_in_(self.queries, num_queries)
        self.decoder = CrossAttention(width, width, 1, 1, True, backbone.config.activation_name)
        self.norm = layer_norm(width)
        self.classifier = linear(width, num_classes, scale=0.0)
        self.train_loss = TrainLoss()

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`{name: [B, M, C]}` -> logits `[B, num_classes]`."""
        z = self.backbone.encode(self.backbone.group_inputs(inputs))[-1]  # [B, 1, K, D]
        q = self.queries.view(1, 1, *self.queries.shape).expand(z.shape[0], -1, -1, -1)
        out = self.decoder(q, z).mean(dim=(1, 2))
        return self.classifier(self.norm(out))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE for class indices `[B]`, BCE-with-logits for multi-hot `[B, K]`."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(
            logits.float(), labels, **self.train_loss.options(self.training, logits.device)
        )


class HiPSegmenter(nn.Module):
    """The full encoder-decoder; queries are every position's vector, unembedded to class logits."""

    def __init__(
        self, backbone: HiP, num_classes: int, target: str | None = None, ignore_index: int = 255
    ):
        super().__init__()
        if not backbone.with_decoder:
            raise ValueError("segmentation needs a HiP built with its decoder blocks")
        self.backbone = backbone
        self.target = target or next(iter(backbone.modalities))
        if self.target not in backbone.modalities:
            raise ValueError(f"target modality {self.target!r} not in {list(backbone.modalities)}")
        self.ignore_index = ignore_index
        e = backbone.config.num_embedding_channels
        self.classifier = linear(e, num_classes, scale=0.0)
        self.train_loss = TrainLoss()
        # positions: the official queries; tokens (ours): the embedded input tokens, added
        # back after the cross-attention (no parameters, so either loads the same weights).
        self.dense_query = "positions"

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`{name: [B, M, C]}` -> per-position logits `[B, M_target, num_classes]`."""
        bb = self.backbone
        tokens = bb.group_inputs(inputs)  # [B, G, L, E]: embedding + position, grouped
        z = bb.decode(bb.encode(tokens))
        if self.dense_query == "tokens":
            rec = bb.reconstruction_head(tokens, z) + tokens
        else:
            rec = bb.reconstruction_head(bb.grouped_positions().expand(z.shape[0], -1, -1, -1), z)
        m = next(x for x in bb.plan.modalities if x.name == self.target)
        return self.classifier(bb.ungroup_reconstruction({m.name: rec[:, m.groups]})[m.name])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-position cross-entropy; `ignore_index` positions do not count."""
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=self.ignore_index,
            **self.train_loss.options(self.training, logits.device),
        )


def create_task_model(
    task: str,
    preset: str | Mapping[str, Any],
    modalities: Modalities,
    num_classes: int,
    **overrides: Any,
) -> HiPClassifier | HiPSegmenter:
    """Build a finetuning model: `task` is classification, multilabel or segmentation."""
    if task not in HEADS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    head, with_decoder, options = HEADS[task]
    backbone = create_model(
        preset, modalities, **({} if with_decoder else {"with_decoder": False}), **overrides
    )
    return head(backbone, num_classes, **options)


# The head each finetuning task type puts on the backbone: (class, needs the decoder, options).
HEADS: dict[str, tuple[type, bool, dict[str, Any]]] = {
    "classification": (HiPClassifier, False, {}),
    "multilabel": (HiPClassifier, False, {"multilabel": True}),
    "segmentation": (HiPSegmenter, True, {}),
}


def backbone_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HiP parameters from a HiP, MAE (`model.`) or task-model (`backbone.`) state dict."""
    prefix = backbone_prefix(state_dict)
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def backbone_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The prefix of the HiP's parameters in a state dict (`model.`, `backbone.`, ... or none)."""
    for prefix in ("model.", "backbone.", "module.model.", "module.backbone."):
        if any(k.startswith(prefix) for k in state_dict):
            return prefix
    return ""


def load_pretrained(
    task_model: HiPClassifier | HiPSegmenter,
    state_dict: Mapping[str, torch.Tensor],
    freeze_positions: bool = False,
) -> list[str]:
    """Load an MAE checkpoint's encoder and position tables (and decoder, for segmentation).

    The input normalisation comes with them (the encoder learned on those inputs).

    Every backbone parameter of `task_model` must be present with the same shape, except the
    MAE unembedding which the task heads replace. Returns the names loaded. With
    `freeze_positions`, the position tables stop receiving gradients.
    """
    source = backbone_state(state_dict)
    target = task_model.backbone.state_dict()
    # Parts the task model initialises afresh: by default the MAE unembedding (the task heads
    # replace it); a model can name its own (the class bottleneck's label parts).
    skip = tuple(getattr(task_model, "pretrained_skip", ("unembed.",)))
    wanted = {k for k in target if not k.startswith(skip)}
    old_format = not any(k.startswith("input_norm.") for k in source)
    if old_format:  # a checkpoint from before InputNorm: its encoder saw raw inputs
        wanted = {k for k in wanted if not k.startswith("input_norm.")}
    missing = sorted(k for k in wanted if k not in source)
    bad = sorted(
        f"{k}: {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
        for k in wanted
        if k in source and source[k].shape != target[k].shape
    )
    if missing or bad:
        raise ValueError(
            "pretrained weights do not fit this model (was it pretrained with the same preset, "
            "modalities and, for audio, token width and front end: data.audio_samples_per_token/"
            f"audio_token_ms, model.overrides.front_ends?); missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}; mis-shaped: {bad[:10]}"
        )
    task_model.backbone.load_state_dict({k: source[k] for k in wanted}, strict=False)
    if old_format:
        for name in task_model.backbone.input_norm.names:
            task_model.backbone.input_norm.set_mode(name, "none")
    if freeze_positions:
        for p in task_model.backbone.pos.values():
            p.requires_grad_(False)
    return sorted(wanted)


@dataclass
class LoadSummary:
    """What `load_pretrained` did with each tensor: loaded, skipped (and why) or new."""

    matched: list[str] = field(default_factory=list)  # loaded into the model
    not_in_model: list[str] = field(default_factory=list)  # checkpoint tensors with no place here
    shape_mismatch: list[str] = field(default_factory=list)  # same name, other shape: not loaded
    left_fresh: list[str] = field(default_factory=list)  # fits, but the task re-initialises it
    new: list[str] = field(default_factory=list)  # the model's tensors initialised fresh

    def counts(self) -> dict[str, int]:
        """How many tensors fell in each group."""
        return {k: len(v) for k, v in vars(self).items()}

    def line(self) -> str:
        """One line for the log: matched / skipped (by reason) / new counts."""
        c = self.counts()
        skipped = c["not_in_model"] + c["shape_mismatch"] + c["left_fresh"]
        return (
            f"{c['matched']} tensors matched, {skipped} skipped ({c['not_in_model']} not in this "
            f"model, {c['shape_mismatch']} of another shape, {c['left_fresh']} re-initialised by "
            f"the task), {c['new']} new (initialised fresh)"
        )


def summarize_load(
    task_model: nn.Module, state_dict: Mapping[str, torch.Tensor], loaded: list[str]
) -> LoadSummary:
    """Sort every checkpoint tensor and every model tensor after `load_pretrained` loaded `loaded`."""
    source = backbone_state(state_dict)
    target = task_model.backbone.state_dict()
    done = set(loaded)
    out = LoadSummary(matched=sorted(done))
    # Checkpoint tensors outside the HiP (e.g. MAE-only parameters) have no place here either.
    prefix = backbone_prefix(state_dict)
    out.not_in_model += sorted(k for k in state_dict if not k.startswith(prefix))
    for k in sorted(source):
        if k in done:
            continue
        if k not in target:
            out.not_in_model.append(k)
        elif tuple(source[k].shape) != tuple(target[k].shape):
            out.shape_mismatch.append(k)
        else:
            out.left_fresh.append(k)
    out.new = sorted(
        k
        for k in task_model.state_dict()
        if not (k.startswith("backbone.") and k[len("backbone.") :] in done)
    )
    return out
