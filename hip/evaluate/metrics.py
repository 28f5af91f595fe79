"""Benchmark metrics: top-k accuracy, mAP (AudioSet style), mIoU with an ignore index."""

from __future__ import annotations

import numpy as np
import torch


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, int]:
    """How many samples have their label among the top-k logits, for each k (k <= classes)."""
    out = {}
    n_cls = logits.shape[-1]
    top = logits.topk(min(max(ks), n_cls), dim=-1).indices
    for k in ks:
        if k <= n_cls:
            out[k] = int((top[:, :k] == labels[:, None]).any(dim=-1).sum())
    return out


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at each positive's rank (NaN if no positives)."""
    pos = targets > 0.5
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = pos[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / n_pos)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """mAP over classes (AudioSet's metric: unweighted mean of per-class AP over classes with positives)."""
    aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    valid = aps[~np.isnan(aps)]
    return (float(valid.mean()) if len(valid) else float("nan")), aps


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """`[K, K]` counts (rows = truth, cols = prediction), ignoring `ignore_index` targets."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_per_class(confusion: torch.Tensor) -> np.ndarray:
    """IoU of every class from a confusion matrix (NaN for classes absent from truth and prediction)."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return iou.numpy()


def mean_iou(confusion: torch.Tensor) -> float:
    """mIoU over classes present in truth or prediction."""
    iou = iou_per_class(confusion)
    valid = iou[~np.isnan(iou)]
    return float(valid.mean()) if len(valid) else float("nan")
