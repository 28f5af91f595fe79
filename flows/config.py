"""Pipeline configuration: YAML preset (flows/presets) -> OmegaConf-checked dataclasses.

A pipeline names *what* to run (data source, pretraining preset, benchmarks); each stage's
own settings stay in the `hip` presets and are only overridden here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


@dataclass
class BenchmarkSpec:
    """A finetuning benchmark: its preset, the data set it reads, and a from-scratch twin."""

    name: str = "mnist"
    dataset: str = "mnist5k"
    overrides: list[str] = field(default_factory=list)
    from_scratch: bool = True  # also train the same budget without pretraining (the comparison)
    nproc_per_node: str = "1"


@dataclass
class PipelineConfig:
    """shard -> pretrain -> finetune per benchmark -> evaluate -> report."""

    name: str = "demo"
    work_dir: str = "outputs/pipeline"
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    pretrain_dataset: str = "mnist5k"
    pretrain: StageSpec = field(default_factory=StageSpec)
    benchmarks: list[BenchmarkSpec] = field(default_factory=lambda: [BenchmarkSpec()])
    tracking_uri: str | None = None  # null -> sqlite:///<abs work_dir>/mlflow.db
    experiment: str = "hip-pipeline"
    progress: bool = True


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
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(
            f"pipeline config {origin}: bad key or value {key!r}: {str(exc).splitlines()[0]}"
        ) from None
    pipeline: PipelineConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    known = {d.name for d in pipeline.datasets}
    for ref in [pipeline.pretrain_dataset, *(b.dataset for b in pipeline.benchmarks)]:
        if ref not in known:
            raise UserError(
                f"pipeline {origin}: data set {ref!r} is not among datasets {sorted(known)}"
            )
    return pipeline


def tracking_uri(pipeline: PipelineConfig) -> str:
    """The MLflow URI every stage of this pipeline uses."""
    if pipeline.tracking_uri:
        return pipeline.tracking_uri
    return f"sqlite:///{Path(pipeline.work_dir).expanduser().resolve() / 'mlflow.db'}"
