"""What every task type owns: its model, targets, loss, metrics, headline metric and plots.

A task type is one class in one file of this package, registered by name
(:func:`hip.task.register`). The trainer, the evaluator, the checkpoint loader and the
pipeline ask the task object; none of them tests the task's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hip.model.modalities import to_float


@dataclass
class EvalResult:
    """Metrics (flat dict of floats) plus what the report draws."""

    metrics: dict[str, float]
    task: str
    label_names: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None  # [K, K] counts (classification, segmentation)
    per_class: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. {"iou": [K]}
    reconstructions: dict[str, np.ndarray] = field(default_factory=dict)  # [N, M, C] each
    modalities: dict[str, tuple[int, int]] = field(default_factory=dict)  # first: reconstructed
    # {name: {"kind": image|audio|video, "height": ...}} (hip.data.dataset.modality_layout)
    layout: dict[str, dict[str, Any]] = field(default_factory=dict)

    def per_class_metrics(self) -> dict[str, float]:
        """Every per-class value as `<metric>/<label name>` (e.g. `iou/cat`); NaNs left out."""
        out: dict[str, float] = {}
        for key, values in self.per_class.items():
            names = class_names(self.label_names, len(values))
            for name, value in zip(names, values, strict=True):
                if np.isfinite(value):
                    out[f"{key}/{metric_safe(name)}"] = float(value)
        return out


@dataclass
class EvalData:
    """The split a task evaluates on: its batches (`batches()` yields them anew per pass) and
    what the data is."""

    batches: Callable[[], Iterable[dict[str, Any]]]
    device: torch.device
    label_names: list[str]
    modalities: dict[str, tuple[int, int]]
    seed: int = 0  # MAE: the masks of the evaluation
    num_reconstructions: int = 8  # MAE: samples kept for the report's figure
    layout: dict[str, dict[str, Any]] = field(default_factory=dict)  # what the tokens are
    tta: str = "off"  # eval.tta: views of each image averaged over (hip.task.tta)


def class_names(label_names: list[str], k: int) -> list[str]:
    """The data's label names when there are `k` of them, else "0".."k-1"."""
    return list(label_names) if len(label_names) == k else [str(i) for i in range(k)]


def metric_safe(name: str) -> str:
    """`name` with characters MLflow refuses in a metric name replaced by `_`."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(name)) or "_"


class EmptySplit(ValueError):
    """The split to evaluate yielded no samples."""


class Task:
    """A task type. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    stage: ClassVar[str] = "finetune"  # the training stage (and MLflow experiment) that trains it
    headline: ClassVar[str]  # the metric a run is judged and promoted by
    higher_is_better: ClassVar[bool] = True
    plots: ClassVar[tuple[str, ...]] = ()  # report figures: confusion, per_class, reconstructions
    needs_classes: ClassVar[bool] = True  # whether the model's head is sized by the label count

    def build_model(self, meta: dict[str, Any]) -> nn.Module:
        """The untrained module a checkpoint's `model_meta` describes."""
        raise NotImplementedError

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """The tensor the loss compares the model's output with."""
        raise NotImplementedError

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training loss of one batch (`model` may be wrapped by DDP/FSDP/compile)."""
        raise NotImplementedError

    def check_labels(self, batch: dict[str, Any], num_classes: int, where: str) -> None:
        """Raise LabelRangeError when the batch's labels do not fit `num_classes` classes."""

    def encode_label(self, key: str, label: Any) -> list[tuple[str, bytes]]:
        """The shard members (`key.ext`, bytes) that store one sample's label; none by default."""
        return []

    def decode_label(self, sample: dict[str, Any], num_classes: int) -> dict[str, Any]:
        """The batch fields (`label`, `mask`) read back from a sample's shard members."""
        return {}

    def evaluate(self, model: nn.Module, data: EvalData) -> EvalResult:
        """Metrics of `model` (in eval mode) over the split `data`."""
        raise NotImplementedError

    def better(self, new: float, old: float) -> bool:
        """Whether headline value `new` beats `old`."""
        return new > old if self.higher_is_better else new < old


def inputs_to_device(
    inputs: dict[str, torch.Tensor], device: torch.device, non_blocking: bool = False
) -> dict[str, torch.Tensor]:
    """Float32 copies of a batch's input modalities on `device` (stored uint8/int16 scaled there)."""
    return {k: to_float(v.to(device, non_blocking=non_blocking)) for k, v in inputs.items()}


def label_range_error(where: str, what: str, value: int, num_classes: int, key: str = "") -> Any:
    """The error for a label outside 0..num_classes-1 (`key`: the sample's, when known)."""
    from hip.errors import LabelRangeError

    first = f" (sample {key!r})" if key else ""
    return LabelRangeError(
        f"{where}: {what} {value} is outside 0..{num_classes - 1}{first}; the data names "
        f"{num_classes} classes: fix the labels, or re-shard so label_names covers them"
    )
