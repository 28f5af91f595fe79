"""Issue 14's knobs: input normalisation in the model (and its checkpoint), the position-table
lr multiplier, and the coordinate init of the position tables."""

from __future__ import annotations

import pytest
import torch

from hip import checkpoint as ckpt
from hip.config import load_config
from hip.data.dataset import builtin_dataset
from hip.errors import UserError
from hip.model import MAE, create_model, create_task_model, load_pretrained
from hip.model.normalize import InputNorm, fit_input_norm
from hip.model.positions import coordinate_table
from hip.train import trainer
from hip.train.optim import param_groups

QUIET = ["tracking.enabled=false", "run.progress=false"]


def test_input_norm_is_the_identity_by_default_and_standardises_when_set():
    norm = InputNorm({"image": (4, 2)})
    x = torch.rand(3, 4, 2) * 5 + 2
    assert torch.equal(norm({"image": x})["image"], x)
    norm.set_mode("image", "dataset", torch.tensor([2.0, 3.0]), torch.tensor([0.5, 4.0]))
    want = (x - torch.tensor([2.0, 3.0])) / torch.tensor([0.5, 4.0])
    torch.testing.assert_close(norm({"image": x})["image"], want)
    norm.set_mode("image", "sample")
    y = norm({"image": x})["image"]
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=1, unbiased=False), torch.ones(3, 2), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="choose one of"):
        norm.set_mode("image", "minmax")


def test_the_normalisation_travels_in_the_state_dict_and_old_state_dicts_load_as_identity():
    model = create_model("tiny", {"image": (64, 1)})
    fit_input_norm(model, "dataset", [{"image": torch.rand(8, 64, 1) * 0.2 + 0.1}])
    mean = model.input_norm.image_mean.clone()
    assert model.input_norm.modes() == {"image": "dataset"} and 0.1 < float(mean) < 0.3
    fresh = create_model("tiny", {"image": (64, 1)})
    fresh.load_state_dict(model.state_dict())
    assert fresh.input_norm.modes() == {"image": "dataset"}
    assert torch.equal(fresh.input_norm.image_mean, mean)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("input_norm.")}
    again = create_model("tiny", {"image": (64, 1)})
    again.load_state_dict(old)  # strict: a checkpoint from before InputNorm still loads
    assert again.input_norm.modes() == {"image": "none"}


def test_mae_learns_normalised_values_and_reconstructs_on_the_raw_scale():
    torch.manual_seed(0)
    model = create_model("tiny", {"image": (64, 1)})
    x = torch.rand(4, 64, 1) * 0.1 + 0.5
    fit_input_norm(model, "dataset", [{"image": x}])
    mae = MAE(model)
    out = mae.reconstruct({"image": x}, generator=torch.Generator().manual_seed(0))["image"]
    visible = ~out["masked"]
    assert torch.equal(out["composite"][visible], x[visible])
    # The untrained (zero-unembed) model predicts 0 in normalised units: the data's mean.
    torch.testing.assert_close(
        out["prediction"], model.input_norm.image_mean.expand_as(x), atol=1e-6, rtol=0
    )
    # The loss compares normalised values: the zero prediction scores the variance, ~1.
    loss = float(mae({"image": x}, generator=torch.Generator().manual_seed(0)).loss.detach())
    assert 0.5 < loss < 1.5


def test_finetuning_inherits_the_pretrained_normalisation():
    mae = MAE(create_model("tiny", {"image": (64, 1)}))
    fit_input_norm(mae, "dataset", [{"image": torch.rand(8, 64, 1) * 3}])
    clf = create_task_model("classification", "tiny", {"image": (64, 1)}, 10)
    load_pretrained(clf, mae.state_dict())
    assert clf.backbone.input_norm.modes() == {"image": "dataset"}
    assert torch.equal(clf.backbone.input_norm.image_std, mae.model.input_norm.image_std)
    # A checkpoint from before InputNorm: its encoder saw raw inputs, so the finetune does too.
    old = {k: v for k, v in mae.state_dict().items() if ".input_norm." not in k}
    fit_input_norm(clf, "dataset", [{"image": torch.rand(8, 64, 1)}])
    load_pretrained(clf, old)
    assert clf.backbone.input_norm.modes() == {"image": "none"}


