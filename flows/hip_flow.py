"""The `hip` flow: one entry point whose `stage` picks a subflow, so deployments read hip/<stage>.

shard -> pretrain -> finetune (per benchmark, pretrained and from scratch) -> evaluate ->
report, with MLflow tracking every stage under one parent run in one experiment. Flows pass
paths and URIs, never tensors; with `work_dir=s3://bucket/prefix` every hand-off between
stages lives on S3, so each stage can run on its own host (`dispatch`: cpu pool for sharding
and evaluation, gpu pool for training).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.config import PipelineConfig, load_pipeline, pipeline_from_dict, tracking_uri
from flows.dispatch import run_stage_deployment
from hip import checkpoint as ckpt
from hip import storage, tracking, worklock
from hip.config import load_config
from hip.errors import UserError
from hip.rundir import normalize
from tasks.data import shard_cluster, shard_split
from tasks.evaluation import evaluate_checkpoint
from tasks.naming import run_name
from tasks.registry import champion_of, promote_if_better
from tasks.training import run_training

STAGES = ("shard", "pretrain", "finetune", "evaluate", "retrain", "pipeline")
DISPATCH = ("auto", "inline", "deployments")


def _work(p: PipelineConfig, *parts: str) -> str:
    """A location under the pipeline's work_dir: an absolute local path or an s3:// URI."""
    out = normalize(p.work_dir)
    for part in parts:
        out = storage.join(out, part)
    return out


def _prefect_tags() -> dict[str, str]:
    """The Prefect flow run this stage runs in, for MLflow tags (empty outside Prefect)."""
    from prefect.runtime import flow_run

    tags = {}
    with contextlib.suppress(Exception):
        if flow_run.id:
            tags["prefect_flow_run_id"] = str(flow_run.id)
            tags["prefect_flow_run_url"] = _flow_run_url(str(flow_run.id))
    return tags


def _flow_run_url(run_id: str) -> str:
    """The flow run's page in the Prefect UI ('' with no UI, e.g. the ephemeral API)."""
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{str(ui).rstrip('/')}/runs/flow-run/{run_id}" if ui else ""


def _tracking_overrides(
    p: PipelineConfig, parent: str | None, name: str, variant: str | None = None
) -> list[str]:
    """MLflow settings for one stage's run: the pipeline's server and experiment, its parent,
    a name that says stage/benchmark/variant, and tags for the variant and the Prefect run."""
    out = [
        f"tracking.uri={tracking_uri(p)}",
        f"tracking.experiment={p.experiment}",
        f"tracking.run_name={name}",
    ]
    if parent:
        out.append(f"tracking.parent_run_id={parent}")
    tags = {**_prefect_tags(), **({"variant": variant} if variant else {})}
    out += [f"tracking.tags.{k}={v}" for k, v in tags.items() if v]
    return out


def _parent_run(p: PipelineConfig, name: str) -> contextlib.AbstractContextManager[str]:
    """The pipeline's MLflow parent run: reopened when an interrupted run of it is continued."""
    return tracking.parent_run(tracking_uri(p), p.experiment, name, _work(p))


def _manifest(p: PipelineConfig, dataset: str) -> str:
    return _work(p, "shards", dataset)  # hip reads the manifest in it


def _data(p: PipelineConfig, dataset: str) -> list[str]:
    return [f"data.manifest={_manifest(p, dataset)}", "data.source=null"]


def _variants(b: Any) -> list[str]:
    return ["pretrained", "scratch"] if b.from_scratch else ["pretrained"]


def check_stage_configs(p: PipelineConfig) -> None:
    """Resolve every training stage's config with its overrides before any work starts, so a
    typo in a (per-benchmark) override is one clear line, not a failure minutes in."""
    try:
        load_config("pretrain", p.pretrain.config, [*p.pretrain.overrides, *_data(p, "x")])
    except UserError as exc:
        raise UserError(f"pretrain ({p.pretrain.config}) overrides: {exc}") from None
    for i, b in enumerate(p.benchmarks):
        try:
            load_config("finetune", b.name, [*b.overrides, *_data(p, b.dataset)])
        except UserError as exc:
            raise UserError(f"benchmarks.{i} ({b.name}) overrides: {exc}") from None


