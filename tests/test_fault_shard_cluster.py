"""Faults while sharding in parallel (issue 17): a Dask worker SIGKILLed mid-partition, a
partition of unreadable inputs on the cluster, the S3 server restarted during the parallel
uploads. Real parts: a `distributed.LocalCluster` of 2 worker processes (what the flow's
DaskTaskRunner starts), real MNIST PNGs from ../shared/data, SeaweedFS from tests/s3server.py.
The reference is always the single-process `hip shard` of the same inputs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import hip.data as hd
from hip.errors import UserError
from tests.test_data_s3 import keys_in
from tests.test_shard_partitions import (
    files_of,
    folder_with_an_unreadable_class,
    manifest_json,
    shards_of,
)

# 1,200 real digits upscaled to 112x112 (so a shard takes a moment to encode) in 12 shards
OPTS = {"limit": 120, "max_count": 100, "resize": 112}


@pytest.fixture(scope="module")
def client():
    """A Dask client on a 2-process LocalCluster (nannies restart killed workers)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def mnist(shared_data) -> Path:
    return shared_data / "mnist_png_subset" / "train"


@pytest.fixture(scope="module")
def reference(mnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    hd.shard("imagefolder", mnist, out, **OPTS)
    return out


def _wait(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def test_a_dask_worker_sigkilled_mid_partition_is_resumed_to_the_reference(
    client, mnist, reference, tmp_path
):
    out = tmp_path / "out"
    plan = hd.plan_shards("imagefolder", mnist, out, **OPTS)
    parts = hd.partitions(plan.num_shards, 2)
    assert parts == [list(range(6)), list(range(6, 12))]
    futures = [client.submit(hd.write_partition, plan, p, pure=False) for p in parts]
    # Once partition 2 has written its second shard, SIGKILL the worker running it.
    _wait(lambda: (out / "train-000007.tar").exists(), 120, "train-000007.tar")
    victim = next(w for w, keys in client.processing().items() if futures[1].key in keys)
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    progress = out / "_progress-train-000006-000012.json"
    recorded = hd.shards._records_in(str(progress), plan.fingerprint, plan.per_shard, None)
    assert 1 <= len(recorded) < 6, recorded.keys()  # killed mid-partition
    print(f"worker {pid} killed after shards {sorted(recorded)} of partition 6..11 were recorded")
    kept = {i: (out / hd.shards.shard_name("train", i)).stat().st_mtime_ns for i in recorded}

    # Dask reschedules the lost task; the new attempt resumes from the progress file.
    records = [r for f in futures for r in f.result(timeout=180)]
    assert pid not in client.run(os.getpid).values()
    for i, mtime in kept.items():  # the shards finished before the kill were kept, not redone
        assert (out / hd.shards.shard_name("train", i)).stat().st_mtime_ns == mtime
    manifest = hd.merge_shards(plan, records)
    assert shards_of(manifest) == shards_of(hd.read_manifest(reference))
    assert manifest_json(out) == manifest_json(reference)
    assert files_of(out) == files_of(reference)  # no progress or temp file left
    assert hd.verify(out) == []


def test_a_partition_of_unreadable_inputs_on_the_cluster_is_reported(client, tmp_path):
    # the middle partition's PNGs are cut after their signature
    src = folder_with_an_unreadable_class(tmp_path, b"\x89PNG\r\n\x1a\n but cut here")
    ref = hd.shard("imagefolder", src, tmp_path / "ref", max_count=4, seed=None)
    plan = hd.plan_shards("imagefolder", src, tmp_path / "out", max_count=4, seed=None)
    parts = hd.partitions(plan.num_shards, 3)
    futures = [client.submit(hd.write_partition, plan, p, pure=False) for p in parts]
    records = [f.result(timeout=120) for f in futures]
    assert [r["name"] for r in records[1]] == [None]  # nothing readable: no file, no error
    manifest = hd.merge_shards(plan, [r for part in records for r in part])
    info = manifest.splits["train"]
    assert [s.name for s in info.shards] == ["train-000000.tar", "train-000002.tar"]
    assert sorted(Path(s["input"]).name for s in info.skipped) == [f"{i}.png" for i in range(4)]
    assert all("c1" in s["input"] and s["reason"] for s in info.skipped)
    assert shards_of(manifest) == shards_of(ref)
    assert manifest_json(tmp_path / "out") == manifest_json(tmp_path / "ref")


def test_s3_restarted_during_parallel_uploads_completes_like_one_process(s3env, mnist, tmp_path):
    bucket = s3env.make_bucket()
    opts = {"limit": 100, "max_count": 50}  # 1,000 digits, 20 shards, 2 worker processes
    ref = hd.shard("imagefolder", mnist, tmp_path / "ref", **opts)  # shards are the same on S3
    uri = f"s3://{bucket}/two"
    killed: dict[str, float] = {}

    def restart_when_uploading() -> None:
        client = s3env.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # partition 0..9 has finished 3 shards
            listed = client.list_objects_v2(Bucket=bucket, Prefix="two/train-000002.tar")
            if any(o["Key"] == "two/train-000002.tar" for o in listed.get("Contents", [])):
                break
            time.sleep(0.01)
        s3env.kill()
        killed["at"] = time.monotonic()
        time.sleep(1.0)
        s3env.start()
        killed["back"] = time.monotonic()

    watcher = threading.Thread(target=restart_when_uploading)
    watcher.start()
    try:
        attempts = 1
        try:
            two = hd.shard("imagefolder", mnist, uri, workers=2, **opts)
        except UserError as exc:  # retries ran out while it was down: the re-run resumes
            assert "S3" in str(exc)
            watcher.join()
            logs: list[str] = []
            attempts, two = (
                2,
                hd.shard("imagefolder", mnist, uri, workers=2, log=logs.append, **opts),
            )
            assert any("resuming after" in line for line in logs), logs  # not from scratch
    finally:
        watcher.join()
    print(f"S3 down {killed['back'] - killed['at']:.1f} s; sharding attempts: {attempts}")
    assert shards_of(two) == shards_of(ref) and len(shards_of(ref)) == 20
    assert hd.verify(uri) == []
    left = [k for k in keys_in(s3env, bucket) if k.startswith("two/")]
    assert left == ["two/manifest.json"] + [f"two/{s[0]}" for s in shards_of(ref)]
