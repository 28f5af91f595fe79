"""One writer per work folder: a lease file that a second pipeline on the same `work_dir` sees.

Two pipelines writing the same run folders would interleave checkpoints and metrics without
an error. The lease is a small JSON file (`<work_dir>/work.lock`, local or on S3) naming its
owner (host, pid, Prefect flow run) and refreshed by a heartbeat thread. Another start reads
it and refuses with the owner's name while the heartbeat is fresh; a lease whose owner died
(same host: its pid is gone; elsewhere: no heartbeat for `stale_after` seconds) is taken
over. Taking it is write-then-read-back after a pause, so of two starts racing for a free
lease only the last writer goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from hip import storage
from hip.errors import UserError

LOCK_NAME = "work.lock"
STALE_AFTER_S = float(os.environ.get("HIP_LOCK_STALE_S", "600"))
HEARTBEAT_S = float(os.environ.get("HIP_LOCK_HEARTBEAT_S", "60"))
SETTLE_S = float(os.environ.get("HIP_LOCK_SETTLE_S", "1.0"))  # the read-back pause


class WorkDirInUse(UserError):
    """Another live run holds the work folder's lease."""


def _read(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_alive(lease: dict[str, Any], stale_after: float) -> bool:
    """Whether the lease's owner may still be running."""
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        if not _pid_alive(lease["pid"]):
            return False
    return time.time() - float(lease.get("heartbeat", 0)) < stale_after


def describe(lease: dict[str, Any]) -> str:
    """The owner of a lease, for people."""
    age = time.time() - float(lease.get("heartbeat", 0))
    who = lease.get("owner") or "a run"
    return (
        f"{who} on host {lease.get('host')} (pid {lease.get('pid')}), since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(lease.get('started', 0)))}, "
        f"last heartbeat {age:.0f} s ago"
    )


def check_free(work_dir: str, stale_after: float = STALE_AFTER_S) -> None:
    """Raise WorkDirInUse now if a live run holds the lease (a cheap look before starting)."""
    path = storage.join(work_dir, LOCK_NAME)
    current = _read(path)
    if current is not None and _holder_alive(current, stale_after):
        raise WorkDirInUse(_refusal(work_dir, path, current, stale_after))


@contextlib.contextmanager
def exclusive(
    work_dir: str,
    owner: str = "",
    stale_after: float = STALE_AFTER_S,
    heartbeat: float = HEARTBEAT_S,
) -> Iterator[dict[str, Any]]:
    """Hold the lease of `work_dir` for the block; raise WorkDirInUse if a live run holds it."""
    path = storage.join(work_dir, LOCK_NAME)
    check_free(work_dir, stale_after)
    now = time.time()
    lease = {
        "token": uuid.uuid4().hex,
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "heartbeat": now,
    }
    storage.write_bytes(path, json.dumps(lease).encode())
    time.sleep(SETTLE_S)  # a racing start writes within this pause; the last writer wins
    won = _read(path)
    if won is None or won.get("token") != lease["token"]:
        raise WorkDirInUse(_refusal(work_dir, path, won or {}, stale_after))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat):
            mine = _read(path)
            if mine is None or mine.get("token") != lease["token"]:
                return  # taken over (we were presumed dead): do not fight for it
            lease["heartbeat"] = time.time()
            with contextlib.suppress(Exception):  # a blip; the next beat retries
                storage.write_bytes(path, json.dumps(lease).encode())

    thread = threading.Thread(target=beat, name="hip-work-lock", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=5)
        mine = _read(path)
        if mine is not None and mine.get("token") == lease["token"]:
            with contextlib.suppress(Exception):
                storage.delete(path)


def _refusal(work_dir: str, path: str, holder: dict[str, Any], stale_after: float) -> str:
    return (
        f"work_dir {work_dir} is in use by {describe(holder)}: two pipelines on one work_dir "
        f"would overwrite each other's runs. Wait for it to finish, or use another work_dir. "
        f"If that run is dead, its lease expires {stale_after:.0f} s after its last heartbeat "
        f"(or delete {path})"
    )
