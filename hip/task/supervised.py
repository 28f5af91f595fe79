"""What the finetuning task types share: a head on the HiP backbone, run over labelled batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hip.task.base import EmptySplit, EvalData, EvalResult, Task, inputs_to_device
from hip.task.tta import predict


class HeadTask(Task):
    """A finetuning task: `hip.model.create_task_model(name, ...)` plus the head's own loss.

    Subclasses say how to turn labels into targets and how to score logits
    (:meth:`accumulate` per batch, :meth:`summarize` at the end).
    """

    def build_model(self, meta: dict[str, Any]) -> nn.Module:
        """A fresh HiP with this task's head, sized by the checkpoint's class count."""
        from hip.model import create_task_model

        mods = {k: tuple(v) for k, v in meta["modalities"].items()}
        overrides = dict(meta.get("overrides") or {})
        return create_task_model(
            self.name, meta["preset"], mods, int(meta["num_classes"]), **overrides
        )

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The head's loss (`model.loss`) on the batch's targets."""
        from hip.distributed import unwrap

        logits = model(batch["inputs"])
        return unwrap(model).loss(logits, self.targets(batch))

    def accumulate(self, state: dict[str, Any], logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch's logits and targets to the running `state`."""
        raise NotImplementedError

    def summarize(self, state: dict[str, Any], n: int, result: EvalResult) -> None:
        """Fill `result` (metrics, per-class values, confusion) from the final `state`."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: EvalData) -> EvalResult:
        """Mean loss and the task's metrics over the split."""
        loss_sum, n = 0.0, 0
        state: dict[str, Any] = {}
        if getattr(model, "ignore_index", None) is not None:  # segmentation: the unscored label
            state["ignore_index"] = int(model.ignore_index)
        for batch in data.batches():
            y = self.targets(batch).to(data.device)
            inputs = inputs_to_device(batch["inputs"], data.device)
            logits = predict(model, inputs, data.tta, data.layout)
            loss_sum += float(model.loss(logits, y)) * y.shape[0]
            n += y.shape[0]
            self.accumulate(state, logits, y)
        if n == 0:
            raise EmptySplit("has no samples")
        result = EvalResult(
            {"loss": loss_sum / n, "num_samples": float(n)},
            self.name,
            list(data.label_names),
            modalities=data.modalities,
            layout=data.layout,
        )
        self.summarize(state, n, result)
        return result
