"""Per-step training metrics: timing, throughput, data-wait fraction, memory.

The per-step log itself (`metrics.jsonl`) is :mod:`hip.runlog`'s: reports read it too.
"""

from __future__ import annotations

import resource
import sys
import time

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
