"""Shard writer: determinism, resume, atomicity, size limits, safe tar reading, `hip shard verify`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hip
from hip import storage
from hip.cli import main
from hip.data import loader, read_manifest, shard, verify
from hip.data import shards as shards_mod
from hip.data.shards import UnsafeTarMember, build_tar, iter_tar_samples


def make_imagefolder(root: Path, classes: int = 3, per_class: int = 5, size: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
                d / f"img {i}.v1.png"
            )
    return root


@pytest.fixture
def folder(tmp_path):
    return make_imagefolder(tmp_path / "src")


def test_manifest_contents_and_names(folder, tmp_path):
    m = shard("imagefolder", folder, tmp_path / "o", "train", max_count=4)
    names = [s.name for s in m.splits["train"].shards]
    assert names == [f"train-{i:06d}.tar" for i in range(4)]
    on_disk = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert on_disk["tool_version"] == hip.__version__ and on_disk["created"]
    assert on_disk["splits"]["train"]["source"]["type"] == "imagefolder"
    for s in on_disk["splits"]["train"]["shards"]:
        data = (tmp_path / "o" / s["name"]).read_bytes()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
    # keys are sanitized: no dots or spaces reach the tar member names
    with tarfile.open(tmp_path / "o" / names[0]) as tar:
        members = tar.getnames()
        assert all(mem.count(".") in (1, 2) and " " not in mem for mem in members)
        assert {tar.getmember(n).mtime for n in members} == {0}
    assert not list((tmp_path / "o").glob("*.tmp")) and not list(
        (tmp_path / "o").glob("_progress*")
    )


def test_deterministic_bytes_and_seeded_order(folder, tmp_path):
    a = shard("imagefolder", folder, tmp_path / "a", max_count=6, seed=None)  # sorted order
    b = shard("imagefolder", folder, tmp_path / "b", max_count=6, seed=None)
    sha = lambda m: [s.sha256 for s in m.splits["train"].shards]  # noqa: E731
    assert sha(a) == sha(b)
    c = shard("imagefolder", folder, tmp_path / "c", max_count=6, seed=3)
    d = shard("imagefolder", folder, tmp_path / "d", max_count=6, seed=3)
    e = shard("imagefolder", folder, tmp_path / "e", max_count=6, seed=4)
    assert sha(c) == sha(d) != sha(a) and sha(c) != sha(e)

    def keys(out):
        return [b["key"] for b in loader(out, "train", 15, train=False)][0]

    assert keys(tmp_path / "a") == sorted(keys(tmp_path / "a"), key=lambda k: (k.split("_")[0], k))
    assert sorted(keys(tmp_path / "c")) == sorted(keys(tmp_path / "a")) != keys(tmp_path / "c")
    # The default is a seeded shuffle (seed 0): deterministic, and classes are mixed.
    f = shard("imagefolder", folder, tmp_path / "f", max_count=6)
    g = shard("imagefolder", folder, tmp_path / "g", max_count=6, seed=0)
    assert sha(f) == sha(g) != sha(a)


def test_max_bytes_splits_shards(folder, tmp_path):
    m = shard("imagefolder", folder, tmp_path / "o", max_bytes=4000)
    shards = m.splits["train"].shards
    assert len(shards) > 3 and sum(s.count for s in shards) == 15
    assert all(s.bytes <= 10240 for s in shards)  # 1 record of tar padding at most


def test_rerun_is_a_noop_and_resume_after_crash(folder, tmp_path, monkeypatch):
    out = tmp_path / "o"
    writes: list[str] = []
    real_write = storage.write_bytes

    def spy(uri, data, config=None):
        writes.append(Path(uri).name)
        if Path(uri).name == "manifest.json" and crash["on"]:
            raise KeyboardInterrupt("simulated crash before the manifest")
        return real_write(uri, data, config)

    crash = {"on": True}
    monkeypatch.setattr(storage, "write_bytes", spy)
    with pytest.raises(KeyboardInterrupt):
        shard("imagefolder", folder, out, max_count=4)
    assert not (out / "manifest.json").exists()  # no manifest: nothing is readable yet
    assert list(out.glob("_progress-train-*.json"))
    # damage the third shard: the rerun keeps the others and rewrites the third alone
    third = out / "train-000002.tar"
    third.write_bytes(third.read_bytes()[:1000])
    crash["on"] = False
    writes.clear()
    m = shard("imagefolder", folder, out, max_count=4)
    assert [w for w in writes if w.endswith(".tar")] == ["train-000002.tar"]
    assert verify(out) == [] and m.splits["train"].num_samples == 15
    fresh = shard("imagefolder", folder, tmp_path / "fresh", max_count=4)
    assert [s.sha256 for s in m.splits["train"].shards] == [
        s.sha256 for s in fresh.splits["train"].shards
    ]
    writes.clear()
    shard("imagefolder", folder, out, max_count=4)
    assert writes == []  # everything verifies: nothing rewritten


def test_verify_cli_reports_the_bad_shard(folder, tmp_path, capsys):
    out = tmp_path / "o"
    assert (
        main(
            [
                "shard",
                "--source",
                "imagefolder",
                "--input",
                str(folder),
                "--output",
                str(out),
                "--max-count",
                "5",
                "-q",
            ]
        )
        == 0
    )
    assert "15 samples, 3 shard(s)" in capsys.readouterr().out
    assert main(["shard", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = out / "train-000001.tar"
    data = bytearray(bad.read_bytes())
    data[700] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["shard", "verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "train-000001.tar" in printed and "train-000000.tar" not in printed
    assert main(["shard", "verify", str(tmp_path / "nothing")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert (
        main(
            [
                "shard",
                "--source",
                "imagefolder",
                "--input",
                str(tmp_path / "no"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err
    assert main(["shard", "--source", "imagefolder", "--output", str(tmp_path / "o")]) == 2
    assert "--input" in capsys.readouterr().err


def test_truncated_shard_warned_in_training_and_caught_by_verify(folder, tmp_path):
    out = tmp_path / "o"
    shard("imagefolder", folder, out, max_count=5)
    victim = out / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[:2600])  # cut in the middle of a member
    with pytest.warns(UserWarning, match="train-000001.tar"):
        batches = list(loader(out, "train", 4, train=True, batches_per_epoch=6, shuffle_buffer=4))
    assert len(batches) == 6 and all(b["inputs"]["image"].shape == (4, 64, 1) for b in batches)
    with pytest.raises(Exception, match="train-000001.tar"):
        list(loader(out, "train", 4, train=False))
    assert [p.split(":")[0] for p in verify(out)] == ["train-000001.tar"]


def malicious_tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member, data in [("ok.cls", b"1"), (name, b"pwned")]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("name", ["/etc/evil.cls", "../evil.cls", "a/../../evil.cls"])
def test_unsafe_tar_members_rejected(name, tmp_path):
    with pytest.raises(UnsafeTarMember):
        list(iter_tar_samples(io.BytesIO(malicious_tar(name)), "x.tar"))
    with pytest.raises(UnsafeTarMember):
        build_tar([(name, b"x")])
    # a symlink member is refused too
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("k.cls")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeTarMember, match="link"):
        list(iter_tar_samples(io.BytesIO(buf.getvalue()), "x.tar"))


def test_loader_refuses_a_malicious_shard(folder, tmp_path):
    out = tmp_path / "o"
    shard("imagefolder", folder, out, max_count=15)
    tar_path = out / "train-000000.tar"
    tar_path.write_bytes(malicious_tar("../../escape.cls"))
    with pytest.raises(UnsafeTarMember):
        list(loader(out, "train", 4, train=False))
    assert not (tmp_path / "escape.cls").exists()


def test_read_manifest_rejects_foreign_json(tmp_path):
    (tmp_path / "manifest.json").write_text('{"hello": 1}')
    with pytest.raises(hip.errors.UserError, match="not a hip-shards"):
        read_manifest(tmp_path)
    assert shards_mod.shard_name("val", 12) == "val-000012.tar"


def test_atomic_writes_leave_no_temp_and_take_the_umask_mode(tmp_path):
    target = storage.atomic_write_text(tmp_path / "sub" / "manifest.json", "{}")
    assert target.read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
