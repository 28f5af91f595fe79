"""Classification: one label per sample; scored by top-1 (and top-5) accuracy."""

from __future__ import annotations

from typing import Any

import torch

from hip.task.base import EvalResult, label_range_error
from hip.task.metrics import confusion_matrix, topk_correct
from hip.task.supervised import HeadTask

MAX_CONFUSION_CLASSES = 200  # beyond this a confusion matrix is neither drawn nor kept


class ClassificationTask(HeadTask):
    """A classifier head over the latents (cross-entropy)."""

    name = "classification"
    headline = "top1"
    plots = ("confusion",)

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """Class indices `[B]`."""
        return batch["label"].long()

    def encode_label(self, key: str, label: Any) -> list[tuple[str, bytes]]:
        """`key.cls`: the class index as text."""
        return [(f"{key}.cls", str(int(label)).encode())]

    def decode_label(self, sample: dict[str, Any], num_classes: int) -> dict[str, Any]:
        """The class index."""
        return {"label": int(sample["cls"])}

    def check_labels(self, batch: dict[str, Any], num_classes: int, where: str) -> None:
        """Every class index in 0..num_classes-1."""
        label = batch.get("label")
        if label is None or label.ndim != 1:
            return
        bad = (label < 0) | (label >= num_classes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            keys = batch.get("key")
            key = keys[i] if keys is not None else ""
            raise label_range_error(where, "label", int(label[i]), num_classes, key)

    def accumulate(self, state: dict[str, Any], logits: torch.Tensor, y: torch.Tensor) -> None:
        """Top-k hits and, for up to MAX_CONFUSION_CLASSES classes, the confusion matrix."""
        correct = state.setdefault("correct", {})
        for k, c in topk_correct(logits, y).items():
            correct[k] = correct.get(k, 0) + c
        if logits.shape[-1] <= MAX_CONFUSION_CLASSES:
            part = confusion_matrix(logits.argmax(-1), y, logits.shape[-1])
            state["cm"] = part if "cm" not in state else state["cm"] + part

    def summarize(self, state: dict[str, Any], n: int, result: EvalResult) -> None:
        """top1, top5 (with at least 5 classes) and the confusion matrix."""
        for k, c in state.get("correct", {}).items():
            result.metrics[f"top{k}"] = c / n
        if "cm" in state:
            cm = state["cm"].double()
            result.confusion = state["cm"].numpy()
            # Per-class accuracy (recall): right / samples of the class; NaN for absent classes.
            support = cm.sum(1)
            acc = (cm.diag() / support.clamp_min(1)).masked_fill(support == 0, float("nan"))
            result.per_class["acc"] = acc.numpy()
