"""Checkpoints on a real S3 server (SeaweedFS): write, keep-last, resume=auto, rebuild."""

from __future__ import annotations

import pytest

from hip import checkpoint as ckpt
from hip.config import load_config
from hip.train import trainer

pytestmark = pytest.mark.slow  # starts a server (~3 s)


def test_s3_checkpoints_resume(tmp_path, s3env):
    bucket = s3env.make_bucket()
    where = f"s3://{bucket}/runs/pre/checkpoints"
    args = [
        f"run.out={tmp_path}", f"run.checkpoint_dir={where}", "optim.total_steps=4", "run.checkpoint_every=1",
        "run.keep_last=2", "data.batch_size=8", "run.eval_batches=1", "run.progress=false", "tracking.enabled=false",
    ]  # fmt: skip
    full = trainer.train(
        load_config(
            "pretrain",
            "tiny_digits",
            [*args, "run.resume=never", f"run.checkpoint_dir={where}-full"],
        )
    )
    first = trainer.train(load_config("pretrain", "tiny_digits", [*args, "run.stop_at_step=2"]))
    assert first.checkpoint == f"{where}/step-00000002.pt"
    second = trainer.train(load_config("pretrain", "tiny_digits", args))
    assert [r["loss"] for r in first.history + second.history] == [r["loss"] for r in full.history]
    assert ckpt.list_checkpoints(where) == [
        f"{where}/step-00000003.pt",
        f"{where}/step-00000004.pt",
    ]
    model, payload = ckpt.load_model(second.checkpoint)
    assert payload["step"] == 4
