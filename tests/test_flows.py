"""The Prefect flows on tiny real data, under a real (temporary) Prefect API and MLflow on SQLite."""

from __future__ import annotations

import json
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
    "shard_workers": 1,  # partitions in the flow's process; Dask: tests/test_shard_flow.py
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
    # ... all in the parent's experiment, named and tagged by stage, benchmark and variant.
    assert {r.info.experiment_id for r in children} == {parent.info.experiment_id}
    variants = {r.info.run_name: r.data.tags.get("variant") for r in children}
    assert variants == {
        "pretrain-digits": "mae",
        "finetune-mnist-pretrained": "pretrained",
        "finetune-mnist-scratch": "scratch",
        "evaluate-digits-mae": "mae",
        "evaluate-mnist-pretrained": "pretrained",
        "evaluate-mnist-scratch": "scratch",
    }
    # Only the MAE-finetuned model is registered, and it loads with MLflow alone.
    versions = client.search_model_versions("name='hip-mnist'")
    finetuned = next(r for r in children if r.info.run_name == "finetune-mnist-pretrained")
    assert {v.run_id for v in versions} == {finetuned.info.run_id}
    where = client.get_model_version_download_uri("hip-mnist", versions[0].version)
    model = mlflow.pytorch.load_model(where)
    assert model.training is False


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
def test_a_split_dropped_from_the_manifest_is_resharded_not_taken_from_the_cache(pipeline_run):
    from flows.hip_flow import hip

    manifest_path = pipeline_run["work"] / "shards" / "digits" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    test_split = manifest["splits"].pop("test")
    manifest_path.write_text(json.dumps(manifest))  # as a re-run of the train split alone left it
    state = hip(stage="shard", pipeline=str(pipeline_run["yaml"]), return_state=True)
    assert state.is_completed()
    restored = json.loads(manifest_path.read_text())["splits"]["test"]
    assert restored["shards"] == test_split["shards"]  # written again, the same bytes
    assert state.result()["digits/test"]["samples"] == test_split["num_samples"]


@pytest.mark.slow
def test_champion_moves_only_when_the_challenger_beats_it_on_the_same_split(harness, tmp_path):
    from tasks.registry import champion_of, promote_if_better

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("registry", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model("hip-toy")

    def register(run_out: str) -> None:
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "run.out", run_out)
        client.create_model_version(
            "hip-toy", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )

    @flow
    def decide(run_out: str, top1: float, fingerprint: str, rescored: float | None) -> dict:
        incumbent = None if rescored is None else {"metrics": {"top1": rescored}}
        return promote_if_better(
            uri,
            "toy",
            fingerprint,
            {"run_out": run_out},
            {"metrics": {"top1": top1}, "task": "classification"},
            incumbent,
            "top1",
        )

    @flow
    def champion() -> dict | None:
        return champion_of(uri, "toy")

    register("/runs/a")
    first = decide("/runs/a", 0.50, "fp-a", None)
    assert first["promoted"] and first["reason"].startswith("first champion")
    # The champion re-scored on the new data (0.55) beats the challenger (0.52), although its
    # recorded value (0.50, on its own data) would not: the same split decides.
    register("/runs/b")
    worse = decide("/runs/b", 0.52, "fp-b", 0.55)
    assert not worse["promoted"] and worse["champion_value"] == 0.55
    assert champion()["version"] == first["version"]
    tags = client.get_model_version("hip-toy", worse["version"]).tags
    assert tags["hip.decision"].startswith("challenger")
    assert "0.5200" in tags["hip.decision"] and "0.5500" in tags["hip.decision"]
    register("/runs/c")
    tie = decide("/runs/c", 0.55, "fp-c", 0.55)
    assert not tie["promoted"] and champion()["version"] == first["version"]
    register("/runs/d")
    better = decide("/runs/d", 0.60, "fp-d", 0.55)
    assert better["promoted"]
    assert champion() == {
        "version": better["version"],
        "metric": "top1",
        "value": 0.6,
        "fingerprint": "fp-d",
        "checkpoint": None,
    }


@pytest.mark.slow
def test_retrain_skips_when_data_is_unchanged_and_retrains_when_it_changes(pipeline_run, tmp_path):
    from flows.hip_flow import hip

    path = pipeline_run["yaml"]
    # The pipeline made its MAE-finetuned model the first champion, on this data.
    promoted = pipeline_run["result"]["promotions"]["mnist"]
    assert promoted["promoted"] and promoted["reason"].startswith("first champion")
    again = hip(stage="retrain", pipeline=str(path))
    assert again["mnist"] == {
        "promoted": False,
        "reason": "data unchanged",
        "version": promoted["version"],
    }
    # New data (more digits per class): a new fingerprint, so it retrains, re-scores the
    # champion on the new held-out split and decides on both numbers.
    spec = yaml.safe_load(path.read_text())
    spec["datasets"][0]["options"]["limit"] = 45
    path.write_text(yaml.safe_dump(spec))
    changed = hip(stage="retrain", pipeline=str(path))
    assert changed["mnist"]["version"] != promoted["version"]
    assert changed["mnist"]["champion_value"] is not None
    assert "same full held-out split" in changed["mnist"]["reason"]
