"""Data stage: real data sets -> WebDataset shards + manifest (local or S3) -> batch loaders."""

from hip.data.loader import loader
from hip.data.manifest import Manifest, ShardInfo, SplitInfo, read_manifest
from hip.data.shards import intact_split, shard, verify

__all__ = [
    "Manifest",
    "ShardInfo",
    "SplitInfo",
    "intact_split",
    "loader",
    "read_manifest",
    "shard",
    "verify",
]
