"""Training and finetuning through the official HiPClassBottleneck (labels as a modality)."""

from __future__ import annotations

import pytest
import torch

from hip import checkpoint as ckpt
from hip.config import load_config
from hip.data.dataset import builtin_dataset
from hip.evaluate import evaluate_model
from hip.model import MAE, MAEConfig, create_model, load_pretrained
from hip.model.bottleneck_classifier import create_bottleneck_classifier
from hip.train import trainer

QUICK = [
    "data.source=digits",
    "optim.total_steps=3",
    "optim.warmup_steps=1",
    "data.batch_size=8",
    "run.eval_batches=1",
    "run.progress=false",
    "tracking.enabled=false",
]


@pytest.fixture(scope="module")
def digits():
    return builtin_dataset("digits")


def test_the_hidden_label_is_read_out_of_the_processor():
    model = create_bottleneck_classifier("tiny", {"image": (64, 1)}, num_classes=5)
    assert len(model.backbone.blocks) == 3  # no decoder without MAE
    x = {"image": torch.rand(4, 64, 1)}
    logits = model(x)
    assert logits.shape == (4, 5) and torch.count_nonzero(logits) == 0  # zero-init unembedding
    with torch.no_grad():
        model.backbone.label_unembed["label"].weight.normal_()
    y = {"image": x["image"].flip(0)}
    assert torch.allclose(model(y), model(x).flip(0), atol=1e-5)  # per sample, from the image


def test_finetuning_from_an_mae_checkpoint_loads_the_backbone_and_trains_jointly(tmp_path, digits):
    mods = dict(digits.modalities)
    mae = MAE(create_model("tiny", mods))
    with torch.no_grad():
        mae.model.pos["image"].add_(1.0)  # recognisable pretrained weights
        mae.model.unembed["image"].weight.add_(0.5)
    head = create_bottleneck_classifier("tiny", mods, 10, mae=MAEConfig(mask_ratio=0.75))
    fresh = {k: v.clone() for k, v in head.backbone.state_dict().items() if k.startswith("label_")}
    loaded = load_pretrained(head, mae.state_dict())
    assert "pos.image" in loaded and "unembed.image.weight" in loaded  # the MAE head goes on
    assert not any(k.startswith("label_") for k in loaded)
    assert torch.equal(head.backbone.pos["image"], mae.model.pos["image"])
    assert all(torch.equal(head.backbone.state_dict()[k], v) for k, v in fresh.items())
    logits, mae_loss = head({"image": torch.rand(2, *mods["image"])}, with_mae=True)
    assert logits.shape == (2, 10) and mae_loss > 0

    pre = load_config("pretrain", "tiny_digits", [f"run.out={tmp_path}/p"] + QUICK)
    ckpt_path = trainer.train(pre, digits).checkpoint  # a real MAE pretraining checkpoint
    cfg = load_config(
        "finetune",
        "mnist",
        ["task.type=class_bottleneck_mae", f"task.pretrained={ckpt_path}", f"run.out={tmp_path}/f"]
        + QUICK,
    )
    result = trainer.train(cfg, digits)
    assert result.step == 3 and 0.0 <= result.eval_metrics["top1"] <= 1.0
    model, payload = ckpt.load_model(result.checkpoint)  # rebuilt through the task registry
    assert payload["model_meta"]["task"] == "class_bottleneck_mae"
    assert type(model.backbone).__name__ == "HiPClassBottleneck"
    again = evaluate_model(model, digits, "class_bottleneck_mae", batch_size=8, max_batches=1)
    assert again.metrics["top1"] == pytest.approx(result.eval_metrics["top1"])


def test_classification_only_bottleneck_trains_from_scratch(tmp_path, digits):
    cfg = load_config(
        "finetune", "mnist", ["task.type=class_bottleneck", f"run.out={tmp_path}/c"] + QUICK
    )
    result = trainer.train(cfg, digits)
    assert result.step == 3 and "top1" in result.eval_metrics
    losses = [r["loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
