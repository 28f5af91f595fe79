"""The evaluate stage: checkpoint -> metrics on a held-out split -> CSV + report -> MLflow."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hip import checkpoint as ckpt
from hip import storage
from hip.config import drop_unused_source, from_dict, validate
from hip.data.dataset import open_dataset
from hip.distributed import pick_device
from hip.errors import UserError
from hip.evaluate import EvalResult, evaluate_model
from hip.evaluate.report import write_report
from hip.rundir import RunFolder, run_of_checkpoint
from hip.runlog import read_metrics
from hip.task.tta import views_note
from hip.threads import configure_threads


@dataclass
class EvaluateOutput:
    """Metrics, the files written (local copies), where they were published, the MLflow run id."""

    result: EvalResult
    files: dict[str, Path]
    checkpoint: str
    run_id: str | None
    location: str = ""  # where the report folder lives (local path or s3:// URI)
    link: str = ""  # the MLflow run's page


def find_checkpoint(cfg: DictConfig) -> str:
    """`eval.checkpoint`, else the latest checkpoint of `run.out`."""
    if cfg.eval.checkpoint:
        return str(cfg.eval.checkpoint)
    found = ckpt.latest(
        str(cfg.run.checkpoint_dir or ckpt.run_checkpoint_dir(RunFolder(str(cfg.run.out)).uri))
    )
    if not found:
        raise UserError(
            f"no checkpoint: set eval.checkpoint=PATH (nothing in {cfg.run.out}/checkpoints)"
        )
    return found


def check_data(cfg: DictConfig, source: Any, split: str) -> Any:
    """Verify the split's shards (eval.verify); corrupt data is a UserError unless eval.allow_corrupt.

    Returns the source to evaluate: with eval.allow_corrupt=true, one that skips corrupt samples.
    """
    problems: list[str] = []
    if source.manifest_path and cfg.eval.verify:
        from hip.data import verify

        problems = verify(source.manifest_path, split)
    if problems and not cfg.eval.allow_corrupt:
        shown = "; ".join(problems[:5]) + (
            f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise UserError(
            f"data {source.manifest_path} (split {split!r}) fails verification: {shown}. "
            "Re-run `hip shard` to repair it, or set eval.allow_corrupt=true to evaluate the "
            "readable samples anyway"
        )
    if problems:
        print(
            f"warning: evaluating {source.manifest_path} although {len(problems)} shard(s) fail "
            f"verification (eval.allow_corrupt=true): {'; '.join(problems[:5])}",
            file=sys.stderr,
            flush=True,
        )
    if source.manifest_path and cfg.eval.allow_corrupt:
        return dataclasses.replace(source, skip_corrupt=True)
    return source


def config_for_checkpoint(path: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The checkpoint's stored config as stage `evaluate`, with command-line overrides on top."""
    payload = ckpt.load(path)
    cfg = from_dict(payload["config"])
    cfg.stage = "evaluate"
    cfg.eval.checkpoint = path
    cfg.run.eval_batches = None  # training's cap: `hip evaluate` does the full split by default
    if overrides:
        from hip.config import Config, _merge, _parse_dotlist

        cfg = _merge(
            cfg,
            _parse_dotlist(list(overrides)),
            "command-line overrides",
            OmegaConf.structured(Config),
        )
    cfg.run.resume = "never"
    validate(cfg)
    drop_unused_source(cfg)
    return cfg


def evaluate(cfg: DictConfig) -> EvaluateOutput:
    """Evaluate `eval.checkpoint` (or the run's latest) on `eval.split` and write the report."""
    from hip import tracking

    if cfg.run.threads is not None:  # the CLI also sets the automatic choice
        configure_threads(int(cfg.run.threads))
    path = find_checkpoint(cfg)
    model, payload = ckpt.load_model(path)
    meta = payload["model_meta"]
    task = meta["task"]
    device = pick_device(str(cfg.run.device))
    model.to(device)
    source = open_dataset(cfg.data)
    if not (cfg.eval.split or cfg.data.eval_split):
        raise UserError("nothing to evaluate on: set eval.split (or data.eval_split) to a split")
    split = str(cfg.eval.split or cfg.data.eval_split)
    source = check_data(cfg, source, split)
    result = evaluate_model(
        model,
        source,
        task,
        split=split,
        batch_size=int(cfg.data.eval_batch_size or cfg.data.batch_size),
        device=device,
        max_batches=cfg.run.eval_batches,
        limit=cfg.data.limit,
        seed=int(cfg.run.seed),
        num_reconstructions=int(cfg.eval.reconstructions),
        layout=meta.get("layout"),
        tta=str(cfg.eval.tta),
    )
    total = source.num_samples(split)
    if cfg.data.limit is not None and total is not None:
        total = min(total, int(cfg.data.limit))
    print(
        f"evaluated {int(result.metrics.get('num_samples', 0))} of {total if total is not None else '?'} "
        f"samples of split {split!r}"
        + (f" (cap run.eval_batches={cfg.run.eval_batches})" if cfg.run.eval_batches else "")
        + views_note(str(cfg.eval.tta), task),
        flush=True,
    )
    # The report goes next to the checkpoint's run (or to eval.out), on S3 as locally: it is
    # written in a local working copy first and uploaded.
    trained = RunFolder(run_of_checkpoint(path))
    out = RunFolder(str(cfg.eval.out) if cfg.eval.out else storage.join(str(cfg.run.out), "eval"))
    extra: dict[str, Any] = {
        "benchmark": meta.get("benchmark") or "",
        "checkpoint": path,
        "step": int(payload["step"]),
        "split": split,
        "data": source.fingerprint,
    }
    title = f"HiP {task} evaluation" + (f" on {meta['benchmark']}" if meta.get("benchmark") else "")
    history = read_metrics(trained.fetch("metrics.jsonl"))
    files = write_report(result, out.local, history, title, extra)
    out.push_all()
    tracker = tracking.start_stage(cfg, "evaluate", is_main=True, source=source)
    try:
        tracker.log_params(
            {"eval": {"checkpoint": path, "split": split}, "model": {"preset": meta["preset"]}}
        )
        tracker.log_metrics(
            {f"eval_{k}": v for k, v in result.metrics.items()} | result.per_class_metrics(),
            int(payload["step"]),
        )
        tracker.log_artifact(str(out.local), "report")
        run_id, link = tracker.run_id, getattr(tracker, "link", "")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return EvaluateOutput(
        result=result, files=files, checkpoint=path, run_id=run_id, location=out.uri, link=link
    )
