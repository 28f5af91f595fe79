"""Your own data without a benchmark preset: the task type's default recipe + the manifest.

`hip pretrain --data MANIFEST` and `hip finetune --data MANIFEST [--task TYPE]` resolve in this
order: schema defaults <- the recipe (`hip/configs/recipes/<type>.yaml`, or a preset named
with --config/--benchmark) <- what the manifest says (data.manifest, task.num_classes) <-
command-line overrides. The manifest is read (not its shards) and checked against the task
before any work: a task whose labels the data does not have is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hip.config import available_configs, load_config
from hip.errors import UserError


def recipe_name(task_type: str) -> str:
    """The recipe (`hip/configs/recipes`) a task type trains with by default."""
    from hip.task import get_task

    task = get_task(task_type)
    if task_type in available_configs("recipes"):
        return task_type
    # A task type without a recipe of its own (e.g. class_bottleneck) takes the recipe of the
    # registered type whose labels it reads.
    for name in available_configs("recipes"):
        if type(get_task(name)).decode_label is type(task).decode_label:
            return name
    raise UserError(f"task.type={task_type!r} has no default recipe; give --config NAME_OR_PATH")


def check_task_fits(task_type: str, manifest: Any, where: str) -> None:
    """UserError when the manifest's data has no labels `task_type` can train on."""
    from hip.task import get_task

    task = get_task(task_type)
    if task.stage == "pretrain":
        return
    stored = str(manifest.task or "classification")
    has_mask = "mask" in (manifest.targets or {})
    if task.name == "segmentation" or has_mask:
        if task.name == "segmentation" and not has_mask:
            raise UserError(
                f"--task segmentation: {where} has no mask target (its labels are {stored}); "
                "shard a segmentation layout (`hip shard --source segfolder`, docs/DATA.md)"
            )
        if task.name != "segmentation":
            raise UserError(
                f"--task {task.name}: {where} holds segmentation masks; use --task segmentation"
            )
        return
    try:
        stored_task = get_task(stored)
    except UserError:
        raise UserError(f"{where}: unknown task {stored!r} in the manifest") from None
    if type(stored_task).decode_label is not type(task).decode_label:
        raise UserError(
            f"--task {task.name}: {where} has {stored} labels; use --task {stored} "
            f"(or re-shard the data with {task.name} labels)"
        )
    if task.needs_classes and not manifest.label_names:
        raise UserError(f"--task {task.name}: {where} names no classes (label_names is empty)")


def config_for_data(
    stage: str,
    data: str,
    task_type: str | None = None,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    kind: str | None = None,
) -> DictConfig:
    """The resolved config for training on the manifest `data` (path, folder or s3:// URI).

    `task_type` defaults to `mae` for pretraining and to the manifest's task for finetuning;
    `preset` (a train/benchmark preset or YAML path) replaces the task type's recipe.
    """
    from hip import storage
    from hip.data.manifest import read_manifest

    if not storage.is_s3(data):  # stored in every checkpoint: valid from any folder
        data = str(Path(data).expanduser().resolve())
    manifest = read_manifest(data)
    if task_type is None and preset is None:
        task_type = "mae" if stage == "pretrain" else str(manifest.task or "classification")
    name, chosen = preset, kind
    if name is None:
        name, chosen = recipe_name(str(task_type)), "recipes"
    head = [f"data.manifest={data}", "data.source=null"]
    head += [f"task.type={task_type}"] if task_type else []
    cfg = load_config(stage, name, head + list(overrides), kind=chosen)
    check_task_fits(str(cfg.task.type), manifest, f"the data at {data}")
    if cfg.task.num_classes is None and manifest.label_names:
        from hip.task import get_task

        if get_task(str(cfg.task.type)).needs_classes:
            cfg.task.num_classes = len(manifest.label_names)
    return cfg
