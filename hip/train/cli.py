"""`hip pretrain | finetune | evaluate | config | compare`: the training stages on the command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hip.errors import UserError

OVERRIDES_HELP = "config overrides as key=value, e.g. optim.lr=1e-3 run.out=/tmp/run"
DATA_HELP = "your own data: a `hip shard` manifest.json, its folder or an s3:// prefix"
EVAL_EPILOG = (
    "At the end the model is evaluated on data.eval_split, reading at most run.eval_batches "
    "batches (default 100; null: all); the log says how many samples that was. `hip evaluate "
    "--checkpoint CKPT` does the full split."
)


class _Intermixed(argparse.ArgumentParser):
    """Lets `key=value` overrides come before or after options (`--config X a=b`)."""

    _busy = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Intermixed parsing of options and positional overrides."""
        if self._busy:
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def _add_common(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    p.__class__ = _Intermixed
    p.add_argument(
        "--config",
        "-c",
        default=default_config,
        help="preset name (hip config list) or a YAML path",
    )
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def _print_result(stage: str, result: Any) -> None:
    last = result.history[-1] if result.history else {}
    parts = [f"{stage}: step {result.step}"]
    if "loss" in last:
        parts.append(f"loss {last['loss']:.4f}")
    parts += [f"eval_{k} {v:.4f}" for k, v in result.eval_metrics.items() if k != "num_samples"]
    parts.append(f"checkpoint {result.checkpoint}")
    if result.run_id:
        parts.append(f"mlflow run {result.run_id}")
    print(", ".join(parts))


def _train_and_report(stage: str, cfg: Any) -> int:
    """Train `cfg`; rank 0 prints the result, every rank its batch count when distributed."""
    from hip.threads import configure_threads
    from hip.train.trainer import train

    configure_threads(cfg.run.threads)  # this process is ours: automatic unless set
    result = train(cfg)
    if result.rank == 0:
        _print_result(stage, result)
    if result.world_size > 1:
        # One write, newline included: unbuffered (PYTHONUNBUFFERED), print writes the text and
        # the newline separately, and two ranks on one pipe then merged their lines.
        sys.stdout.write(f"rank {result.rank}/{result.world_size}: {result.batches_seen} batches\n")
        sys.stdout.flush()
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Run MAE pretraining."""
    from hip.config import load_config

    if args.data:
        from hip.train.recipe import config_for_data

        cfg = config_for_data("pretrain", args.data, None, args.config, args.overrides)
    else:
        cfg = load_config("pretrain", args.config or "tiny_mnist", args.overrides)
    return _train_and_report("pretrain", cfg)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune on a benchmark or on your own data, from scratch or a pretraining checkpoint."""
    from hip.config import load_config

    name = args.config or args.benchmark
    overrides = list(args.overrides)
    if args.pretrained:
        overrides.append(f"task.pretrained={args.pretrained}")
    kind = "benchmarks" if args.benchmark and not args.config else None
    if args.data:
        from hip.train.recipe import config_for_data

        cfg = config_for_data("finetune", args.data, args.task, name, overrides, kind)
        return _train_and_report("finetune", cfg)
    if not name:
        raise UserError(
            "give --data MANIFEST (your own shards), --benchmark NAME (hip config list) or "
            "--config NAME_OR_PATH"
        )
    if args.task:
        overrides.insert(0, f"task.type={args.task}")
    return _train_and_report("finetune", load_config("finetune", name, overrides, kind=kind))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint and write the report."""
    from hip.config import load_config
    from hip.evaluate.run import config_for_checkpoint, evaluate

    if args.checkpoint:
        cfg = config_for_checkpoint(args.checkpoint, args.overrides)
    else:
        cfg = load_config("evaluate", args.config, args.overrides)
    from hip.threads import configure_threads

    configure_threads(cfg.run.threads)
    out = evaluate(cfg)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in out.result.metrics.items())
    print(f"evaluate: {metrics}")
    print(f"report: {out.files['html']}")
    if out.run_id:
        print(f"mlflow run {out.run_id}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the resolved config as YAML."""
    from hip.config import load_config, to_yaml

    kind = "benchmarks" if args.benchmark and not args.config else None
    name = args.config or args.benchmark
    if args.data and args.stage != "evaluate":
        from hip.train.recipe import config_for_data

        cfg = config_for_data(args.stage, args.data, args.task, name, args.overrides, kind)
    else:
        overrides = list(args.overrides)
        if args.data:
            overrides.insert(0, f"data.manifest={args.data}")
        if args.task:
            overrides.insert(0, f"task.type={args.task}")
        cfg = load_config(args.stage, name, overrides, kind=kind)
    sys.stdout.write(to_yaml(cfg))
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    """List the shipped presets."""
    from hip.config import available_configs
    from hip.model import available_presets

    print("train:      " + ", ".join(available_configs("train")))
    print("benchmarks: " + ", ".join(available_configs("benchmarks")))
    print("model:      " + ", ".join(available_presets()))
    return 0


# Experiments `hip compare` reads by default (besides the config's own): the stand-alone
# commands' and the pipeline's (its parent run and every stage's run; flows/config.py).
COMPARE_EXPERIMENTS = ("hip-pretrain", "hip-finetune", "hip-pipeline")


def cmd_compare(args: argparse.Namespace) -> int:
    """Table of tracked runs (mlflow.search_runs), newest first."""
    import pandas as pd

    from hip import tracking
    from hip.config import load_config

    cfg = load_config("evaluate", args.config, args.overrides)
    experiments = args.experiment or sorted({str(cfg.tracking.experiment), *COMPARE_EXPERIMENTS})
    import mlflow

    with tracking._quick_http(), tracking._uri_env_preserved():
        tracking.check_reachable(tracking.tracking_uri(cfg))
        mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
        experiments = [e for e in experiments if mlflow.get_experiment_by_name(e) is not None]
    if not experiments:
        print("no runs tracked yet")
        return 0
    runs = tracking.search(cfg, args.benchmark, experiments)
    if runs.empty:
        print(f"no runs for benchmark {args.benchmark!r}" if args.benchmark else "no runs")
        return 0
    cols = [
        "run_id",
        "tags.mlflow.runName",
        "tags.hip.stage",
        "tags.hip.benchmark",
        "tags.variant",  # pretrained / scratch / mae / challenger / champion (the flows' runs)
        "tags.hip.data_fingerprint",
        "status",
        "start_time",
    ]
    for tag in (c for c in cols if c.startswith("tags.")):  # always shown, blank where untagged
        runs[tag] = runs[tag].fillna("") if tag in runs.columns else ""
    runs["tags.hip.data_fingerprint"] = runs["tags.hip.data_fingerprint"].astype(str).str[:12]
    metric_cols = [
        c for c in runs.columns if c.startswith("metrics.eval_") and not c.endswith("num_samples")
    ]
    metric_cols += [c for c in ("metrics.loss",) if c in runs.columns]
    table = runs[cols + metric_cols].copy()
    table = table.rename(columns={"tags.hip.data_fingerprint": "data"})
    table.columns = [c.replace("metrics.", "").replace("tags.", "") for c in table.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
    return 0


def register(subparsers: Any) -> None:
    """Add pretrain, finetune, evaluate, config and compare to the `hip` parser."""
    p = subparsers.add_parser(
        "pretrain",
        help="MAE pretraining (use torchrun ... -m hip.train for DDP)",
        description="MAE pretraining: on your own shards with --data MANIFEST (the recipe "
        "hip/configs/recipes/mae.yaml), else with a preset (--config, default tiny_mnist).",
        epilog=EVAL_EPILOG,
    )
    p.add_argument("--data", "-d", help=DATA_HELP)
    _add_common(p)
    p.set_defaults(func=cmd_pretrain)

    p = subparsers.add_parser(
        "finetune",
        help="finetune on your own data or a benchmark, optionally from a pretraining checkpoint",
        description="Finetune a task head: on your own shards with --data MANIFEST [--task TYPE] "
        "(the task type's recipe, hip/configs/recipes/; classes, label names, modalities and "
        "the ignore label from the manifest), or with a benchmark preset (--benchmark).",
        epilog=EVAL_EPILOG,
    )
    p.add_argument("--data", "-d", help=DATA_HELP)
    p.add_argument(
        "--task",
        "-t",
        help="task type: classification, multilabel, segmentation, ... (default with --data: "
        "the manifest's)",
    )
    p.add_argument("--benchmark", "-b", help="benchmark preset (hip/configs/benchmarks)")
    p.add_argument("--pretrained", "-p", help="pretraining checkpoint (sets task.pretrained)")
    _add_common(p)
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "evaluate", help="metrics + report (markdown/HTML/PNG) for a checkpoint"
    )
    p.add_argument("--checkpoint", help="checkpoint to evaluate (its stored config is the base)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("config", help="show resolved configs, list presets")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("stage", choices=["pretrain", "finetune", "evaluate"])
    show.add_argument("--benchmark", "-b", help="benchmark preset (finetune)")
    show.add_argument("--data", "-d", help=DATA_HELP)
    show.add_argument("--task", "-t", help="task type (with --data: default the manifest's)")
    _add_common(show)
    show.set_defaults(func=cmd_config_show)
    lst = sub.add_parser("list", help="list the shipped presets")
    lst.set_defaults(func=cmd_config_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    p = subparsers.add_parser("compare", help="table of tracked runs from MLflow")
    p.add_argument("--benchmark", "-b", help="only runs of this benchmark")
    p.add_argument(
        "--experiment",
        "-e",
        action="append",
        help="experiment name(s); default: the config's tracking.experiment (hip), hip-pretrain, "
        "hip-finetune and hip-pipeline",
    )
    _add_common(p)
    p.set_defaults(func=cmd_compare)
