"""The Trainer: MAE pretraining and finetuning as one short loop over components.

Components, each built from the resolved config and each in its own file:
the task type (`hip.task`: model, loss, metrics), the data set (`hip.data.dataset`),
the optimizer and schedule (`optim.py`), the Checkpointer (`checkpointer.py`), the tracker
(`hip.tracking`), the evaluator (`hip.evaluate.Evaluator`) and the step (`step.py`).
:func:`train` assembles them; the Trainer only runs the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hip import checkpoint as ckpt
from hip import distributed as hdist
from hip import export
from hip.config import to_dict
from hip.data.dataset import Dataset, infinite, open_dataset
from hip.errors import UserError
from hip.model.mae import norm_targets_mode
from hip.rundir import RunFolder
from hip.runlog import MetricsLog
from hip.task import Task, get_task
from hip.task.base import inputs_to_device
from hip.task.tta import check_tta
from hip.threads import configure_threads
from hip.train import step as hstep
from hip.train.augment import Augment
from hip.train.checkpointer import Checkpointer, TrainState, seed_all
from hip.train.metrics import StepTimer, memory_mb
from hip.train.optim import build_optimizer, build_scheduler, peak_lr

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a training run produced (on every rank; files only on rank 0)."""

    run_dir: str
    checkpoint: str | None
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    batches_seen: int = 0
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    rank: int = 0
    world_size: int = 1


