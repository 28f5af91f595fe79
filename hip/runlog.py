"""A run's `metrics.jsonl`: the append-only per-step log training writes and reports read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
