"""Run configuration: OmegaConf structured dataclasses, YAML presets shipped as package data.

Config flows one way: schema defaults <- preset YAML (``hip/configs/train`` or
``hip/configs/benchmarks``, or a path) <- command-line dotlist overrides
(``optim.lr=1e-3 run.out=/tmp/x``). Every key and type is checked before any work starts:
an unknown key or a value of the wrong type raises :class:`hip.errors.UserError` naming
the key, with a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hip.errors import UserError, unknown_name

STAGES = ("pretrain", "finetune", "evaluate")
SECRET_WORDS = ("secret", "password", "token", "key", "credential")


@dataclass
class ModelSection:
    """Which HiP: a preset name (hip/configs/model) plus field overrides (e.g. dropout_prob)."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    # Ours, not the official model (docs/BENCHMARKS.md, issue 14): standardise each input
    # modality before its embedding (none | dataset: the training split's per-channel mean and
    # std | sample: each sample over its own tokens), kept in the checkpoint; and start the
    # position tables from sin/cos of the coordinates (official | coords) when not pretrained.
    input_norm: str = "none"
    # Another mode for some modalities, by name (ours): e.g. {image: sample} standardises each
    # image on its own while audio keeps `input_norm`. Names the data lacks are ignored.
    input_norm_by_modality: dict[str, str] = field(default_factory=dict)
    position_init: str = "official"
    # Segmentation's per-position queries (ours when `tokens`): `positions` (official: the
    # position vectors, as MAE's reconstruction) or `tokens` (each position's embedded input
    # token, kept as a residual, so the head also sees the pixel itself at full resolution).
    dense_query: str = "positions"


@dataclass
class AugmentSection:
    """Training-only augmentation of image inputs, on the stored uint8 pixels (ours, issue 14).

    A segmentation mask moves with its image; pixels shifted in are 0 and their mask positions
    the ignore label, so they are not scored."""

    shift: int = 0  # translate each image by up to this many pixels in x and y (0: off)
    hflip: bool = False  # mirror left-right with probability 1/2
    vflip: bool = False  # mirror top-bottom with probability 1/2
    # turn by 0, 90, 180 or 270 degrees at random (square images only; with both flips it
    # draws from all 8 symmetries of the square, for data with no up or left: EM, aerial, cells)
    rot90: bool = False


@dataclass
class DataSection:
    """Where batches come from: a shard manifest (hip.data) or a small built-in source."""

    manifest: str | None = None  # path or URI of a hip.data manifest.json (or its folder)
    source: str | None = None  # built-in in-memory source when no manifest: mnist5k, digits, ...
    split: str = "train"
    eval_split: str | None = "test"  # evaluated after training; null: no final evaluation
    batch_size: int = 8  # per process (rank); the global batch is batch_size x world x accum
    eval_batch_size: int | None = None
    num_workers: int = 0
    limit: int | None = None  # use at most this many samples per split (smoke tests)
    # Audio token width at load time (the shards keep the raw waveform); null: the manifest's
    # (set when sharding, default 16). docs/DATA.md says why.
    audio_samples_per_token: int | None = None
    # Or tokens of about this many milliseconds, whatever the rate (ours): the nearest power
    # of two in samples (8 ms: 64 at 8 kHz, 128 at 16 kHz). audio_samples_per_token wins.
    audio_token_ms: float | None = None
    augment: AugmentSection = field(default_factory=AugmentSection)


@dataclass
class OptimSection:
    """AdamW + linear warmup + cosine decay (MAE's recipe)."""

    lr: float | None = None  # absolute peak lr; null -> base_lr x global_batch / 256
    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 10
    total_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (norm still logged)
    grad_accum: int = 1  # micro-batches per optimizer step
    position_lr_mult: float = 1.0  # peak lr of the position tables = lr x this (ours; 1 = official)


@dataclass
class MAESection:
    """Masked auto-encoding settings."""

    mask_ratio: float = 0.85
    # off | group (per group and channel; true = group) | patch (ours: per norm_patch x
    # norm_patch image patch). Measured in docs/BENCHMARKS.md, "Issue 16".
    norm_targets: str = "off"
    norm_patch: int = 4


