"""Config: presets, dotlist overrides, errors that name the key, `hip config show`."""

from __future__ import annotations

import pytest
import yaml

import hip.cli
from hip.config import available_configs, flatten, from_dict, is_secret, load_config, to_dict
from hip.errors import UserError


def test_defaults_and_preset_and_overrides():
    cfg = load_config(
        "pretrain", "tiny_mnist", ["optim.lr=1e-3", "run.out=/tmp/x", "optim.betas=[0.9,0.99]"]
    )
    assert cfg.model.preset == "tiny"
    assert cfg.data.source == "mnist5k"
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert list(cfg.optim.betas) == [0.9, 0.99]
    assert cfg.run.out == "/tmp/x"
    assert cfg.mae.mask_ratio == 0.85 and cfg.optim.weight_decay == 0.05
    base = load_config("pretrain")
    assert base.optim.lr is None and base.optim.base_lr == pytest.approx(1.5e-4)
    assert base.run.out == "runs/run"  # interpolation resolved


def test_presets_shipped():
    assert {"tiny_mnist", "hip16_imagenet"} <= set(available_configs("train"))
    assert {"imagenet", "audioset", "voc", "mnist", "fsdd", "isbi"} <= set(
        available_configs("benchmarks")
    )
    for name in available_configs("benchmarks"):
        cfg = load_config("finetune", name)
        assert cfg.task.type in ("classification", "multilabel", "segmentation")
        assert cfg.task.benchmark == name


@pytest.mark.parametrize(
    "override, words",
    [
        (["optim.lrr=1e-3"], ["optim.lrr", "did you mean", "optim.lr"]),
        (["optim.total_steps=abc"], ["optim.total_steps", "Integer"]),
        (["runn.out=/x"], ["runn", "did you mean"]),
        (["model.overrides.dropout_prb=0.1"], ["dropout_prb", "dropout_prob"]),
        (["run.precision=fp8"], ["run.precision", "fp8"]),
        (["optim.lr"], ["key=value"]),
        (["model.preset=tinny"], ["tinny", "tiny"]),
    ],
)
def test_errors_name_the_key(override, words):
    with pytest.raises(UserError) as err:
        load_config("pretrain", "tiny_mnist", override)
    for w in words:
        assert w in str(err.value)


def test_unknown_preset_and_file(tmp_path):
    with pytest.raises(UserError, match="did you mean 'tiny_mnist'"):
        load_config("pretrain", "tiny_mnst")
    with pytest.raises(UserError, match="not found"):
        load_config("pretrain", str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  warmup: 3\n")
    with pytest.raises(UserError, match="optim.warmup.*did you mean 'optim.warmup_steps'"):
        load_config("pretrain", str(bad))


def test_round_trip_and_redaction():
    cfg = load_config("finetune", "mnist", ["tracking.uri=http://u:pw@h:5000"])
    again = from_dict(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)
    flat = flatten(
        {"s3": {"secret_access_key": "abc", "endpoint": "x"}, "api_token": "t", "keep_last": 3}
    )
    assert flat == {
        "s3.secret_access_key": "***",
        "s3.endpoint": "x",
        "api_token": "***",
        "keep_last": 3,
    }
    assert is_secret("aws.credentials") and is_secret("db.password") and not is_secret("run.out")


def test_cli_config_show(capsys):
    assert (
        hip.cli.main(
            [
                "config",
                "show",
                "pretrain",
                "--config",
                "tiny_mnist",
                "run.out=/tmp/x",
                "optim.lr=1e-3",
            ]
        )
        == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["out"] == "/tmp/x" and shown["optim"]["lr"] == 1e-3
    assert hip.cli.main(["config", "show", "finetune", "--benchmark", "voc"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["task"]["type"] == "segmentation"
    assert hip.cli.main(["config", "show", "pretrain", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def _manifest(folder, task="classification", labels=("cat", "dog", "eel"), mask=False):
    """A manifest.json (no shards: the config only reads the manifest) in `folder`."""
    from hip.data.manifest import Manifest

    image = {"shape": [240, 3], "height": 12, "width": 20, "channels": 3}
    targets = {"mask": {"shape": [240], "ignore_index": 255}} if mask else {}
    Manifest(task, list(labels), {"image": image}, targets=targets).write(str(folder))
    return str(folder)


def test_finetune_on_a_manifest_takes_classes_and_the_task_recipe_with_no_preset(tmp_path, capsys):
    data = _manifest(tmp_path / "shards")
    assert hip.cli.main(["config", "show", "finetune", "--data", data]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task"]["type"] == "classification" and cfg["task"]["num_classes"] == 3
    assert cfg["task"]["benchmark"] is None
    assert cfg["data"]["manifest"] == data and cfg["data"]["source"] is None
    # the classification recipe (hip/configs/recipes): the tiny preset's issue-14 recipe
    assert cfg["optim"]["lr"] == pytest.approx(5e-4) and cfg["optim"]["betas"] == [0.9, 0.95]
    assert cfg["optim"]["total_steps"] == 1000 and cfg["model"]["input_norm"] == "dataset"
    assert hip.cli.main(["config", "show", "pretrain", "--data", data]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task"]["type"] == "mae" and cfg["task"]["num_classes"] is None
    assert cfg["tracking"]["experiment"] == "hip-pretrain"


def test_a_task_the_data_has_no_labels_for_is_a_one_line_error_before_any_work(tmp_path, capsys):
    data = _manifest(tmp_path / "cls")
    assert hip.cli.main(["finetune", "--data", data, "--task", "segmentation"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no mask target" in err and "segfolder" in err
    assert hip.cli.main(["finetune", "--data", data, "--task", "multilabel"]) == 2
    assert "use --task classification" in capsys.readouterr().err
    seg = _manifest(tmp_path / "seg", "segmentation", ("bg", "fg"), mask=True)
    assert hip.cli.main(["finetune", "--data", seg, "--task", "classification"]) == 2
    assert "use --task segmentation" in capsys.readouterr().err
    assert hip.cli.main(["finetune", "--data", str(tmp_path / "none")]) == 2
    assert "run `hip shard` first" in capsys.readouterr().err


def test_a_preset_data_source_is_not_shown_beside_the_manifest_that_replaces_it(tmp_path):
    cfg = load_config("finetune", "mnist", [f"data.manifest={tmp_path}"], kind="benchmarks")
    assert cfg.data.manifest == str(tmp_path) and cfg.data.source is None


def test_training_evaluation_is_capped_by_default_and_hip_evaluate_is_not():
    assert load_config("finetune", "mnist").run.eval_batches == 100
    assert load_config("evaluate", "tiny_mnist").run.eval_batches is None
    assert load_config("evaluate", "tiny_mnist", ["run.eval_batches=3"]).run.eval_batches == 3
    help_text = hip.cli.build_parser()._subparsers._group_actions[0].choices["finetune"]
    assert "run.eval_batches" in help_text.format_help()
