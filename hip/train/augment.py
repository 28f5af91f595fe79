"""Training-only image augmentation on the stored uint8 pixels (`data.augment`, ours).

Runs on the CPU batch before it goes to the device, so it costs no float copy: a random
shift (zero padding), random flips and random quarter turns (square images) per sample. A segmentation mask that covers the image
moves with it; positions shifted in get the ignore label, so they are not scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class Augment:
    """What `data.augment` asks for, and the image modalities' geometry it applies to."""

    shift: int
    hflip: bool
    vflip: bool
    rot90: bool
    images: dict[str, tuple[int, int, int]]  # modality -> (height, width, channels)
    ignore_index: int = 255

    @classmethod
    def build(
        cls, aug: Any, layout: dict[str, dict[str, Any]], ignore_index: int
    ) -> Augment | None:
        """From the config section and the data's layout; None when nothing is asked for or
        the data has no image modality (a task type's recipe may ask for it on any data)."""
        from hip.errors import UserError
        from hip.task.tta import image_grids

        shift, hflip, vflip = int(aug.shift), bool(aug.hflip), bool(aug.vflip)
        rot90 = bool(aug.get("rot90", False))
        if shift < 0:
            raise UserError(f"data.augment.shift must be >= 0, not {shift}")
        if not (shift or hflip or vflip or rot90):
            return None
        images = {
            name: (h, w, int(layout[name]["shape"][1]))
            for name, (h, w) in image_grids(layout).items()
        }
        if not images:  # audio or video only: a recipe's default asks for nothing here
            log.info("data.augment: the data has no image modality, nothing is augmented")
            return None
        if rot90:
            for name, (h, w, _) in images.items():
                if h != w:
                    raise UserError(
                        f"data.augment.rot90 turns images by 90 degrees, so they must be "
                        f"square: modality {name!r} is {h}x{w} (height x width). "
                        "Set data.augment.rot90=false, or shard the images square (hip shard --resize N)"
                    )
        return cls(shift, hflip, vflip, rot90, images, ignore_index)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """The batch with each sample's images (and mask) shifted and flipped at random."""
        inputs = dict(batch["inputs"])
        first = next(iter(self.images))
        b = inputs[first].shape[0]
        s = self.shift
        dy = (
            torch.randint(-s, s + 1, (b,), generator=generator)
            if s
            else torch.zeros(b, dtype=torch.long)
        )
        dx = (
            torch.randint(-s, s + 1, (b,), generator=generator)
            if s
            else torch.zeros(b, dtype=torch.long)
        )
        hf = (
            torch.rand(b, generator=generator) < 0.5
            if self.hflip
            else torch.zeros(b, dtype=torch.bool)
        )
        vf = (
            torch.rand(b, generator=generator) < 0.5
            if self.vflip
            else torch.zeros(b, dtype=torch.bool)
        )
        turns = (
            torch.randint(0, 4, (b,), generator=generator)
            if self.rot90
            else torch.zeros(b, dtype=torch.long)
        )
        for name, (h, w, c) in self.images.items():
            x = _turn(inputs[name].reshape(b, h, w, c), turns)
            inputs[name] = _move(x, dy, dx, hf, vf, 0).reshape(b, h * w, c)
        out = {**batch, "inputs": inputs}
        mask = batch.get("mask")
        h, w, _ = self.images[first]
        if mask is not None and mask.shape[1:] == (h * w,):
            m = _turn(mask.reshape(b, h, w, 1), turns)
            out["mask"] = _move(m, dy, dx, hf, vf, self.ignore_index).reshape(b, h * w)
        return out


def _turn(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """`x` `[B, H, H, C]` with sample i turned counter-clockwise `turns[i]` quarter turns."""
    if not turns.any():
        return x
    out = x.clone()
    for k in (1, 2, 3):
        pick = turns == k
        if pick.any():
            out[pick] = torch.rot90(x[pick], k, (1, 2))
    return out


def _move(
    x: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    hf: torch.Tensor,
    vf: torch.Tensor,
    fill: int,
) -> torch.Tensor:
    """`x` `[B, H, W, C]` flipped where `hf`/`vf`, then shifted by (dy, dx) with `fill` let in."""
    if hf.any():  # no flipped copy of the batch when no sample flips
        x = torch.where(hf.view(-1, 1, 1, 1), x.flip(2), x)
    if vf.any():
        x = torch.where(vf.view(-1, 1, 1, 1), x.flip(1), x)
    if not (dy.any() or dx.any()):
        return x
    b, h, w, _ = x.shape
    out = torch.full_like(x, fill)
    for i in range(b):  # B <= a few hundred: a loop of slices is cheaper than a gather
        y, z = int(dy[i]), int(dx[i])
        out[i, max(y, 0) : h + min(y, 0), max(z, 0) : w + min(z, 0)] = x[
            i, max(-y, 0) : h + min(-y, 0), max(-z, 0) : w + min(-z, 0)
        ]
    return out
