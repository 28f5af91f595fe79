"""Launch `python -m hip.train STAGE ...` (under torchrun when distributed) as a child process.

Used by orchestration (Prefect tasks) so training runs in its own process group: output
streams line by line to a callback, a failure raises with the output's tail, and the
whole group (torchrun and every rank) dies with the launcher, on error, on SIGTERM/SIGINT
(what a Prefect worker sends on cancellation) and even if the launcher is SIGKILLed.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """The training process failed; the message ends with its last output lines."""


def resolve_nproc(nproc: int | str, cpu_cap: int = 2) -> int:
    """`auto` -> all visible GPUs, else min(CPU cores, cpu_cap) gloo ranks; ints pass through."""
    if isinstance(nproc, int) or str(nproc).isdigit():
        n = int(nproc)
        if n < 1:
            raise ValueError(f"nproc_per_node must be >= 1, got {n}")
        return n
    if nproc != "auto":
        raise ValueError(f"nproc_per_node must be an integer or 'auto', got {nproc!r}")
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, min(os.cpu_count() or 1, cpu_cap))


def training_command(
    stage: str,
    args: Sequence[str],
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "hip",
    rdzv_timeout_s: int | None = None,
) -> list[str]:
    """The argv that runs one training stage: plain python for one process, torchrun otherwise.

    Multi-node (`nnodes > 1`) uses c10d rendezvous at `rdzv_endpoint`: torchrun numbers the
    nodes in the order they join, so `node_rank` does not choose ranks. It only says which
    node hosts the rendezvous store (0 does, others connect); without it torchrun guesses
    from whether HOST is this machine's name or address. `rdzv_timeout_s` bounds the wait
    for every node to join (torchrun's default: 600 s).
    """
    entry = ["-m", "hip.train", stage, *args]
    if nproc_per_node == 1 and nnodes == 1:
        return [sys.executable, *entry]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        run.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError(
                "multi-node training needs rdzv_endpoint=HOST:PORT (see infra/GPU_WORKERS.md)"
            )
        if node_rank is not None and not 0 <= node_rank < nnodes:
            raise ValueError(f"node_rank must be in 0..{nnodes - 1}, got {node_rank}")
        conf = []
        if node_rank is not None:
            conf.append(f"is_host={'true' if node_rank == 0 else 'false'}")
        if rdzv_timeout_s is not None:
            conf.append(f"join_timeout={int(rdzv_timeout_s)}")
        run += [
            f"--nnodes={nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
            f"--rdzv_id={rdzv_id}",
        ]
        if conf:
            run.append(f"--rdzv_conf={','.join(conf)}")
    return run + entry


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the signal handlers and finally-block still clean up
        pass


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def launch(
    cmd: Sequence[str],
    on_line: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    tail_lines: int = 40,
) -> None:
    """Run `cmd`, streaming its merged stdout/stderr to `on_line`; raise LaunchError on failure."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        preexec_fn=_die_with_parent,
    )
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def _forward(signum: int, frame: object) -> None:
            _kill_group(proc)
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, frame)
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _forward)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
        rc = proc.wait()
    finally:
        _kill_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc != 0:
        shown = "\n".join(tail)
        raise LaunchError(f"{' '.join(cmd[:6])} ... exited with code {rc}; last output:\n{shown}")
