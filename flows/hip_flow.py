"""The `hip` flow: one entry point whose `stage` picks a subflow, so deployments read hip/<stage>.

shard -> pretrain -> finetune (per benchmark, pretrained and from scratch) -> evaluate ->
report, with MLflow tracking every stage under one parent run. Flows pass paths and URIs,
never tensors.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.config import PipelineConfig, load_pipeline, tracking_uri
from hip import checkpoint as ckpt
from hip import storage, tracking
from hip.errors import UserError
from tasks.data import shard_split
from tasks.evaluation import evaluate_checkpoint
from tasks.registry import champion_of, promote_if_better
from tasks.training import run_training

STAGES = ("shard", "pretrain", "finetune", "evaluate", "retrain", "pipeline")


def _work(p: PipelineConfig, *parts: str) -> str:
    return str(Path(p.work_dir).expanduser().resolve().joinpath(*parts))


def _tracking_overrides(p: PipelineConfig, parent: str | None) -> list[str]:
    out = [f"tracking.uri={tracking_uri(p)}"]
    if parent:
        out.append(f"tracking.parent_run_id={parent}")
    return out


def _parent_run(p: PipelineConfig, name: str) -> contextlib.AbstractContextManager[str]:
    """The pipeline's MLflow parent run: reopened when an interrupted run of it is continued."""
    return tracking.parent_run(tracking_uri(p), p.experiment, name, _work(p))


def _manifest(p: PipelineConfig, dataset: str) -> str:
    return _work(p, "shards", dataset)  # hip reads the manifest in it


