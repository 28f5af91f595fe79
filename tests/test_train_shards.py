"""Integration: shard real mnist5k digits with hip.data, pretrain and finetune from the shards."""

from __future__ import annotations

import mlflow
import pytest

from hip import checkpoint as ckpt
from hip.config import load_config
from hip.errors import UserError
from hip.train import trainer

hd = pytest.importorskip("hip.data")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    hd.shard("mnist5k", None, out, "train", limit=20, max_count=64)  # 200 digits, 4 shards
    hd.shard("mnist5k", None, out, "test", limit=5, max_count=64)  # 50 digits
    return out


def test_pretrain_then_finetune_from_shards(tmp_path, shards):
    root = tmp_path / "runs"
    common = [
        "data.batch_size=8",
        "run.eval_batches=2",
        "run.progress=false",
        f"data.manifest={shards}",
    ]
    pre = trainer.train(
        load_config(
            "pretrain", "tiny_mnist", [f"run.out={root / 'pre'}", "optim.total_steps=3", *common]
        )
    )
    assert pre.step == 3 and pre.eval_metrics["num_samples"] == 16
    meta = ckpt.load(pre.checkpoint)["model_meta"]
    assert meta["modalities"] == {"image": [784, 1]}
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(pre.run_id)
    ds = run.inputs.dataset_inputs[0]
    assert ds.dataset.name == "mnist5k" and str(shards) in ds.dataset.source
    assert '"num_rows": 6' in ds.dataset.profile  # one modality row + 4 train and 1 test shard rows
    assert {t.key: t.value for t in ds.tags}["fingerprint"] == meta["data_fingerprint"]
    ft = trainer.train(
        load_config(
            "finetune",
            "mnist",
            [
                f"run.out={root / 'ft'}",
                "optim.total_steps=2",
                f"task.pretrained={pre.checkpoint}",
                *common,
            ],
        )
    )
    assert ft.step == 2 and 0.0 <= ft.eval_metrics["top1"] <= 1.0
    assert client.get_run(ft.run_id).data.tags["hip.data_fingerprint"] == meta["data_fingerprint"]


def test_missing_eval_split_stops_before_training_and_null_skips_the_evaluation(tmp_path, capsys):
    only_train = tmp_path / "shards"
    hd.shard("mnist5k", None, only_train, "train", limit=4, max_count=64)
    common = [
        f"data.manifest={only_train}",
        "data.batch_size=8",
        "optim.total_steps=2",
        "run.progress=false",
        "tracking.enabled=false",
        f"run.out={tmp_path / 'run'}",
    ]
    with pytest.raises(UserError, match="has no split 'test'") as err:
        trainer.train(load_config("pretrain", "tiny_mnist", common))
    assert "data.eval_split=null" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any step
    res = trainer.train(load_config("pretrain", "tiny_mnist", [*common, "data.eval_split=null"]))
    assert res.step == 2 and res.checkpoint and res.eval_metrics == {}
