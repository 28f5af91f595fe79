"""Secrets in the environment (and pulled into the config) never reach MLflow, logs or reports.

Other security checks live beside the code they test: checkpoints never unpickle code
(tests/test_train.py::test_malicious_pickle_is_refused), unsafe tar members are rejected
(tests/test_data_shards.py::test_unsafe_tar_members_rejected, ::test_loader_refuses_a_malicious_shard),
the stack binds 127.0.0.1 and the compose MLflow runs with basic-auth (tests/test_infra.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest

from hip import tracking
from hip.cli import main

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-SECRET-4f1d9c0e7b2a",
    "AWS_SESSION_TOKEN": "aws-TOKEN-9a8b7c6d5e4f",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-PASSWORD-1e2d3c4b",
    "MLFLOW_TRACKING_TOKEN": "mlflow-TOKEN-5a6b7c8d9e",
}


def _files_under(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_secrets_never_reach_params_logs_or_reports(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HIP_RUN_LABEL", "label-7")
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "runs" / "mlflow.db"
    out = tmp_path / "runs" / "pre"
    args = [f"run.out={out}", "optim.total_steps=2", "data.batch_size=8", "run.eval_batches=1",
            "run.progress=false", f"tracking.uri=sqlite:///{db}",
            "tracking.run_name=pre-${oc.env:HIP_RUN_LABEL}"]  # fmt: skip
    assert main(["pretrain", "--config", "tiny_digits", *args]) == 0
    ckpt = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    assert main(["evaluate", "--checkpoint", str(ckpt), f"tracking.uri=sqlite:///{db}",
                 "run.eval_batches=1"]) == 0  # fmt: skip
    captured = capsys.readouterr()

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps)
    assert {r.data.tags["hip.stage"] for r in runs} == {"pretrain", "evaluate"}
    texts = [captured.out, captured.err, caplog.text]
    for run in runs:
        texts += [repr(run.data.params), repr(run.data.tags), repr(run.data.metrics)]
        assert run.data.tags.get("mlflow.runName", "").startswith(("pre-label-7", "evaluate"))
    downloaded = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=(tmp_path / "runs" / "mlartifacts").as_uri(), dst_path=str(tmp_path / "dl")
    ))  # fmt: skip
    files = _files_under(downloaded, out, tmp_path / "runs" / "pre" / "eval")
    assert any(f.name == "metrics.jsonl" for f in files)
    assert any(f.name == "report.html" for f in files) and any(f.suffix == ".pt" for f in files)
    blobs = [f.read_bytes() for f in files]
    for name, secret in SECRETS.items():
        assert not any(secret in t for t in texts), f"{name} leaked into params/tags/logs"
        assert not any(secret.encode() in b for b in blobs), f"{name} leaked into a file"


def test_env_expanded_and_url_secrets_are_redacted_in_params(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    params = tracking.redacted_params(
        {
            "tracking": {"uri": f"http://hip:{SECRETS['MLFLOW_TRACKING_PASSWORD']}@127.0.0.1:5000"},
            "run": {"name": f"run-{SECRETS['AWS_SECRET_ACCESS_KEY']}"},  # e.g. ${oc.env:...}
            "storage": {"aws_secret_access_key": "typed-in"},
            "data": {"manifest": "s3://bucket/prefix/manifest.json"},
        }
    )
    assert params == {
        "tracking.uri": "http://hip:***@127.0.0.1:5000",
        "run.name": "run-***",
        "storage.aws_secret_access_key": "***",
        "data.manifest": "s3://bucket/prefix/manifest.json",
    }