@flow(name="shard")
def shard_flow(p: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Shard every configured data set and split (cached by an input fingerprint)."""
    results = {}
    for ds in p.datasets:
        for split in ds.splits:
            results[f"{ds.name}/{split}"] = shard_split(
                ds.source, ds.input, _work(p, "shards", ds.name), split, dict(ds.options)
            )
    return results


@flow(name="pretrain")
def pretrain_flow(p: PipelineConfig, parent: str | None = None) -> dict[str, Any]:
    """MAE pretraining on the pretraining data set's shards (torchrun when nproc > 1)."""
    overrides = [
        *p.pretrain.overrides,
        f"data.manifest={_manifest(p, p.pretrain_dataset)}",
        "data.source=null",
        *_tracking_overrides(p, parent),
    ]
    return run_training(
        "pretrain",
        p.pretrain.config,
        overrides,
        _work(p, "runs", "pretrain"),
        p.pretrain.nproc_per_node,
    )


@flow(name="finetune")
def finetune_flow(
    p: PipelineConfig, parent: str | None = None, pretrained: str | None = None
) -> dict[str, Any]:
    """Finetune every benchmark from the pretraining checkpoint, and from scratch if asked."""
    pretrained = pretrained or ckpt.latest_of_run(_work(p, "runs", "pretrain"))
    if pretrained is None:
        raise UserError(
            f"no pretraining checkpoint under {_work(p, 'runs', 'pretrain')}: run stage=pretrain first"
        )
    results = {}
    for b in p.benchmarks:
        base = [
            *b.overrides,
            f"data.manifest={_manifest(p, b.dataset)}",
            "data.source=null",
            *_tracking_overrides(p, parent),
        ]
        variants = {"pretrained": [f"task.pretrained={pretrained}"]}
        if b.from_scratch:
            variants["scratch"] = ["tracking.register_model=false"]
        for variant, extra in variants.items():
            out = _work(p, "runs", f"{b.name}-{variant}")
            results[f"{b.name}/{variant}"] = run_training(
                "finetune", b.name, [*base, *extra], out, b.nproc_per_node
            )
    return results


@flow(name="evaluate")
def evaluate_flow(p: PipelineConfig, parent: str | None = None) -> dict[str, Any]:
    """Evaluate the latest checkpoint of every run of this pipeline; publish reports."""
    results = {}
    runs = ["pretrain"] + [
        f"{b.name}-{v}"
        for b in p.benchmarks
        for v in (["pretrained", "scratch"] if b.from_scratch else ["pretrained"])
    ]
    for name in runs:
        found = ckpt.latest_of_run(_work(p, "runs", name))
        if found is None:
            get_run_logger().warning("no checkpoint for %s yet; skipped", name)
            continue
        # The training run's own final evaluation may be capped (run.eval_batches): use all data.
        overrides = [*_tracking_overrides(p, parent), "run.eval_batches=null"]
        results[name] = evaluate_checkpoint(found, overrides, name)
    return results


def summarize(p: PipelineConfig, evaluations: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark: headline metric MAE-pretrained vs from scratch (and the MAE row)."""
    rows = []
    if "pretrain" in evaluations:
        m = evaluations["pretrain"]["metrics"]
        rows.append(
            {
                "benchmark": f"MAE ({p.pretrain_dataset})",
                "metric": "masked MSE (lower is better)",
                "pretrained": round(m["masked_mse"], 4),
                "scratch": None,
                "baseline": round(m["mean_baseline_mse"], 4),  # predict each pixel's mean
            }
        )
    for b in p.benchmarks:
        pre = evaluations.get(f"{b.name}-pretrained", {}).get("metrics", {})
        scratch = evaluations.get(f"{b.name}-scratch", {}).get("metrics", {})
        if not pre:
            continue
        metric = evaluations[f"{b.name}-pretrained"]["headline"]
        rows.append(
            {
                "benchmark": b.name,
                "metric": metric,
                "pretrained": round(pre[metric], 4),
                "scratch": round(scratch[metric], 4) if metric in scratch else None,
                "baseline": _chance(evaluations[f"{b.name}-pretrained"]),
            }
        )
    return rows


def _chance(evaluation: dict[str, Any]) -> float | None:
    """Top-1 of guessing uniformly among the classes; None for other headline metrics."""
    classes = evaluation.get("classes") or []
    if evaluation["headline"] != "top1" or not classes:
        return None
    return round(1.0 / len(classes), 4)


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |"
        for r in rows
    ]
    return "\n".join(lines)


@flow(name="pipeline")
def pipeline_flow(p: PipelineConfig) -> dict[str, Any]:
    """shard -> pretrain -> finetune per benchmark -> evaluate -> report, under one MLflow parent run."""
    log = get_run_logger()
    with _parent_run(p, f"pipeline-{p.name}") as parent:
        shards = shard_flow(p)
        pre = pretrain_flow(p, parent)
        fine = finetune_flow(p, parent, pre["checkpoint"])
        evaluations = evaluate_flow(p, parent)
        rows = summarize(p, evaluations)
        table = _markdown_table(rows)
        report = Path(_work(p, "summary.md"))
        lines = [f"# HiP pipeline `{p.name}`", "", table, "", "Reports:"]
        lines += [f"- {name}: {ev['report']}" for name, ev in evaluations.items()]
        storage.atomic_write_text(report, "\n".join(lines) + "\n")
        create_table_artifact(rows, key="pipeline-summary", description=f"HiP pipeline {p.name}")
        create_markdown_artifact(report.read_text(), key="pipeline-report")
        log.info("summary:\n%s", table)
        return {
            "summary": rows,
            "report": str(report),
            "shards": shards,
            "pretrain": pre,
            "finetune": fine,
            "evaluations": evaluations,
            "tracking_uri": tracking_uri(p),
            "parent_run_id": parent,
        }


@flow(name="retrain")
def retrain_flow(p: PipelineConfig) -> dict[str, Any]:
    """Scheduled retraining: re-shard; when the data changed, finetune from the latest pretraining
    checkpoint, evaluate, and move the `champion` alias only when the metric improves."""
    log = get_run_logger()
    shards = shard_flow(p)
    uri = tracking_uri(p)
    outcome: dict[str, Any] = {}
    parent = None
    with contextlib.ExitStack() as stack:  # the parent run opens only when a benchmark retrains
        for b in p.benchmarks:
            fingerprint = shards[f"{b.dataset}/train"]["fingerprint"]
            champion = champion_of(uri, b.name)
            if champion and champion["fingerprint"] == fingerprint:
                log.info(
                    "hip-%s: data unchanged since champion v%s; nothing to do",
                    b.name,
                    champion["version"],
                )
                outcome[b.name] = {
                    "promoted": False,
                    "reason": "data unchanged",
                    "version": champion["version"],
                }
                continue
            if parent is None:
                parent = stack.enter_context(_parent_run(p, f"retrain-{p.name}"))
            pretrained = ckpt.latest_of_run(_work(p, "runs", "pretrain"))
            if pretrained is None:
                log.info("no pretraining checkpoint yet: pretraining first")
                pretrained = pretrain_flow(p, parent)["checkpoint"]
            out = _work(p, "runs", f"{b.name}-retrain-{fingerprint[:12]}")
            overrides = [
                *b.overrides,
                f"data.manifest={_manifest(p, b.dataset)}",
                "data.source=null",
                f"task.pretrained={pretrained}",
                *_tracking_overrides(p, parent),
            ]
            trained = run_training("finetune", b.name, overrides, out, b.nproc_per_node)
            evaluation = evaluate_checkpoint(
                trained["checkpoint"], _tracking_overrides(p, parent), f"{b.name}-retrain"
            )
            outcome[b.name] = promote_if_better(
                uri, b.name, fingerprint, trained, evaluation, evaluation["headline"]
            )
        return outcome


@flow(name="hip", log_prints=True)
def hip(
    stage: str = "pipeline", pipeline: str = "demo", overrides: list[str] | None = None
) -> dict[str, Any]:
    """Entry flow: run `stage` (shard, pretrain, finetune, evaluate, retrain, pipeline) of a pipeline preset."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    p = load_pipeline(pipeline, overrides or [])
    if stage == "shard":
        return shard_flow(p)
    if stage == "pipeline":
        return pipeline_flow(p)
    if stage == "retrain":
        return retrain_flow(p)
    shard_flow(p)  # cached: a no-op when the inputs did not change
    run_stage = {"pretrain": pretrain_flow, "finetune": finetune_flow, "evaluate": evaluate_flow}
    with _parent_run(p, f"{stage}-{p.name}") as parent:
        return run_stage[stage](p, parent)