def test_position_tables_get_their_own_lr_group_only_when_asked():
    model = create_task_model("classification", "tiny", {"image": (64, 1)}, 10)
    assert len(param_groups(model, 0.05)) == 2
    groups = param_groups(model, 0.05, lr=1e-3, position_lr_mult=30.0)
    assert len(groups) == 3 and groups[2]["lr"] == pytest.approx(3e-2)
    assert groups[2]["params"] == [model.backbone.pos["image"]]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_coordinate_table_is_smooth_and_unit_scaled():
    table = coordinate_table(784, 16)
    assert table.shape == (784, 16)
    torch.testing.assert_close(table.std(0), torch.ones(16), atol=1e-3, rtol=0)
    # Neighbouring pixels are more alike than distant ones.
    img = table.reshape(28, 28, 16)
    near = (img[:, 1:] - img[:, :-1]).pow(2).mean()
    pairs = torch.randperm(784, generator=torch.Generator().manual_seed(0))
    far = (table - table[pairs]).pow(2).mean()
    assert near < 0.1 * far
    assert coordinate_table(100, 16, shape=(100,)).shape == (100, 16)


def test_trainer_fits_the_normalisation_stores_it_and_the_checkpoint_rebuilds_it(tmp_path):
    digits = builtin_dataset("digits")
    over = [
        f"run.out={tmp_path / 'pre'}",
        "data.batch_size=8",
        "optim.total_steps=2",
        "optim.warmup_steps=1",
        "run.eval_batches=1",
        "model.input_norm=dataset",
        "model.position_init=coords",
        "optim.position_lr_mult=10",
        *QUIET,
    ]
    res = trainer.train(load_config("pretrain", "tiny_digits", over), digits)
    model, payload = ckpt.load_model(res.checkpoint)
    norm = model.model.input_norm
    x = torch.from_numpy(digits.arrays["train"]["image"])
    assert norm.modes() == {"image": "dataset"}
    assert float(norm.image_mean) == pytest.approx(float(x.mean()), rel=1e-4)
    assert float(norm.image_std) == pytest.approx(float(x.std()), rel=1e-3)
    assert payload["model_meta"]["input_norm"] == "dataset"
    lrs = [g["lr"] for g in payload["optimizer"]["param_groups"]]
    assert len(lrs) == 3 and lrs[2] == pytest.approx(10 * lrs[0])
    with pytest.raises(UserError, match="model.input_norm"):
        load_config("pretrain", "tiny_digits", ["model.input_norm=zscore"])


def test_a_modality_named_in_input_norm_by_modality_gets_its_own_mode(tmp_path):
    """The classification recipe's {image: sample}: images standardised one by one, other
    modalities (audio) keep `input_norm`; a name the data lacks is ignored."""
    over = [
        f"run.out={tmp_path / 'ft'}", "optim.total_steps=1", "run.eval_batches=1",
        "data.batch_size=8", "model.input_norm=dataset",
        "model.input_norm_by_modality={image: sample, audio: none}", *QUIET,
    ]  # fmt: skip
    cfg = load_config("finetune", "hip/configs/recipes/classification.yaml", over)
    cfg.task.num_classes = 10
    res = trainer.train(cfg, builtin_dataset("digits"))
    model, payload = ckpt.load_model(res.checkpoint)
    assert model.backbone.input_norm.modes() == {"image": "sample"}
    assert payload["model_meta"]["input_norm_by_modality"] == {"image": "sample", "audio": "none"}
    recipe = load_config("finetune", "hip/configs/recipes/classification.yaml", [])
    assert recipe.model.input_norm == "dataset"
    assert dict(recipe.model.input_norm_by_modality) == {"image": "sample"}
    with pytest.raises(UserError, match="input_norm_by_modality.image='zscore'"):
        load_config("finetune", "mnist", ["model.input_norm_by_modality={image: zscore}"])
