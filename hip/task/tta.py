"""Test-time augmentation (`eval.tta`, ours): average the logits over symmetric views of the input.

A model trained with random flips (and quarter turns) sees each test image in those views
too; each view's logits are mapped back to the original frame and averaged. Per-position
logits (segmentation) are flipped and turned back; per-sample logits (classification) are
averaged as they are. Only image modalities are transformed: time reversal is no symmetry of
sound. On isbi (128x128, docs/BENCHMARKS.md) the 8 views of `dihedral` added 0.01-0.02 mIoU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hip.errors import UserError

# mode -> views as (quarter turns counter-clockwise, mirrored left-right first)
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "off": ((0, False),),
    "hflip": ((0, False), (0, True)),
    # both mirrors and their product; a half turn is a left-right plus a top-bottom mirror
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "dihedral": tuple((k, f) for k in range(4) for f in (False, True)),
}
TTA_MODES = tuple(VIEWS)


def tta_mode(value: object) -> str:
    """`eval.tta` as written: YAML reads a bare `off` as false, which means `off` here."""
    text = str(value).strip().lower()
    return {"false": "off", "none": "off", "": "off"}.get(text, text)


def image_grids(layout: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Modality name -> (height, width) of every image modality in a data layout."""
    return {
        name: (int(v["height"]), int(v["width"]))
        for name, v in layout.items()
        if v.get("kind") == "image" and v.get("height") and v.get("width")
    }


def check_tta(mode: str, layout: dict[str, dict[str, Any]]) -> None:
    """Raise a UserError, before any work, when `mode` cannot apply to data of this layout."""
    if mode not in VIEWS:
        raise UserError(f"eval.tta={mode!r}: choose one of {', '.join(TTA_MODES)}")
    if mode == "off":
        return
    grids = image_grids(layout)
    if not grids:
        kinds = sorted({str(v.get("kind", "?")) for v in layout.values()}) or ["unknown"]
        raise UserError(
            f"eval.tta={mode} mirrors images, but this data has no image modality "
            f"(it has {', '.join(kinds)}); set eval.tta=off"
        )
    if mode == "dihedral":
        for name, (h, w) in grids.items():
            if h != w:
                raise UserError(
                    f"eval.tta=dihedral turns images by 90 degrees, so they must be square: "
                    f"modality {name!r} is {h}x{w}; use eval.tta=flips"
                )


def views_note(mode: str, task: str) -> str:
    """What an evaluation line adds when a finetuned model's logits were averaged over views."""
    from hip.task import get_task

    if mode == "off" or get_task(task).stage != "finetune":
        return ""
    return f" (logits averaged over {len(VIEWS[mode])} views, eval.tta={mode})"


def _view(x: torch.Tensor, hw: tuple[int, int], turns: int, mirror: bool) -> torch.Tensor:
    """Tokens `[B, H*W, C]` of one image in a view (mirror first, then turn)."""
    b, _, c = x.shape
    g = x.reshape(b, hw[0], hw[1], c)
    if mirror:
        g = g.flip(2)
    g = torch.rot90(g, turns, (1, 2))
    return g.reshape(b, -1, c)


def _unview(y: torch.Tensor, hw: tuple[int, int], turns: int, mirror: bool) -> torch.Tensor:
    """Per-position logits `[B, H*W, K]` of a view, back in the original frame."""
    b, _, k = y.shape
    h, w = (hw[1], hw[0]) if turns % 2 else hw  # a quarter turn swaps height and width
    g = torch.rot90(y.reshape(b, h, w, k), -turns, (1, 2))
    if mirror:
        g = g.flip(2)
    return g.reshape(b, -1, k)


def predict(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    mode: str,
    layout: dict[str, dict[str, Any]],
) -> torch.Tensor:
    """`model(inputs)` averaged over the views of `mode` (its own output when `off`)."""
    if mode == "off":
        return model(inputs).float()
    grids = {k: v for k, v in image_grids(layout).items() if k in inputs}
    first = next(iter(grids.values()))
    total: torch.Tensor | None = None
    views = VIEWS[mode]
    for turns, mirror in views:
        seen = {
            k: _view(x, grids[k], turns, mirror) if k in grids else x for k, x in inputs.items()
        }
        logits = model(seen).float()
        if logits.dim() == 3:  # per position: back to the original frame
            if logits.shape[1] != first[0] * first[1]:
                raise UserError(
                    f"eval.tta={mode}: the model predicts {logits.shape[1]} positions, not the "
                    f"{first[0]}x{first[1]} of its first image; set eval.tta=off"
                )
            logits = _unview(logits, first, turns, mirror)
        total = logits if total is None else total + logits
    assert total is not None
    return total / len(views)
