"""A finetuned HiP as an MLflow model: `mlflow.pytorch.log_model` with a signature and a real
input example, so `mlflow.pytorch.load_model("models:/hip-<benchmark>@champion")` gives the
module back and it predicts on the same `{modality: float32 [B, M, C]}` inputs the loader makes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

MODEL_NAME = "model"  # the logged model's name inside its run


def example_inputs(source: Any, split: str) -> dict[str, np.ndarray]:
    """One real sample of `split`, as the model takes it: `{modality: float32 [1, M, C]}`."""
    batch = next(iter(source.batches(split, 1, train=False, limit=1)))
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in batch["inputs"].items()}


def _requirements() -> list[str]:
    """Pinned to what trained it; stated, so MLflow does not import the model to guess them."""
    from importlib import metadata

    reqs = [f"torch=={torch.__version__.split('+')[0]}"]
    for dist in ("hip-pipeline", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # running from a bare checkout
            continue
    return reqs


def log_model(
    model: nn.Module,
    example: dict[str, np.ndarray],
    registered_model_name: str | None = None,
) -> Any:
    """Log `model` (eval mode, on the CPU) into the active MLflow run; register it under
    `registered_model_name` when given. Returns MLflow's ModelInfo."""
    import copy

    import mlflow
    from mlflow.models import infer_signature

    cpu = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        out = cpu({k: torch.from_numpy(v) for k, v in example.items()})
    output = out.detach().numpy() if isinstance(out, torch.Tensor) else None
    signature = infer_signature(example, output)
    # MLflow checks an input example by serving it through pyfunc, whose PyTorch flavour takes
    # no dict of modalities: that check can only fail, printing a page of warning per run.
    # `mlflow.pytorch.load_model` (how the model is used, tests/test_two_hosts.py) works.
    with _quiet("mlflow.models.model"):
        return mlflow.pytorch.log_model(
            cpu,
            name=MODEL_NAME,
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name,
            pip_requirements=_requirements(),
            # pickle, not MLflow's default pt2: the model takes a dict of modalities, which a
            # torch.export trace does not; loading needs `hip` installed (in the requirements).
            serialization_format="pickle",
        )


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Only errors from `logger` while the block runs."""
    log = logging.getLogger(logger)
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)
