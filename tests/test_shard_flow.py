"""The flow's shard stage on Dask (issue 17): one Prefect task per partition on a 2-worker
LocalCluster (prefect-dask's DaskTaskRunner) gives the single-process `hip shard` output."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import hip.data as hd  # noqa: E402
from tests.test_flows import harness  # noqa: E402, F401 - the real temporary Prefect API
from tests.test_shard_partitions import files_of, manifest_json  # noqa: E402

pytestmark = pytest.mark.slow

OPTIONS = {"limit": 20, "max_count": 25}  # 200 real MNIST digits -> 8 shards, 4 partitions


def _pipeline(work: str, **changes: object):
    from flows.config import pipeline_from_dict

    ds = {"name": "digits", "source": "mnist5k", "splits": ["train"], "options": OPTIONS}
    return pipeline_from_dict(
        {
            "work_dir": work,
            "datasets": [ds],
            "pretrain_dataset": "digits",
            "benchmarks": [{"name": "mnist", "dataset": "digits"}],
            **changes,
        }
    )


def _task_runs(like: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=like))
        )


def test_shard_flow_on_a_two_worker_local_cluster_equals_one_process(harness, tmp_path):  # noqa: F811
    from flows.hip_flow import shard_flow

    ref = tmp_path / "ref"
    hd.shard("mnist5k", None, ref, "train", **OPTIONS)
    p = _pipeline(str(tmp_path / "work"), shard_cluster=None, shard_workers=2)
    result = shard_flow(p)
    out = tmp_path / "work" / "shards" / "digits"
    assert result["digits/train"]["samples"] == 200 and result["digits/train"]["shards"] == 8
    assert manifest_json(out) == manifest_json(ref)
    assert files_of(out) == files_of(ref)  # the shards byte for byte, no progress file left
    parts = [r for r in _task_runs("shard-partition") if r.state and r.state.is_completed()]
    assert len(parts) == 4  # 2 partitions per worker, each its own task run
    assert len([r for r in _task_runs("shard-merge") if r.state.is_completed()]) == 1

    # The same inputs again: the cached `shard` task answers, no cluster starts, nothing is written.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert shard_flow(p) == result
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert any(r.state and r.state.name == "Cached" for r in _task_runs("shard-"))
    assert len(_task_runs("shard-partition")) == 4
