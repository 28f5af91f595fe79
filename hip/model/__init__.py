"""The HiP model: architecture, presets, MAE, task heads and the Haiku weight converter."""

from hip.model.hip import HiP, create_model
from hip.model.presets import HiPConfig, available_presets, make_config

__all__ = ["HiP", "HiPConfig", "available_presets", "create_model", "make_config"]
