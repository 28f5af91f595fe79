"""Data stage: real data sets -> WebDataset shards + manifest (local or S3) -> batch loaders."""

from hip.data.loader import loader
from hip.data.shards import read_manifest, shard, verify

__all__ = ["loader", "read_manifest", "shard", "verify"]
