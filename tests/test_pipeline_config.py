"""Pipeline parameters reach every stage, and a bad one is one line before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import load_pipeline, tracking_uri
from flows.hip_flow import check_stage_configs
from hip.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_per_benchmark_and_multi_node_overrides_reach_their_stage():
    p = load_pipeline(
        "demo",
        [
            "benchmarks.0.overrides=['optim.total_steps=30']",
            "pretrain.nnodes=2",
            "pretrain.rdzv_endpoint=10.0.0.1:29400",
            "pretrain.nproc_per_node=auto",
        ],
    )
    assert p.benchmarks[0].overrides == ["optim.total_steps=30"]
    assert (p.pretrain.nnodes, p.pretrain.rdzv_endpoint) == (2, "10.0.0.1:29400")
    check_stage_configs(p)  # resolves


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("benchmarks.0.overrides=[optim.totl_steps=3]", "benchmarks.0 (mnist) overrides"),
        ("benchmarks.5.name=x", "pipeline override 'benchmarks.5.name=x'"),
        ("pretrain.nnodes=two", "pipeline override 'pretrain.nnodes=two'"),
        ("nope=1", "Key 'nope' not in"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        check_stage_configs(load_pipeline("demo", [override]))
    assert "\n" not in str(err.value)


def test_python_m_flows_rejects_a_bad_benchmark_override_with_exit_2(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows",
            f"work_dir={tmp_path}",
            "benchmarks.0.overrides=[optim.totl_steps=3]",
        ],
        cwd=REPO,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "benchmarks.0 (mnist) overrides" in out.stderr and "Traceback" not in out.stderr


def test_tracking_follows_the_environment_and_s3_needs_a_server(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = load_pipeline("demo", [f"work_dir={tmp_path}"])
    assert tracking_uri(local) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(local) == "http://127.0.0.1:5000"
    assert tracking_uri(load_pipeline("demo", ["tracking_uri=http://other:5000"])) == (
        "http://other:5000"
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(UserError, match="set MLFLOW_TRACKING_URI"):
        tracking_uri(load_pipeline("demo", ["work_dir=s3://bucket/hip"]))
