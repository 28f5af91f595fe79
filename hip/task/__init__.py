"""Task types, one class per file, found by name: `get_task("classification")`.

Adding a task type: write a :class:`Task` subclass in its own file and add it to
``_BUILTIN`` below (or call :func:`register` from your own code). See CONTRIBUTING.md.
"""

from __future__ import annotations

from hip.errors import UserError, unknown_name
from hip.task.base import EvalData, EvalResult, Task
from hip.task.class_bottleneck import ClassBottleneckMAETask, ClassBottleneckTask
from hip.task.classification import ClassificationTask
from hip.task.mae import MAETask
from hip.task.multilabel import MultilabelTask
from hip.task.segmentation import SegmentationTask

_REGISTRY: dict[str, Task] = {}


def register(task: type[Task]) -> type[Task]:
    """Make a task type known by its `name` (usable as a class decorator)."""
    _REGISTRY[task.name] = task()
    return task


def get_task(name: str) -> Task:
    """The task object registered as `name`; a UserError with a suggestion otherwise."""
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        raise UserError(unknown_name("task.type", str(name), task_names())) from None


def task_names() -> tuple[str, ...]:
    """Every registered task type, MAE first."""
    return tuple(_REGISTRY)


for _task in (
    MAETask,
    ClassificationTask,
    MultilabelTask,
    SegmentationTask,
    ClassBottleneckTask,
    ClassBottleneckMAETask,
):
    register(_task)

__all__ = ["EvalData", "EvalResult", "Task", "get_task", "register", "task_names"]
