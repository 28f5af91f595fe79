"""Checkpoints: atomic writes, keep-last-k, resumption, and rebuilding a model from one file.

A checkpoint is a dict of tensors and plain Python values only, so it always loads with
``torch.load(..., weights_only=True)``; anything else (a pickle that would run code) is
refused. It holds the model, optimizer and scheduler states, the step, every RNG state
(torch, numpy, python, cuda, the MAE mask generator), the resolved config and the data
position, which is enough to resume exactly or to rebuild the model alone.

Storage: local paths are written with :func:`hip.storage.atomic_write_bytes`; ``s3://``
URIs go through ``hip.storage.write_bytes`` / ``read_bytes`` / ``list_names`` / ``delete``
(an S3 PUT is atomic: the object appears whole or not at all; ``run.checkpoint_dir`` may be
``s3://bucket/prefix``). Nothing here talks to S3 but through ``hip.storage``.

Integrity: a checkpoint is a zip archive (``torch.save``) whose members carry CRC-32s;
:func:`load` checks the archive's directory and every CRC before unpickling, so a truncated
or bit-flipped file raises :class:`CorruptCheckpoint` instead of loading silently wrong
weights. ``run.resume=auto`` (:func:`load_resume`) then falls back to the previous checkpoint;
temporary files of interrupted writes (``.step-XXXXXXXX.pt.*.tmp``) never match
:data:`NAME` and are removed by :func:`remove_stale_temp` when a run starts.

Test-only fault hook: with ``HIP_FAULT_KILL_DURING_SAVE=N`` in the environment the process
SIGKILLs itself during its N-th checkpoint write, after writing half of the bytes to the
temporary file (``N:final``: to the final name, as a non-atomic store would). Only local
paths; unset (the default) it does nothing. ``tests/test_fault_training.py`` uses it.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hip.storage as storage
from hip.errors import UserError

FORMAT = "hip-checkpoint"
VERSION = 1
NAME = re.compile(r"^step-(\d{8})\.pt$")
TEMP_NAME = re.compile(r"^\.step-\d{8}\.pt\..+\.tmp$")  # hip.storage.atomic_write_bytes temp files
FAULT_ENV = "HIP_FAULT_KILL_DURING_SAVE"
_saves = 0  # checkpoint writes by this process (for the fault hook)


class CorruptCheckpoint(UserError):
    """A checkpoint file is truncated or fails its CRC-32 check (a torn or damaged write)."""


# ---------------------------------------------------------------------------- storage seam


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _fault_hook(path: str, data: bytes) -> None:
    """Test-only: SIGKILL this process mid-write when HIP_FAULT_KILL_DURING_SAVE says so."""
    global _saves
    _saves += 1
    spec = os.environ.get(FAULT_ENV, "")
    if not spec or _is_remote(path):
        return
    nth, _, mode = spec.partition(":")
    if int(nth) != _saves:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if mode == "final":
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    else:  # the temp name hip.storage.atomic_write_bytes uses
        fd, _ = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.write(fd, data[: len(data) // 2])
    os.fsync(fd)
    print(f"{FAULT_ENV}: killing pid {os.getpid()} while writing {p.name}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def outage_limit_s() -> float:
    """How long a checkpoint write waits for an unreachable S3 endpoint before it fails."""
    return float(os.environ.get("HIP_S3_OUTAGE_S", "300"))


def _write(path: str, data: bytes) -> None:
    _fault_hook(path, data)
    # local: temp file + rename; S3: temp key, copy, delete. An S3 endpoint that is down or
    # restarting for longer than botocore's retries (seconds) must not end a long training
    # run: the write is retried for up to HIP_S3_OUTAGE_S, then fails with the S3 error.
    start, delay, warned = time.monotonic(), 2.0, False
    while True:
        try:
            storage.write_bytes(path, data)
            return
        except storage.S3Unreachable as exc:
            waited = time.monotonic() - start
            if waited + delay > outage_limit_s():
                raise
            if not warned:
                warned = True
                warnings.warn(
                    f"{exc}; retrying the checkpoint write for up to {outage_limit_s():.0f} s "
                    "(HIP_S3_OUTAGE_S)",
                    stacklevel=2,
                )
            time.sleep(delay)
            delay = min(30.0, delay * 2)


def _read(path: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"checkpoint not found: {path}") from None


def _list(folder: str) -> list[str]:
    return storage.list_names(folder)


def _delete(path: str) -> None:
    storage.delete(path)


def _join(folder: str, name: str) -> str:
    return storage.join(folder, name)


# ---------------------------------------------------------------------------- RNG states


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state as tensors / plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ---------------------------------------------------------------------------- save / load


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after `step` optimizer steps."""
    return f"step-{step:08d}.pt"


