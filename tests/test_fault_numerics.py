"""Numerical faults: NaN / inf losses and gradients, injected deterministically into the loop.

`run.on_nonfinite=stop` (default) ends the run with TrainingDiverged and keeps the last good
checkpoint; `run.on_nonfinite=skip` drops the update of that batch (no optimizer or scheduler
step), counts it as `skipped_steps` (metrics.jsonl, MLflow, checkpoint) and carries on, up
to `run.max_skipped_steps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import hip.cli
from hip import checkpoint as ckpt
from hip.errors import UserError
from hip.runlog import read_metrics
from hip.task import get_task
from hip.tracking import NullRun
from hip.train import trainer
from tests.test_fault_training import one_thread  # noqa: F401 - autouse fixture
from tests.test_train import digits, make_cfg  # noqa: F401 - digits is a fixture


class RecordingRun(NullRun):
    """A tracker that keeps what would have gone to MLflow."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Keep the metrics."""
        self.metrics.append((step, dict(metrics)))


class InfGrad(torch.autograd.Function):
    """Identity forward (finite loss), infinite gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        """The loss itself."""
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        """An infinite (or NaN) gradient."""
        return grad * float("inf")


def poison(
    monkeypatch: pytest.MonkeyPatch,
    faults: dict[int, str],
    snapshots: dict[int, dict] | None = None,
) -> dict[str, int]:
    """Make the n-th loss computation NaN, inf, or give it an infinite gradient."""
    task = get_task("mae")  # the loss these tests poison: the loop asks the task type for it
    real = task.loss
    calls = {"n": 0}

    def flaky(model: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        n = calls["n"]
        if snapshots is not None:
            snapshots[n] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loss = real(model, *args, **kwargs)
        kind = faults.get(n)
        if kind == "nan":
            return loss * float("nan")
        if kind == "inf":
            return loss * float("inf")
        if kind == "inf_grad":
            return InfGrad.apply(loss)
        return loss

    monkeypatch.setattr(task, "loss", flaky)
    return calls


@pytest.mark.parametrize(
    ("kind", "message"),
    [("inf", r"loss is inf at step 3"), ("inf_grad", r"gradient norm is (inf|nan) at step 3")],
)
def test_stop_keeps_the_last_good_checkpoint(tmp_path, digits, monkeypatch, kind, message):  # noqa: F811
    # (NaN losses are covered by test_train.test_nan_loss_stops_and_keeps_last_good_checkpoint)
    poison(monkeypatch, {3: kind})
    with pytest.raises(trainer.TrainingDiverged, match=message + r".*step-00000002\.pt"):
        trainer.train(make_cfg(tmp_path, "run.checkpoint_every=2"), digits)
    names = [Path(p).name for p in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))]
    assert names == ["step-00000002.pt"]
    good = ckpt.load(str(tmp_path / "checkpoints" / names[0]))
    assert all(torch.isfinite(v).all() for v in good["model"].values())
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_stop_on_the_command_line_exits_2(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, {2: "nan"})
    argv = ["pretrain", "--config", "tiny_digits", f"run.out={tmp_path}", "optim.total_steps=4"]
    argv += ["data.batch_size=8", "run.checkpoint_every=1", "tracking.enabled=false"]
    assert hip.cli.main([*argv, "run.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "loss is nan at step 2" in err and "step-00000001.pt" in err and "Traceback" not in err


def test_skip_drops_the_update_and_counts_it(tmp_path, digits, monkeypatch):  # noqa: F811
    clean = trainer.train(make_cfg(tmp_path / "clean"), digits)
    snaps: dict[int, dict] = {}
    calls = poison(monkeypatch, {3: "nan", 6: "inf_grad"}, snaps)
    tracker = RecordingRun()
    cfg = make_cfg(tmp_path / "skip", "run.on_nonfinite=skip", "run.stop_at_step=4")
    first = trainer.train(cfg, digits, tracker=tracker)
    assert first.step == 4 and first.history[-1]["skipped_steps"] == 1
    second = trainer.train(make_cfg(tmp_path / "skip", "run.on_nonfinite=skip"), digits)
    assert calls["n"] == 8 and second.step == 6  # 8 batches for 6 updates
    # no update from a skipped batch: the weights before batches 3 and 4 (and 6, 7) are equal
    for a, b in ((3, 4), (6, 7)):
        assert all(torch.equal(snaps[a][k], snaps[b][k]) for k in snaps[a])
    # the scheduler did not move either: the lr sequence is the clean run's
    records = read_metrics(tmp_path / "skip" / "metrics.jsonl")
    assert [r["lr"] for r in records] == [r["lr"] for r in clean.history]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 2, 2]  # kept across the resume
    assert [m["skipped_steps"] for _, m in tracker.metrics] == [0, 0, 1, 1]  # what MLflow gets
    final = ckpt.load(second.checkpoint)
    assert final["counters"]["skipped_steps"] == 2
    assert max(int(s["step"]) for s in final["optimizer"]["state"].values()) == 6
    assert all(torch.isfinite(v).all() for v in final["model"].values())


def test_skip_gives_up_after_max_skipped_steps(tmp_path, digits, monkeypatch):  # noqa: F811
    poison(monkeypatch, {2: "nan", 3: "nan"})
    cfg = make_cfg(tmp_path, "run.on_nonfinite=skip", "run.max_skipped_steps=1")
    with pytest.raises(trainer.TrainingDiverged, match=r"after 1 skipped step.*max_skipped_steps"):
        trainer.train(cfg, digits)


@pytest.mark.parametrize(
    ("override", "message"),
    [("run.on_nonfinite=ignore", "run.on_nonfinite"), ("run.max_skipped_steps=-1", ">= 0")],
)
def test_bad_nonfinite_settings_are_user_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        make_cfg(tmp_path, override)
