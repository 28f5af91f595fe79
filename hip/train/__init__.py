"""Training: the Trainer (MAE pretraining and finetuning), Checkpointer, optimizer, step, launcher.

Attributes load lazily so `hip.train.step` and `hip.train.optim` import with torch (and the task
types' torchmetrics) alone; the trainer itself needs OmegaConf, WebDataset and MLflow.
"""

from typing import Any

__all__ = ["TrainResult", "TrainingDiverged", "load_model", "train"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from hip.checkpoint import load_model

        return load_model
    if name in ("TrainResult", "TrainingDiverged", "train"):
        from hip.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hip.train' has no attribute {name!r}")
