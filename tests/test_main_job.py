"""The main job (`python -m flows`, what `make demo` runs) as a user meets it: run again, after
its outputs are deleted, after being killed, from a fresh clone. Each test starts the job as a
subprocess against a real temporary Prefect API; MLflow is on SQLite. (Its own file so the
test workers run it beside tests/test_flows.py, not after it: these are the suite's longest.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.procs import processes_mentioning, wait_for
from tests.test_flows import TINY, harness, tiny_pipeline  # noqa: F401 - harness: the Prefect API


def _no_run_left_running(uri: str) -> list[str]:
    """Every MLflow run of the store: the ones still RUNNING (should be none)."""
    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=1000)
    assert runs, "no MLflow runs at all"
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED", "RUNNING"}
    return [f"{r.data.tags.get('mlflow.runName')}" for r in runs if r.info.status == "RUNNING"]


def _assert_every_split_intact(work: Path) -> None:
    from hip.data import intact_split

    for split in ("train", "test"):
        assert intact_split(work / "shards" / "digits", split) is not None, split


def _main_job(path: Path, **popen) -> subprocess.Popen:
    """`python -m flows --pipeline PATH` (the main job) against the test's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "--pipeline", str(path)], env=env, text=True, **popen
    )


def _main_job_ok(path: Path) -> str:
    proc = _main_job(path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("harness")
def test_main_job_runs_twice_in_a_row_and_again_after_its_outputs_are_deleted(tmp_path):
    """The issue's failure: a second run after `rm -rf outputs` took the test split's sharding
    from Prefect's cache (which outlives outputs/) and never wrote it. (No from-scratch arm:
    one training process less per run; the re-run behaviour is the same for every stage.)"""
    benchmarks = [{**TINY["benchmarks"][0], "from_scratch": False}]
    path = tiny_pipeline(tmp_path, benchmarks=benchmarks)
    work = tmp_path / "work"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    for attempt in ("first", "twice in a row", "after rm -rf"):
        if attempt == "after rm -rf":
            shutil.rmtree(work)
        out = _main_job_ok(path)
        assert "Summary on the held-out split" in out, attempt
        _assert_every_split_intact(work)
        assert _no_run_left_running(uri) == [], attempt


# Long enough that the kill lands mid-pretraining (the first checkpoint is at step 10), short
# enough that the resumed run does not dominate the suite.
KILL_TEST_STEPS = 150


@pytest.mark.slow
@pytest.mark.usefixtures("harness")
def test_main_job_killed_mid_pretraining_resumes_into_the_same_runs(tmp_path):
    pretrain = {
        **TINY["pretrain"],
        "overrides": [
            f"optim.total_steps={KILL_TEST_STEPS}",
            "run.checkpoint_every=10",
            "data.batch_size=8",
            "run.eval_batches=1",
        ],
    }
    benchmarks = [{**TINY["benchmarks"][0], "from_scratch": False}]  # the kill is in pretraining
    path = tiny_pipeline(tmp_path, pretrain=pretrain, benchmarks=benchmarks)
    work = tmp_path / "work"
    ckpts = work / "runs" / "pretrain" / "checkpoints"
    proc = _main_job(path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: any(ckpts.glob("step-*.pt")) or proc.poll() is not None, 240, "a checkpoint"
        )
        assert proc.poll() is None, "the pipeline ended before pretraining checkpointed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # The training child dies with its launcher (no orphan keeps writing checkpoints).
    wait_for(lambda: not processes_mentioning(str(work)), 60, "the training process to exit")
    killed_at = max(int(p.stem.split("-")[1]) for p in ckpts.glob("step-*.pt"))
    assert killed_at < KILL_TEST_STEPS
    record = json.loads((work / "runs" / "pretrain" / "mlflow-run.json").read_text())
    parent_record = json.loads((work / "parent-runs" / "pipeline-tiny.json").read_text())
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    # The training child gets SIGTERM from the kernel when its launcher dies (PDEATHSIG) and
    # closes its own MLflow run KILLED on the way out; under load the signal can land before
    # its handler or tracker exist, and the run stays RUNNING until the re-run closes it.
    assert client.get_run(record["run_id"]).info.status in ("KILLED", "RUNNING")

    # The re-run reopens the same runs (and closes any whose process died without a word).
    _main_job_ok(path)
    _assert_every_split_intact(work)
    assert _no_run_left_running(uri) == []
    resumed = client.get_run(record["run_id"])
    assert resumed.info.status == "FINISHED"  # the same MLflow run, reopened and finished
    assert json.loads((work / "runs" / "pretrain" / "mlflow-run.json").read_text()) == record
    assert resumed.data.tags["mlflow.parentRunId"] == parent_record["run_id"]
    assert client.get_run(parent_record["run_id"]).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(record["run_id"], "loss")]
    assert (
        max(steps) == KILL_TEST_STEPS and min(steps) < killed_at
    )  # one run holds both attempts' steps
    pretrain_runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`hip.stage` = 'pretrain'",
    )
    assert [r.info.run_id for r in pretrain_runs] == [record["run_id"]]  # no orphan, no second


@pytest.mark.slow
def test_main_job_keeps_its_prefect_home_in_a_folder_that_does_not_exist_yet(tmp_path):
    """`make demo` points PREFECT_HOME at outputs/prefect-home, which a fresh clone lacks."""
    home = tmp_path / "outputs" / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows",
            "--stage",
            "shard",
            "--pipeline",
            str(tiny_pipeline(tmp_path)),
        ],
        env={**env, "PREFECT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (home / "prefect.db").is_file()  # the ephemeral API's database, inside outputs/
    _assert_every_split_intact(tmp_path / "work")