@dataclass
class TaskSection:
    """What is trained: MAE pretraining or a finetuning task on a benchmark."""

    type: str = "mae"  # mae | classification | multilabel | segmentation
    benchmark: str | None = None
    num_classes: int | None = None  # null -> from the data (manifest label_names)
    pretrained: str | None = None  # pretraining checkpoint to start from (finetune)
    freeze_positions: bool = False
    # The training loss only (evaluation losses stay plain cross-entropy); classification and
    # segmentation. class_weights: null | balanced (1 / (K x class frequency) over the first
    # 4,096 training samples) | one weight per class.
    label_smoothing: float = 0.0
    class_weights: Any = None


@dataclass
class RunSection:
    """Run folder, checkpoints, resumption, seeding, device and numerics."""

    name: str = "run"
    out: str = "runs/${run.name}"
    checkpoint_dir: str | None = None  # null -> <run.out>/checkpoints; may be s3://bucket/prefix
    checkpoint_every: int = 50
    keep_last: int = 3
    resume: str = "auto"  # auto | never | PATH to a checkpoint
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch intra-op threads per process; null: OMP_NUM_THREADS, else the CPUs this process may
    # use (affinity, cgroup quota) / processes on the host (hip/threads.py, docs/TRAINING.md)
    threads: int | None = None
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    strategy: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard) when launched by torchrun
    log_every: int = 1
    progress: bool = True
    stop_at_step: int | None = None  # stop early (as if preempted) after this step
    # The end-of-training evaluation reads at most this many batches of data.eval_split (null:
    # all); `hip evaluate` ignores a stored cap and does the full split unless told otherwise.
    eval_batches: int | None = 100
    on_nonfinite: str = "stop"  # NaN/inf loss or grad norm: stop (keep last checkpoint) | skip
    max_skipped_steps: int = 100  # on_nonfinite=skip: stop once this many steps were skipped


@dataclass
class TrackingSection:
    """MLflow: where, which experiment, parent run (pipeline), what to log."""

    enabled: bool = True
    uri: str | None = None  # null -> $MLFLOW_TRACKING_URI or sqlite:///<abs run root>/mlflow.db
    experiment: str = "hip"
    parent_run_id: str | None = None  # or $HIP_MLFLOW_PARENT_RUN_ID (pipeline -> workers)
    run_name: str | None = None
    system_metrics: bool = True  # only when psutil is installed
    log_checkpoint: bool = True
    register_model: bool = True  # finetune: register as hip-<benchmark>
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags (variant, Prefect run)


@dataclass
class EvalSection:
    """Evaluation: which checkpoint, split, where the report goes."""

    checkpoint: str | None = None
    split: str | None = None  # null -> data.eval_split
    out: str | None = None  # null -> <run.out>/eval
    reconstructions: int = 8
    verify: bool = True  # check every shard's sha256 against the manifest before evaluating
    allow_corrupt: bool = False  # evaluate anyway when verification fails (corrupt samples skipped)
    # Test-time augmentation of a finetuned model (ours, hip.task.tta): average its logits over
    # views of each image: off | hflip | flips (both mirrors) | dihedral (8: flips and quarter
    # turns, square images). Use the symmetries the model was trained with (data.augment).
    tta: str = "off"


