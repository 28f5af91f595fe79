"""`mae.norm_targets`: off / group / patch target normalisation (issue 16)."""

from __future__ import annotations

import pytest
import torch

from hip.model import MAE, MAEConfig, create_model
from hip.model.grouping import group_modality
from hip.model.mae import mae_options, norm_targets_mode, patch_stats
from hip.model.masking import gather_groups


def test_booleans_and_names_map_to_one_mode():
    assert norm_targets_mode(True) == "group"
    assert norm_targets_mode("True") == "group"  # a YAML `true` merged into the str field
    assert norm_targets_mode(False) == "off"
    assert norm_targets_mode("patch") == "patch"
    with pytest.raises(ValueError):
        norm_targets_mode("pixel")
    assert MAEConfig(norm_targets=True).norm_targets == "group"


def test_patch_normalised_targets_have_zero_mean_unit_std_per_patch_and_undo_exactly():
    torch.manual_seed(0)
    x = torch.rand(2, 6 * 10, 3) * 5 + 2  # 6x10 image, 3 channels: 4x4 patches cut at the edges
    mean, std = patch_stats(x, 6, 10, 4)
    z = (x - mean) / std
    img = z.reshape(2, 6, 10, 3)
    for rows, cols in ((slice(0, 4), slice(0, 4)), (slice(4, 6), slice(8, 10))):
        patch = img[:, rows, cols].reshape(2, -1, 3)
        assert patch.mean(1).abs().max() < 1e-5
        assert (patch.var(1, unbiased=False) - 1).abs().max() < 1e-3
    assert torch.allclose(z * std + mean, x, atol=1e-5)
    # A constant patch gives zeros, not a division by zero.
    flat_mean, flat_std = patch_stats(torch.ones(1, 16, 1), 4, 4, 4)
    assert torch.all((torch.ones(1, 16, 1) - flat_mean) / flat_std == 0)


def test_patch_mode_trains_on_normalised_targets_and_reconstructs_in_pixel_space():
    torch.manual_seed(0)
    model = create_model("tiny", {"image": (64, 1)})
    mae = MAE(model, MAEConfig(norm_targets="patch", norm_patch=4, shapes={"image": (8, 8)}))
    x = torch.rand(2, 64, 1)
    out = mae({"image": x}, generator=torch.Generator().manual_seed(0))
    mean, std = patch_stats(x, 8, 8, 4)
    grouped = group_modality(model.plan.modalities[0], (x - mean) / std)
    want = gather_groups(grouped, out.mask.masked)
    assert torch.allclose(out.targets["image"], want, atol=1e-5)
    # The head starts at zero, so the reconstruction is the patch means (the stats baseline).
    rec = mae.reconstruct({"image": x}, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rec["image"]["prediction"], mean, atol=1e-5)


def test_checkpoint_meta_gives_the_patch_mode_its_image_shape():
    meta = {
        "mae": {"norm_targets": "patch", "norm_patch": 2},
        "modalities": {"image": [784, 1]},
        "layout": {"image": {"height": 28, "width": 28}},
    }
    assert mae_options(meta) == {
        "norm_targets": "patch",
        "norm_patch": 2,
        "shapes": {"image": (28, 28)},
    }
    assert mae_options({"mae": {"norm_targets": True}})["norm_targets"] == "group"


def test_config_takes_booleans_and_modes_and_names_a_wrong_value():
    from hip.config import load_config
    from hip.errors import UserError

    assert (
        norm_targets_mode(
            load_config("pretrain", "tiny_mnist", ["mae.norm_targets=true"]).mae.norm_targets
        )
        == "group"
    )
    cfg = load_config("pretrain", "tiny_mnist", ["mae.norm_targets=patch", "mae.norm_patch=7"])
    assert cfg.mae.norm_targets == "patch" and cfg.mae.norm_patch == 7
    with pytest.raises(UserError, match="norm_targets"):
        load_config("pretrain", "tiny_mnist", ["mae.norm_targets=pixel"])
