"""Crash and resume: SIGKILL real `python -m hip.train pretrain` processes, resume, compare.

One chain of processes trains the same run folder: the first kills itself during a
checkpoint write (temp file half written, `HIP_FAULT_KILL_DURING_SAVE`), the second while
writing its first checkpoint under the final name (a torn final file, as a non-atomic store
leaves), then five are SIGKILLed at random points (a random step plus a random delay, so
some die mid-step, some mid-save), and the last runs to the end. Every resume must pick the
newest *intact* checkpoint, and the result must equal an uninterrupted run bit for bit (CPU,
one thread, built-in digits). The random seed is printed and can be fixed with
HIP_FAULT_SEED.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from hip import checkpoint as ckpt
from hip.config import load_config
from hip.errors import UserError
from hip.runlog import read_metrics
from hip.train import trainer

pytestmark = pytest.mark.slow

TOTAL = 36
OVERRIDES = [
    f"optim.total_steps={TOTAL}",
    "optim.warmup_steps=3",
    "data.batch_size=4",
    "run.checkpoint_every=2",
    "run.keep_last=3",
    "run.eval_batches=1",
    "tracking.enabled=false",
    "run.progress=false",
]
RANDOM_KILLS = 4
ROOT = Path(__file__).resolve().parents[1]


def env(**extra: str) -> dict[str, str]:
    """The subprocess environment: one CPU thread (fast on a busy 2-core box, deterministic)."""
    e = {k: v for k, v in os.environ.items() if k != ckpt.FAULT_ENV}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return e


def launch(out: Path, log: Path, **extra_env: str) -> subprocess.Popen:
    """Start `python -m hip.train pretrain --config tiny_digits ...` writing into `out`."""
    cmd = [sys.executable, "-m", "hip.train", "pretrain", "--config", "tiny_digits"]
    return subprocess.Popen(
        [*cmd, f"run.out={out}", *OVERRIDES],
        cwd=ROOT,
        env=env(**extra_env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def last_step(metrics: Path) -> int:
    """Highest step in metrics.jsonl so far (0 when none)."""
    return max((int(r.get("step", 0)) for r in read_metrics(metrics)), default=0)


def wait_for(pred: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll `pred` every 10 ms until true (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return bool(pred())
        time.sleep(0.01)
    raise TimeoutError(f"condition not met within {timeout} s")


def intact_latest(folder: Path) -> tuple[str | None, int]:
    """What an honest resume must pick: the newest checkpoint that loads, and its step."""
    for path in reversed(ckpt.list_checkpoints(str(folder))):
        try:
            return path, int(ckpt.load(path)["step"])
        except UserError:
            continue
    return None, 0


def resumed_from(text: str) -> tuple[str | None, int]:
    """The `resuming from PATH (step N)` line a run prints, if any."""
    m = re.search(r"resuming from (\S+) \(step (\d+)\)", text)
    return (m.group(1), int(m.group(2))) if m else (None, 0)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for in-process training: as fast as two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> trainer.TrainResult:
    """The uninterrupted run (in-process, one thread like the subprocesses)."""
    out = tmp_path_factory.mktemp("reference")
    return trainer.train(load_config("pretrain", "tiny_digits", [f"run.out={out}", *OVERRIDES]))


def test_sigkill_at_random_points_then_resume_is_exact(tmp_path, reference):
    seed = int(os.environ.get("HIP_FAULT_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    print(f"HIP_FAULT_SEED={seed}")
    out = tmp_path / "run"
    ckpt_dir, metrics = out / "checkpoints", out / "metrics.jsonl"
    observed: list[str] = []

    def run_one(n: int, kill_at: int | None = None, **fault: str) -> tuple[int, str]:
        expected = intact_latest(ckpt_dir)
        log = tmp_path / f"launch{n}.log"
        proc = launch(out, log, **fault)
        if kill_at is not None:
            # kill_at is past every step already logged, so stale lines cannot trigger it
            reached = wait_for(lambda: last_step(metrics) >= kill_at, proc)
            assert reached, f"seed {seed}: launch {n} ended before step {kill_at}"
            time.sleep(rng.uniform(0.0, 0.15))  # somewhere inside the next step or save
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=180)
        text = log.read_text()
        # never a temp name or a torn file: exactly the newest intact checkpoint
        assert resumed_from(text) == expected, (seed, n, text[-2000:])
        observed.append(f"launch {n}: resumed at step {expected[1]}, exit {rc}")
        return rc, text

    # 1) killed while the temp file of its k-th checkpoint is half written
    k = rng.randint(1, 3)
    rc, text = run_one(1, **{ckpt.FAULT_ENV: str(k)})
    assert rc == -signal.SIGKILL and f"writing {ckpt.checkpoint_name(2 * k)}" in text
    temps = [p.name for p in ckpt_dir.iterdir() if ckpt.TEMP_NAME.match(p.name)]
    assert len(temps) == 1 and temps[0].startswith(f".{ckpt.checkpoint_name(2 * k)}.")
    latest = ckpt.latest(str(ckpt_dir))
    assert (Path(latest).name if latest else None) == (
        ckpt.checkpoint_name(2 * k - 2) if k > 1 else None
    )

    # 2) killed while writing its first checkpoint straight to the final name: a torn file
    rc, text = run_one(2, **{ckpt.FAULT_ENV: "1:final"})
    assert rc == -signal.SIGKILL and "removed the temp file" in text
    torn = ckpt.latest(str(ckpt_dir))
    assert Path(torn).name == ckpt.checkpoint_name(2 * k)
    with pytest.raises(ckpt.CorruptCheckpoint, match="truncated"):
        ckpt.load(torn)

    # 3..7) SIGKILL at random steps (plus a random delay: mid-step or mid-save)
    for n in range(3, 3 + RANDOM_KILLS):
        target = max(intact_latest(ckpt_dir)[1], last_step(metrics)) + rng.randint(1, 3)
        assert target < TOTAL - 1
        rc, text = run_one(n, kill_at=target)
        assert rc == -signal.SIGKILL, text[-2000:]
        if n == 3:  # the first resume after the torn file said so and skipped it
            assert f"skipping checkpoint {torn} is truncated" in text

    # 8) the last run completes
    rc, text = run_one(3 + RANDOM_KILLS)
    assert rc == 0 and f"pretrain: step {TOTAL}" in text, text[-2000:]
    print("\n".join(observed))

    assert not [p.name for p in ckpt_dir.iterdir() if not ckpt.NAME.match(p.name)]
    final, ref = ckpt.load(ckpt.latest(str(ckpt_dir))), ckpt.load(reference.checkpoint)
    assert final["step"] == ref["step"] == TOTAL
    for name, tensor in ref["model"].items():
        assert torch.equal(final["model"][name], tensor), (seed, name)
    for pid, state in ref["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(final["optimizer"]["state"][pid][key], value), (seed, pid, key)
    assert final["data"] == ref["data"]
    records = read_metrics(metrics)
    assert [r["step"] for r in records] == list(range(1, TOTAL + 1))
    assert [r["loss"] for r in records] == [r["loss"] for r in reference.history], seed


def test_truncated_or_bitflipped_checkpoint_is_detected_and_auto_falls_back(tmp_path, reference):
    src = Path(reference.checkpoint).parent
    names = [Path(p).name for p in ckpt.list_checkpoints(str(src))]
    folder = tmp_path / "c"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes((src / name).read_bytes())
    newest, previous = folder / names[-1], folder / names[-2]
    data = newest.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside tensor data: torch.load alone would accept it
    newest.write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CorruptCheckpoint, match="CRC-32"):
        ckpt.load(str(newest))
    warnings: list[str] = []
    path, payload = ckpt.load_resume("auto", str(folder), log=warnings.append)
    assert path == str(previous) and payload["step"] == int(previous.name[5:13])
    assert str(newest) in warnings[0]
    newest.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ckpt.CorruptCheckpoint, match="truncated"):
        ckpt.load_resume(str(newest), str(folder))  # an explicit path is never swapped
    (folder / ".step-00000099.pt.abcd.tmp").write_bytes(data[:100])
    assert ckpt.remove_stale_temp(str(folder)) == [str(folder / ".step-00000099.pt.abcd.tmp")]
    assert [Path(p).name for p in ckpt.list_checkpoints(str(folder))] == names
