"""Champion / challenger bookkeeping in the MLflow model registry."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from hip.task import get_task
from hip.tracking import registered_model_name

CHAMPION = "champion"


def _client(uri: str):  # noqa: ANN202 - mlflow.MlflowClient
    import mlflow

    return mlflow.MlflowClient(uri)


@task(name="champion", retries=2, retry_delay_seconds=[5, 20])
def champion_of(uri: str, benchmark: str) -> dict[str, Any] | None:
    """The `champion` version of `hip-<benchmark>` with its metric and data fingerprint, or None."""
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
    }


def _version_of_run(client: Any, name: str, run_out: str) -> Any:
    """The model version registered by the finetune run whose run.out is `run_out`."""
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
        if mv.run_id and client.get_run(mv.run_id).data.params.get("run.out") == run_out:
            return mv
    return None


@task(name="promote", retries=2, retry_delay_seconds=[5, 20])
def promote_if_better(
    uri: str,
    benchmark: str,
    fingerprint: str,
    training: dict[str, Any],
    evaluation: dict[str, Any],
    metric: str,
) -> dict[str, Any]:
    """Move `champion` to the new version only if `metric` improves; otherwise tag it a challenger."""
    log = get_run_logger()
    client = _client(uri)
    name = registered_model_name(benchmark)
    mv = _version_of_run(client, name, training["run_out"])
    if mv is None:
        raise RuntimeError(
            f"no version of {name} was registered by the run in {training['run_out']}"
        )
    value = float(evaluation["metrics"][metric])
    for k, v in {
        "hip.metric": metric,
        "hip.metric_value": value,
        "hip.data_fingerprint": fingerprint,
    }.items():
        client.set_model_version_tag(name, mv.version, k, str(v))
    current = champion_of.fn(uri, benchmark)
    better = get_task(evaluation["task"]).better
    if current is None or current["value"] is None or better(value, current["value"]):
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        reason = (
            "first champion"
            if current is None
            else f"{metric} {value:.4f} beats {current['value']:.4f} (v{current['version']})"
        )
        client.set_model_version_tag(name, mv.version, "hip.decision", f"promoted: {reason}")
        log.info("%s v%s is the new champion: %s", name, mv.version, reason)
        return {"promoted": True, "version": mv.version, "value": value, "reason": reason}
    reason = (
        f"{metric} {value:.4f} does not beat champion v{current['version']} {current['value']:.4f}"
    )
    client.set_model_version_tag(name, mv.version, "hip.decision", f"challenger: {reason}")
    log.info("%s v%s stays a challenger: %s", name, mv.version, reason)
    return {"promoted": False, "version": mv.version, "value": value, "reason": reason}
