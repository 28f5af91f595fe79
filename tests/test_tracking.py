"""MLflow tracking against a SQLite file and against a real `mlflow server` started here."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

import hip.cli
from hip import tracking
from hip.config import load_config
from hip.errors import UserError
from hip.train import trainer

STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)


def start_mlflow_server(root: Path, port: int, timeout: float = 90) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port (SQLite + artifacts under `root`), once /health answers."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    with (root / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.3)


def stop_process_group(proc: subprocess.Popen, sig: int = 15, timeout: float = 15) -> None:
    """Signal the server's whole process group (uvicorn workers too) and wait for it."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server on a free port (SQLite backend, proxied artifacts)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start_mlflow_server(root, port)
    yield f"http://127.0.0.1:{port}"
    stop_process_group(proc)


def pretrain_cfg(out: Path, *extra: str):
    return load_config(
        "pretrain",
        "tiny_digits",
        [
            f"run.out={out}",
            f"optim.total_steps={STEPS}",
            "data.batch_size=8",
            "run.eval_batches=1",
            "run.progress=false",
            *extra,
        ],
    )


def check_stage_run(uri: str, run_id: str, parent: str | None = None):
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.total_steps"] == str(STEPS)
    assert run.data.params["model.preset"] == "tiny"
    assert len(client.get_metric_history(run_id, "loss")) == STEPS
    assert {
        "lr",
        "grad_norm",
        "samples_per_s",
        "data_wait_frac",
        "memory_mb",
        "eval_masked_mse",
    } <= set(run.data.metrics)
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint", "metrics.jsonl"} <= arts
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == [
        f"checkpoint/step-{STEPS:08d}.pt"
    ]
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "digits"
    assert any(t.key == "fingerprint" for t in inputs[0].tags)
    if parent:
        assert run.data.tags["mlflow.parentRunId"] == parent
    return run


def test_sqlite_default_uri_parent_child_and_registry(tmp_path):
    cfg = pretrain_cfg(tmp_path / "runs" / "pre")
    uri = tracking.tracking_uri(cfg)
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    parent = tracking.start_pipeline_run(cfg, "pipeline-test")
    os.environ[tracking.PARENT_ENV] = parent  # how the pipeline hands it to torchrun workers
    try:
        res = trainer.train(cfg)
    finally:
        del os.environ[tracking.PARENT_ENV]
    check_stage_run(uri, res.run_id, parent)
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("hip-pretrain")
    assert exp.artifact_location == (tmp_path / "runs" / "mlartifacts").as_uri()  # absolute
    ft = load_config(
        "finetune",
        "mnist",
        [f"run.out={tmp_path / 'runs' / 'ft'}", "data.source=digits", "optim.total_steps=2", "data.batch_size=8",
         "run.eval_batches=1", "run.progress=false", f"tracking.parent_run_id={parent}"],
    )  # fmt: skip
    res_ft = trainer.train(ft)
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name='hip-mnist'")
    assert len(versions) == 1 and versions[0].run_id == res_ft.run_id
    assert client.get_run(res_ft.run_id).data.tags["hip.benchmark"] == "mnist"
    tracking.end_pipeline_run(cfg, parent)