def _save_result(p: PipelineConfig, stage: str, result: dict[str, Any]) -> None:
    """A stage's result in work_dir, where a pipeline that ran it on another host reads it."""
    data = json.dumps(result, indent=1, default=str).encode()
    storage.write_bytes(_work(p, "stages", f"{stage}.json"), data)


def _load_result(p: PipelineConfig, stage: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(_work(p, "stages", f"{stage}.json")))


@flow(name="shard")
def shard_flow(p: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Shard every configured data set and split (cached by an input fingerprint), one task
    per partition on the shard cluster (`shard_cluster`, `shard_workers`)."""
    results = {}
    threads = p.shard_cluster == "threads"
    address = None if threads else p.shard_cluster
    with shard_cluster(address, p.shard_workers, processes=not threads):
        for ds in p.datasets:
            for split in ds.splits:
                results[f"{ds.name}/{split}"] = shard_split(
                    ds.source, ds.input, _work(p, "shards", ds.name), split, dict(ds.options)
                )
    _save_result(p, "shard", results)
    return results


@flow(name="pretrain")
def pretrain_flow(p: PipelineConfig, parent: str | None = None) -> dict[str, Any]:
    """MAE pretraining on the pretraining data set's shards (torchrun when nproc > 1)."""
    s = p.pretrain
    overrides = [
        *s.overrides,
        *_data(p, p.pretrain_dataset),
        *_tracking_overrides(p, parent, run_name("pretrain", p.pretrain_dataset), "mae"),
    ]
    result = run_training(
        "pretrain",
        s.config,
        overrides,
        _work(p, "runs", "pretrain"),
        s.nproc_per_node,
        nnodes=s.nnodes,
        rdzv_endpoint=s.rdzv_endpoint,
        rdzv_id=s.rdzv_id,
        label=run_name("pretrain", p.pretrain_dataset),
    )
    _save_result(p, "pretrain", result)
    return result


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
        for variant in _variants(b):
            extra = (
                [f"task.pretrained={pretrained}"]
                if variant == "pretrained"
                else ["tracking.register_model=false"]  # a baseline is never a model version
            )
            name = run_name("finetune", b.name, variant)
            results[f"{b.name}/{variant}"] = run_training(
                "finetune",
                b.name,
                [
                    *b.overrides,
                    *_data(p, b.dataset),
                    *extra,
                    *_tracking_overrides(p, parent, name, variant),
                ],
                _work(p, "runs", f"{b.name}-{variant}"),
                b.nproc_per_node,
                nnodes=b.nnodes,
                rdzv_endpoint=b.rdzv_endpoint,
                rdzv_id=b.rdzv_id,
                label=name,
            )
    _save_result(p, "finetune", results)
    return results


@flow(name="evaluate")
def evaluate_flow(p: PipelineConfig, parent: str | None = None) -> dict[str, Any]:
    """Evaluate the latest checkpoint of every run of this pipeline; publish reports."""
    results = {}
    runs = {"pretrain": (p.pretrain_dataset, "mae")}
    runs.update({f"{b.name}-{v}": (b.name, v) for b in p.benchmarks for v in _variants(b)})
    for name, (what, variant) in runs.items():
        found = ckpt.latest_of_run(_work(p, "runs", name))
        if found is None:
            get_run_logger().warning("no checkpoint for %s yet; skipped", name)
            continue
        # The training run's own final evaluation may be capped (run.eval_batches): use all data.
        overrides = [
            *_tracking_overrides(p, parent, run_name("evaluate", what, variant), variant),
            "run.eval_batches=null",
        ]
        results[name] = evaluate_checkpoint(found, overrides, name)
    _save_result(p, "evaluate", results)
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


def _dispatch_mode(p: PipelineConfig) -> str:
    """inline or deployments; `auto` is deployments when this flow itself runs from one."""
    if p.dispatch not in DISPATCH:
        raise UserError(f"dispatch={p.dispatch!r}; choose one of {', '.join(DISPATCH)}")
    if p.dispatch != "auto":
        return p.dispatch
    from prefect.runtime import deployment

    return "deployments" if deployment.id else "inline"


def _run_stage(p: PipelineConfig, stage: str, parent: str, mode: str) -> dict[str, Any]:
    """Run one stage here (a subflow) or as a run of its deployment `hip/<stage>` on that
    deployment's work pool; either way returns the stage's result."""
    if mode == "inline":
        if stage == "shard":
            return shard_flow(p)
        return {"pretrain": pretrain_flow, "finetune": finetune_flow, "evaluate": evaluate_flow}[
            stage
        ](p, parent)
    log = get_run_logger()
    params = {
        "stage": stage,
        "pipeline": p.name,
        "config": dataclasses.asdict(p),
        "parent_run_id": parent,
    }
    for attempt in range(1 + max(0, p.stage_retries)):
        log.info("stage %s: running deployment hip/%s", stage, stage)
        run = run_stage_deployment(stage, params)  # cancelled with this flow run
        state = run.state
        if state is not None and state.is_completed():
            break
        what = f"{state.type.value}: {state.message}" if state else "no state"
        failed = f"stage {stage} (flow run {run.name}, deployment hip/{stage}) {what}"
        if (state is not None and state.is_cancelled()) or attempt >= p.stage_retries:
            raise RuntimeError(failed)
        log.warning("%s; running it again (stage_retries=%d)", failed[:2000], p.stage_retries)
    log.info("stage %s done (flow run %s)", stage, run.name)
    return _load_result(p, stage)


@flow(name="pipeline")
def pipeline_flow(p: PipelineConfig) -> dict[str, Any]:
    """shard -> pretrain -> finetune per benchmark -> evaluate -> report, under one MLflow parent run."""
    log = get_run_logger()
    check_stage_configs(p)
    mode = _dispatch_mode(p)
    with _parent_run(p, f"pipeline-{p.name}") as parent:
        log.info("MLflow parent run %s in %s (stages: %s)", parent, tracking_uri(p), mode)
        shards = _run_stage(p, "shard", parent, mode)
        pre = _run_stage(p, "pretrain", parent, mode)
        fine = _run_stage(p, "finetune", parent, mode)
        evaluations = _run_stage(p, "evaluate", parent, mode)
        promotions = _promote(p, parent, shards, fine, evaluations)
        rows = summarize(p, evaluations)
        table = _markdown_table(rows)
        report = _work(p, "summary.md")
        lines = [f"# HiP pipeline `{p.name}`", "", table, "", "Reports:"]
        lines += [f"- {name}: {ev['report']}" for name, ev in evaluations.items()]
        lines += ["", "Model registry:"]
        lines += [f"- hip-{b}: {d['reason']}" for b, d in promotions.items()]
        text = "\n".join(lines) + "\n"
        storage.write_bytes(report, text.encode())
        create_table_artifact(rows, key="pipeline-summary", description=f"HiP pipeline {p.name}")
        create_markdown_artifact(text, key="pipeline-report")
        log.info("summary:\n%s", table)
        return {
            "summary": rows,
            "report": report,
            "shards": shards,
            "pretrain": pre,
            "finetune": fine,
            "evaluations": evaluations,
            "promotions": promotions,
            "tracking_uri": tracking.scrub(tracking_uri(p)),
            "parent_run_id": parent,
        }


def _evaluate_champion(
    p: PipelineConfig, b: Any, champion: dict[str, Any] | None, out: str, parent: str
) -> dict[str, Any] | None:
    """The champion re-scored on the challenger's full held-out split (None if it cannot be)."""
    if not champion or not champion.get("checkpoint"):
        return None
    overrides = [
        *_data(p, b.dataset),
        "run.eval_batches=null",
        f"eval.out={storage.join(out, 'champion-eval')}",
        *_tracking_overrides(p, parent, run_name("evaluate", b.name, "champion"), "champion"),
    ]
    return evaluate_checkpoint(champion["checkpoint"], overrides, f"{b.name}-champion")


def _promote(
    p: PipelineConfig,
    parent: str,
    shards: dict[str, Any],
    fine: dict[str, Any],
    evaluations: dict[str, Any],
) -> dict[str, Any]:
    """Each benchmark's MAE-finetuned model becomes `champion` when it beats the current one
    on the same full held-out split (the first one always does)."""
    uri, out = tracking_uri(p), {}
    for b in p.benchmarks:
        trained = fine.get(f"{b.name}/pretrained")
        evaluation = evaluations.get(f"{b.name}-pretrained")
        if not trained or not evaluation:
            continue
        champion = champion_of(uri, b.name)
        same = champion and champion.get("checkpoint") == trained["checkpoint"]
        incumbent = None if same else _evaluate_champion(p, b, champion, trained["run_out"], parent)
        if same:
            out[b.name] = {"promoted": False, "reason": "already the champion"}
            continue
        fingerprint = shards.get(f"{b.dataset}/train", {}).get("fingerprint", "")
        out[b.name] = promote_if_better(
            uri, b.name, fingerprint, trained, evaluation, incumbent, evaluation["headline"]
        )
    return out


@flow(name="retrain")
def retrain_flow(p: PipelineConfig) -> dict[str, Any]:
    """Scheduled retraining: re-shard; when the data changed, finetune from the latest pretraining
    checkpoint, evaluate the challenger and the current champion on the same full held-out
    split, and move the `champion` alias only when the challenger is strictly better."""
    log = get_run_logger()
    check_stage_configs(p)
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
            name = run_name("finetune", b.name, "retrain")
            overrides = [
                *b.overrides,
                *_data(p, b.dataset),
                f"task.pretrained={pretrained}",
                *_tracking_overrides(p, parent, name, "pretrained"),
            ]
            trained = run_training("finetune", b.name, overrides, out, b.nproc_per_node, label=name)
            full = [  # the whole held-out split, never the training run's capped evaluation
                "run.eval_batches=null",
                *_tracking_overrides(
                    p, parent, run_name("evaluate", b.name, "challenger"), "challenger"
                ),
            ]
            evaluation = evaluate_checkpoint(trained["checkpoint"], full, f"{b.name}-challenger")
            incumbent = _evaluate_champion(p, b, champion, out, parent)
            outcome[b.name] = promote_if_better(
                uri, b.name, fingerprint, trained, evaluation, incumbent, evaluation["headline"]
            )
        return outcome


@flow(name="hip", log_prints=True)
def hip(
    stage: str = "pipeline",
    pipeline: str = "demo",
    overrides: list[str] | None = None,
    parent_run_id: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Entry flow: run `stage` (shard, pretrain, finetune, evaluate, retrain, pipeline) of a
    pipeline preset with dotlist `overrides`. A pipeline that dispatches its stages to their
    deployments passes its resolved `config` and its MLflow `parent_run_id`."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    p = pipeline_from_dict(config) if config else load_pipeline(pipeline, overrides or [])
    if p.dispatch == "auto":  # decided here, in the deployment's own flow run
        p = dataclasses.replace(p, dispatch=_dispatch_mode(p))
    run_stage = {"pretrain": pretrain_flow, "finetune": finetune_flow, "evaluate": evaluate_flow}
    if parent_run_id:  # one stage of a pipeline that runs elsewhere (and holds the lease)
        return shard_flow(p) if stage == "shard" else run_stage[stage](p, parent_run_id)
    with _lease(p, stage):
        if stage == "shard":
            return shard_flow(p)
        if stage == "pipeline":
            return pipeline_flow(p)
        if stage == "retrain":
            return retrain_flow(p)
        check_stage_configs(p)
        shard_flow(p)  # cached: a no-op when the inputs did not change
        with _parent_run(p, f"{stage}-{p.name}") as parent:
            return run_stage[stage](p, parent)


def _lease(p: PipelineConfig, stage: str) -> contextlib.AbstractContextManager[Any]:
    """One pipeline (or stand-alone stage) at a time per work_dir; a second is refused."""
    from prefect.runtime import flow_run

    owner = f"hip {stage} '{p.name}'"
    with contextlib.suppress(Exception):
        if flow_run.id:
            url = _flow_run_url(str(flow_run.id))
            owner += f" (Prefect flow run {flow_run.name}{', ' + url if url else ''})"
    return worklock.exclusive(_work(p), owner)
