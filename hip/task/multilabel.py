"""Multi-label tagging (AudioSet style): any number of labels per sample; scored by mAP."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from hip.task.base import EvalResult
from hip.task.metrics import mean_average_precision
from hip.task.supervised import HeadTask


class MultilabelTask(HeadTask):
    """Independent sigmoid per class (binary cross-entropy)."""

    name = "multilabel"
    headline = "mAP"
    plots = ("per_class",)

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """Multi-hot labels `[B, K]` as floats."""
        return batch["label"].float()

    def encode_label(self, key: str, label: Any) -> list[tuple[str, bytes]]:
        """`key.labels.json`: the list of the sample's class indices."""
        return [(f"{key}.labels.json", json.dumps(list(label or [])).encode())]

    def decode_label(self, sample: dict[str, Any], num_classes: int) -> dict[str, Any]:
        """A multi-hot float vector of `num_classes`."""
        hot = torch.zeros(num_classes, dtype=torch.float32)
        idx = json.loads(sample["labels.json"])
        if idx:
            hot[torch.tensor(idx, dtype=torch.long)] = 1.0
        return {"label": hot}

    def check_labels(self, batch: dict[str, Any], num_classes: int, where: str) -> None:
        """Multi-hot vectors of exactly num_classes entries."""
        from hip.errors import LabelRangeError

        label = batch.get("label")
        if label is None or label.ndim != 2 or label.shape[1] == num_classes:
            return
        raise LabelRangeError(
            f"{where}: multi-hot labels have {label.shape[1]} classes, the data names "
            f"{num_classes}; the manifest's label_names and the shards disagree"
        )

    def accumulate(self, state: dict[str, Any], logits: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the scores and targets: AP needs the whole ranking."""
        state.setdefault("scores", []).append(torch.sigmoid(logits).cpu().numpy())
        state.setdefault("targets", []).append(y.cpu().numpy())

    def summarize(self, state: dict[str, Any], n: int, result: EvalResult) -> None:
        """mAP over classes with positives, and each class's AP."""
        m_ap, aps = mean_average_precision(
            np.concatenate(state["scores"]), np.concatenate(state["targets"])
        )
        result.metrics["mAP"] = m_ap
        result.per_class["ap"] = aps
