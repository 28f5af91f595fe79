"""Data stage: real data sets -> WebDataset shards + manifest (local or S3) -> batch loaders."""

from hip.data.loader import loader
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
