"""The training loop shared by MAE pretraining and finetuning (single process, DDP or FSDP2)."""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hip.config import to_dict
from hip.data.dataset import Dataset, infinite, open_dataset
from hip.errors import UserError
from hip.train import checkpoint as ckpt
from hip.train import distributed as hdist
from hip.train import step as hstep
from hip.train.metrics import MetricsLog, StepTimer, memory_mb
from hip.train.optim import (
    build_optimizer,
    build_scheduler,
    optim_state_to_indices,
    optim_state_to_names,
    param_order,
    peak_lr,
)
from hip.train.step import autocast, compute_loss, targets_of  # noqa: F401 - re-exported


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


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_meta(cfg: DictConfig, source: Dataset, num_classes: int | None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model (plain types only)."""
    return {
        "task": str(cfg.task.type),
        "preset": str(cfg.model.preset),
        "overrides": OmegaConf.to_container(cfg.model.overrides, resolve=True),
        "modalities": {k: [int(m), int(c)] for k, (m, c) in source.modalities.items()},
        "num_classes": num_classes,
        "label_names": list(source.label_names),
        "mae": {
            "mask_ratio": float(cfg.mae.mask_ratio),
            "norm_targets": bool(cfg.mae.norm_targets),
        },
        "benchmark": cfg.task.benchmark,
        "data_fingerprint": source.fingerprint,
    }


def num_classes_for(cfg: DictConfig, source: Dataset) -> int | None:
    """`task.num_classes`, else the data's label count (finetuning only)."""
    if cfg.task.type == "mae":
        return None
    n = cfg.task.num_classes or source.num_classes
    if not n:
        raise UserError("task.num_classes is not set and the data has no label_names")
    if source.num_classes and cfg.task.num_classes and source.num_classes != cfg.task.num_classes:
        raise UserError(
            f"task.num_classes={cfg.task.num_classes} but the data has {source.num_classes} labels "
            f"({', '.join(source.label_names[:5])}...)"
        )
    return int(n)


def build_model(cfg: DictConfig, source: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """The module to train and its checkpoint metadata; finetuning loads `task.pretrained`."""
    meta = model_meta(cfg, source, num_classes_for(cfg, source))
    model = ckpt.build_model(meta)
    if cfg.task.type != "mae" and cfg.task.pretrained:
        from hip.model import load_pretrained

        pre = ckpt.load(cfg.task.pretrained)
        try:
            load_pretrained(model, pre["model"], freeze_positions=bool(cfg.task.freeze_positions))
        except ValueError as exc:
            raise UserError(f"task.pretrained={cfg.task.pretrained}: {exc}") from None
    elif cfg.task.freeze_positions and cfg.task.type != "mae":
        for p in model.backbone.pos.values():
            p.requires_grad_(False)
    return model, meta


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch (nested one level) to `device`."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {n: t.to(device, non_blocking=True) for n, t in v.items()}
        elif isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


def _gather_rng(info: hdist.DistInfo, generator: torch.Generator) -> list[dict[str, Any]]:
    state = ckpt.rng_state(generator)
    if not info.distributed:
        return [state]
    states: list[Any] = [None] * info.world_size
    tdist.all_gather_object(states, state)
    return states


def _model_state(model: nn.Module, info: hdist.DistInfo, strategy: str) -> dict[str, torch.Tensor]:
    if info.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return {k: v.detach().cpu() for k, v in hdist.unwrap(model).state_dict().items()}


def _optim_state(
    model: nn.Module, opt: torch.optim.Optimizer, info: hdist.DistInfo, strategy: str
) -> dict[str, Any]:
    if info.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return opt.state_dict()


def _load_states(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    payload: dict[str, Any],
    info: hdist.DistInfo,
    strategy: str,
) -> None:
    if info.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, payload["model"], options=opts)
        state = payload["optimizer"]
        if state["state"] and all(isinstance(k, int) for k in state["state"]):  # written by DDP
            state = optim_state_to_names(state, param_order(model))
        set_optimizer_state_dict(model, opt, state, options=opts)
        return
    hdist.unwrap(model).load_state_dict(payload["model"])
    state = payload["optimizer"]
    if state["state"] and all(isinstance(k, str) for k in state["state"]):  # written by FSDP
        state = optim_state_to_indices(state, param_order(hdist.unwrap(model)))
    opt.load_state_dict(state)


def _stage_of(cfg: DictConfig) -> str:
    return "pretrain" if cfg.task.type == "mae" else "finetune"


def train(cfg: DictConfig, source: Dataset | None = None, tracker: Any = None) -> TrainResult:
    """Run pretraining (task.type=mae) or finetuning from a resolved config; resumes per run.resume.

    Under torchrun (WORLD_SIZE > 1) it joins the process group, wraps the model in DDP (or
    FSDP2 with run.strategy=fsdp) and only rank 0 writes checkpoints, metrics and MLflow.
    """
    info = hdist.setup(str(cfg.run.device))
    ok = False
    try:
        result = _train(cfg, info, source, tracker)
        ok = True
        return result
    finally:
        if ok:
            hdist.teardown(info)
        elif info.initialized_here and tdist.is_initialized():
            tdist.destroy_process_group()


def _train(
    cfg: DictConfig, info: hdist.DistInfo, source: Dataset | None, tracker: Any
) -> TrainResult:
    from hip import tracking

    task = str(cfg.task.type)
    seed = int(cfg.run.seed)
    seed_all(seed + info.rank)
    source = source or open_dataset(cfg.data)
    if info.is_main and source.num_samples(str(cfg.data.eval_split)) is None:
        # Said before training, not discovered after it: the run itself is still valid.
        print(
            f"warning: the data has no split {str(cfg.data.eval_split)!r}; the final evaluation "
            "is skipped (set data.eval_split to a split the data has)",
            file=sys.stderr,
            flush=True,
        )
    own_tracker = tracker is None
    if own_tracker:  # first, so that an unreachable MLflow fails before any work
        tracker = tracking.start_stage(cfg, _stage_of(cfg), is_main=info.is_main, source=source)
    try:
        result = _run(cfg, info, source, tracker, task, seed)
    except BaseException:
        if own_tracker:
            tracker.end("FAILED")
        raise
    if own_tracker:
        tracker.end("FINISHED")
    return result


def _run(
    cfg: DictConfig, info: hdist.DistInfo, source: Dataset, tracker: Any, task: str, seed: int
) -> TrainResult:
    model, meta = build_model(cfg, source)
    model.to(info.device)
    strategy = str(cfg.run.strategy)
    wrapped = hdist.wrap(model, info, strategy)
    if cfg.run.compile:
        wrapped = torch.compile(wrapped)
    bs, accum = int(cfg.data.batch_size), int(cfg.optim.grad_accum)
    global_batch = bs * info.world_size * accum
    lr = peak_lr(cfg.optim, global_batch)
    opt = build_optimizer(wrapped, cfg.optim, lr, info.device)
    sched = build_scheduler(opt, cfg.optim)
    generator = torch.Generator().manual_seed(seed * 1000 + info.rank)
    run_dir = Path(str(cfg.run.out)).expanduser().resolve()
    ckpt_dir = str(cfg.run.checkpoint_dir or run_dir / "checkpoints")
    resolved = to_dict(cfg)

    step, epoch, batch_in_epoch, samples_seen = 0, 0, 0, 0
    skipped_steps, corrupt_samples = 0, 0
    resume_from, payload = None, None
    if info.is_main:  # rank 0 picks the checkpoint (skipping corrupt ones), the others follow
        for stale in ckpt.remove_stale_temp(ckpt_dir):
            print(f"removed the temp file of an interrupted checkpoint write: {stale}", flush=True)
        resume_from, payload = ckpt.load_resume(str(cfg.run.resume), ckpt_dir)
    resume_from = hdist.broadcast_object(resume_from, info)
    if resume_from:
        if payload is None:
            payload = ckpt.load(str(resume_from))
        if info.is_main:
            print(f"resuming from {resume_from} (step {int(payload['step'])})", flush=True)
        if payload["model_meta"]["task"] != task:
            raise UserError(
                f"cannot resume {task} from {resume_from}: it is a {payload['model_meta']['task']} checkpoint"
            )
        _load_states(wrapped, opt, payload, info, strategy)
        sched.load_state_dict(payload["scheduler"])
        rngs = payload["rng"]
        if len(rngs) == info.world_size:
            ckpt.set_rng_state(rngs[info.rank], generator)
        else:  # world size changed: deterministic fresh streams per rank
            seed_all(seed + info.rank + 7919 * int(payload["step"]))
            generator.manual_seed(seed * 1000 + info.rank + 7919 * int(payload["step"]))
        step = int(payload["step"])
        pos = payload["data"]
        epoch, batch_in_epoch, samples_seen = (
            int(pos["epoch"]),
            int(pos["batch_in_epoch"]),
            int(pos["samples_seen"]),
        )
        counters = payload.get("counters") or {}
        skipped_steps = int(counters.get("skipped_steps", 0))
        corrupt_samples = int(counters.get("corrupt_samples", 0))
    last_ckpt: str | None = str(resume_from) if resume_from else None

    metrics_log = (
        MetricsLog(run_dir / "metrics.jsonl", keep_until_step=step if resume_from else None)
        if info.is_main
        else None
    )
    if info.is_main:
        tracker.log_params(
            {
                **resolved,
                "derived": {
                    "peak_lr": lr,
                    "global_batch": global_batch,
                    "world_size": info.world_size,
                },
            }
        )

    total = int(cfg.optim.total_steps)
    stop_at = cfg.run.stop_at_step
    clip = float(cfg.optim.grad_clip)
    on_nonfinite = str(cfg.run.on_nonfinite)
    max_skipped = int(cfg.run.max_skipped_steps)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    history: list[dict[str, Any]] = []
    batches_seen = 0
    data_iter = iter(
        infinite(
            source,
            str(cfg.data.split),
            bs,
            seed,
            info.rank,
            info.world_size,
            int(cfg.data.num_workers),
            epoch,
            batch_in_epoch,
            cfg.data.limit,
            pin_memory=info.device.type == "cuda",
        )
    )

    def save_now() -> str | None:
        state = {
            "model": _model_state(wrapped, info, strategy),
            "optimizer": _optim_state(wrapped, opt, info, strategy),
            "scheduler": sched.state_dict(),
            "rng": _gather_rng(info, generator),
            "data": {
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "samples_seen": samples_seen,
            },
            "counters": {"skipped_steps": skipped_steps, "corrupt_samples": corrupt_samples},
            "config": resolved,
            "model_meta": meta,
            "world_size": info.world_size,
        }
        if not info.is_main:
            return None
        return ckpt.save(state, ckpt_dir, step, keep_last=int(cfg.run.keep_last))

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=step,
        desc=_stage_of(cfg),
        disable=not (info.is_main and cfg.run.progress),
        leave=False,
    )
    timer = StepTimer()
    # Without a bar (logs, orchestrators), print a plain line every ~10% of the run instead.
    report_every = max(1, total // 10)
    try:
        wrapped.train()
        while step < total and not (stop_at is not None and step >= stop_at):
            loss_sum = torch.zeros((), device=info.device)
            bad_data = 0
            cur_lr = sched.get_last_lr()[0]
            for micro in range(accum):
                t0 = time.perf_counter()
                epoch, idx, batch = next(data_iter)
                timer.waited(time.perf_counter() - t0)
                bad_data += int(batch.pop("corrupt_samples", 0))
                batch_in_epoch = idx + 1
                batches_seen += 1
                batch = to_device(batch, info.device)
                sync = micro == accum - 1
                no_sync = isinstance(wrapped, nn.parallel.DistributedDataParallel) and not sync
                with wrapped.no_sync() if no_sync else contextlib.nullcontext():
                    with autocast(info.device, str(cfg.run.precision)):
                        loss = compute_loss(wrapped, batch, task, generator)
                    (loss / accum).backward()
                loss_sum += loss.detach().float()
            loss_mean = loss_sum / accum
            if info.distributed:  # one collective: the mean loss and the corrupt samples
                both = hdist.all_mean(
                    torch.stack([loss_mean, torch.full_like(loss_mean, float(bad_data))]), info
                )
                loss_mean, bad_data_t = both[0], both[1] * info.world_size
            gn_t, stepped = hstep.clip_and_step(
                params, opt, loss_mean, clip, on_device=strategy != "fsdp"
            )
            # The step's one read from the device, after its whole update is queued.
            queued = [loss_mean.float(), gn_t.float()]
            read = torch.stack(queued + ([bad_data_t] if info.distributed else [])).tolist()
            loss_val, gn = read[0], read[1]
            if info.distributed:
                bad_data = round(read[2])
            corrupt_samples += bad_data
            if not (math.isfinite(loss_val) and math.isfinite(gn)):
                # Non-finite loss or gradients: no optimizer or scheduler update for this batch
                # (a fused optimizer has already skipped it on the device).
                opt.zero_grad(set_to_none=True)
                what = (
                    f"loss is {loss_val}"
                    if not math.isfinite(loss_val)
                    else f"gradient norm is {gn}"
                )
                if on_nonfinite == "stop" or skipped_steps >= max_skipped:
                    why = (
                        ""
                        if on_nonfinite == "stop"
                        else f" after {skipped_steps} skipped step(s) (run.max_skipped_steps)"
                    )
                    raise TrainingDiverged(
                        f"{what} at step {step + 1}{why}; stopped without saving. Last good checkpoint: "
                        f"{last_ckpt or 'none yet'}. Try a lower optim.lr, a smaller optim.grad_clip or run.precision=fp32."
                    )
                skipped_steps += 1
                if info.is_main:
                    print(
                        f"warning: {what} at step {step + 1}; skipped without an update "
                        f"({skipped_steps} skipped so far, run.on_nonfinite=skip)",
                        file=sys.stderr,
                        flush=True,
                    )
                timer.finish(0)
                continue
            if not stepped:
                opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            samples_seen += global_batch
            record = {
                "step": step,
                "loss": loss_val,
                "lr": cur_lr,
                "grad_norm": gn,
                **timer.finish(global_batch),
                "memory_mb": memory_mb(info.device),
                "epoch": epoch,
                "skipped_steps": skipped_steps,
                "corrupt_samples": corrupt_samples,
            }
            history.append(record)
            if info.is_main:
                metrics_log.write(record)
                if step % int(cfg.run.log_every) == 0 or step == total:
                    tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
                bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{cur_lr:.2e}")
                if not cfg.run.progress and (step % report_every == 0 or step == total):
                    print(
                        f"{_stage_of(cfg)} step {step}/{total}: loss {loss_val:.4f}, lr {cur_lr:.2e}, "
                        f"{record.get('samples_per_s', 0.0):.0f} samples/s",
                        flush=True,
                    )
            bar.update(1)
            if step % int(cfg.run.checkpoint_every) == 0 or step == total:
                last_ckpt = save_now() or last_ckpt
                timer.finish(0)  # checkpoint time is not step time
        if (
            stop_at is not None
            and step >= stop_at
            and step < total
            and not (step % int(cfg.run.checkpoint_every) == 0)
        ):
            last_ckpt = save_now() or last_ckpt
    finally:
        bar.close()

    eval_metrics: dict[str, Any] = {}
    has_eval_split = source.num_samples(str(cfg.data.eval_split)) is not None
    if info.is_main and step >= total and has_eval_split:
        from hip.evaluate import evaluate_model

        eval_metrics = evaluate_model(
            hdist.unwrap(model) if strategy != "fsdp" else ckpt.load_model(last_ckpt)[0],
            source,
            task,
            split=str(cfg.data.eval_split),
            batch_size=int(cfg.data.eval_batch_size or bs),
            device=info.device if strategy != "fsdp" else torch.device("cpu"),
            max_batches=cfg.run.eval_batches,
            limit=cfg.data.limit,
            seed=seed,
        ).metrics
        tracker.log_metrics({f"eval_{k}": v for k, v in eval_metrics.items()}, step)
    if info.is_main:
        if last_ckpt:
            tracker.log_checkpoint(last_ckpt)
            if task != "mae" and cfg.task.benchmark:
                tracker.register_model(last_ckpt, str(cfg.task.benchmark))
        tracker.log_artifact(str(run_dir / "metrics.jsonl"))
    run_id = tracker.run_id
    return TrainResult(
        run_dir=str(run_dir),
        checkpoint=last_ckpt,
        step=step,
        history=history,
        batches_seen=batches_seen,
        eval_metrics=eval_metrics,
        run_id=run_id,
        rank=info.rank,
        world_size=info.world_size,
    )
