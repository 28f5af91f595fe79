"""Model presets as data: the official VARIANTS table in YAML, loaded into a dataclass."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from hip.errors import UserError, unknown_name

# The official model templates this port builds (PerceiverIO is not ported).
TEMPLATES = ("HiP", "HiPClassBottleneck")
# Keys of the golden-fixture JSON that describe the case, not the model.
FIXTURE_KEYS = ("inputs", "num_params", "note")

# Per-block fields of the official VARIANTS format (one entry per block).
PER_BLOCK_FIELDS = (
    "num_groups",
    "num_self_attends_per_block",
    "z_index_dim",
    "num_z_channels",
    "num_cross_attend_heads",
    "num_self_attend_heads",
    "cross_attend_widening_factor",
    "self_attend_widening_factor",
)


@dataclass
class HiPConfig:
    """Everything that defines a HiP architecture; field names follow the official code."""

    num_groups: list[int]
    num_self_attends_per_block: list[int]
    z_index_dim: list[int]
    num_z_channels: list[int]
    num_cross_attend_heads: list[int]
    num_self_attend_heads: list[int]
    cross_attend_widening_factor: list[int]
    self_attend_widening_factor: list[int]
    num_embedding_channels: int
    # The official `model_kwargs` (shared hyperparameters).
    num_position_encoding_channels: int | None = None
    regroup_type: str = "reshape"
    activation_name: str = "sq_relu"
    dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    processor_index_dim_train: int | None = None
    processor_index_dim_eval: int | None = None
    # The official template (`HiP` or `HiPClassBottleneck`) and the bottleneck's label
    # modalities (names the model was not built for are ignored, as the official code does).
    template: str = "HiP"
    label_modalities: list[str] | None = None
    # Ours: how many `position_encoding_linear` projections to build. The official code makes
    # one per modality *slot* of a call (the i-th modality of every call shares projection i);
    # None builds one per (non-label) modality, i.e. all modalities called together.
    position_encoding_slots: int | None = None
    # Ours: a fixed front end per modality name before its embedding (hip/model/frontend.py),
    # e.g. {"audio": "log_spectrum"}; none by default, as the official model.
    front_ends: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_blocks(self) -> int:
        """Number of HiP blocks (encoder + processor + decoder)."""
        return len(self.num_groups)

    @property
    def processor_index(self) -> int:
        """Index of the central processor block."""
        return self.num_blocks // 2

    def processor_latents(self) -> tuple[int, int]:
        """(train, eval) latent counts of the processor; its learned table is sized for eval."""
        default = self.z_index_dim[self.processor_index]
        train = self.processor_index_dim_train or default
        evaluate = self.processor_index_dim_eval or default
        return train, evaluate

    def validate(self) -> HiPConfig:
        """Raise ValueError naming the first inconsistent field."""
        n = self.num_blocks
        for name in PER_BLOCK_FIELDS:
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f"HiP config: {name} has {len(value)} entries, num_groups has {n}")
            if any((not isinstance(v, int)) or v < 1 for v in value):
                raise ValueError(f"HiP config: {name} must hold positive integers, got {value}")
        if n < 3 or n % 2 == 0:
            raise ValueError(f"HiP config: needs an odd number of blocks >= 3, got {n}")
        if self.num_groups[self.processor_index] != 1:
            raise ValueError(
                f"HiP config: the processor block (index {self.processor_index}) must use 1 group, "
                f"got num_groups={self.num_groups}"
            )
        if self.num_groups[0] != self.num_groups[-1]:
            raise ValueError(
                "HiP config: the last block must have as many groups as the first "
                f"(the reconstruction head decodes per input group), got {self.num_groups}"
            )
        for i in range(self.processor_index + 1, n):
            j = n - 1 - i
            if (self.num_groups[i], self.z_index_dim[i]) != (
                self.num_groups[j],
                self.z_index_dim[j],
            ):
                raise ValueError(
                    f"HiP config: decoder block {i} (groups, latents) must mirror encoder block {j}"
                )
        for i, (c, h, hc) in enumerate(
            zip(self.num_z_channels, self.num_self_attend_heads, self.num_cross_attend_heads)
        ):
            if c % h or c % hc:
                raise ValueError(
                    f"HiP config: block {i}: {c} channels not divisible by heads {h}/{hc}"
                )
        if self.regroup_type not in ("reshape", "transpose_reshape"):
            raise ValueError(f"HiP config: unknown regroup_type {self.regroup_type!r}")
        self._validate_processor_latents()
        if self.template not in TEMPLATES:
            raise UserError(unknown_name("HiP template", self.template, TEMPLATES))
        if self.template == "HiP" and self.label_modalities:
            raise UserError(
                "HiP config: label_modalities belongs to template 'HiPClassBottleneck' "
                "(the plain HiP sends every modality through the encoder)"
            )
        if self.position_encoding_slots is not None and self.position_encoding_slots < 1:
            raise UserError(
                f"HiP config: position_encoding_slots must be >= 1, got {self.position_encoding_slots}"
            )
        from hip.model.frontend import check_front_ends

        check_front_ends(self.front_ends)
        return self

    def _validate_processor_latents(self) -> None:
        """The official rules for processor_index_dim_train/eval, plus the decoder's regroup."""
        t, e = self.processor_index_dim_train, self.processor_index_dim_eval
        if t is not None and e is not None:
            raise UserError(
                "HiP config: set only one of processor_index_dim_train (subsample at train "
                "time) and processor_index_dim_eval (more latents at eval time)"
            )
        for name, v in (("processor_index_dim_train", t), ("processor_index_dim_eval", e)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"HiP config: {name} must be a positive integer, got {v!r}")
        train, evaluate = self.processor_latents()
        if train > evaluate:
            raise UserError(
                f"HiP config: the processor's train-time latents ({train}) exceed its eval-time "
                f"latents ({evaluate}); processor_index_dim_train must be <= z_index_dim"
            )
        nxt = self.num_groups[self.processor_index + 1]
        for what, n in (("train", train), ("eval", evaluate)):
            if n % nxt:
                raise UserError(
                    f"HiP config: the processor's {what}-time latents ({n}) cannot be regrouped "
                    f"into the next block's {nxt} groups"
                )


