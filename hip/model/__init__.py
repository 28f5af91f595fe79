"""The HiP model: architecture, presets, MAE, task heads and the Haiku weight converter.

The names below are imported on first use (PEP 562), so `hip.model.modalities` (numpy only)
can be imported without torch: the sharder's worker processes never load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "HiPClassBottleneck": "hip.model.class_bottleneck",
    "HiPClassifier": "hip.model.heads",
    "HiPSegmenter": "hip.model.heads",
    "LoadSummary": "hip.model.heads",
    "create_task_model": "hip.model.heads",
    "summarize_load": "hip.model.heads",
    "load_pretrained": "hip.model.heads",
    "HiP": "hip.model.hip",
    "create_model": "hip.model.hip",
    "MAE": "hip.model.mae",
    "MAEConfig": "hip.model.mae",
    "MAEOutput": "hip.model.mae",
    "HiPConfig": "hip.model.presets",
    "available_presets": "hip.model.presets",
    "make_config": "hip.model.presets",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'hip.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


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
