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


def _stable_ranks(scores: np.ndarray) -> torch.Tensor:
    """Distinct scores in (0, 1] with the order of a stable descending sort of `scores`."""
    order = np.argsort(-scores, kind="stable")
    ranked = np.empty(len(scores), dtype=np.float64)
    ranked[order] = np.arange(len(scores), 0, -1) / len(scores)
    return torch.from_numpy(ranked)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at each positive's rank (NaN if no positives)."""
    pos = targets > 0.5
    if int(pos.sum()) == 0:  # torchmetrics would warn and return 0
        return float("nan")
    # torchmetrics treats tied scores as one threshold (like sklearn); ours ranks ties in input
    # order (a stable sort). Feeding it distinct scores in that order gives exactly our AP: with
    # one sample per threshold its step-wise AP is the mean precision at each positive's rank.
    ap = binary_average_precision(_stable_ranks(scores), torch.from_numpy(pos).long())
    return float(ap)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """mAP over classes (AudioSet's metric: unweighted mean of per-class AP over classes with positives)."""
    # Not multilabel_average_precision(average="macro"): that averages a class without positives
    # in as AP 0; AudioSet (and we) leave such classes out, so per-class AP is NaN for them.
    aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
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
