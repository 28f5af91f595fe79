"""Task types: the registry, what each owns, and a new type added as CONTRIBUTING.md says."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hip.task
from hip import checkpoint as ckpt
from hip.config import load_config
from hip.data.dataset import builtin_dataset
from hip.errors import UserError
from hip.evaluate import evaluate_model
from hip.task import EvalResult, Task, get_task, register, task_names
from hip.task.base import EvalData, inputs_to_device
from hip.train import trainer


def test_every_task_type_names_its_headline_metric_and_direction():
    heads = {n: (get_task(n).headline, get_task(n).higher_is_better) for n in task_names()}
    assert heads == {
        "mae": ("masked_mse", False),
        "classification": ("top1", True),
        "multilabel": ("mAP", True),
        "segmentation": ("mIoU", True),
        "class_bottleneck": ("top1", True),
        "class_bottleneck_mae": ("top1", True),
    }
    assert get_task("mae").better(0.01, 0.02) and get_task("classification").better(0.9, 0.8)
    assert {get_task(n).stage for n in task_names()} == {"pretrain", "finetune"}


def test_an_unknown_task_type_is_a_user_error_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'classification'"):
        get_task("clasification")
    with pytest.raises(UserError, match="task.type"):
        load_config("finetune", "mnist", ["task.type=regresion"])


# -- the CONTRIBUTING.md walk-through, followed for real: a toy task type -----------------------


class BrightnessTask(Task):
    """Toy regression: predict a digit's mean pixel value (no labels needed)."""

    name = "brightness"
    stage = "finetune"
    headline = "mse"
    higher_is_better = False
    needs_classes = False

    def build_model(self, meta: dict[str, Any]) -> nn.Module:
        from hip.model import create_task_model

        mods = {k: tuple(v) for k, v in meta["modalities"].items()}
        return create_task_model("classification", meta["preset"], mods, 1)  # one output

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["inputs"]["image"].float().mean(dim=(1, 2))

    def loss(self, model, batch, generator=None) -> torch.Tensor:
        return F.mse_loss(model(batch["inputs"]).squeeze(-1), self.targets(batch))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: EvalData) -> EvalResult:
        err, n = 0.0, 0
        for batch in data.batches():
            pred = model(inputs_to_device(batch["inputs"], data.device)).squeeze(-1).cpu()
            err += float(((pred - self.targets(batch)) ** 2).sum())
            n += pred.shape[0]
        return EvalResult({"mse": err / n, "num_samples": float(n)}, self.name, data.label_names)


@pytest.fixture
def brightness(monkeypatch):
    monkeypatch.setattr(hip.task, "_REGISTRY", dict(hip.task._REGISTRY))  # undone after the test
    register(BrightnessTask)
    return get_task("brightness")


def test_a_new_task_type_trains_checkpoints_reloads_and_evaluates(brightness, tmp_path):
    digits = builtin_dataset("digits")
    cfg = load_config(
        "finetune",
        "mnist",
        [
            "task.type=brightness",
            "data.source=digits",
            f"run.out={tmp_path / 'run'}",
            "optim.total_steps=4",
            "data.batch_size=8",
            "run.eval_batches=2",
            "run.progress=false",
            "tracking.enabled=false",
        ],
    )
    result = trainer.train(cfg, digits)
    assert result.step == 4 and set(result.eval_metrics) == {"mse", "num_samples"}
    assert result.eval_metrics["num_samples"] == 16
    model, payload = ckpt.load_model(result.checkpoint)  # rebuilt through the registry
    assert payload["model_meta"]["task"] == "brightness"
    assert payload["model_meta"]["num_classes"] is None  # needs_classes = False
    again = evaluate_model(model, digits, "brightness", batch_size=8, max_batches=2)
    assert again.metrics["mse"] == pytest.approx(result.eval_metrics["mse"], rel=1e-5)
    assert brightness.better(0.001, again.metrics["mse"])


def test_a_task_type_is_known_to_config_checks_only_once_registered(brightness):
    assert "brightness" in task_names()
    with pytest.raises(UserError, match="pretrain trains task.type=mae"):
        load_config("pretrain", "tiny_digits", ["task.type=brightness"])