def available_presets() -> list[str]:
    """Names of the presets shipped in hip/configs/model."""
    folder = resources.files("hip") / "configs" / "model"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's fields as a plain dict (YAML shipped as package data)."""
    names = available_presets()
    if name not in names:
        raise ValueError(unknown_name("model preset", name, names))
    text = (resources.files("hip") / "configs" / "model" / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def make_config(preset: str | Mapping[str, Any], **overrides: Any) -> HiPConfig:
    """Build a validated HiPConfig from a preset name or an official-format dict plus overrides.

    A dict may be flat (VARIANTS keys and model kwargs together) or shaped like the golden
    fixture, `{"variant": {...}, "model_kwargs": {...}}`.
    """
    fields_ = dict(load_preset(preset)) if isinstance(preset, str) else dict(preset)
    if "variant" in fields_ and isinstance(fields_["variant"], Mapping):
        nested = fields_
        fields_ = {**nested["variant"], **(nested.get("model_kwargs") or {})}
        fields_.update(
            {k: v for k, v in nested.items() if k not in ("variant", "model_kwargs") + FIXTURE_KEYS}
        )
    fields_.update(overrides)
    known = {f.name for f in dataclasses.fields(HiPConfig)} - {"extra"}
    unknown = sorted(set(fields_) - known)
    if unknown:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        detail = ", ".join(
            f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items()
        )
        raise ValueError(f"unknown HiP config field(s): {detail}")
    missing = sorted(f for f in PER_BLOCK_FIELDS + ("num_embedding_channels",) if f not in fields_)
    if missing:
        raise ValueError(f"HiP config is missing field(s): {', '.join(missing)}")
    for name in PER_BLOCK_FIELDS:
        fields_[name] = [int(v) for v in fields_[name]]
    if fields_.get("label_modalities") is not None:
        fields_["label_modalities"] = [str(v) for v in fields_["label_modalities"]]
    return HiPConfig(**fields_).validate()
