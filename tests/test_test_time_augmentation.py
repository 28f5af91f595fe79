"""`eval.tta`: a finetuned model's logits averaged over mirrored and turned views of each image,
per-position logits mapped back to the image's own frame first (hip.task.tta)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hip.config import load_config
from hip.errors import UserError
from hip.task.tta import VIEWS, check_tta, predict

IMAGE_4x6 = {"image": {"kind": "image", "shape": [24, 1], "height": 4, "width": 6}}
IMAGE_5x5 = {"image": {"kind": "image", "shape": [25, 1], "height": 5, "width": 5}}


class PerPixel(nn.Module):
    """Per-position logits that depend on each pixel alone (a view-equivariant model)."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = inputs["image"].float()
        return torch.cat([x, x.square()], dim=-1)  # [B, M, 2]


class TopLeft(nn.Module):
    """Per-sample logits: the value of the first token (the top-left pixel of the view)."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["image"][:, 0].float()  # [B, 1]


@pytest.mark.parametrize("mode,layout", [("hflip", IMAGE_4x6), ("flips", IMAGE_4x6),
                                         ("dihedral", IMAGE_5x5)])  # fmt: skip
def test_per_position_logits_come_back_to_the_pixels_they_belong_to(mode, layout):
    hw = layout["image"]["height"] * layout["image"]["width"]
    x = torch.randn(3, hw, 1)
    plain = PerPixel()({"image": x})
    assert torch.allclose(predict(PerPixel(), {"image": x}, mode, layout), plain, atol=1e-6)


def test_per_sample_logits_are_the_mean_over_the_views():
    """The views' top-left pixels are the image's corners: all 4 with flips, each twice under
    the 8 views of dihedral."""
    grid = torch.arange(1.0, 21.0).reshape(4, 5)
    corners = float(grid[0, 0] + grid[0, -1] + grid[-1, 0] + grid[-1, -1]) / 4
    x = grid.reshape(1, 20, 1)
    layout = {"image": {"kind": "image", "shape": [20, 1], "height": 4, "width": 5}}
    assert float(predict(TopLeft(), {"image": x}, "off", layout)) == 1.0
    assert float(predict(TopLeft(), {"image": x}, "hflip", layout)) == (1.0 + 5.0) / 2
    assert float(predict(TopLeft(), {"image": x}, "flips", layout)) == corners
    square = torch.arange(1.0, 26.0).reshape(1, 25, 1)
    assert float(predict(TopLeft(), {"image": square}, "dihedral", IMAGE_5x5)) == 13.0
    assert len(VIEWS["dihedral"]) == 8


def test_views_that_cannot_apply_to_the_data_are_user_errors():
    with pytest.raises(UserError, match="no image modality.*audio"):
        check_tta("flips", {"audio": {"kind": "audio", "shape": [100, 64]}})
    with pytest.raises(UserError, match="square.*'image' is 4x6.*eval.tta=flips"):
        check_tta("dihedral", IMAGE_4x6)
    check_tta("flips", IMAGE_4x6)
    check_tta("off", {"audio": {"kind": "audio", "shape": [100, 64]}})
    with pytest.raises(UserError, match="eval.tta='dihedal'.*did you mean 'dihedral'"):
        load_config("finetune", "mnist", ["eval.tta=dihedal"])
    # YAML reads a bare `off` as false: it still means off, on the command line and in a file
    assert load_config("finetune", "isbi", ["eval.tta=off", "data.manifest=x"]).eval.tta == "off"


def test_an_audio_finetune_asking_for_views_fails_before_training(tmp_path):
    import hip.data as hd
    from hip.train import trainer
    from tests import new_data

    folder = new_data.tones_folder(tmp_path / "tones", {"train": 2, "test": 2}, seconds=0.1)
    for split in ("train", "test"):
        hd.shard("audiofolder", folder / split, tmp_path / "shards", split=split)
    cfg = load_config(
        "finetune",
        "hip/configs/recipes/classification.yaml",
        [f"run.out={tmp_path / 'run'}", f"data.manifest={tmp_path / 'shards'}",
         "task.num_classes=4", "eval.tta=hflip", "tracking.enabled=false",
         "run.progress=false"],
    )  # fmt: skip
    with pytest.raises(UserError, match="eval.tta=hflip.*no image modality.*audio"):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