def test_server_pretrain_evaluate_compare(tmp_path, mlflow_server, capsys):
    out = tmp_path / "pre"
    res = trainer.train(pretrain_cfg(out, f"tracking.uri={mlflow_server}"))
    check_stage_run(mlflow_server, res.run_id)
    assert (
        hip.cli.main(
            [
                "evaluate",
                "--checkpoint",
                res.checkpoint,
                f"tracking.uri={mlflow_server}",
                "run.eval_batches=1",
            ]
        )
        == 0
    )
    eval_run = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    arts = {a.path for a in mlflow.MlflowClient(mlflow_server).list_artifacts(eval_run, "report")}
    assert {"report/report.html", "report/reconstructions.png", "report/metrics.csv"} <= arts
    assert hip.cli.main(["compare", f"tracking.uri={mlflow_server}"]) == 0
    table = capsys.readouterr().out
    assert res.run_id in table and eval_run in table
    assert table.split()[4:6] == ["variant", "data"]
    fp = mlflow.MlflowClient(mlflow_server).get_run(res.run_id).data.tags["hip.data_fingerprint"]
    row = next(line for line in table.splitlines() if line.startswith(res.run_id))
    assert f" {fp[:12]} " in row and fp[:13] not in row
    # finetune through the CLI: registered as hip-mnist on the server, listed by `compare -b`
    ft_args = [
        f"run.out={tmp_path / 'ft'}",
        "data.source=digits",
        "optim.total_steps=2",
        "data.batch_size=8",
    ]
    ft_args += ["run.eval_batches=1", "run.progress=false", f"tracking.uri={mlflow_server}"]
    assert hip.cli.main(["finetune", "-b", "mnist", "-p", res.checkpoint, *ft_args]) == 0
    ft_run = capsys.readouterr().out.strip().split()[-1]
    versions = mlflow.MlflowClient(mlflow_server).search_model_versions("name='hip-mnist'")
    assert [v.run_id for v in versions] == [ft_run]
    assert hip.cli.main(["compare", "--benchmark", "mnist", f"tracking.uri={mlflow_server}"]) == 0
    table = capsys.readouterr().out
    assert ft_run in table and res.run_id not in table and "eval_top1" in table


def test_unreachable_server_fails_fast(tmp_path):
    cfg = pretrain_cfg(tmp_path, f"tracking.uri=http://127.0.0.1:{free_port()}")
    t0 = time.time()
    with pytest.raises(UserError, match="unreachable"):
        trainer.train(cfg)
    assert time.time() - t0 < 10
    assert not (tmp_path / "checkpoints").exists()


