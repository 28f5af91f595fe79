"""Data stage: real data sets -> WebDataset shards + manifest (local or S3) -> batch loaders."""

from hip.data.loader import loader
from hip.data.shards import intact_split, read_manifest, shard, verify

__all__ = ["intact_split", "loader", "read_manifest", "shard", "verify"]
