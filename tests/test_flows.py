"""The Prefect flows on tiny real data, under a real (temporary) Prefect API and MLflow on SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

TINY = {
    "name": "tiny",
    "datasets": [
        {
            "name": "digits",
            "source": "mnist5k",
            "splits": ["train", "test"],
            "options": {"limit": 40, "max_count": 150},
        }
    ],
    "pretrain_dataset": "digits",
    "pretrain": {
        "config": "tiny_mnist",
        "overrides": [
            "optim.total_steps=3",
            "run.checkpoint_every=3",
            "data.batch_size=8",
            "run.eval_batches=1",
        ],
    },
    "benchmarks": [
        {
            "name": "mnist",
            "dataset": "digits",
            "overrides": ["optim.total_steps=2", "data.batch_size=8", "run.eval_batches=1"],
            "from_scratch": True,
        }
    ],
    "experiment": "hip-test-pipeline",
}


def tiny_pipeline(tmp: Path, **changes: object) -> Path:
    """Write a tiny pipeline preset into `tmp` and return its path."""
    spec = {**TINY, "work_dir": str(tmp / "work"), **changes}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("prefect-home")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_test_harness(server_startup_timeout=120):
        yield
    if old is None:
        os.environ.pop("PREFECT_HOME", None)
    else:
        os.environ["PREFECT_HOME"] = old


@pytest.fixture(scope="module")
def pipeline_run(harness, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from flows.hip_flow import hip

    tmp = tmp_path_factory.mktemp("pipeline")
    path = tiny_pipeline(tmp)
    return {"result": hip(stage="pipeline", pipeline=str(path)), "yaml": path, "work": tmp / "work"}


@pytest.mark.slow
def test_pipeline_flow_end_to_end(pipeline_run):
    result, work = pipeline_run["result"], pipeline_run["work"]
    rows = {r["benchmark"]: r for r in result["summary"]}
    assert set(rows) == {"MAE (digits)", "mnist"}
    assert 0.0 <= rows["mnist"]["pretrained"] <= 1.0 and 0.0 <= rows["mnist"]["scratch"] <= 1.0
    assert rows["mnist"]["baseline"] == 0.1  # chance for 10 classes
    assert rows["MAE (digits)"]["pretrained"] > 0  # masked MSE
    summary = Path(result["report"]).read_text()
    assert "| mnist | top1 |" in summary
    for name in ("pretrain", "mnist-pretrained", "mnist-scratch"):
        assert Path(result["evaluations"][name]["report"]).is_file(), name
        assert (work / "runs" / name / "checkpoints").is_dir()
    # Flows pass paths, never tensors.
    assert result["pretrain"]["checkpoint"].startswith(str(work))
    # One parent MLflow run, a child per stage.
    client = mlflow.MlflowClient(result["tracking_uri"])
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id, *[e.experiment_id for e in client.search_experiments()]],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    stages = sorted(r.data.tags["hip.stage"] for r in children)
    assert stages == ["evaluate", "evaluate", "evaluate", "finetune", "finetune", "pretrain"]
    pre = next(r for r in children if r.data.tags["hip.stage"] == "pretrain")
    assert "loss" in pre.data.metrics and pre.data.params["optim.total_steps"] == "3"


@pytest.mark.slow
def test_pipeline_publishes_prefect_artifacts(pipeline_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-summary"]))
        )
    assert arts and arts[0].type == "table"
    assert "mnist" in str(arts[0].data)


@pytest.mark.slow
def test_sharding_is_cached_by_input_fingerprint(pipeline_run):
    from flows.hip_flow import hip

    manifest = pipeline_run["work"] / "shards" / "digits" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    state = hip(stage="shard", pipeline=str(pipeline_run["yaml"]), return_state=True)
    assert state.is_completed()
    assert manifest.stat().st_mtime_ns == before  # the cached task did not run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="shard-"))
        )
    assert any(r.state and r.state.name == "Cached" for r in runs)


@pytest.mark.slow
def test_champion_moves_only_when_the_metric_improves(harness, tmp_path):
    from tasks.registry import champion_of, promote_if_better

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("registry", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model("hip-toy")

    def register(run_out: str) -> None:
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "run.out", run_out)
        client.create_model_version(
            "hip-toy", f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id
        )

    @flow
    def decide(run_out: str, top1: float, fingerprint: str) -> dict:
        return promote_if_better(
            uri, "toy", fingerprint, {"run_out": run_out}, {"metrics": {"top1": top1}}, "top1"
        )

    @flow
    def champion() -> dict | None:
        return champion_of(uri, "toy")

    register("/runs/a")
    first = decide("/runs/a", 0.50, "fp-a")
    assert first["promoted"] and first["reason"] == "first champion"
    register("/runs/b")
    worse = decide("/runs/b", 0.40, "fp-b")
    assert not worse["promoted"]
    assert champion()["version"] == first["version"]
    tags = client.get_model_version("hip-toy", worse["version"]).tags
    assert tags["hip.decision"].startswith("challenger") and tags["hip.metric_value"] == "0.4"
    register("/runs/c")
    better = decide("/runs/c", 0.60, "fp-c")
    assert better["promoted"]
    assert champion() == {
        "version": better["version"],
        "metric": "top1",
        "value": 0.6,
        "fingerprint": "fp-c",
    }


@pytest.mark.slow
def test_retrain_skips_when_data_is_unchanged_and_retrains_when_it_changes(pipeline_run, tmp_path):
    from flows.hip_flow import hip

    path = pipeline_run["yaml"]
    first = hip(stage="retrain", pipeline=str(path))
    assert first["mnist"]["promoted"] and first["mnist"]["reason"] == "first champion"
    again = hip(stage="retrain", pipeline=str(path))
    assert again["mnist"] == {
        "promoted": False,
        "reason": "data unchanged",
        "version": first["mnist"]["version"],
    }
    # New data (more digits per class): a new fingerprint, so it retrains and decides.
    spec = yaml.safe_load(path.read_text())
    spec["datasets"][0]["options"]["limit"] = 45
    path.write_text(yaml.safe_dump(spec))
    changed = hip(stage="retrain", pipeline=str(path))
    assert changed["mnist"]["version"] != first["mnist"]["version"]
    assert "reason" in changed["mnist"]