def save(payload: dict[str, Any], folder: str, step: int, keep_last: int | None = None) -> str:
    """Write `payload` atomically as `folder/step-XXXXXXXX.pt`, then keep only the last k."""
    payload = {"format": FORMAT, "version": VERSION, **payload, "step": int(step)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = _join(folder, checkpoint_name(step))
    _write(path, buf.getvalue())
    if keep_last:
        for old in list_checkpoints(folder)[:-keep_last]:
            _delete(old)
    return path


def list_checkpoints(folder: str) -> list[str]:
    """Checkpoint paths in `folder`, oldest first."""
    names = sorted(n for n in _list(folder) if NAME.match(n))
    return [_join(folder, n) for n in names]


def latest(folder: str) -> str | None:
    """The newest checkpoint in `folder`, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def run_checkpoint_dir(run_out: str | Path) -> str:
    """Where a training run keeps its checkpoints by default: `<run.out>/checkpoints`."""
    return storage.join(str(run_out), "checkpoints")


def latest_of_run(run_out: str | Path) -> str | None:
    """The newest checkpoint a training run (`run.out`) wrote, or None."""
    return latest(run_checkpoint_dir(run_out))


def remove_stale_temp(folder: str) -> list[str]:
    """Delete temp files left by interrupted checkpoint writes in a local folder; returns them."""
    if _is_remote(folder) or not Path(folder).is_dir():
        return []
    removed = []
    for child in Path(folder).iterdir():
        if TEMP_NAME.match(child.name):
            child.unlink(missing_ok=True)
            removed.append(str(child))
    return removed


def check_integrity(data: bytes, path: str) -> None:
    """Raise CorruptCheckpoint unless `data` is a whole zip archive whose CRC-32s all match."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CorruptCheckpoint(
            f"checkpoint {path} is truncated or damaged ({len(data)} bytes: {exc})"
        ) from None
    if bad is not None:
        raise CorruptCheckpoint(f"checkpoint {path} is damaged: member {bad!r} fails its CRC-32")


def load(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a file that needs arbitrary pickles is refused."""
    data = _read(str(path))
    check_integrity(data, str(path))
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        AttributeError,
        TypeError,
        EOFError,
        ValueError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"refusing to load {path}: not a safe hip checkpoint (weights_only load failed: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a hip checkpoint (no format={FORMAT!r} marker)")
    return payload


def resolve_resume(resume: str, folder: str) -> str | None:
    """Which checkpoint to resume from: `auto` -> latest in folder, `never` -> None, else a path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest(folder)
    if (_is_remote(resume) and not storage.exists(resume)) or (
        not _is_remote(resume) and not Path(resume).is_file()
    ):
        raise UserError(f"run.resume={resume!r}: no such checkpoint (use auto, never or a path)")
    return resume


def load_resume(
    resume: str, folder: str, log: Callable[[str], None] | None = None
) -> tuple[str | None, dict[str, Any] | None]:
    """Resolve `run.resume` and load it; `auto` skips corrupt checkpoints, newest first.

    Returns `(path, payload)`, or `(None, None)` when there is nothing to resume from.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if resume != "auto":
        path = resolve_resume(resume, folder)
        return (path, load(path)) if path else (None, None)
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except CorruptCheckpoint as exc:
            log(f"warning: skipping {exc}; trying the previous checkpoint")
    return None, None


def build_model(meta: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the (untrained) module a checkpoint's `model_meta` describes."""
    from hip.task import get_task

    return get_task(meta["task"]).build_model(meta)


def load_model(
    path: str, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a checkpoint's model from the file alone; returns `(model in eval mode, checkpoint)`."""
    payload = load(path, map_location)
    model = build_model(payload["model_meta"])
    model.load_state_dict(payload["model"])
    model.eval()
    return model, payload
