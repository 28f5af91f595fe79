"""Training loop, optimizer schedule and checkpoints on CPU with real digits (tiny preset)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

import hip.cli
from hip import checkpoint as ckpt
from hip.config import load_config
from hip.data.dataset import builtin_dataset
from hip.errors import UserError
from hip.task import get_task
from hip.train import trainer
from hip.train.optim import lr_factor, peak_lr

QUIET = ["tracking.enabled=false", "run.progress=false"]


def make_cfg(out: Path, *extra: str, stage: str = "pretrain", name: str | None = "tiny_digits"):
    base = [
        f"run.out={out}",
        "data.batch_size=8",
        "optim.total_steps=6",
        "optim.warmup_steps=2",
        "run.eval_batches=1",
    ]
    return load_config(stage, name, [*base, *QUIET, *extra])


@pytest.fixture(scope="module")
def digits():
    return builtin_dataset("digits")


def losses(result):
    return [r["loss"] for r in result.history]


def test_schedule_and_peak_lr():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    cfg = load_config("pretrain")
    assert peak_lr(cfg.optim, 4096) == pytest.approx(1.5e-4 * 16)


def test_resume_follows_the_same_trajectory(tmp_path, digits):
    full = trainer.train(
        make_cfg(tmp_path / "full", "optim.grad_accum=2", "run.checkpoint_every=3"), digits
    )
    assert full.step == 6 and len(full.history) == 6
    part = tmp_path / "part"
    first = trainer.train(
        make_cfg(part, "optim.grad_accum=2", "run.checkpoint_every=2", "run.stop_at_step=3"), digits
    )
    assert first.step == 3 and Path(first.checkpoint).name == "step-00000003.pt"
    second = trainer.train(make_cfg(part, "optim.grad_accum=2", "run.checkpoint_every=2"), digits)
    assert second.step == 6
    assert losses(first) + losses(second) == losses(full)  # exact on CPU
    a, b = ckpt.load(full.checkpoint), ckpt.load(second.checkpoint)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["data"] == b["data"]
    # keep_last=3: the step-2, 3, 4, 6 files -> only the last three stay
    assert [Path(p).name for p in ckpt.list_checkpoints(str(part / "checkpoints"))] == [
        "step-00000003.pt",
        "step-00000004.pt",
        "step-00000006.pt",
    ]
    # metrics.jsonl holds each step once after the resume
    assert [
        r["step"]
        for r in __import__("hip.runlog", fromlist=["x"]).read_metrics(part / "metrics.jsonl")
    ] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_contents_and_rebuild(tmp_path, digits):
    res = trainer.train(make_cfg(tmp_path, "optim.total_steps=2"), digits)
    payload = torch.load(res.checkpoint, weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "rng",
        "config",
        "data",
        "model_meta",
        "step",
    } <= set(payload)
    assert payload["config"]["optim"]["total_steps"] == 2
    assert payload["data"]["samples_seen"] == 16
    assert isinstance(payload["rng"][0]["torch"], torch.Tensor)
    model, _ = ckpt.load_model(res.checkpoint)
    x = next(digits.batches("test", 4, train=False))["inputs"]
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = model(x, generator=g()).loss
    model2, _ = ckpt.load_model(res.checkpoint)
    assert torch.equal(out, model2(x, generator=g()).loss)


def test_resume_never_and_explicit_path(tmp_path, digits):
    first = trainer.train(make_cfg(tmp_path, "optim.total_steps=2"), digits)
    again = trainer.train(make_cfg(tmp_path, "optim.total_steps=2", "run.resume=never"), digits)
    assert len(again.history) == 2
    cont = trainer.train(
        make_cfg(tmp_path / "other", "optim.total_steps=3", f"run.resume={first.checkpoint}"),
        digits,
    )
    assert [r["step"] for r in cont.history] == [3]
    with pytest.raises(UserError, match="no such checkpoint"):
        trainer.train(make_cfg(tmp_path, "run.resume=/nope.pt"), digits)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["EVIL_MARKER"],))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "step-00000001.pt"
    buf = io.BytesIO()
    torch.save({"format": "hip-checkpoint", "model": Evil()}, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="refusing to load"):
        ckpt.load(str(path))
    with pytest.raises(UserError, match="refusing"):
        ckpt.load_model(str(path))
    assert not marker.exists()
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        ckpt.load(str(tmp_path / "other.pt"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, digits, monkeypatch):
    task = get_task("mae")
    real = task.loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(task, "loss", flaky)
    with pytest.raises(trainer.TrainingDiverged, match=r"step 3.*step-00000002\.pt"):
        trainer.train(make_cfg(tmp_path, "run.checkpoint_every=2"), digits)
    names = [Path(p).name for p in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))]
    assert names == ["step-00000002.pt"]


@pytest.fixture(scope="module")
def mnist_pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    return trainer.train(
        load_config(
            "pretrain",
            "tiny_mnist",
            [
                f"run.out={out}",
                "optim.total_steps=2",
                "data.batch_size=8",
                "run.eval_batches=1",
                *QUIET,
            ],
        )
    )


@pytest.mark.parametrize(
    "source, task, metric",
    [
        ("mnist5k", "classification", "top1"),
        ("mnist5k_multilabel", "multilabel", "mAP"),
        ("mnist5k_seg", "segmentation", "mIoU"),
    ],
)
def test_finetune_tasks_from_pretrained(tmp_path, mnist_pretrained, source, task, metric):
    cfg = load_config(
        "finetune",
        "mnist",
        [
            f"run.out={tmp_path}",
            f"data.source={source}",
            f"task.type={task}",
            "task.num_classes=null",
            f"task.pretrained={mnist_pretrained.checkpoint}",
            "task.freeze_positions=true",
            "optim.total_steps=2",
            "data.batch_size=8",
            "run.eval_batches=2",
            *QUIET,
        ],
    )
    res = trainer.train(cfg)
    assert res.step == 2 and metric in res.eval_metrics
    assert 0.0 <= res.eval_metrics[metric] <= 1.0
    model, payload = ckpt.load_model(res.checkpoint)
    pre = ckpt.load(mnist_pretrained.checkpoint)["model"]
    assert torch.equal(model.backbone.pos["image"], pre["model.pos.image"])  # loaded and frozen


def test_pretrained_mismatch_is_a_user_error(tmp_path, mnist_pretrained, digits):
    cfg = make_cfg(
        tmp_path,
        f"task.pretrained={mnist_pretrained.checkpoint}",
        "task.type=classification",
        stage="finetune",
        name="mnist",
    )
    cfg.data.source = "digits"
    with pytest.raises(UserError, match="pretrained"):
        trainer.train(cfg, digits)


def test_cli_pretrain_evaluate_report(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        f"run.out={out}",
        "optim.total_steps=3",
        "data.batch_size=8",
        "run.eval_batches=1",
        *QUIET,
    ]
    assert hip.cli.main(["pretrain", "--config", "tiny_digits", *args]) == 0
    assert "pretrain: step 3" in capsys.readouterr().out
    assert (
        hip.cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "checkpoints" / "step-00000003.pt"),
                "run.eval_batches=2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "masked_mse" in printed
    for name in (
        "metrics.csv",
        "report.md",
        "report.html",
        "loss.png",
        "lr.png",
        "reconstructions.png",
    ):
        assert (out / "eval" / name).is_file(), name
    assert hip.cli.main(["pretrain", "--config", "tiny_digits", "optim.grad_acum=2"]) == 2
    assert "did you mean 'optim.grad_accum'" in capsys.readouterr().err
