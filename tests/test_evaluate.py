"""Evaluation metrics (top-k, mAP, mIoU with ignore index) and the report files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hip.evaluate import EvalResult
from hip.evaluate.metrics import (
    average_precision,
    confusion_matrix,
    iou_per_class,
    mean_average_precision,
    mean_iou,
    topk_correct,
)
from hip.evaluate.report import image_shape, write_report


def test_topk():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert topk_correct(logits, labels, (1, 2, 5)) == {1: 1, 2: 2}


def test_average_precision_by_hand():
    # ranks of positives: 1 and 3 -> AP = (1/1 + 2/3) / 2
    assert average_precision(
        np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])
    ) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3]])
    targets = np.array([[1, 0], [0, 1], [0, 0]])
    m, aps = mean_average_precision(scores, targets)
    assert m == pytest.approx(1.0) and aps.tolist() == [1.0, 1.0]


def test_iou_with_ignore_index():
    target = torch.tensor([[0, 0, 1, 1, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 1]])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]  # ignored pixels do not count
    assert iou_per_class(cm).tolist() == pytest.approx([0.5, 2 / 3])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3) / 2)


def test_report_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((2, 64, 1)).astype(np.float32)
    hidden = rng.random((2, 64)) > 0.5
    mae = EvalResult(
        {"masked_mse": 0.01, "mean_baseline_mse": 0.05},
        "mae",
        reconstructions={"original": x, "masked": hidden, "composite": x * 0.9},
        modalities={"image": (64, 1)},
    )
    history = [{"step": i + 1, "loss": 1.0 / (i + 1), "lr": 1e-3} for i in range(5)]
    files = write_report(mae, tmp_path / "mae", history, extra={"benchmark": "digits"})
    assert {"metrics", "markdown", "html", "loss", "lr", "reconstructions"} <= set(files)
    table = pd.read_csv(files["metrics"])
    assert (
        table.loc[0, "masked_mse"] == pytest.approx(0.01) and table.loc[0, "benchmark"] == "digits"
    )
    assert "reconstructions.png" in files["markdown"].read_text()
    assert "<img" in files["html"].read_text()
    cls = EvalResult(
        {"top1": 0.5}, "classification", ["a", "b"], confusion=np.array([[3, 1], [1, 3]])
    )
    assert "confusion" in write_report(cls, tmp_path / "cls")
    seg = EvalResult(
        {"mIoU": 0.5}, "segmentation", ["bg", "fg"], per_class={"iou": np.array([0.7, 0.3])}
    )
    assert "per_class_iou" in write_report(seg, tmp_path / "seg")
    assert image_shape(784, 1) == (28, 28) and image_shape(1000, 1) is None
