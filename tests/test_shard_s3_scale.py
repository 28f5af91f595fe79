"""S3 at scale (issue 17): a failed multipart upload leaves no upload behind; listing-based
resume pages past 1,000 objects; partitions write their shards to S3 in parallel."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

import hip.data as hd
from hip import storage
from tests.test_data_s3 import keys_in
from tests.test_data_shards import make_imagefolder


def test_a_failed_multipart_upload_is_aborted(s3env, monkeypatch):
    bucket = s3env.make_bucket()
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    data = np.random.default_rng(0).integers(0, 255, 16 * 1024 * 1024, dtype=np.uint8).tobytes()
    client = storage.s3_client()
    parts = []

    def fail_third_part(params, **kwargs):
        parts.append(params.get("PartNumber"))
        if params.get("PartNumber") == 3:
            raise ConnectionError("simulated network failure on part 3")

    client.meta.events.register("before-parameter-build.s3.UploadPart", fail_third_part)
    try:
        with pytest.raises(ConnectionError):
            storage.write_bytes(f"s3://{bucket}/big.tar", data)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.UploadPart", fail_third_part)
    assert 3 in parts  # it was multipart, and failed part-way
    # boto3's transfer manager aborted the multipart upload: no parts left billed, no object
    assert s3env.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert keys_in(s3env, bucket) == []
    storage.write_bytes(f"s3://{bucket}/big.tar", data)  # and a retry goes through
    assert storage.size(f"s3://{bucket}/big.tar") == len(data)


def test_listing_pages_past_1000_objects(s3env):
    bucket = s3env.make_bucket()
    prefix = f"s3://{bucket}/many"
    names = [f"train-{i:06d}.tar" for i in range(1100)] + ["_progress-train-000000-000001.json"]
    client = s3env.client()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(
            pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"many/{n}", Body=b"x"), names)
        )
    assert storage.list_names(prefix) == sorted(names)  # 1,101 names: two pages of list_objects_v2
    assert hd.shards._progress_names(prefix, "train", None) == [names[-1]]


@pytest.mark.slow
def test_two_worker_processes_shard_to_s3_like_one(s3env, tmp_path):
    bucket = s3env.make_bucket()
    src = make_imagefolder(tmp_path / "src", classes=3, per_class=8)
    one = hd.shard("imagefolder", src, f"s3://{bucket}/one", max_count=4)
    two = hd.shard("imagefolder", src, f"s3://{bucket}/two", max_count=4, workers=2)
    shards = lambda m: [(s.name, s.count, s.bytes, s.sha256) for s in m.splits["train"].shards]  # noqa: E731
    assert shards(two) == shards(one) and len(shards(one)) == 6
    assert hd.verify(f"s3://{bucket}/two") == []
    assert [k for k in keys_in(s3env, bucket) if k.startswith("two/")] == ["two/manifest.json"] + [
        f"two/{s[0]}" for s in shards(one)
    ]  # no temporary keys, no progress files left
