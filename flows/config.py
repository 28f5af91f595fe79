"""Pipeline configuration: YAML preset (flows/presets) -> OmegaConf-checked dataclasses.

A pipeline names *what* to run (data source, pretraining preset, benchmarks); each stage's
own settings stay in the `hip` presets and are only overridden here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hip import storage
from hip.errors import UserError, unknown_name


@dataclass
class DatasetSpec:
    """One data set to shard: a hip.data source type, its input, splits and options."""

    name: str = "mnist5k"
    source: str = "mnist5k"
    input: str | None = None
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageSpec:
    """A training stage: a hip preset, overrides, and how many processes torchrun starts."""

    config: str = "tiny_mnist"
    overrides: list[str] = field(default_factory=list)
    nproc_per_node: str = "1"  # an integer, or auto (all GPUs, else a capped CPU count)
    # Multi-node (torchrun c10d): start one run of the stage per node, all with the same
    # nnodes, rdzv_endpoint (HOST:PORT of node 0) and rdzv_id; see infra/GPU_WORKERS.md.
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "hip"


@dataclass
class BenchmarkSpec:
    """A finetuning benchmark: its preset, the data set it reads, and a from-scratch twin."""

    name: str = "mnist"
    dataset: str = "mnist5k"
    overrides: list[str] = field(default_factory=list)
    from_scratch: bool = True  # also train the same budget without pretraining (the comparison)
    nproc_per_node: str = "1"
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "hip"


@dataclass
class PipelineConfig:
    """shard -> pretrain -> finetune per benchmark -> evaluate -> report."""

    name: str = "demo"
    work_dir: str = "outputs/pipeline"
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    pretrain_dataset: str = "mnist5k"
    pretrain: StageSpec = field(default_factory=StageSpec)
    benchmarks: list[BenchmarkSpec] = field(default_factory=lambda: [BenchmarkSpec()])
    tracking_uri: str | None = None  # null -> $MLFLOW_TRACKING_URI, else <work_dir>/mlflow.db
    experiment: str = "hip-pipeline"  # the parent run and every stage's run
    # How `stage=pipeline` runs its stages: inline (subflows in this process), deployments
    # (each stage on its own deployment's work pool: shard/evaluate on cpu, training on gpu),
    # or auto (deployments when the pipeline itself runs from a deployment).
    dispatch: str = "auto"
    # With dispatch=deployments: how often a stage run that FAILED or CRASHED (a worker host
    # lost, the Prefect server restarting under a starting run) is run again. Training resumes
    # from its last checkpoint and sharding from its finished shards, so a retry redoes little.
    # A CANCELLED stage is never retried.
    stage_retries: int = 1
    progress: bool = True
    # Sharding (issue 17): one Prefect task per partition of a split's shards (2 per worker) on
    # prefect-dask's DaskTaskRunner. shard_cluster: null -> a LocalCluster of shard_workers
    # processes, started only when a split needs writing; "threads" -> the same of threads;
    # tcp://host:8786 -> an existing Dask scheduler (any cluster: dask-kubernetes, SSH, ...;
    # docs/DATA.md). null with shard_workers: 1 -> no Dask, partitions run in the flow's process.
    shard_cluster: str | None = None
    # 1 by default: after a LocalCluster in the flow's own process, training launched from that
    # process ran 2-3x slower on 2 cores (measured 2026-12-02: 48-64 vs 156 samples/s), so Dask
    # is opt-in until that is understood (shard_workers: 2+, or a shard_cluster address).
    shard_workers: int = 1


def available_pipelines() -> list[str]:
    """Pipeline presets shipped in flows/presets."""
    folder = resources.files("flows") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_pipeline(
    name: str = "demo", overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Preset name or YAML path, plus dotlist overrides -> a checked PipelineConfig."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"pipeline config file not found: {path}")
        text, origin = path.read_text(), str(path)
    else:
        names = available_pipelines()
        if name not in names:
            raise UserError(unknown_name("pipeline", name, names))
        text = (resources.files("flows") / "presets" / f"{name}.yaml").read_text()
        origin = f"flows/presets/{name}.yaml"
    schema = OmegaConf.structured(PipelineConfig)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.create(text))
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(
            f"pipeline config {origin}: bad key or value {key!r}: {str(exc).splitlines()[0]}"
        ) from None
    for item in overrides:
        _apply_override(cfg, item, origin)
    pipeline: PipelineConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    known = {d.name for d in pipeline.datasets}
    for ref in [pipeline.pretrain_dataset, *(b.dataset for b in pipeline.benchmarks)]:
        if ref not in known:
            raise UserError(
                f"pipeline {origin}: data set {ref!r} is not among datasets {sorted(known)}"
            )
    return pipeline


def pipeline_from_dict(config: dict[str, Any]) -> PipelineConfig:
    """A resolved pipeline config sent as a deployment parameter (see flows.hip_flow)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.create(config))
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        raise UserError(f"pipeline config parameter: {str(exc).splitlines()[0]}") from None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _apply_override(cfg: Any, item: str, origin: str) -> None:
    """Apply one `key=value` override; list items by index (`benchmarks.0.overrides=[...]`)."""
    key, sep, raw = str(item).partition("=")
    if not sep or not key.strip():
        raise UserError(f"pipeline override {item!r}: expected key=value")
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]  # type: ignore[index]
        OmegaConf.update(cfg, key.strip(), value, merge=True)
    except (OmegaConfBaseException, TypeError, ValueError, IndexError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"pipeline override {item!r} does not fit {origin}: {reason}") from None


def tracking_uri(pipeline: PipelineConfig) -> str:
    """The MLflow URI every stage uses: `tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite
    file in a local `work_dir` (a `work_dir` on S3 needs a tracking server)."""
    if pipeline.tracking_uri:
        return pipeline.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_s3(pipeline.work_dir):
        raise UserError(
            f"work_dir={pipeline.work_dir} is on S3, where no SQLite tracking file can live: set "
            "MLFLOW_TRACKING_URI (infra/stack.sh env prints it) or tracking_uri to an MLflow server"
        )
    return f"sqlite:///{Path(pipeline.work_dir).expanduser().resolve() / 'mlflow.db'}"
