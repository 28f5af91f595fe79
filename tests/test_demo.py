"""`hip demo`: the MAE demo runs through the same Trainer as `hip pretrain` (a preset)."""

from __future__ import annotations

import json

import hip.cli
from hip import checkpoint as ckpt


def test_demo_trains_with_the_trainer_and_a_second_run_resumes(tmp_path, capsys, monkeypatch):
    from hip.train import trainer

    calls = []
    real = trainer.Trainer.train
    monkeypatch.setattr(trainer.Trainer, "train", lambda self: calls.append(1) or real(self))
    args = ["demo", "--steps", "4", "--batch-size", "8", "--out", str(tmp_path), "--quiet"]
    assert hip.cli.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert calls == [1] and summary["steps"] == 4
    assert (tmp_path / "mae_reconstructions.png").stat().st_size > 1000
    _, payload = ckpt.load_model(summary["checkpoint"])
    assert payload["config"]["run"]["name"] == "demo"  # the demo_mae preset, resolved
    assert payload["config"]["optim"]["warmup_steps"] == 1  # steps // 20, at least 1
    for key in ("heldout_masked_mse_before", "heldout_masked_mse_after", "predict_the_mean_mse"):
        assert 0 < summary[key] < 1, key
    out = capsys.readouterr().out
    assert "held-out masked-pixel MSE" in out and "predicting the mean pixel" in out
    # The same command again: resumes at step 4 and only evaluates (same checkpoint, same score).
    assert hip.cli.main(args) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["checkpoint"] == summary["checkpoint"]
    assert again["heldout_masked_mse_after"] == summary["heldout_masked_mse_after"]
    assert "resuming from" in capsys.readouterr().out
