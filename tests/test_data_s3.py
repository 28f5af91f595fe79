"""Shards on a real S3 server (SeaweedFS started by the tests): write, verify, stream, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from hip import storage
from hip.cli import main
from hip.data import loader, read_manifest, shard, verify
from hip.errors import UserError

pytestmark = pytest.mark.slow  # starts a server (~3 s)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(3)
    for c in range(2):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(
                tmp_path / "src" / f"c{c}" / f"{i}.png"
            )
    return tmp_path / "src"


def keys_in(s3, bucket):
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def test_shard_verify_and_stream_from_s3(s3env, folder, tmp_path, capsys):
    bucket = s3env.make_bucket()
    uri = f"s3://{bucket}/mnist/v1"
    m = shard("imagefolder", folder, uri, "train", max_count=3)
    assert keys_in(s3env, bucket) == ["mnist/v1/manifest.json"] + [
        f"mnist/v1/train-00000{i}.tar" for i in range(4)
    ]
    local = shard("imagefolder", folder, tmp_path / "local", "train", max_count=3)
    assert [s.sha256 for s in m.splits["train"].shards] == [
        s.sha256 for s in local.splits["train"].shards
    ]
    assert verify(uri) == []
    assert main(["shard", "verify", uri]) == 0
    # the loader streams shards through boto3; same samples as the local copy
    got = sorted(k for b in loader(uri, "train", 4, train=False, num_workers=2) for k in b["key"])
    want = sorted(k for b in loader(tmp_path / "local", "train", 4, train=False) for k in b["key"])
    assert got == want and len(got) == 10
    batches = list(loader(read_manifest(uri), "train", 2, train=True, batches_per_epoch=3))
    assert len(batches) == 3 and batches[0]["inputs"]["image"].shape == (2, 36, 1)
    # plain WebDataset can read s3:// too: the boto3 opener is registered with wds.gopen
    ds = wds.WebDataset(f"{uri}/train-000000.tar", shardshuffle=False)
    assert [s["__key__"] for s in ds] == [
        k for b in loader(tmp_path / "local", "train", 3, train=False) for k in b["key"]
    ][:3]
    # rerun: nothing rewritten, nothing left behind
    shard("imagefolder", folder, uri, "train", max_count=3)
    assert len(keys_in(s3env, bucket)) == 5
    # corrupt one object: verify names it, the CLI exits 1
    s3env.client().put_object(Bucket=bucket, Key="mnist/v1/train-000002.tar", Body=b"garbage")
    capsys.readouterr()
    assert main(["shard", "verify", uri]) == 1
    out = capsys.readouterr().out
    assert "train-000002.tar" in out and "train-000001.tar" not in out


def test_multipart_upload_is_atomic(s3env, monkeypatch):
    bucket = s3env.make_bucket()
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    data = np.random.default_rng(0).integers(0, 255, 11 * 1024 * 1024, dtype=np.uint8).tobytes()
    storage.write_bytes(f"s3://{bucket}/big.bin", data)
    head = s3env.client().head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert keys_in(s3env, bucket) == ["big.bin"]  # the temporary key is gone
    assert (
        hashlib.sha256(storage.read_bytes(f"s3://{bucket}/big.bin")).digest()
        == hashlib.sha256(data).digest()
    )


def test_wrong_credentials_and_missing_bucket(s3env, folder, monkeypatch, capsys):
    bucket = s3env.make_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(UserError) as err:
        shard("imagefolder", folder, f"s3://{bucket}/x")
    msg = str(err.value)
    assert s3env.endpoint in msg and bucket in msg and "credentials" in msg
    assert "definitely-wrong-secret" not in msg and s3env.secret_key not in msg
    assert main(["shard", "verify", f"s3://{bucket}/x"]) == 2
    assert "credentials" in capsys.readouterr().err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3env.secret_key)
    with pytest.raises(UserError, match="does not exist"):
        shard("imagefolder", folder, "s3://no-such-bucket-hip/x")
    with pytest.raises(UserError, match="no manifest"):
        read_manifest(f"s3://{bucket}/empty")
