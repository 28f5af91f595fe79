"""Evaluation metrics (top-k, mAP, mIoU with ignore index) and the report files."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from hip.evaluate import EvalResult
from hip.evaluate.report import reconstruction_figure, write_report
from hip.task import get_task
from hip.task.metrics import (
    average_precision,
    confusion_matrix,
    iou_per_class,
    mean_average_precision,
    mean_iou,
    topk_correct,
)


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


def test_topk_counts_top1_and_top5_by_hand():
    logits = torch.tensor(
        [
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 6: rank 1
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: rank 5
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 5: rank 6
            [0.0, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 1: rank 1
            [0.0, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 9: not a class, never a hit
        ]
    )
    labels = torch.tensor([6, 4, 5, 1, 9])
    # top-1: samples 0 and 3 -> 2; top-5 adds sample 1 (rank 5) -> 3; top-8 > 7 classes: left out
    assert topk_correct(logits, labels, (1, 5, 8)) == {1: 2, 5: 3}


def test_topk_tie_for_the_top_goes_to_the_lowest_class():
    # all 10 logits equal: argmax picks class 0, so only the two samples labelled 0 are top-1 hits
    # (torch.topk alone picks an unspecified one of the tied classes: class 8 on this CPU build)
    assert topk_correct(torch.zeros(4, 10), torch.tensor([0, 1, 8, 0]), (1,)) == {1: 2}


def test_average_precision_of_a_known_ranking():
    # positives at ranks 1 and 3: precisions 1/1 and 2/3 -> AP = (1/1 + 2/3) / 2
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx((1 / 1 + 2 / 3) / 2)
    # one positive at rank 4: precision 1/4
    assert average_precision(
        np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 0, 1])
    ) == pytest.approx(1 / 4)
    # soft targets count as positive above 0.5: positive at rank 2 -> AP = 1/2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([0.4, 0.6, 0.0])) == pytest.approx(
        1 / 2
    )


def test_average_precision_counts_tied_scores_as_one_threshold():
    tied = np.array([0.5, 0.5, 0.5])
    # one threshold holding all three, 2 of them positive: precision 2/3 at recall 1 (as sklearn)
    assert average_precision(tied, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert average_precision(tied, np.array([1, 1, 0])) == pytest.approx(2 / 3)  # order-free


def test_map_skips_a_class_without_positives():
    scores = np.array([[0.9, 0.3, 0.5], [0.2, 0.8, 0.4], [0.1, 0.4, 0.6]])
    targets = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    m, aps = mean_average_precision(scores, targets)
    # class 0: positive at rank 1 -> 1; class 1: positive at rank 2 -> 1/2; class 2: no positive
    assert aps[:2].tolist() == pytest.approx([1.0, 1 / 2]) and math.isnan(aps[2])
    assert m == pytest.approx((1.0 + 1 / 2) / 2)  # not (1 + 1/2 + 0) / 3
    m_none, aps_none = mean_average_precision(scores, np.zeros_like(targets))
    assert math.isnan(m_none) and np.isnan(aps_none).all()


def test_confusion_matrix_ignores_255_targets():
    target = torch.tensor([[0, 1, 2], [2, 255, 1]])
    pred = torch.tensor([[0, 2, 2], [1, 0, 1]])
    cm = confusion_matrix(pred, target, 3)
    # (truth, pred) pairs: (0,0) (1,2) (2,2) (2,1) (1,1); the 255 pixel is not counted
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert cm.dtype == torch.int64 and int(cm.sum()) == 5


def test_iou_per_class_and_miou_with_a_class_absent_from_both():
    cm = torch.tensor([[3, 1, 0, 1], [2, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    iou = iou_per_class(cm)
    # IoU = tp / (row + col - tp): class 0: 3/(5+5-3); class 1: 4/(6+5-4); class 2: absent from
    # truth and prediction -> NaN; class 3: predicted once, never true -> 0/(0+1-0) = 0
    assert iou[[0, 1, 3]].tolist() == pytest.approx([3 / 7, 4 / 7, 0.0]) and math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((3 / 7 + 4 / 7 + 0.0) / 3)  # NaN class left out
    assert math.isnan(mean_iou(torch.zeros(2, 2, dtype=torch.long)))


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


def _mae_result(tokens: tuple[int, int], layout: dict, name: str = "image") -> EvalResult:
    """An MAE result with two random reconstructions of `tokens` [M, C] and a layout."""
    rng = np.random.default_rng(0)
    x = rng.random((2, *tokens)).astype(np.float32)
    return EvalResult(
        {"masked_mse": 0.01},
        "mae",
        reconstructions={"original": x, "masked": rng.random((2, tokens[0])) > 0.5, "composite": x},
        modalities={name: tokens},
        layout={name: layout},
    )


def test_reconstructions_of_a_non_square_rgb_image_are_drawn_at_its_height_and_width():
    # 60x80 RGB: 4,800 tokens (not a square number; was drawn as a waveform).
    spec = {"kind": "image", "shape": [4800, 3], "height": 60, "width": 80, "channels": 3}
    fig = reconstruction_figure(_mae_result((4800, 3), spec))
    for ax in fig.axes:
        assert ax.images and ax.images[0].get_array().shape == (60, 80, 3)
    plt.close(fig)
    # 16x64 grey: 1,024 tokens, a square number (was drawn as 32x32).
    spec = {"kind": "image", "shape": [1024, 1], "height": 16, "width": 64, "channels": 1}
    fig = reconstruction_figure(_mae_result((1024, 1), spec))
    assert {ax.images[0].get_array().shape for ax in fig.axes} == {(16, 64)}
    plt.close(fig)


def test_reconstructions_of_audio_are_drawn_as_a_waveform_in_seconds():
    # 40,000 samples at 16 per token: 2,500 tokens (a square: was drawn as a 50x50 image).
    spec = {"kind": "audio", "shape": [2500, 16], "length": 40000, "sample_rate": 44100}
    fig = reconstruction_figure(_mae_result((2500, 16), spec, "audio"))
    for ax in fig.axes:
        assert not ax.images
        t = ax.lines[0].get_xdata()
        assert len(t) == 40000 and t[-1] == pytest.approx(39999 / 44100)
    plt.close(fig)


def test_reconstructions_of_video_are_drawn_as_frames_side_by_side():
    spec = {"kind": "video", "shape": [480, 3], "frames": 8, "height": 6, "width": 10}
    fig = reconstruction_figure(_mae_result((480, 3), spec, "video"))
    assert {ax.images[0].get_array().shape for ax in fig.axes} == {(6, 40, 3)}  # 4 of 8 frames
    plt.close(fig)


def test_per_class_accuracy_and_iou_reach_the_report_and_the_metrics_csv(tmp_path):
    cls = get_task("classification")
    result = EvalResult({"top1": 0.0}, "classification", ["cat", "dog", "eel"])
    # truth cat: 3 right, 1 called dog; truth dog: 1 of 2 right; no eel at all.
    cls.summarize({"cm": torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])}, 6, result)
    assert result.per_class["acc"][:2].tolist() == [0.75, 0.5]
    assert result.per_class_metrics() == {"acc/cat": 0.75, "acc/dog": 0.5}
    files = write_report(result, tmp_path / "cls")
    md = files["markdown"].read_text()
    assert "## Per class" in md and "| cat | 0.7500 |" in md and "| eel | n/a |" in md
    table = pd.read_csv(files["metrics"])
    assert table.loc[0, "acc/dog"] == pytest.approx(0.5)
    seg = EvalResult(
        {"mIoU": 0.5}, "segmentation", ["sky", "road"], per_class={"iou": np.array([0.7, 0.3])}
    )
    files = write_report(seg, tmp_path / "seg")
    assert "| road | 0.3000 |" in files["markdown"].read_text()
    assert pd.read_csv(files["metrics"]).loc[0, "iou/sky"] == pytest.approx(0.7)


def test_training_evaluation_says_how_much_of_the_split_its_cap_let_it_read():
    from hip.data.dataset import builtin_dataset
    from hip.evaluate import Evaluator
    from hip.model import create_task_model

    data = builtin_dataset("digits")
    model = create_task_model("classification", "tiny", dict(data.modalities), num_classes=10)
    capped = Evaluator(data, "classification", split="test", batch_size=8, max_batches=2)
    result = capped(model)
    assert result.metrics["num_samples"] == 16
    assert capped.coverage(result) == (
        "evaluated 16 of 360 samples of 'test' (cap run.eval_batches=2; `hip evaluate` does "
        "the full split)"
    )
    whole = Evaluator(data, "classification", split="test", batch_size=8, limit=16, max_batches=9)
    assert whole.coverage(whole(model)) == "evaluated 16 of 16 samples of 'test'"
