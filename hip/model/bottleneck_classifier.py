"""Classification with the official template: labels as a modality through the class bottleneck."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hip.model.class_bottleneck import HiPClassBottleneck
from hip.model.hip import Modalities, create_model
from hip.model.mae import MAE, MAEConfig

LABEL = "label"  # the label modality's name: [B, 1, num_classes]


class BottleneckClassifier(nn.Module):
    """A `HiPClassBottleneck` trained to classify: logits are the label modality's reconstruction.

    The label goes in hidden (ours: the official release has no training code): the label
    modality's input is all zeros, the role of a masked token, so the processor must fill it in
    from the other modalities; its reconstruction `[B, 1, K]` is the logits. With `mae`, the
    other modalities are masked too and the decoder reconstructs them (MAE and classification
    trained jointly from one encoder pass); without it the decoder blocks are not built.
    """

    def __init__(
        self,
        backbone: HiPClassBottleneck,
        multilabel: bool = False,
        mae: MAEConfig | None = None,
    ):
        super().__init__()
        if LABEL not in backbone.labels:
            raise ValueError(f"the bottleneck has no {LABEL!r} label modality")
        self.backbone = backbone
        self.multilabel = multilabel
        self.num_classes = backbone.labels[LABEL][1]
        # The MAE wrapper shares the backbone; kept out of the module tree so that the
        # parameters are registered (and checkpointed) once, under `backbone.`.
        self.__dict__["mae"] = MAE(backbone, mae) if mae is not None else None
        # What load_pretrained leaves at its fresh init: the label parts always; the MAE
        # unembedding too unless the MAE keeps training.
        self.pretrained_skip = ("label_",) if mae is not None else ("label_", "unembed.")

    def _hidden_label(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = next(iter(inputs.values()))
        return x.new_zeros(x.shape[0], 1, self.num_classes)

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        with_mae: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`{name: [B, M, C]}` -> logits `[B, K]`; with_mae: `(logits, MAE loss)`."""
        bb = self.backbone
        inputs = bb.check_inputs(inputs, require_all=True)
        extra = bb.label_tokens({LABEL: self._hidden_label(inputs)})
        if not with_mae:
            hidden = bb.encode(bb.group_inputs(inputs), processor_extra=extra)
            return bb.read_labels(hidden[-1], [LABEL])[LABEL][:, 0]
        mae = self.__dict__["mae"]
        if mae is None:
            raise RuntimeError("this classifier was built without MAE (mae=None)")
        batch = next(iter(inputs.values()))
        mask = mae.sample_mask(batch.shape[0], generator, batch.device)
        inputs = bb.preprocess(inputs, require_all=True)  # as MAE.forward: front ends, norm
        hidden = bb.encode(mae.visible_tokens(inputs, mask), processor_extra=extra)
        logits = bb.read_labels(hidden[-1], [LABEL])[LABEL][:, 0]
        return logits, mae.loss_from_latents(inputs, mask, bb.decode(hidden)).loss

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE for class indices `[B]`, BCE-with-logits for multi-hot `[B, K]`."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)


def create_bottleneck_classifier(
    preset: str | Mapping[str, Any],
    modalities: Modalities,
    num_classes: int,
    multilabel: bool = False,
    mae: MAEConfig | None = None,
    **overrides: Any,
) -> BottleneckClassifier:
    """The official `HiPClassBottleneck` template on `preset` with a `label` modality of K classes."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if LABEL in modalities:
        raise ValueError(f"modality name {LABEL!r} is taken by the class bottleneck's labels")
    overrides = {**overrides, "template": "HiPClassBottleneck", "label_modalities": [LABEL]}
    backbone = create_model(
        preset, {**modalities, LABEL: (1, num_classes)}, with_decoder=mae is not None, **overrides
    )
    return BottleneckClassifier(backbone, multilabel=multilabel, mae=mae)
