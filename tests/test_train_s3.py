"""Checkpoints on a real S3 server (SeaweedFS): write, keep-last, resume=auto, rebuild."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hip import checkpoint as ckpt
from hip import storage
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


def _host_train(host: Path, s3env, args: list[str]) -> subprocess.Popen:
    """`python -m hip.train pretrain` as on a fresh host: its own HOME and TMPDIR."""
    for sub in ("home", "tmp"):
        (host / sub).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **s3env.env,
        "HOME": str(host / "home"),
        "TMPDIR": str(host / "tmp"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HIP_SCRATCH", None)
    return subprocess.Popen(
        [sys.executable, "-m", "hip.train", "pretrain", "--config", "tiny_digits", *args],
        env=env,
        cwd=host,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _weights(path: str) -> dict:
    return ckpt.load(path)["model"]


def test_a_host_killed_mid_run_on_s3_is_resumed_by_a_fresh_host_bit_for_bit(tmp_path, s3env):
    """run.out on S3: host A is SIGKILLed after a checkpoint; host B, which never saw A's
    folders, resumes from the newest S3 checkpoint and ends with the same weights and the
    same per-step log as an uninterrupted run."""
    bucket = s3env.make_bucket()
    common = [
        "optim.total_steps=12", "run.checkpoint_every=2", "data.batch_size=8",
        "run.eval_batches=1", "run.progress=false", "tracking.enabled=false",
    ]  # fmt: skip
    ref = _host_train(tmp_path / "ref", s3env, [*common, f"run.out=s3://{bucket}/ref"])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()[-3000:]

    run = f"s3://{bucket}/run"
    first = _host_train(tmp_path / "host-a", s3env, [*common, f"run.out={run}"])
    deadline = time.monotonic() + 300
    while not any("step-00000004" in c for c in ckpt.list_checkpoints(f"{run}/checkpoints")):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    killed_at = ckpt.latest(f"{run}/checkpoints")
    assert killed_at is not None and not killed_at.endswith("step-00000012.pt")

    second = _host_train(tmp_path / "host-b", s3env, [*common, f"run.out={run}"])
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out[-3000:]
    assert "resuming from" in out
    final, reference = (
        ckpt.latest(f"{run}/checkpoints"),
        ckpt.latest(f"s3://{bucket}/ref/checkpoints"),
    )
    assert final.endswith("step-00000012.pt")
    a, b = _weights(final), _weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in storage.read_bytes(f"{run}/metrics.jsonl").decode().splitlines()]
    ref_log = [
        json.loads(x)
        for x in storage.read_bytes(f"s3://{bucket}/ref/metrics.jsonl").decode().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
