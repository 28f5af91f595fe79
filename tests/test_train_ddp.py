"""Two-process torchrun (gloo, CPU): DDP pretraining, then FSDP2 resuming it; only rank 0 writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import mlflow
import pytest
import torch

from hip import checkpoint as ckpt
from hip.runlog import read_metrics

STEPS = 4


@pytest.mark.slow
def test_torchrun_two_ranks(tmp_path):
    out = tmp_path / "runs" / "ddp"
    db = tmp_path / "runs" / "mlflow.db"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "hip.train", "pretrain", "--config", "tiny_digits",
        f"run.out={out}", f"optim.total_steps={STEPS}", "run.checkpoint_every=2", "data.batch_size=8",
        "run.eval_batches=1", "run.progress=false", "optim.grad_accum=2", f"tracking.uri=sqlite:///{db}",
    ]  # fmt: skip
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI")
    }
    env["OMP_NUM_THREADS"] = "1"
    # DDP for 2 steps (as if preempted), then FSDP2 (fully_shard) resumes from its checkpoint.
    for extra, steps, disabled in (
        (["run.stop_at_step=2"], 2, []),
        (["run.strategy=fsdp"], 2, ["tracking.enabled=false"]),
    ):
        proc = subprocess.run(
            cmd + extra + disabled, env=env, capture_output=True, text=True, timeout=240
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts = dict(re.findall(r"rank (\d)/2: (\d+) batches", proc.stdout))
        assert counts == {"0": str(steps * 2), "1": str(steps * 2)}, proc.stdout
    assert "pretrain: step 4" in proc.stdout
    # rank 0 alone wrote: one metrics line per step, one MLflow run, checkpoints with both RNG states
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, STEPS + 1))
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(str(out / "checkpoints"))]
    assert names == ["step-00000002.pt", "step-00000004.pt"]
    payload = torch.load(out / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2
    assert payload["data"]["samples_seen"] == STEPS * 8 * 2 * 2
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("hip-pretrain")
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 1 and found[0].data.params["derived.world_size"] == "2"
