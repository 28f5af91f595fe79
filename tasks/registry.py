"""Champion / challenger bookkeeping in the MLflow model registry."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from hip.task import get_task
from hip.tracking import registered_model_name
from tasks.naming import artifact_key

CHAMPION = "champion"


def _client(uri: str):  # noqa: ANN202 - mlflow.MlflowClient
    import mlflow

    return mlflow.MlflowClient(uri)


@task(name="champion", retries=2, retry_delay_seconds=[5, 20])
def champion_of(uri: str, benchmark: str) -> dict[str, Any] | None:
    """The `champion` version of `hip-<benchmark>`: its metric, data fingerprint and checkpoint."""
    client = _client(uri)
    try:
        mv = client.get_model_version_by_alias(registered_model_name(benchmark), CHAMPION)
    except Exception:  # no model or no alias yet
        return None
    return {
        "version": mv.version,
        "metric": mv.tags.get("hip.metric"),
        "value": float(mv.tags["hip.metric_value"]) if "hip.metric_value" in mv.tags else None,
        "fingerprint": mv.tags.get("hip.data_fingerprint"),
        "checkpoint": mv.tags.get("hip.checkpoint"),
    }


def _version_of_run(client: Any, name: str, training: dict[str, Any]) -> Any:
    """The model version registered by a finetune run (by its MLflow run id, else its run.out)."""
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    run_id = training.get("mlflow_run_id")
    for mv in versions:
        if run_id and mv.run_id == run_id:
            return mv
    for mv in versions:
        if (
            mv.run_id
            and client.get_run(mv.run_id).data.params.get("run.out") == training["run_out"]
        ):
            return mv
    return None


def decide(
    metric: str, better: Any, challenger: float, champion: float | None, version: str | None
) -> tuple[bool, str]:
    """Promote only a strictly better challenger; a tie or a loss keeps the champion."""
    if champion is None:
        return True, f"first champion ({metric} {challenger:.4f})"
    if better(challenger, champion):
        return True, f"{metric} {challenger:.4f} beats champion v{version} {champion:.4f}"
    return False, (
        f"{metric} {challenger:.4f} does not beat champion v{version} {champion:.4f}; kept"
    )


@task(name="promote", retries=2, retry_delay_seconds=[5, 20])
def promote_if_better(
    uri: str,
    benchmark: str,
    fingerprint: str,
    training: dict[str, Any],
    evaluation: dict[str, Any],
    incumbent: dict[str, Any] | None,
    metric: str,
) -> dict[str, Any]:
    """Move `champion` to the challenger's version only if its `metric` is strictly better.

    `evaluation` scores the challenger and `incumbent` the current champion, both on the same
    full held-out split of the new data. Without an incumbent evaluation (a champion with no
    checkpoint to re-score) the champion's recorded value is used, and the decision says so.
    The decision, with both numbers, is the version's `hip.decision` tag and a Prefect
    markdown artifact (`<benchmark>-promotion`).
    """
    log = get_run_logger()
    client = _client(uri)
    name = registered_model_name(benchmark)
    mv = _version_of_run(client, name, training)
    if mv is None:  # tracking.register_model=false, or tracking disabled
        reason = f"nothing to promote: the run in {training['run_out']} registered no {name}"
        log.info(reason)
        return {"promoted": False, "version": None, "reason": reason}
    value = float(evaluation["metrics"][metric])
    current = champion_of.fn(uri, benchmark)
    champion_value, note = None, ""
    if current is not None:
        if incumbent is not None:
            champion_value = float(incumbent["metrics"][metric])
            note = " (both scored on the same full held-out split)"
        else:
            champion_value, note = current["value"], " (champion's recorded value)"
    better = get_task(evaluation["task"]).better
    promoted, reason = decide(
        metric, better, value, champion_value, current["version"] if current else None
    )
    reason += note
    for k, v in {
        "hip.metric": metric,
        "hip.metric_value": value,
        "hip.data_fingerprint": fingerprint,
        "hip.decision": f"{'promoted' if promoted else 'challenger'}: {reason}",
    }.items():
        client.set_model_version_tag(name, mv.version, k, str(v))
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        log.info("%s v%s is the new champion: %s", name, mv.version, reason)
    else:
        log.info("%s v%s stays a challenger: %s", name, mv.version, reason)
    run_id = training.get("mlflow_run_id") or mv.run_id
    if run_id:
        client.set_tag(run_id, "hip.decision", reason)
    create_markdown_artifact(
        f"# {name}: {'promoted' if promoted else 'kept'}\n\n{reason}\n",
        key=artifact_key(f"{benchmark}-promotion"),
        description=f"promotion decision for {name}",
    )
    return {
        "promoted": promoted,
        "version": mv.version,
        "value": value,
        "champion_value": champion_value,
        "reason": reason,
    }
