"""Evaluation, reports and model promotion as Prefect tasks (artifacts + MLflow registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from hip import storage, tracking
from hip.evaluate.run import config_for_checkpoint, evaluate
from hip.task import get_task
from tasks.naming import artifact_key


def _published(out: Any, kind: str) -> str:
    if kind not in out.files:
        return ""
    return storage.join(out.location, Path(out.files[kind]).name) if out.location else ""


@task(name="evaluate", retries=2, retry_delay_seconds=[5, 20])  # MLflow may blip
def evaluate_checkpoint(checkpoint: str, overrides: list[str], label: str) -> dict[str, Any]:
    """Metrics + report for one checkpoint; publishes the report and metrics as Prefect artifacts."""
    log = get_run_logger()
    cfg = config_for_checkpoint(checkpoint, overrides)
    out = evaluate(cfg)
    metrics = {k: float(v) for k, v in out.result.metrics.items()}
    log.info("%s: %s", label, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    key = artifact_key(f"{label}-report")
    markdown = Path(out.files["markdown"]).read_text() if "markdown" in out.files else ""
    create_markdown_artifact(
        markdown or f"report: {out.files.get('html')}", key=key, description=label
    )
    create_table_artifact(
        [{"metric": k, "value": v} for k, v in metrics.items()],
        key=artifact_key(f"{label}-metrics"),
    )
    if out.run_id:
        uri = tracking.scrub(str(cfg.tracking.uri or ""))
        create_link_artifact(
            out.link if out.link.startswith("http") else f"mlflow-run:{out.run_id}",
            link_text=f"MLflow run {out.run_id}",
            key=artifact_key(f"{label}-mlflow"),
            description=f"MLflow run of {label} (tracking URI {uri or 'default'})",
        )
    task = get_task(out.result.task)
    return {
        "label": label,
        "task": task.name,
        "headline": task.headline,  # the metric this run is judged by
        "higher_is_better": task.higher_is_better,
        "checkpoint": checkpoint,
        "metrics": metrics,
        "classes": [str(n) for n in out.result.label_names],
        # Where the report was published (beside the run, on S3 when the run is there).
        "report": _published(out, "html"),
        "report_md": _published(out, "markdown"),
        "mlflow_run_id": out.run_id,
    }
