"""Two torchrun "nodes" on localhost (two launchers, c10d rendezvous, gloo) train exactly like
one node with two processes: same ranks, same global batch, bit-identical weights."""

from __future__ import annotations

import re
import socket
import threading
import uuid
from pathlib import Path

import pytest
import torch

from hip import checkpoint as ckpt
from hip.runlog import read_metrics
from hip.train.launch import launch, training_command

STEPS = 4
BATCH = 8  # per process: the global batch is 16 in both set-ups
REPO = Path(__file__).resolve().parents[1]


def _args(out: Path) -> list[str]:
    return [
        "--config", "tiny_digits", f"run.out={out}", f"optim.total_steps={STEPS}",
        f"run.checkpoint_every={STEPS}", f"data.batch_size={BATCH}", "run.eval_batches=1",
        "run.progress=false", "tracking.enabled=false",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_all(cmds: dict[str, list[str]]) -> dict[str, list[str]]:
    """Run every launcher at once (as separate hosts would); each one's output lines."""
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    lines: dict[str, list[str]] = {name: [] for name in cmds}
    errors: dict[str, BaseException] = {}

    def run(name: str) -> None:
        try:
            launch(cmds[name], on_line=lines[name].append, env=env, cwd=str(REPO))
        except BaseException as exc:  # noqa: BLE001 - reported below with the node's name
            errors[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in cmds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a launcher hung"
    assert not errors, "\n\n".join(f"{name}: {exc}" for name, exc in errors.items())
    return lines


def _ranks(lines: list[str]) -> dict[int, int]:
    """{rank: batches} from the `rank R/W: N batches` line every rank prints at the end."""
    found = [re.match(r"rank (\d+)/(\d+): (\d+) batches$", line) for line in lines]
    assert all(m.group(2) == "2" for m in found if m), lines
    return {int(m.group(1)): int(m.group(3)) for m in found if m}


@pytest.mark.slow
def test_two_nodes_on_localhost_equal_one_node_with_two_processes(tmp_path):
    endpoint = f"127.0.0.1:{_free_port()}"
    rdzv_id = f"test-{uuid.uuid4().hex[:8]}"
    two, one = tmp_path / "two-nodes", tmp_path / "one-node"
    cmds = {
        f"node{i}": training_command(
            "pretrain", _args(two), nproc_per_node=1, nnodes=2, node_rank=i,
            rdzv_endpoint=endpoint, rdzv_id=rdzv_id, rdzv_timeout_s=120,
        )
        for i in (0, 1)
    }  # fmt: skip
    assert "--standalone" not in cmds["node0"] and f"--rdzv_endpoint={endpoint}" in cmds["node0"]
    cmds["single"] = training_command("pretrain", _args(one), nproc_per_node=2)
    out = _launch_all(cmds)

    # Each node ran one rank of a world of 2, and both trained every step.
    per_node = {name: _ranks(out[name]) for name in ("node0", "node1")}
    assert all(len(ranks) == 1 for ranks in per_node.values()), out
    assert {**per_node["node0"], **per_node["node1"]} == {0: STEPS, 1: STEPS}
    assert _ranks(out["single"]) == {0: STEPS, 1: STEPS}
    done = [n for n in per_node if any(f"pretrain: step {STEPS}" in line for line in out[n])]
    assert len(done) == 1  # rank 0's node alone reports (and writes)

    # Same global batch, same ranks and seeds: the same training, bit for bit.
    paths = [Path(ckpt.list_checkpoints(str(d / "checkpoints"))[-1]) for d in (two, one)]
    assert [p.name for p in paths] == [f"step-{STEPS:08d}.pt"] * 2
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert a["world_size"] == b["world_size"] == 2 and len(a["rng"]) == 2
    assert a["data"]["samples_seen"] == b["data"]["samples_seen"] == STEPS * BATCH * 2
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl")] for d in (two, one)]
    assert losses[0] == losses[1] and len(losses[0]) == STEPS
