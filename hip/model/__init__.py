"""The HiP model: architecture, presets, MAE, task heads and the Haiku weight converter."""

from hip.model.class_bottleneck import HiPClassBottleneck
from hip.model.heads import (
    HiPClassifier,
    HiPSegmenter,
    LoadSummary,
    create_task_model,
    load_pretrained,
    summarize_load,
)
from hip.model.hip import HiP, create_model
from hip.model.mae import MAE, MAEConfig, MAEOutput
from hip.model.presets import HiPConfig, available_presets, make_config

__all__ = [
    "MAE",
    "HiP",
    "HiPClassBottleneck",
    "HiPClassifier",
    "HiPConfig",
    "HiPSegmenter",
    "LoadSummary",
    "MAEConfig",
    "MAEOutput",
    "available_presets",
    "create_model",
    "create_task_model",
    "load_pretrained",
    "make_config",
    "summarize_load",
]
