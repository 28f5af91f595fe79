"""Data stage: real data sets -> WebDataset shards + manifest (local or S3) -> batch loaders.

`loader` (torch, WebDataset) is imported on first use (PEP 562): writing shards never loads
torch, so `hip shard --workers N` processes start in a fraction of a second.
"""

from __future__ import annotations

import copyreg
import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from hip.data.manifest import Manifest, ShardInfo, SplitInfo, read_manifest
from hip.data.shards import (
    ShardPlan,
    intact_split,
    merge_shards,
    partitions,
    plan_shards,
    shard,
    verify,
    write_partition,
)

if TYPE_CHECKING:
    from hip.data.loader import loader


def __getattr__(name: str) -> Any:
    """`loader`, imported on first use."""
    if name == "loader":
        from hip.data.loader import loader

        globals()["loader"] = loader
        return loader
    raise AttributeError(f"module 'hip.data' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps `hip.data.loader` the function: importing the submodule would set the module there."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "loader" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def _by_name(module: types.ModuleType) -> tuple[Any, tuple[str]]:
    """Pickle the package by reference, as pickle and cloudpickle do any plain module."""
    return importlib.import_module, (module.__name__,)


copyreg.pickle(_Package, _by_name)  # cloudpickle (Dask) pickles only exact ModuleTypes by name
sys.modules[__name__].__class__ = _Package


__all__ = [
    "Manifest",
    "ShardInfo",
    "ShardPlan",
    "SplitInfo",
    "intact_split",
    "loader",
    "merge_shards",
    "partitions",
    "plan_shards",
    "read_manifest",
    "shard",
    "verify",
    "write_partition",
]