def test_secrets_are_redacted():
    params = tracking.redacted_params(
        {"storage": {"aws_secret_access_key": "x", "password": "p", "bucket": "b"}, "token": None}
    )
    assert params == {
        "storage.aws_secret_access_key": "***",
        "storage.password": "***",
        "storage.bucket": "b",
        "token": "None",
    }
    cfg = load_config("pretrain")
    assert "***" not in tracking.config_params(cfg).values()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_whose_process_died_are_closed_as_killed_and_compare_never_shows_them_running(
    tmp_path, capsys
):
    cfg = pretrain_cfg(tmp_path / "runs" / "pre")
    uri = tracking.tracking_uri(cfg)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("hip-pretrain")
    dead = client.create_run(
        exp, run_name="killed", tags={**tracking.owner_tags(), "hip.pid": str(_dead_pid())}
    )
    alive = client.create_run(exp, run_name="alive", tags=tracking.owner_tags())
    elsewhere = client.create_run(
        exp, run_name="other-host", tags={"hip.host": "another-host", "hip.pid": "1"}
    )
    assert hip.cli.main(["compare", f"tracking.uri={uri}", "run.out=" + str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "killed" in line and "KILLED" in line]
    status = {r: client.get_run(r.info.run_id).info.status for r in (dead, alive, elsewhere)}
    assert status[dead] == "KILLED"
    assert status[alive] == "RUNNING"  # this process owns it
    assert status[elsewhere] == "RUNNING"  # another host's process cannot be checked here


def test_compare_reads_the_pipeline_experiment_with_variant_and_data_columns(tmp_path, capsys):
    """The flows put the parent and every stage run in `hip-pipeline`, tagged with the variant
    and the data fingerprint; `hip compare` lists them beside stand-alone runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    pipeline, standalone = (client.create_experiment(n) for n in ("hip-pipeline", "hip-pretrain"))
    fp = "0123456789abcdef" * 4
    parent = client.create_run(pipeline, run_name="pipeline-demo")
    made = {"pipeline-demo": parent.info.run_id}
    for variant, top1 in (("pretrained", 0.9), ("scratch", 0.5)):
        name = f"finetune-mnist-{variant}"
        tags = {"hip.stage": "finetune", "hip.benchmark": "mnist", "variant": variant}
        tags |= {"hip.data_fingerprint": fp, "mlflow.parentRunId": parent.info.run_id}
        run = client.create_run(pipeline, run_name=name, tags=tags)
        client.log_metric(run.info.run_id, "eval_top1", top1)
        made[name] = run.info.run_id
    alone = client.create_run(standalone, run_name="tiny", tags={"hip.stage": "pretrain"})
    made["tiny"] = alone.info.run_id
    for run_id in made.values():
        client.set_terminated(run_id, "FINISHED")

    def table(*args: str) -> dict[str, dict[str, str]]:
        """{run name: {column: cell}} of `hip compare`'s table (cells end under their header)."""
        assert hip.cli.main(["compare", f"tracking.uri={uri}", *args]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        columns = [(m.group(), m.end()) for m in re.finditer(r"\S+", header)]
        assert [c for c, _ in columns[:8]] == [
            "run_id", "mlflow.runName", "hip.stage", "hip.benchmark", "variant", "data",
            "status", "start_time",
        ]  # fmt: skip
        starts = [0] + [end for _, end in columns[:-1]]
        cells = [
            {c: row[a:end].strip() for (c, end), a in zip(columns, starts, strict=True)}
            for row in rows
        ]
        return {cell["mlflow.runName"]: cell for cell in cells}

    everything = table()
    assert set(everything) == set(made)  # both experiments read by default
    for variant, top1 in (("pretrained", "0.9"), ("scratch", "0.5")):
        row = everything[f"finetune-mnist-{variant}"]
        assert (row["variant"], row["data"], row["eval_top1"]) == (variant, fp[:12], top1)
        assert row["run_id"] == made[f"finetune-mnist-{variant}"]
    assert everything["tiny"]["variant"] == everything["tiny"]["data"] == ""
    assert everything["tiny"]["hip.stage"] == "pretrain"
    mnist = table("--benchmark", "mnist")
    assert set(mnist) == {"finetune-mnist-pretrained", "finetune-mnist-scratch"}
    assert set(table("-e", "hip-pretrain")) == {"tiny"}


def test_a_resumed_training_reopens_its_own_mlflow_run(tmp_path):
    out = tmp_path / "runs" / "pre"
    first = trainer.train(pretrain_cfg(out, "run.stop_at_step=2", "optim.total_steps=4"))
    uri = tracking.tracking_uri(pretrain_cfg(out))
    client = mlflow.MlflowClient(uri)
    client.set_terminated(first.run_id, "FAILED")  # as a crash would leave it
    # The second start changes a logged param (run.stop_at_step): it keeps its first value.
    second = trainer.train(pretrain_cfg(out, "optim.total_steps=4"))
    assert second.run_id == first.run_id and second.step == 4
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["run.stop_at_step"] == "2"
    steps = sorted(m.step for m in client.get_metric_history(first.run_id, "loss"))
    assert steps[0] == 1 and steps[-1] == 4
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # Never resumed: a fresh start (run.resume=never) opens a new run.
    third = trainer.train(pretrain_cfg(out, "optim.total_steps=4", "run.resume=never"))
    assert third.run_id != first.run_id


@pytest.mark.slow
def test_a_terminated_training_ends_its_mlflow_run_killed(tmp_path):
    """SIGTERM (a cancelled Prefect flow run, torchrun stopping, a pod eviction) unwinds the
    training process, so its MLflow run ends KILLED instead of staying RUNNING for ever."""
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "hip.train", "pretrain", "--config", "tiny_digits",
            f"run.out={tmp_path / 'run'}", f"tracking.uri={uri}", "optim.total_steps=100000",
            "run.checkpoint_every=2", "data.batch_size=8", "run.progress=false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run" / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
