"""Classification through the official HiPClassBottleneck: the label is a modality.

Two task types: `class_bottleneck` (cross-entropy on the label modality's reconstruction) and
`class_bottleneck_mae` (the same plus the MAE loss on the other modalities, from one encoder
pass: the official template trains classes and reconstruction together). Data, labels and
metrics are classification's; docs/TRAINING.md says when to use which head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hip.task.classification import ClassificationTask


class ClassBottleneckTask(ClassificationTask):
    """Single-label classification with labels routed through the processor (official template)."""

    name = "class_bottleneck"
    joint_mae = False

    def build_model(self, meta: dict[str, Any]) -> nn.Module:
        """A `BottleneckClassifier` with a `label` modality of the checkpoint's class count."""
        from hip.model import MAEConfig
        from hip.model.bottleneck_classifier import create_bottleneck_classifier
        from hip.model.mae import mae_options

        mods = {k: tuple(v) for k, v in meta["modalities"].items()}
        mae = meta.get("mae") or {}
        return create_bottleneck_classifier(
            meta["preset"],
            mods,
            int(meta["num_classes"]),
            mae=MAEConfig(
                mask_ratio=float(mae.get("mask_ratio", 0.85)),
                **mae_options(meta),
            )
            if self.joint_mae
            else None,
            **dict(meta.get("overrides") or {}),
        )

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cross-entropy on the label reconstruction (plus the MAE loss when joint)."""
        from hip.distributed import unwrap

        if not self.joint_mae:
            return super().loss(model, batch, generator)
        logits, mae_loss = model(batch["inputs"], generator=generator, with_mae=True)
        return unwrap(model).loss(logits, self.targets(batch)) + mae_loss


class ClassBottleneckMAETask(ClassBottleneckTask):
    """`class_bottleneck` trained jointly with MAE on the other modalities (`mae.*` settings)."""

    name = "class_bottleneck_mae"
    joint_mae = True
