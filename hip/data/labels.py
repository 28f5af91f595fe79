"""How the sharder stores a sample's label, without importing torch.

The task type owns its label storage (`hip.task.Task.encode_label`), but importing `hip.task`
loads torch and torchmetrics: ~5-7 s per process on 2 cores, more than a 10,000-image shard
partition takes to write. The sources in `hip.data.sources` only ever produce the three task
types below, so the sharder encodes their labels here; any other task name (a task type
registered from user code) goes to that task type's `encode_label`. The two must agree:
`tests/test_shard_speed.py` checks these against the registered task types.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

LabelEncoder = Callable[[str, Any], list[tuple[str, bytes]]]


def class_index(key: str, label: Any) -> list[tuple[str, bytes]]:
    """`key.cls`: the class index as text (classification)."""
    return [(f"{key}.cls", str(int(label)).encode())]


def class_list(key: str, label: Any) -> list[tuple[str, bytes]]:
    """`key.labels.json`: the list of the sample's class indices (multilabel)."""
    return [(f"{key}.labels.json", json.dumps(list(label or [])).encode())]


def no_label(key: str, label: Any) -> list[tuple[str, bytes]]:
    """Nothing: the label is a modality-like member written with the inputs (segmentation masks)."""
    return []


BUILTIN: dict[str, LabelEncoder] = {
    "classification": class_index,
    "multilabel": class_list,
    "segmentation": no_label,
}


def label_encoder(task: str | None) -> LabelEncoder:
    """The function that turns (key, label) into a shard's label members for task type `task`."""
    if task in BUILTIN:
        return BUILTIN[task]
    from hip.data.manifest import task_type  # another task type: its own encoding (loads torch)

    registered = task_type(task)
    return registered.encode_label if registered is not None else no_label
