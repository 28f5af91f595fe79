"""The pipeline's parent MLflow run as Prefect tasks (retried: a tracking server may blip)."""

from __future__ import annotations

from prefect import task

from hip import tracking
from hip.config import load_config


def _cfg(uri: str, experiment: str):  # noqa: ANN202 - an omegaconf DictConfig
    return load_config(
        "pretrain", None, [f"tracking.uri={uri}", f"tracking.experiment={experiment}"]
    )


@task(name="start-parent-run", retries=3, retry_delay_seconds=[2, 10, 30])
def start_parent_run(uri: str, experiment: str, name: str) -> str:
    """Open the parent run every stage of this pipeline run nests under; returns its id."""
    return tracking.start_pipeline_run(_cfg(uri, experiment), name)


@task(name="end-parent-run", retries=3, retry_delay_seconds=[2, 10, 30])
def end_parent_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close the parent run with the pipeline's final status."""
    tracking.end_pipeline_run(_cfg(uri, "hip"), run_id, status)