def model_meta(cfg: DictConfig, source: Dataset, num_classes: int | None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model (plain types only)."""
    return {
        "task": str(cfg.task.type),
        "preset": str(cfg.model.preset),
        "overrides": OmegaConf.to_container(cfg.model.overrides, resolve=True),
        "modalities": {k: [int(m), int(c)] for k, (m, c) in source.modalities.items()},
        # What the tokens are (image H x W x C, audio rate and length, video frames): the
        # report's figures and `hip evaluate` read it from here, never guess it from [M, C].
        "layout": {k: dict(v) for k, v in source.layout.items()},
        "ignore_index": int(source.ignore_index),
        "num_classes": num_classes,
        "label_names": list(source.label_names),
        "mae": {
            "mask_ratio": float(cfg.mae.mask_ratio),
            "norm_targets": norm_targets_mode(cfg.mae.norm_targets),
            "norm_patch": int(cfg.mae.norm_patch),
        },
        "benchmark": cfg.task.benchmark,
        "data_fingerprint": source.fingerprint,
        "input_norm": str(cfg.model.input_norm),
        "input_norm_by_modality": dict(cfg.model.input_norm_by_modality),
        "position_init": str(cfg.model.position_init),
        "dense_query": str(cfg.model.dense_query),
    }


def num_classes_for(cfg: DictConfig, source: Dataset) -> int | None:
    """`task.num_classes`, else the data's label count (tasks with a class head only)."""
    if not get_task(cfg.task.type).needs_classes:
        return None
    n = cfg.task.num_classes or source.num_classes
    if not n:
        raise UserError("task.num_classes is not set and the data has no label_names")
    if source.num_classes and cfg.task.num_classes and source.num_classes != cfg.task.num_classes:
        raise UserError(
            f"task.num_classes={cfg.task.num_classes} but the data has {source.num_classes} labels "
            f"({', '.join(source.label_names[:5])}...); for your own data leave out --benchmark "
            "(`hip finetune --data MANIFEST --task TYPE` takes the classes from the manifest) "
            "or set task.num_classes=null"
        )
    return int(n)


def statistics_batches(cfg: DictConfig, source: Dataset) -> Iterator[dict[str, Any]]:
    """The training split in its unshuffled order, 256 at a time, for statistics measured
    before training (input normalisation, class frequencies): every rank and every resume
    sees the same numbers. Corrupt samples are skipped here as training skips them."""
    readable = dataclasses.replace(source, skip_corrupt=True)
    return readable.batches(str(cfg.data.split), 256, train=False, limit=cfg.data.limit)


def prepare_inputs(model: nn.Module, cfg: DictConfig, source: Dataset) -> None:
    """Set a fresh model's input normalisation and position init from `model.*` (ours).

    `dataset` statistics come from the first 4,096 training samples in their unshuffled
    order, so every rank and every resume measures the same numbers. A pretrained
    checkpoint loaded afterwards brings its own normalisation and tables (they win).
    """
    from hip.model.normalize import fit_input_norm, input_norm_of

    by_name = dict(cfg.model.input_norm_by_modality)
    norm = input_norm_of(model)
    names = norm.names if norm is not None else list(source.modalities)
    modes = {k: str(by_name.get(k, cfg.model.input_norm)) for k in names}
    if any(m != "none" for m in modes.values()):
        fit_input_norm(model, modes, (b["inputs"] for b in statistics_batches(cfg, source)))
    if str(cfg.model.position_init) == "coords":
        from hip.model import HiP
        from hip.model.positions import coordinate_table, layout_grid

        hip = next(m for m in model.modules() if isinstance(m, HiP))
        with torch.no_grad():
            for name, table in hip.pos.items():
                grid = layout_grid(source.layout.get(name), table.shape[0])
                table.copy_(coordinate_table(table.shape[0], table.shape[1], shape=grid))


def set_train_loss(
    model: nn.Module, cfg: DictConfig, source: Dataset, num_classes: int | None
) -> None:
    """`task.label_smoothing` and `task.class_weights` on the head's training loss (ours).

    `balanced` weights are 1 / (K x frequency) of each class over the first 4,096 training
    samples (every mask position for segmentation), so a class seen at its fair share 1/K
    weighs 1; a class never seen weighs as the rarest one seen."""
    smoothing, weights = float(cfg.task.label_smoothing), cfg.task.class_weights
    if not smoothing and weights is None:
        return
    if not hasattr(model, "train_loss") or getattr(model, "multilabel", False):
        # A preset's default (the mnist preset smooths labels) must not stop a run that only
        # switched task.type to a head with its own loss: said once, then ignored.
        log.warning(
            "task.label_smoothing / task.class_weights apply to classification and "
            "segmentation; ignored for task.type=%s",
            cfg.task.type,
        )
        return
    if not 0.0 <= smoothing < 1.0:
        raise UserError(f"task.label_smoothing must be in [0, 1), not {smoothing}")
    model.train_loss.label_smoothing = smoothing
    if weights is None:
        return
    k = int(num_classes or 0)
    if isinstance(weights, str):
        if weights != "balanced":
            raise UserError(
                f"task.class_weights={weights!r}: use balanced, null or a list of {k} weights"
            )
        counts = class_counts(cfg, source, k)
        seen = counts > 0
        freq = counts / counts.sum()
        w = torch.zeros(k, dtype=torch.float64)
        w[seen] = 1.0 / (k * freq[seen])
        w[~seen] = w[seen].max() if seen.any() else 1.0
        model.train_loss.weight = w.float()
        return
    values = [float(v) for v in weights]
    if len(values) != k or min(values) < 0:
        raise UserError(
            f"task.class_weights has {len(values)} value(s) {values}; give {k} weights >= 0 "
            "(one per class) or balanced"
        )
    model.train_loss.weight = torch.tensor(values)


def class_counts(cfg: DictConfig, source: Dataset, k: int) -> torch.Tensor:
    """Per-class label counts over the first 4,096 training samples (mask positions for
    segmentation, labels for classification), the ignore label left out."""
    counts, seen = torch.zeros(k, dtype=torch.float64), 0
    for b in statistics_batches(cfg, source):
        labels = b["mask"] if "mask" in b else b["label"]
        seen += int(labels.shape[0])
        y = labels.reshape(-1).long()
        y = y[(y >= 0) & (y < k)]
        counts += torch.bincount(y, minlength=k)[:k].double()
        if seen >= 4096:
            break
    return counts


def build_model(
    cfg: DictConfig, source: Dataset
) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """The module to train, its checkpoint metadata and, when finetuning loads
    `task.pretrained`, what was loaded (checkpoint, its step, tensor counts)."""
    task = get_task(cfg.task.type)
    meta = model_meta(cfg, source, num_classes_for(cfg, source))
    model = task.build_model(meta)
    prepare_inputs(model, cfg, source)
    set_train_loss(model, cfg, source, meta["num_classes"])
    loaded = None
    if task.stage == "finetune" and cfg.task.pretrained:
        from hip.model import load_pretrained, summarize_load

        pre = ckpt.load(cfg.task.pretrained)
        try:
            names = load_pretrained(
                model, pre["model"], freeze_positions=bool(cfg.task.freeze_positions)
            )
        except ValueError as exc:
            raise UserError(f"task.pretrained={cfg.task.pretrained}: {exc}") from None
        summary = summarize_load(model, pre["model"], names)
        for group, keys in vars(summary).items():
            log.debug("pretrained %s (%d): %s", group, len(keys), ", ".join(keys))
        loaded = {
            "checkpoint": str(cfg.task.pretrained),
            "step": int(pre.get("step", -1)),
            **summary.counts(),
            "line": summary.line(),
        }
    elif task.stage == "finetune" and cfg.task.freeze_positions:
        for p in model.backbone.pos.values():
            p.requires_grad_(False)
    return model, meta, loaded


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch (nested one level) to `device`; inputs become float32 there
    (the loader hands them over as stored: uint8 images, int16 audio)."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if k == "inputs":
            out[k] = inputs_to_device(v, device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {n: t.to(device, non_blocking=True) for n, t in v.items()}
        elif isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


# Set by `python -m hip.train`'s SIGTERM handler; the loop checks it before every step.
TERMINATE = threading.Event()


class Trainer:
    """Runs the optimizer steps of one run; every piece it uses is handed to it."""

    def __init__(
        self,
        cfg: DictConfig,
        info: hdist.DistInfo,
        source: Dataset,
        tracker: Any,
        evaluator: Any = None,
    ):
        self.cfg, self.info, self.source, self.tracker = cfg, info, source, tracker
        self.evaluator = evaluator  # called with the trained model after the last step
        self.task: Task = get_task(cfg.task.type)
        self.seed = int(cfg.run.seed)
        self.model, meta, self.pretrained = build_model(cfg, source)
        if self.pretrained and info.is_main:
            p = self.pretrained
            print(
                f"loaded pretrained weights from {p['checkpoint']} (step {p['step']}): {p['line']}",
                flush=True,
            )
        self.model.to(info.device)
        self.strategy = str(cfg.run.strategy)
        self.wrapped = hdist.wrap(self.model, info, self.strategy)
        if cfg.run.compile:
            self.wrapped = torch.compile(self.wrapped)
        bs, self.accum = int(cfg.data.batch_size), int(cfg.optim.grad_accum)
        self.global_batch = bs * info.world_size * self.accum
        self.lr = peak_lr(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(self.wrapped, cfg.optim, self.lr, info.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.generator = torch.Generator().manual_seed(self.seed * 1000 + info.rank)
        self.augment = Augment.build(cfg.data.augment, source.layout, source.ignore_index)
        self.run = RunFolder(str(cfg.run.out))  # local, or s3:// shared by every host
        self.run_dir = self.run.local  # the working copy of metrics.jsonl
        self.resolved = to_dict(cfg)
        self.checkpointer = Checkpointer(
            folder=str(cfg.run.checkpoint_dir or ckpt.run_checkpoint_dir(self.run.uri)),
            info=info,
            strategy=self.strategy,
            keep_last=int(cfg.run.keep_last),
            resume=str(cfg.run.resume),
            extra={"config": self.resolved, "model_meta": meta},
        )
        self.state, self.last_checkpoint = TrainState(), None
        self.history: list[dict[str, Any]] = []
        self.batches_seen = 0
        self._last_line = time.monotonic()  # when the last plain progress line was printed

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Resume if there is a checkpoint, step to `optim.total_steps`, evaluate, hand over."""
        cfg, info = self.cfg, self.info
        self.state, self.last_checkpoint = self.checkpointer.restore(
            self.wrapped, self.optimizer, self.scheduler, self.generator, self.seed
        )
        resumed = self.last_checkpoint is not None
        self.metrics_log = None
        if info.is_main:  # rank 0 alone writes the log (trimmed to the checkpoint on resume)
            keep = self.state.step if resumed else None
            path = (
                self.run.fetch("metrics.jsonl") if resumed else self.run.local_path("metrics.jsonl")
            )
            self.metrics_log = MetricsLog(path, keep)
            derived = {"peak_lr": self.lr, "global_batch": self.global_batch}
            params = {**self.resolved, "derived": {**derived, "world_size": info.world_size}}
            if self.pretrained:  # what the weights came from (the names: the debug log)
                params["pretrained"] = {k: v for k, v in self.pretrained.items() if k != "line"}
            self.tracker.log_params(params)
        total, stop_at = int(cfg.optim.total_steps), cfg.run.stop_at_step
        every = int(cfg.run.checkpoint_every)
        self.data = iter(self._batches())
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.timer = StepTimer()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=self.task.stage,
            disable=not (info.is_main and cfg.run.progress),
            leave=False,
        )
        try:
            self.wrapped.train()
            while self.state.step < total and not (
                stop_at is not None and self.state.step >= stop_at
            ):
                if TERMINATE.is_set():  # SIGTERM, even if a library swallowed its SystemExit
                    raise SystemExit(128 + signal.SIGTERM)
                record = self.step()
                if record is None:  # a skipped non-finite step
                    continue
                self._log(record, bar)
                if self.state.step % every == 0 or self.state.step == total:
                    self.checkpoint()
            if (
                stop_at is not None
                and total > self.state.step >= stop_at
                and self.state.step % every
            ):
                self.checkpoint()
        finally:
            bar.close()
        eval_metrics = self._finish(total)
        return TrainResult(
            run_dir=self.run.uri,
            checkpoint=self.last_checkpoint,
            step=self.state.step,
            history=self.history,
            batches_seen=self.batches_seen,
            eval_metrics=eval_metrics,
            run_id=self.tracker.run_id,
            rank=info.rank,
            world_size=info.world_size,
        )

    def step(self) -> dict[str, Any] | None:
        """One optimizer step over `optim.grad_accum` micro-batches; its record, or None when
        the step was non-finite and skipped (`run.on_nonfinite=skip`)."""
        info, state = self.info, self.state
        loss_sum = torch.zeros((), device=info.device)
        bad_data, lr = 0, self.scheduler.get_last_lr()[0]
        for micro in range(self.accum):
            t0 = time.perf_counter()
            state.epoch, idx, batch = next(self.data)
            self.timer.waited(time.perf_counter() - t0)
            bad_data += int(batch.pop("corrupt_samples", 0))
            if self.augment is not None:
                batch = self.augment(batch, self.generator)
            state.batch_in_epoch = idx + 1
            self.batches_seen += 1
            batch = to_device(batch, info.device)
            no_sync = isinstance(self.wrapped, nn.parallel.DistributedDataParallel) and (
                micro < self.accum - 1
            )
            with self.wrapped.no_sync() if no_sync else contextlib.nullcontext():
                with hstep.autocast(info.device, str(self.cfg.run.precision)):
                    loss = self.task.loss(self.wrapped, batch, self.generator)
                (loss / self.accum).backward()
            loss_sum += loss.detach().float()
        loss_mean = loss_sum / self.accum
        if info.distributed:  # one collective: the mean loss and the corrupt samples
            both = torch.stack([loss_mean, torch.full_like(loss_mean, float(bad_data))])
            both = hdist.all_mean(both, info)
            loss_mean, bad_data_t = both[0], both[1] * info.world_size
        grad_norm, stepped = hstep.clip_and_step(
            self.params,
            self.optimizer,
            loss_mean,
            float(self.cfg.optim.grad_clip),
            on_device=self.strategy != "fsdp",
        )
        # The step's one read from the device, after its whole update is queued.
        queued = [loss_mean.float(), grad_norm.float()]
        read = torch.stack(queued + ([bad_data_t] if info.distributed else [])).tolist()
        loss_val, gn = read[0], read[1]
        state.corrupt_samples += round(read[2]) if info.distributed else bad_data
        if not (math.isfinite(loss_val) and math.isfinite(gn)):
            self._skip_nonfinite(loss_val, gn)
            return None
        if not stepped:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples_seen += self.global_batch
        return {
            "step": state.step,
            "loss": loss_val,
            "lr": lr,
            "grad_norm": gn,
            **self.timer.finish(self.global_batch),
            "memory_mb": memory_mb(info.device),
            "epoch": state.epoch,
            "skipped_steps": state.skipped_steps,
            "corrupt_samples": state.corrupt_samples,
        }

    def checkpoint(self) -> None:
        """Save now (every rank takes part); checkpoint time is not counted as step time."""
        if self.info.is_main:  # the log first: a checkpoint never exists without its steps
            self.run.push("metrics.jsonl")
        path = self.checkpointer.save(
            self.state, self.wrapped, self.optimizer, self.scheduler, self.generator
        )
        self.last_checkpoint = path or self.last_checkpoint
        self.timer.finish(0)

    # -- the pieces of the loop ----------------------------------------------------------------
    def _batches(self) -> Any:
        cfg, info = self.cfg, self.info
        return infinite(
            self.source,
            str(cfg.data.split),
            int(cfg.data.batch_size),
            self.seed,
            info.rank,
            info.world_size,
            int(cfg.data.num_workers),
            self.state.epoch,
            self.state.batch_in_epoch,
            cfg.data.limit,
            pin_memory=info.device.type == "cuda",
        )

    def _skip_nonfinite(self, loss_val: float, gn: float) -> None:
        """No optimizer or scheduler update for this batch (a fused optimizer already skipped
        it on the device); stop when the policy says so."""
        self.optimizer.zero_grad(set_to_none=True)
        state, policy = self.state, str(self.cfg.run.on_nonfinite)
        what = f"loss is {loss_val}" if not math.isfinite(loss_val) else f"gradient norm is {gn}"
        if policy == "stop" or state.skipped_steps >= int(self.cfg.run.max_skipped_steps):
            why = (
                ""
                if policy == "stop"
                else (f" after {state.skipped_steps} skipped step(s) (run.max_skipped_steps)")
            )
            raise TrainingDiverged(
                f"{what} at step {state.step + 1}{why}; stopped without saving. Last good "
                f"checkpoint: {self.last_checkpoint or 'none yet'}. Try a lower optim.lr, a "
                "smaller optim.grad_clip or run.precision=fp32."
            )
        state.skipped_steps += 1
        if self.info.is_main:
            print(
                f"warning: {what} at step {state.step + 1}; skipped without an update "
                f"({state.skipped_steps} skipped so far, run.on_nonfinite=skip)",
                file=sys.stderr,
                flush=True,
            )
        self.timer.finish(0)

    def _log(self, record: dict[str, Any], bar: Any) -> None:
        self.history.append(record)
        bar.update(1)
        if not self.info.is_main:
            return
        step, total = record["step"], int(self.cfg.optim.total_steps)
        self.metrics_log.write(record)
        if step % int(self.cfg.run.log_every) == 0 or step == total:
            self.tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        # Without a bar (logs, orchestrators), a plain line at the first step, every ~10% of
        # the run and at least once a minute instead (orchestrators turn it into progress).
        now = time.monotonic()
        due = step == 1 or step % max(1, total // 10) == 0 or step == total
        if not self.cfg.run.progress and (due or now - self._last_line >= 60):
            self._last_line = now
            print(
                f"{self.task.stage} step {step}/{total}: loss {record['loss']:.4f}, lr "
                f"{record['lr']:.2e}, {record.get('samples_per_s', 0.0):.0f} samples/s",
                flush=True,
            )

    def _finish(self, total: int) -> dict[str, Any]:
        """After the last step (rank 0): evaluate, log the checkpoint, register the model."""
        if not self.info.is_main:
            return {}
        metrics: dict[str, Any] = {}
        model = hdist.unwrap(self.model)
        if self.strategy == "fsdp" and self.last_checkpoint:  # unsharded, from the checkpoint
            model = ckpt.load_model(self.last_checkpoint)[0]
        if self.state.step >= total and self.evaluator is not None:
            result = self.evaluator(model)
            metrics = result.metrics
            print(self.evaluator.coverage(result), flush=True)
            self.tracker.log_metrics(
                {f"eval_{k}": v for k, v in metrics.items()} | result.per_class_metrics(),
                self.state.step,
            )
        if self.last_checkpoint:
            self.tracker.log_checkpoint(self.last_checkpoint)
        if self.task.stage == "finetune" and self.tracker.run_id and self.state.step >= total:
            # The model as MLflow users load it (once per run, also when a finished run is
            # started again); registered only when asked, so never a from-scratch baseline.
            benchmark = self.cfg.task.benchmark
            register = bool(benchmark) and bool(self.cfg.tracking.register_model)
            split = str(self.cfg.data.eval_split or self.cfg.data.split)
            self.tracker.log_model(
                model,
                export.example_inputs(self.source, split),
                str(benchmark) if register else None,
                self.last_checkpoint,
            )
        self.run.push("metrics.jsonl")
        self.tracker.log_artifact(str(self.run_dir / "metrics.jsonl"))
        return metrics


def train(cfg: DictConfig, source: Dataset | None = None, tracker: Any = None) -> TrainResult:
    """Run pretraining (task.type=mae) or finetuning from a resolved config; resumes per run.resume.

    Under torchrun (WORLD_SIZE > 1) it joins the process group, wraps the model in DDP (or
    FSDP2 with run.strategy=fsdp) and only rank 0 writes checkpoints, metrics and MLflow.
    """
    if cfg.run.threads is not None:  # a library caller keeps its own setting unless set here
        configure_threads(int(cfg.run.threads))
    info = hdist.setup(str(cfg.run.device))
    ok = False
    try:
        result = _assemble_and_train(cfg, info, source, tracker)
        ok = True
        return result
    finally:
        if ok:
            hdist.teardown(info)
        elif info.initialized_here and tdist.is_initialized():
            tdist.destroy_process_group()


def _assemble_and_train(
    cfg: DictConfig, info: hdist.DistInfo, source: Dataset | None, tracker: Any
) -> TrainResult:
    from hip import tracking
    from hip.evaluate import Evaluator

    seed_all(int(cfg.run.seed) + info.rank)
    source = source or open_dataset(cfg.data)
    eval_split = cfg.data.eval_split
    if eval_split is not None and source.num_samples(str(eval_split)) is None:
        # Said before training, not discovered after it (or skipped without a word).
        raise UserError(
            f"data.eval_split={eval_split!r}: the data ({source.manifest_path or source.name}) "
            f"has no split {str(eval_split)!r}; shard it, set data.eval_split to a split the "
            "data has, or data.eval_split=null to skip the final evaluation"
        )
    evaluator = None
    if eval_split is not None and cfg.stage == "finetune":
        check_tta(str(cfg.eval.tta), source.layout)  # now, not after training
    if eval_split is not None:
        evaluator = Evaluator(
            source,
            str(cfg.task.type),
            split=str(eval_split),
            batch_size=int(cfg.data.eval_batch_size or cfg.data.batch_size),
            device=info.device if str(cfg.run.strategy) != "fsdp" else torch.device("cpu"),
            max_batches=cfg.run.eval_batches,
            limit=cfg.data.limit,
            seed=int(cfg.run.seed),
            tta=str(cfg.eval.tta),
        )
    own_tracker = tracker is None
    if own_tracker:  # first, so that an unreachable MLflow fails before any work
        run_dir = RunFolder(str(cfg.run.out)).uri
        tracker = tracking.start_stage(
            cfg,
            get_task(cfg.task.type).stage,
            is_main=info.is_main,
            source=source,
            run_dir=run_dir if str(cfg.run.resume) != "never" else None,
        )
    try:
        result = Trainer(cfg, info, source, tracker, evaluator).train()
    except (KeyboardInterrupt, SystemExit):  # interrupted or terminated, not failed
        if own_tracker:
            tracker.end("KILLED")
        raise
    except BaseException:
        if own_tracker:
            tracker.end("FAILED")
        raise
    if own_tracker:
        tracker.end("FINISHED")
    return result
