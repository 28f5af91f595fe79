"""Training: the loop (MAE pretraining and finetuning), optimizer/schedule, checkpoints, DDP."""

from hip.train.checkpoint import load_model
from hip.train.loop import TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "load_model", "train"]
