"""Evaluation on a held-out split: the task's own metrics, reports, and `hip evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hip.task import EvalResult, get_task
from hip.task.base import EmptySplit, EvalData
from hip.task.tta import check_tta, views_note


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    source: Any,
    task: str,
    split: str = "test",
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    num_reconstructions: int = 8,
    layout: dict[str, dict[str, Any]] | None = None,
    tta: str = "off",
) -> EvalResult:
    """Metrics of `model` (an MAE or a task model) on `split` of a data set, by its task.

    `layout` (a checkpoint's `model_meta["layout"]`) says what the tokens are; default the data's.
    `tta` (`eval.tta`): a finetuned model's logits are averaged over these views of each image.
    """

    def batches() -> Any:
        for i, batch in enumerate(source.batches(split, batch_size, train=False, limit=limit)):
            if max_batches is not None and i >= max_batches:
                return
            yield batch

    layout = dict(layout or getattr(source, "layout", None) or {})
    if get_task(task).stage == "finetune":  # an MAE is scored on its reconstructions only
        check_tta(tta, layout)
    was_training = model.training
    model.eval()
    try:
        data = EvalData(
            batches,
            torch.device(device),
            list(source.label_names),
            dict(source.modalities),
            seed,
            num_reconstructions,
            layout,
            tta,
        )
        return get_task(task).evaluate(model, data)
    except EmptySplit:
        raise EmptySplit(f"split {split!r} has no samples") from None
    finally:
        model.train(was_training)


@dataclass
class Evaluator:
    """The trainer's end-of-training evaluation: one split of a data set, scored by its task."""

    source: Any
    task: str
    split: str = "test"
    batch_size: int = 32
    device: torch.device | str = "cpu"
    max_batches: int | None = None  # run.eval_batches: a cap for quick runs (None: all)
    limit: int | None = None
    seed: int = 0
    tta: str = "off"  # eval.tta

    def __call__(self, model: nn.Module) -> EvalResult:
        """Evaluate `model` (unwrapped) on the split."""
        return evaluate_model(
            model,
            self.source,
            self.task,
            split=self.split,
            batch_size=self.batch_size,
            device=self.device,
            max_batches=self.max_batches,
            limit=self.limit,
            seed=self.seed,
            tta=self.tta,
        )

    def coverage(self, result: EvalResult) -> str:
        """One line: how many of the split's samples were evaluated, and under which cap."""
        total = self.source.num_samples(self.split)
        if total is not None and self.limit is not None:
            total = min(total, int(self.limit))
        n = int(result.metrics.get("num_samples", 0))
        line = f"evaluated {n} of {total if total is not None else '?'} samples of {self.split!r}"
        line += views_note(self.tta, self.task)
        if self.max_batches is not None and (total is None or n < total):
            line += (
                f" (cap run.eval_batches={self.max_batches}; `hip evaluate` does the full split)"
            )
        return line


def primary_metric(task: str) -> str:
    """The headline metric of a task (what `hip compare` sorts by)."""
    return get_task(task).headline


__all__ = ["EvalResult", "Evaluator", "evaluate_model", "primary_metric"]
