"""Evaluation on a held-out split: metrics per task, MAE reconstructions, tables for reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hip.evaluate.metrics import (
    confusion_matrix,
    iou_per_class,
    mean_average_precision,
    mean_iou,
    topk_correct,
)


@dataclass
class EvalResult:
    """Metrics (flat dict of floats) plus what the report draws."""

    metrics: dict[str, float]
    task: str
    label_names: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None  # [K, K] counts (classification, segmentation)
    per_class: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. {"iou": [K]}, {"ap": [K]}
    reconstructions: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # original/masked/composite [N, M, C]
    modalities: dict[str, tuple[int, int]] = field(default_factory=dict)


def _batches(
    source: Any, split: str, batch_size: int, limit: int | None, max_batches: int | None
) -> Any:
    for i, batch in enumerate(source.batches(split, batch_size, train=False, limit=limit)):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


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
) -> EvalResult:
    """Metrics of `model` (an MAE or a task model) on `split` of a Dataset."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        if task == "mae":
            return _eval_mae(
                model,
                source,
                split,
                batch_size,
                device,
                max_batches,
                limit,
                seed,
                num_reconstructions,
            )
        return _eval_task(model, source, task, split, batch_size, device, max_batches, limit)
    finally:
        model.train(was_training)


def _eval_mae(
    model: Any,
    source: Any,
    split: str,
    bs: int,
    device: torch.device,
    max_batches: int | None,
    limit: int | None,
    seed: int,
    n_rec: int,
) -> EvalResult:
    names = list(source.modalities)
    # Pass 1: per-position mean of the split (the "predict the mean" baseline, an oracle one).
    sums = {k: None for k in names}
    count = 0
    for batch in _batches(source, split, bs, limit, max_batches):
        for k in names:
            x = batch["inputs"][k].double().sum(0)
            sums[k] = x if sums[k] is None else sums[k] + x
        count += next(iter(batch["inputs"].values())).shape[0]
    if count == 0:
        raise ValueError(f"split {split!r} has no samples")
    means = {k: (sums[k] / count).float() for k in names}
    gen = torch.Generator().manual_seed(seed + 12345)
    err = base = gbase = loss_sum = 0.0
    n_masked = 0.0
    batches = 0
    rec: dict[str, list[np.ndarray]] = {"original": [], "masked": [], "composite": []}
    for batch in _batches(source, split, bs, limit, max_batches):
        inputs = {k: v.to(device).float() for k, v in batch["inputs"].items()}
        state = gen.get_state()
        loss_sum += float(model(inputs, generator=gen).loss)
        gen.set_state(state)  # the same mask for the reconstruction
        out = model.reconstruct(inputs, generator=gen)
        batches += 1
        for k in names:
            x = inputs[k].cpu()
            pred, hidden = out[k]["prediction"].float().cpu(), out[k]["masked"].cpu()
            w = hidden.unsqueeze(-1).float()
            n_masked += float(w.sum()) * x.shape[-1]
            err += float((((pred - x) ** 2) * w).sum())
            base += float((((means[k] - x) ** 2) * w).sum())
            gbase += float((((x.mean() - x) ** 2) * w).sum())
        if len(rec["original"]) * bs < n_rec:
            k = names[0]
            rec["original"].append(inputs[k].cpu().numpy())
            rec["masked"].append(out[k]["masked"].cpu().numpy())
            rec["composite"].append(out[k]["composite"].float().cpu().numpy())
            rec.setdefault("prediction", []).append(out[k]["prediction"].float().cpu().numpy())
    metrics = {
        "mae_loss": loss_sum / max(batches, 1),
        "masked_mse": err / max(n_masked, 1),
        "mean_baseline_mse": base / max(n_masked, 1),
        "global_mean_baseline_mse": gbase / max(n_masked, 1),
        "num_samples": float(count),
    }
    metrics["mse_vs_baseline"] = metrics["masked_mse"] / max(metrics["mean_baseline_mse"], 1e-12)
    recs = {k: np.concatenate(v)[:n_rec] for k, v in rec.items() if v}
    return EvalResult(
        metrics,
        "mae",
        list(source.label_names),
        reconstructions=recs,
        modalities=dict(source.modalities),
    )


def _eval_task(
    model: Any,
    source: Any,
    task: str,
    split: str,
    bs: int,
    device: torch.device,
    max_batches: int | None,
    limit: int | None,
) -> EvalResult:
    from hip.train.loop import targets_of

    loss_sum, n, batches = 0.0, 0, 0
    correct: dict[int, int] = {}
    scores, targets = [], []
    cm = None
    names = list(source.label_names)
    for batch in _batches(source, split, bs, limit, max_batches):
        inputs = {k: v.to(device).float() for k, v in batch["inputs"].items()}
        y = targets_of(batch, task).to(device)
        logits = model(inputs).float()
        loss_sum += float(model.loss(logits, y)) * y.shape[0]
        n += y.shape[0]
        batches += 1
        k = logits.shape[-1]
        if task == "classification":
            for kk, c in topk_correct(logits, y).items():
                correct[kk] = correct.get(kk, 0) + c
            if k <= 200:
                part = confusion_matrix(logits.argmax(-1), y, k)
                cm = part if cm is None else cm + part
        elif task == "multilabel":
            scores.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(y.cpu().numpy())
        else:
            part = confusion_matrix(logits.argmax(-1), y, k, ignore_index=255)
            cm = part if cm is None else cm + part
    if n == 0:
        raise ValueError(f"split {split!r} has no samples")
    metrics: dict[str, float] = {"loss": loss_sum / n, "num_samples": float(n)}
    per_class: dict[str, np.ndarray] = {}
    if task == "classification":
        for kk, c in correct.items():
            metrics[f"top{kk}"] = c / n
    elif task == "multilabel":
        m_ap, aps = mean_average_precision(np.concatenate(scores), np.concatenate(targets))
        metrics["mAP"] = m_ap
        per_class["ap"] = aps
    else:
        per_class["iou"] = iou_per_class(cm)
        metrics["mIoU"] = mean_iou(cm)
        metrics["pixel_acc"] = float(cm.diag().sum() / cm.sum().clamp_min(1))
    return EvalResult(
        metrics,
        task,
        names,
        confusion=None if cm is None else cm.numpy(),
        per_class=per_class,
        modalities=dict(source.modalities),
    )


def primary_metric(task: str) -> str:
    """The headline metric of a task (what `hip compare` sorts by)."""
    return {
        "mae": "masked_mse",
        "classification": "top1",
        "multilabel": "mAP",
        "segmentation": "mIoU",
    }[task]


__all__ = ["EvalResult", "evaluate_model", "primary_metric"]