@dataclass
class Config:
    """The whole run configuration (one schema for every stage)."""

    stage: str = "pretrain"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    mae: MAESection = field(default_factory=MAESection)
    task: TaskSection = field(default_factory=TaskSection)
    run: RunSection = field(default_factory=RunSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    eval: EvalSection = field(default_factory=EvalSection)


# ---------------------------------------------------------------------------- presets


def _preset_dir(kind: str) -> Any:
    return resources.files("hip") / "configs" / kind


def available_configs(kind: str = "train") -> list[str]:
    """Preset names shipped in hip/configs/<kind> (train or benchmarks)."""
    folder = _preset_dir(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str, kind: str = "train") -> tuple[str, str]:
    """YAML text and origin of a preset name (from package data) or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        return path.read_text(), str(path.resolve())
    names = available_configs(kind)
    if name not in names:
        raise UserError(
            unknown_name(f"{kind} config", name, names) + " (or give a path to a .yaml file)"
        )
    return (_preset_dir(kind) / f"{name}.yaml").read_text(), f"hip/configs/{kind}/{name}.yaml"


def _schema_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (dict-typed fields count as leaves)."""
    keys = []
    for k in node.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        child = node._get_node(k)
        if isinstance(child, DictConfig) and OmegaConf.get_type(child) not in (dict, None):
            keys.extend(_schema_keys(child, full + "."))
    return keys


def _raise_nice(exc: OmegaConfBaseException, origin: str, schema: DictConfig) -> None:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", exc)).split("\n")[0]
    if (
        "not in" in msg
        or "Key" in type(exc).__name__
        or "ConfigAttributeError" in type(exc).__name__
    ):
        hint = difflib.get_close_matches(key, _schema_keys(schema), n=1, cutoff=0.5)
        raise UserError(
            f"unknown config key {key!r} in {origin}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        ) from None
    raise UserError(f"bad value for config key {key!r} in {origin}: {msg}") from None


def _merge(base: DictConfig, other: Any, origin: str, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        _raise_nice(exc, origin, schema)
        raise  # unreachable


def _parse_dotlist(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise UserError(f"overrides must look like key=value (e.g. optim.lr=1e-3), got {bad}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot parse overrides {overrides}: {exc}") from None


def load_config(
    stage: str = "pretrain",
    name: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    kind: str | None = None,
) -> DictConfig:
    """Schema <- preset `name` (train or benchmarks preset, or a YAML path) <- dotlist overrides.

    Raises UserError naming any unknown key or mistyped value; the result is validated.
    """
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    schema = OmegaConf.structured(Config)
    cfg = schema.copy()
    if name:
        kind = kind or (
            "benchmarks"
            if stage == "finetune" and name in available_configs("benchmarks")
            else "train"
        )
        text, origin = preset_text(name, kind)
        try:
            loaded = OmegaConf.create(text)
        except Exception as exc:  # YAML syntax
            where = " ".join(str(exc).split())
            raise UserError(f"cannot parse {origin}: {where}") from None
        cfg = _merge(cfg, loaded, origin, schema)
    cfg = _merge(cfg, {"stage": stage}, "stage", schema)
    if stage == "evaluate":  # the training runs' cap does not apply: evaluate the full split
        cfg = _merge(cfg, {"run": {"eval_batches": None}}, "stage", schema)
    if overrides:
        cfg = _merge(cfg, _parse_dotlist(list(overrides)), "command-line overrides", schema)
    validate(cfg)
    OmegaConf.set_readonly(cfg, False)
    drop_unused_source(cfg)
    return cfg


def drop_unused_source(cfg: DictConfig) -> None:
    """Null `data.source` when `data.manifest` is set: the manifest is what is read, and the
    resolved config (printed, stored in checkpoints, logged) shows only the data used."""
    if cfg.data.manifest and cfg.data.source:
        cfg.data.source = None


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        raise UserError(
            f"{key}={value!r} is not one of {', '.join(allowed)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )


def validate(cfg: DictConfig) -> None:
    """Semantic checks (choices, ranges, model overrides) that the type system cannot express."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise UserError(f"config does not resolve: {str(exc).splitlines()[0]}") from None
    _choice(cfg.stage, STAGES, "stage")
    from hip.task import get_task, task_names

    _choice(cfg.task.type, task_names(), "task.type")
    _choice(cfg.run.precision, ("auto", "bf16", "fp32"), "run.precision")
    _choice(cfg.run.strategy, ("ddp", "fsdp"), "run.strategy")
    _choice(cfg.run.on_nonfinite, ("stop", "skip"), "run.on_nonfinite")
    if cfg.run.threads is not None and cfg.run.threads < 1:
        raise UserError(f"run.threads must be >= 1 (or null: automatic), got {cfg.run.threads}")
    if cfg.run.max_skipped_steps < 0:
        raise UserError(f"run.max_skipped_steps must be >= 0, got {cfg.run.max_skipped_steps}")
    dev = str(cfg.run.device)
    if not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
        raise UserError(f"run.device={dev!r}: use auto, cpu, cuda or cuda:N")
    trained_here = [n for n in task_names() if get_task(n).stage == cfg.stage]
    if cfg.stage in ("pretrain", "finetune") and cfg.task.type not in trained_here:
        if cfg.stage == "pretrain":
            raise UserError(
                f"pretrain trains task.type={'|'.join(trained_here)}, got task.type={cfg.task.type!r}"
            )
        names = ", ".join(trained_here[:-1]) + " or " + trained_here[-1]
        raise UserError(f"finetune needs task.type {names}")
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "optim.total_steps": cfg.optim.total_steps,
        "optim.grad_accum": cfg.optim.grad_accum,
        "run.checkpoint_every": cfg.run.checkpoint_every,
        "run.keep_last": cfg.run.keep_last,
        "run.log_every": cfg.run.log_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be >= 1, got {value}")
    optional_positive = {
        "data.eval_batch_size": cfg.data.eval_batch_size,
        "data.limit": cfg.data.limit,
        "run.eval_batches": cfg.run.eval_batches,
    }
    for key, value in optional_positive.items():
        if value is not None and value < 1:
            raise UserError(f"{key} must be >= 1 (or null), got {value}")
    if cfg.run.stop_at_step is not None and cfg.run.stop_at_step < 0:
        raise UserError(f"run.stop_at_step must be >= 0 (or null), got {cfg.run.stop_at_step}")
    if cfg.optim.lr is not None and not cfg.optim.lr > 0:
        raise UserError(f"optim.lr must be > 0 (or null for base_lr scaling), got {cfg.optim.lr}")
    nonneg = {
        "optim.base_lr": cfg.optim.base_lr,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.grad_clip": cfg.optim.grad_clip,
        "optim.eps": cfg.optim.eps,
        "eval.reconstructions": cfg.eval.reconstructions,
    }
    for key, value in nonneg.items():
        if not value >= 0:  # also catches NaN
            raise UserError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise UserError(f"optim.min_lr_ratio must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if cfg.optim.warmup_steps < 0:
        raise UserError(f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1), got {list(cfg.optim.betas)}")
    _choice(cfg.model.input_norm, ("none", "dataset", "sample"), "model.input_norm")
    for name, mode in cfg.model.input_norm_by_modality.items():
        _choice(mode, ("none", "dataset", "sample"), f"model.input_norm_by_modality.{name}")
    from hip.task.tta import TTA_MODES, tta_mode

    cfg.eval.tta = tta_mode(cfg.eval.tta)  # `eval.tta=off` arrives as false (YAML 1.1)
    _choice(cfg.eval.tta, TTA_MODES, "eval.tta")
    _choice(cfg.model.position_init, ("official", "coords"), "model.position_init")
    if not cfg.optim.position_lr_mult > 0:
        raise UserError(f"optim.position_lr_mult must be > 0, got {cfg.optim.position_lr_mult}")
    if not 0.0 < cfg.mae.mask_ratio < 1.0:
        raise UserError(f"mae.mask_ratio must be in (0, 1), got {cfg.mae.mask_ratio}")
    from hip.model.mae import norm_targets_mode

    try:
        norm_targets_mode(cfg.mae.norm_targets)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.mae.norm_patch < 1:
        raise UserError(f"mae.norm_patch must be >= 1, got {cfg.mae.norm_patch}")
    if cfg.data.num_workers < 0:
        raise UserError(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    # The model preset and its overrides are checked now, not after the data has loaded.
    from hip.model import make_config

    try:
        make_config(cfg.model.preset, **OmegaConf.to_container(cfg.model.overrides, resolve=True))
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise UserError(f"model: {exc}") from None


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python types (what checkpoints and MLflow store)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> DictConfig:
    """Rebuild a typed config from a plain dict (e.g. one stored in a checkpoint)."""
    schema = OmegaConf.structured(Config)
    return _merge(schema, data, "stored config", schema)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def is_secret(key: str) -> bool:
    """Whether a (dotted) key names a secret: secret, password, token, key, credential."""
    last = key.lower().split(".")[-1]
    return any(word in last for word in SECRET_WORDS)


def flatten(data: Any, prefix: str = "", redact: bool = True) -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; values of secret-looking keys become "***"."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            out[prefix[:-1]] = "{}"
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}.", redact))
        return out
    key = prefix[:-1]
    out[key] = "***" if redact and is_secret(key) and data not in (None, "") else data
    return out
