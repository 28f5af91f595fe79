"""The pipeline's parent MLflow run as Prefect tasks (retried: a tracking server may blip)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from hip import tracking
from hip.config import load_config


def _cfg(uri: str, experiment: str, run_out: str | None = None):  # noqa: ANN202 - a DictConfig
    # run.out places a new experiment's artifacts beside the stages' (its parent folder).
    extra = [f"run.out={run_out}"] if run_out else []
    return load_config(
        "pretrain", None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}", *extra]
    )


@task(name="start-parent-run", retries=3, retry_delay_seconds=[2, 10, 30])
def start_parent_run(uri: str, experiment: str, name: str, work_dir: str | None = None) -> str:
    """Open the parent run every stage of this pipeline run nests under; returns its id.

    With the pipeline's local `work_dir`, the run id is kept there and a re-run after an
    interruption reopens it; a new experiment's artifacts go under `work_dir/runs`.
    """
    if work_dir is None:
        return tracking.start_pipeline_run(_cfg(uri, experiment), name)
    root = Path(work_dir)
    return tracking.start_pipeline_run(
        _cfg(uri, experiment, str(root / "runs" / name)),
        name,
        root / "parent-runs" / f"{name}.json",
    )


@task(name="end-parent-run", retries=3, retry_delay_seconds=[2, 10, 30])
def end_parent_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close the parent run with the pipeline's final status."""
    tracking.end_pipeline_run(_cfg(uri, "hip"), run_id, status)
