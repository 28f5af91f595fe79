"""Per-step training metrics: timing, throughput, data-wait fraction, memory; a JSONL log."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA max allocated, or this process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class StepTimer:
    """Splits each step's wall time into waiting for data and computing."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.data_wait = 0.0

    def waited(self, seconds: float) -> None:
        """Add time spent waiting for the next batch."""
        self.data_wait += seconds

    def finish(self, samples: int) -> dict[str, float]:
        """Metrics of the finished step; restarts the timer."""
        now = time.perf_counter()
        total = max(now - self.start, 1e-9)
        out = {
            "step_time_s": total,
            "samples_per_s": samples / total,
            "data_wait_frac": min(1.0, self.data_wait / total),
        }
        self.start, self.data_wait = now, 0.0
        return out


class MetricsLog:
    """Append-only JSONL of per-step metrics in the run folder (rank 0)."""

    def __init__(self, path: str | Path, keep_until_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and self.path.exists():  # resumed: drop steps after it
            from hip.storage import atomic_write_text

            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until_step]
            # atomic, so that a crash now cannot lose the steps before the checkpoint
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif keep_until_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file (empty if missing); a line torn by a crash is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for line in p.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a process killed mid-write
            continue
    return records
