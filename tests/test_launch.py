"""Launching training as a child process group: streaming, failures, and cancellation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from hip.train.launch import LaunchError, launch, resolve_nproc, training_command


def test_training_command_uses_torchrun_only_when_distributed():
    single = training_command("pretrain", ["--config", "tiny_mnist"], nproc_per_node=1)
    assert single[1:] == ["-m", "hip.train", "pretrain", "--config", "tiny_mnist"]
    multi = training_command("finetune", ["a=1"], nproc_per_node=2)
    assert multi[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    assert multi[-4:] == ["-m", "hip.train", "finetune", "a=1"]
    nodes = training_command(
        "pretrain", [], nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="h0:29400"
    )
    assert "--standalone" not in nodes and "--rdzv_endpoint=h0:29400" in nodes
    # c10d numbers nodes as they join; node_rank only says who hosts the rendezvous store
    assert "--rdzv_conf=is_host=false" in nodes and not any("node_rank" in a for a in nodes)
    host = training_command(
        "pretrain", [], nnodes=2, node_rank=0, rdzv_endpoint="h0:29400", rdzv_timeout_s=60
    )
    assert "--rdzv_conf=is_host=true,join_timeout=60" in host
    guessed = training_command("pretrain", [], nnodes=2, rdzv_endpoint="h0:29400")
    assert not any(a.startswith("--rdzv_conf") for a in guessed)  # torchrun guesses the host
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        training_command("pretrain", [], nproc_per_node=8, nnodes=2)
    with pytest.raises(ValueError, match="node_rank"):
        training_command("pretrain", [], nnodes=2, node_rank=2, rdzv_endpoint="h0:29400")
    assert (
        resolve_nproc("3") == 3 and 1 <= resolve_nproc("auto") <= 2
    )  # no GPU here: capped CPU ranks
    with pytest.raises(ValueError, match="integer or 'auto'"):
        resolve_nproc("many")


def test_output_streams_and_failure_shows_the_tail():
    lines: list[str] = []
    launch([sys.executable, "-c", "print('one'); print('two')"], on_line=lines.append)
    assert lines == ["one", "two"]
    script = "import sys\nfor i in range(100): print(f'line {i}')\nprint('the real error', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(LaunchError) as err:
        launch([sys.executable, "-c", script], on_line=lambda _: None, tail_lines=5)
    msg = str(err.value)
    assert "exited with code 3" in msg and "the real error" in msg
    assert "line 94" not in msg  # only the tail


def _marked(marker: str) -> list[int]:
    """Live pids whose environment carries `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat[stat.rindex(")") + 2] not in "ZX":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_cancelling_leaves_no_torchrun_process_behind(sig, tmp_path):
    """The launcher (a Prefect flow-run process, say) is terminated or killed mid-training."""
    marker = f"HIP_TEST_MARKER={uuid.uuid4().hex}"
    driver = textwrap.dedent(
        f"""
        from hip.train.launch import launch, training_command
        args = ["--config", "tiny_mnist", "optim.total_steps=100000", "data.batch_size=4",
                "run.out={tmp_path / "run"}", "tracking.enabled=false", "run.progress=false"]
        launch(training_command("pretrain", args, nproc_per_node=2), on_line=print)
        """
    )
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen(
        [sys.executable, "-c", driver],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # driver + torchrun + 2 ranks, all training (the rank processes exist once torchrun spawned them)
        while len(_marked(marker)) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_marked(marker)) >= 4, "torchrun did not start its ranks"
        time.sleep(2.0)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _marked(marker) == []
    finally:
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)
