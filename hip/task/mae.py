"""MAE pretraining: reconstruct the masked groups; scored by masked-pixel error."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hip.task.base import EmptySplit, EvalData, EvalResult, Task, inputs_to_device


class MAETask(Task):
    """Masked auto-encoding (85% groupwise masking by default): the pretraining task."""

    name = "mae"
    stage = "pretrain"
    headline = "masked_mse"
    higher_is_better = False
    plots = ("reconstructions",)
    needs_classes = False

    def build_model(self, meta: dict[str, Any]) -> nn.Module:
        """An MAE around a fresh HiP of the checkpoint's preset and modalities."""
        from hip.model import MAE, MAEConfig, create_model
        from hip.model.mae import mae_options

        mods = {k: tuple(v) for k, v in meta["modalities"].items()}
        mae = meta.get("mae") or {}
        return MAE(
            create_model(meta["preset"], mods, **dict(meta.get("overrides") or {})),
            MAEConfig(
                mask_ratio=float(mae.get("mask_ratio", 0.85)),
                **mae_options(meta),
            ),
        )

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """None needed: the inputs are the targets (never called by the loss)."""
        raise TypeError("MAE reconstructs its inputs; it has no separate targets")

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The masked reconstruction loss."""
        return model(batch["inputs"], generator=generator).loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: EvalData) -> EvalResult:
        """Masked MSE against two baselines (each position's mean over the split, the global
        mean), the MAE loss, and a few reconstructions (original / masked / composite)."""
        names = list(data.modalities)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for (
            batch
        ) in data.batches():  # pass 1: each position's mean (the "predict the mean" baseline)
            feats = model.features(inputs_to_device(batch["inputs"], data.device))
            for k in names:
                x = feats[k].cpu().double().sum(0)
                sums[k] = x if k not in sums else sums[k] + x
            count += next(iter(batch["inputs"].values())).shape[0]
        if count == 0:
            raise EmptySplit("has no samples")
        means = {k: (sums[k] / count).float() for k in names}
        gen = torch.Generator().manual_seed(data.seed + 12345)
        err = base = gbase = sbase = loss_sum = n_masked = 0.0
        # With normalised targets the reconstruction is un-normalised with the true statistics
        # (means of the hidden pixels too); score that leak alone as a baseline.
        stats_only = getattr(getattr(model, "config", None), "norm_targets", "off") != "off"
        rec: dict[str, list[np.ndarray]] = {"original": [], "masked": [], "composite": []}
        n_batches = 0
        for batch in data.batches():
            n_batches += 1
            raw = inputs_to_device(batch["inputs"], data.device)
            inputs = model.features(raw)  # what is reconstructed (front ends applied)
            state = gen.get_state()
            loss_sum += float(model(raw, generator=gen).loss)
            gen.set_state(state)  # the same mask for the reconstruction
            out = model.reconstruct(raw, generator=gen)
            if stats_only:  # the same mask: predicting only the normalisation's means
                gen.set_state(state)
                means_only = model.reconstruct(raw, generator=gen, stats_only=True)
            for k in names:
                x = inputs[k].cpu()
                pred, hidden = out[k]["prediction"].float().cpu(), out[k]["masked"].cpu()
                w = hidden.unsqueeze(-1).float()
                n_masked += float(w.sum()) * x.shape[-1]
                err += float((((pred - x) ** 2) * w).sum())
                base += float((((means[k] - x) ** 2) * w).sum())
                gbase += float((((x.mean() - x) ** 2) * w).sum())
                if stats_only:
                    leak = means_only[k]["prediction"].float().cpu()
                    sbase += float((((leak - x) ** 2) * w).sum())
            if len(rec["original"]) * x.shape[0] < data.num_reconstructions:
                k = names[0]
                rec["original"].append(inputs[k].cpu().numpy())
                rec["masked"].append(out[k]["masked"].cpu().numpy())
                rec["composite"].append(out[k]["composite"].float().cpu().numpy())
                rec.setdefault("prediction", []).append(out[k]["prediction"].float().cpu().numpy())
        metrics = {
            "mae_loss": loss_sum / max(n_batches, 1),
            "masked_mse": err / max(n_masked, 1),
            "mean_baseline_mse": base / max(n_masked, 1),
            "global_mean_baseline_mse": gbase / max(n_masked, 1),
            "num_samples": float(count),
        }
        metrics["mse_vs_baseline"] = metrics["masked_mse"] / max(
            metrics["mean_baseline_mse"], 1e-12
        )
        if stats_only:
            metrics["target_stats_baseline_mse"] = sbase / max(n_masked, 1)
        recs = {k: np.concatenate(v)[: data.num_reconstructions] for k, v in rec.items() if v}
        return EvalResult(
            metrics,
            self.name,
            list(data.label_names),
            reconstructions=recs,
            modalities=data.modalities,
            layout=feature_layout(model, data.layout),
        )


def feature_layout(model: nn.Module, layout: dict[str, Any]) -> dict[str, Any]:
    """The data's layout with each front end noted (`front_end`), so a figure draws what was
    reconstructed (a log spectrum per audio token) rather than a waveform."""
    hip = model.model  # the MAE's HiP
    out = {k: dict(v) for k, v in layout.items()}
    for name in hip.front_end:
        if name in out:
            out[name]["front_end"] = hip.config.front_ends[name]
    return out
