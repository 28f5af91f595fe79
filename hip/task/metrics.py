"""Benchmark metrics: top-k accuracy, mAP (AudioSet style), mIoU with an ignore index.

The counting is torchmetrics' (functional API); this module keeps the project's signatures and
definitions where torchmetrics' defaults differ (each place says how).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_average_precision,
    multiclass_confusion_matrix,
    multiclass_stat_scores,
    multilabel_average_precision,
)

# No public torchmetrics function takes an already accumulated confusion matrix (ours is summed
# over batches); this is the reduction MulticlassJaccardIndex.compute() applies to its own one,
# unchanged from torchmetrics 1.4 to 1.9 (tests/test_evaluate.py pins its results by hand).
from torchmetrics.functional.classification.jaccard import _jaccard_index_reduce


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, int]:
    """How many samples have their label among the top-k logits, for each k (k <= classes).

    A tie for the top logit goes to the lowest class index (torch.argmax); ties across the k-th
    place are broken by torch.topk. Labels outside [0, classes) count as not correct.
    """
    out = {}
    n_cls = logits.shape[-1]
    # torchmetrics' one-hot step fails on such labels: they are passed as ignored (never a hit).
    labels = labels.masked_fill((labels < 0) | (labels >= n_cls), -1)
    for k in ks:
        if k > n_cls:
            continue
        if n_cls == 1:  # torchmetrics wants >= 2 classes; with one, label 0 is always top-1
            out[k] = int((labels == 0).sum())
            continue
        # Micro stat scores with top_k: tp = samples whose label is among the k highest logits,
        # an exact integer count (multiclass_accuracy would give it as a rounded fraction).
        tp = multiclass_stat_scores(
            logits, labels, n_cls, top_k=k, average="micro", ignore_index=-1
        )[0]
        out[k] = int(tp)
    return out


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class (tied scores are one threshold, as in sklearn); NaN if no positives."""
    return float(mean_average_precision(scores[:, None], targets[:, None])[1][0])


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """mAP over classes (AudioSet's metric: unweighted mean of per-class AP over classes with positives)."""
    pos = torch.from_numpy(np.asarray(targets) > 0.5)
    has_pos = pos.any(0).numpy()
    aps = np.full(pos.shape[1], np.nan)
    if has_pos.any():
        # Per class (average=None), then our own mean: torchmetrics' "macro" would count a class
        # without positives as AP 0, where AudioSet (and we) leave it out (NaN).
        keep = torch.from_numpy(has_pos)
        x = torch.as_tensor(np.asarray(scores, dtype=np.float64))[:, keep]
        y = pos[:, keep].long()
        if x.shape[1] == 1:  # the multilabel call wants >= 2 labels
            per_class = binary_average_precision(x[:, 0], y[:, 0])
        else:
            per_class = multilabel_average_precision(x, y, num_labels=x.shape[1], average=None)
        aps[has_pos] = per_class.reshape(-1).double().numpy()
    valid = aps[~np.isnan(aps)]
    return (float(valid.mean()) if len(valid) else float("nan")), aps


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """`[K, K]` counts (rows = truth, cols = prediction), ignoring `ignore_index` targets."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    # As before torchmetrics: other targets outside [0, K) are skipped too (mapped to the ignore
    # value) and predictions are clamped into range, where torchmetrics would raise; the inputs
    # are then valid, so its per-batch validation pass (a unique() over every pixel) is skipped.
    target = target.masked_fill((target < 0) | (target >= num_classes), ignore_index)
    return multiclass_confusion_matrix(
        pred.clamp(0, num_classes - 1),
        target,
        num_classes,
        ignore_index=ignore_index,
        validate_args=False,
    )


def iou_per_class(confusion: torch.Tensor) -> np.ndarray:
    """IoU of every class from a confusion matrix (NaN for classes absent from truth and prediction)."""
    iou = _jaccard_index_reduce(confusion, average=None).double()
    # torchmetrics gives 0 (its zero_division) where the union is empty; ours is NaN there.
    absent = (confusion.sum(0) + confusion.sum(1)) == 0
    return iou.masked_fill(absent, float("nan")).cpu().numpy()


def mean_iou(confusion: torch.Tensor) -> float:
    """mIoU over classes present in truth or prediction."""
    # torchmetrics' "macro" gives weight 0 to classes absent from truth and prediction (and
    # 0/0 = NaN when every class is absent): the same mean as ours.
    return float(_jaccard_index_reduce(confusion, average="macro"))
