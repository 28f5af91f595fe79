"""Segmentation: a class per input position; scored by mIoU (255 = ignore)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from hip.errors import UserError
from hip.task.base import EvalResult, label_range_error
from hip.task.metrics import confusion_matrix, iou_per_class, mean_iou
from hip.task.supervised import HeadTask

IGNORE_INDEX = 255
DENSE_QUERIES = ("positions", "tokens")


class SegmentationTask(HeadTask):
    """A per-position head on the decoder's output (cross-entropy, ignoring 255)."""

    name = "segmentation"
    headline = "mIoU"
    plots = ("per_class",)

    def build_model(self, meta: dict[str, Any]) -> nn.Module:
        """The segmenter, not scoring the data's ignore label (255 unless the manifest says)."""
        model = super().build_model(meta)
        model.ignore_index = int(meta.get("ignore_index", IGNORE_INDEX))
        query = str(meta.get("dense_query") or "positions")  # older checkpoints: official
        if query not in DENSE_QUERIES:
            raise UserError(
                f"model.dense_query={query!r}: choose one of {', '.join(DENSE_QUERIES)}"
            )
        model.dense_query = query
        return model

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """Per-position class indices `[B, M]`."""
        if "mask" not in batch:
            raise UserError("segmentation needs batches with a per-position 'mask'")
        return batch["mask"].long()

    def decode_label(self, sample: dict[str, Any], num_classes: int) -> dict[str, Any]:
        """The per-position class indices from `key.mask.png` (written with the inputs)."""
        with Image.open(io.BytesIO(sample["mask.png"])) as m:
            mask = np.asarray(m, dtype=np.uint8).reshape(-1)
        return {"mask": torch.from_numpy(mask.astype(np.int64))}

    def check_labels(self, batch: dict[str, Any], num_classes: int, where: str) -> None:
        """Every mask value in 0..num_classes-1, or the ignore index."""
        mask = batch.get("mask")
        if mask is None:
            return
        bad = (mask < 0) | ((mask >= num_classes) & (mask != IGNORE_INDEX))
        if bool(bad.any()):
            raise label_range_error(where, "mask class", int(mask[bad][0]), num_classes)

    def accumulate(self, state: dict[str, Any], logits: torch.Tensor, y: torch.Tensor) -> None:
        """The confusion matrix over labelled positions."""
        ignore = int(state.get("ignore_index", IGNORE_INDEX))
        part = confusion_matrix(logits.argmax(-1), y, logits.shape[-1], ignore)
        state["cm"] = part if "cm" not in state else state["cm"] + part

    def summarize(self, state: dict[str, Any], n: int, result: EvalResult) -> None:
        """mIoU, per-class IoU and pixel accuracy."""
        cm = state["cm"]
        result.per_class["iou"] = iou_per_class(cm)
        result.metrics["mIoU"] = mean_iou(cm)
        result.metrics["pixel_acc"] = float(cm.diag().sum() / cm.sum().clamp_min(1))
        result.confusion = cm.numpy()
