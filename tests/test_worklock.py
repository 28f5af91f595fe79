"""One pipeline per work_dir: a second start is refused with the owner's name, never interleaved."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hip import storage, worklock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setattr(worklock, "SETTLE_S", 0.2)


def _lease(host: str = "elsewhere", pid: int = 1, age: float = 0.0, owner: str = "x") -> bytes:
    now = time.time() - age
    return json.dumps(
        {"token": "t", "owner": owner, "host": host, "pid": pid, "started": now, "heartbeat": now}
    ).encode()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_holder_is_refused_and_the_lease_is_released(where, tmp_path, request):
    if where == "s3":
        s3 = request.getfixturevalue("s3env")
        work = f"s3://{s3.make_bucket()}/work"
    else:
        work = str(tmp_path / "work")
    with worklock.exclusive(work, owner="first pipeline"):
        assert storage.exists(storage.join(work, worklock.LOCK_NAME))
        with pytest.raises(worklock.WorkDirInUse, match="in use by first pipeline"):
            with worklock.exclusive(work, owner="second"):
                pass
    assert not storage.exists(storage.join(work, worklock.LOCK_NAME))
    with worklock.exclusive(work, owner="third"):  # free again
        pass


def test_a_lease_of_a_dead_process_or_without_heartbeat_is_taken_over(tmp_path):
    work = str(tmp_path / "work")
    lock = storage.join(work, worklock.LOCK_NAME)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.write_bytes(lock, _lease(host=socket.gethostname(), pid=dead.pid))
    with worklock.exclusive(work, owner="after a crash"):
        pass
    storage.write_bytes(lock, _lease(age=worklock.STALE_AFTER_S + 5))  # another host, silent
    with worklock.exclusive(work, owner="after a lost host"):
        pass
    storage.write_bytes(lock, _lease(age=5))  # another host, beating
    with pytest.raises(worklock.WorkDirInUse, match="on host elsewhere"):
        worklock.check_free(work)


def test_two_racing_starts_let_exactly_one_through(tmp_path, monkeypatch):
    monkeypatch.setattr(worklock, "SETTLE_S", 0.5)
    work = str(tmp_path / "work")
    outcome: list[str] = []
    gate = threading.Barrier(2)

    def start(name: str) -> None:
        gate.wait()
        try:
            with worklock.exclusive(work, owner=name):
                outcome.append("ran")
                time.sleep(1.0)
        except worklock.WorkDirInUse:
            outcome.append("refused")

    threads = [threading.Thread(target=start, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == ["ran", "refused"]


def test_python_m_flows_refuses_a_work_dir_in_use_before_starting(tmp_path):
    work = tmp_path / "work"
    storage.write_bytes(str(work / worklock.LOCK_NAME), _lease(owner="hip pipeline 'demo'"))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "flows", f"work_dir={work}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is in use by hip pipeline 'demo' on host elsewhere" in out.stderr
    assert not (work / "shards").exists()  # refused before any work
