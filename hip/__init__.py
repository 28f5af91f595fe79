"""HiP: the Hierarchical Perceiver in PyTorch, with MAE pretraining and finetuning.

The library imports no Prefect; orchestration lives in the top-level `flows` and `tasks`.
"""

__version__ = "0.1.0"
