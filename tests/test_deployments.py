"""`prefect deployment run hip/pretrain` against a real Prefect server, worker and MLflow server.

The servers come from infra/stack.sh (what users run); the deployments from prefect.yaml.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.procs import processes_mentioning, wait_for
from tests.test_flows import tiny_pipeline
from tests.test_infra import _free_ports, _run, _stack_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _api(url: str, body: dict | None = None) -> object:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("stack") / "state"
    ports = _free_ports(3)
    env = _stack_env(state, ports, HIP_STACK_WORKER="0")
    started = _run(env, "start", "prefect", "mlflow")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        client = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))
        }
        client.update(
            PREFECT_API_URL=f"http://127.0.0.1:{ports[0]}/api",
            PREFECT_HOME=str(state / "client-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            HIP_PROJECT_DIR=str(REPO),
        )
        yield {
            "env": client,
            "mlflow": f"http://127.0.0.1:{ports[1]}",
            "api": client["PREFECT_API_URL"],
        }
    finally:
        _run(env, "stop", timeout=120)


@pytest.fixture(scope="module")
def deployed(servers):
    """The deployments of prefect.yaml, created once for the module."""
    _prefect(servers["env"], "--no-prompt", "deploy", "--all")
    return servers


def _prefect(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (
        f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _flow_runs(api: str, stage: str) -> list[dict]:
    runs = _api(f"{api}/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    return [r for r in runs if r.get("deployment_id") and r["parameters"].get("stage") == stage]


@pytest.mark.slow
def test_worker_killed_mid_run_then_rerun_resumes_from_the_last_checkpoint(deployed, tmp_path):
    servers = deployed
    env, api = servers["env"], servers["api"]
    pipeline = tiny_pipeline(tmp_path, tracking_uri=servers["mlflow"])
    spec = yaml.safe_load(pipeline.read_text())
    spec["pretrain"]["overrides"] = [
        "optim.total_steps=400",
        "run.checkpoint_every=4",
        "data.batch_size=4",
    ]
    pipeline.write_text(yaml.safe_dump(spec))
    checkpoints = Path(spec["work_dir"]) / "runs" / "pretrain" / "checkpoints"
    before = {r["id"] for r in _flow_runs(api, "pretrain")}
    _prefect(env, "deployment", "run", "hip/pretrain", "--param", f"pipeline={pipeline}")
    worker = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            "gpu",
            "--type",
            "process",
            "--run-once",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("step-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert list(checkpoints.glob("step-*.pt")), "no checkpoint before the deadline"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker host dies: worker + flow-run process
        worker.wait(timeout=60)
    killed = next(r for r in _flow_runs(api, "pretrain") if r["id"] not in before)
    # Nobody reports a dead host: mark the orphaned run Crashed (what a zombie-run
    # automation or an operator does) so the deployment's concurrency slot frees up.
    _api(f"{api}/flow_runs/{killed['id']}/set_state", {"state": {"type": "CRASHED"}, "force": True})
    # The training child gets SIGTERM when its parent dies (PDEATHSIG) and may still write a
    # checkpoint while it stops: wait until it is gone, however slow the machine.
    work = str(Path(spec["work_dir"]))
    wait_for(lambda: not processes_mentioning(work), 120, "the killed run's training to exit")
    saved = max(int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.pt"))

    # The rerun: shorten the run so the test stays quick; resume=auto picks up the checkpoint.
    spec["pretrain"]["overrides"][0] = f"optim.total_steps={saved + 4}"
    pipeline.write_text(yaml.safe_dump(spec))
    _prefect(env, "deployment", "run", "hip/pretrain", "--param", f"pipeline={pipeline}")
    _prefect(
        env, "worker", "start", "--pool", "gpu", "--type", "process", "--run-once", timeout=600
    )
    rerun = [
        r for r in _flow_runs(api, "pretrain") if r["id"] not in before and r["id"] != killed["id"]
    ][-1]
    assert rerun["state"]["type"] == "COMPLETED", rerun["state"]
    # The training output is logged by the rerun's pretrain subflow (its own flow run id);
    # only a rerun can say "resuming from" (the killed run started from scratch).
    logs = _api(f"{api}/logs/filter", {"limit": 200, "sort": "TIMESTAMP_DESC"})
    resumed = [entry["message"] for entry in logs if "resuming from" in entry["message"]]
    assert len(resumed) == 1, "the rerun did not resume"
    step = int(resumed[0].rsplit("(step ", 1)[1].rstrip(")"))
    assert step >= 4  # continued from a checkpoint of the killed run, not from scratch
    assert (checkpoints / f"step-{saved + 4:08d}.pt").is_file()
