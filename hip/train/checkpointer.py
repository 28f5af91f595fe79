"""The trainer's checkpoint component: a TrainState plus model, optimizer, scheduler and RNGs.

The file format (atomic writes, CRC checks, `weights_only` loading, keep-last-k, local or
``s3://`` through :mod:`hip.storage`) is :mod:`hip.checkpoint`'s. This module alone knows
what a training checkpoint holds, how `run.resume` picks one, and the DDP / FSDP2
state-dict details (full state dicts gathered to rank 0, optimizer states keyed by index
under DDP and by name under FSDP2, converted when a run switches between them).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from hip import checkpoint as ckpt
from hip import distributed as hdist
from hip.errors import UserError
from hip.train.optim import optim_state_to_indices, optim_state_to_names, param_order


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint stores besides the modules' own states."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (the data position)
    samples_seen: int = 0
    skipped_steps: int = 0  # non-finite steps dropped (run.on_nonfinite=skip)
    corrupt_samples: int = 0  # samples lost to unreadable data

    def to_payload(self) -> dict[str, Any]:
        """The checkpoint's `data` and `counters` entries (the format since version 1)."""
        return {
            "data": {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "samples_seen": self.samples_seen,
            },
            "counters": {
                "skipped_steps": self.skipped_steps,
                "corrupt_samples": self.corrupt_samples,
            },
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainState:
        """Read back what :meth:`to_payload` (and ``ckpt.save``'s step) wrote."""
        data, counters = payload["data"], payload.get("counters") or {}
        return cls(
            step=int(payload["step"]),
            epoch=int(data["epoch"]),
            batch_in_epoch=int(data["batch_in_epoch"]),
            samples_seen=int(data["samples_seen"]),
            skipped_steps=int(counters.get("skipped_steps", 0)),
            corrupt_samples=int(counters.get("corrupt_samples", 0)),
        )


@dataclass
class Checkpointer:
    """Saves and restores a run's TrainState, modules and RNG streams in `folder`."""

    folder: str  # local path or s3:// prefix
    info: hdist.DistInfo
    strategy: str = "ddp"  # ddp | fsdp
    keep_last: int | None = None
    resume: str = "auto"  # auto | never | PATH
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # config, model_meta

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
        seed: int,
    ) -> tuple[TrainState, str | None]:
        """Load the checkpoint `resume` names into the modules; (state, path) or a fresh state.

        Rank 0 picks the checkpoint (`auto`: the newest intact one, removing the temp files of
        interrupted writes); the other ranks load the same file.
        """
        path, payload = None, None
        if self.info.is_main:
            for stale in ckpt.remove_stale_temp(self.folder):
                print(
                    f"removed the temp file of an interrupted checkpoint write: {stale}", flush=True
                )
            path, payload = ckpt.load_resume(self.resume, self.folder)
        path = hdist.broadcast_object(path, self.info)
        if not path:
            return TrainState(), None
        payload = payload if payload is not None else ckpt.load(str(path))
        if self.info.is_main:
            print(f"resuming from {path} (step {int(payload['step'])})", flush=True)
        want, have = self.extra["model_meta"]["task"], payload["model_meta"]["task"]
        if have != want:
            raise UserError(f"cannot resume {want} from {path}: it is a {have} checkpoint")
        self._load_modules(model, optimizer, payload)
        scheduler.load_state_dict(payload["scheduler"])
        state = TrainState.from_payload(payload)
        rngs = payload["rng"]
        if len(rngs) == self.info.world_size:
            ckpt.set_rng_state(rngs[self.info.rank], generator)
        else:  # the world size changed: deterministic fresh streams per rank
            seed_all(seed + self.info.rank + 7919 * state.step)
            generator.manual_seed(seed * 1000 + self.info.rank + 7919 * state.step)
        return state, str(path)

    def save(
        self,
        state: TrainState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
    ) -> str | None:
        """Write a checkpoint of step `state.step` (every rank takes part; rank 0 writes)."""
        payload = {
            "model": self._model_state(model),
            "optimizer": self._optim_state(model, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": self._gather_rng(generator),
            **state.to_payload(),
            **self.extra,
            "world_size": self.info.world_size,
        }
        if not self.info.is_main:
            return None
        return ckpt.save(payload, self.folder, state.step, keep_last=self.keep_last)

    # -- DDP / FSDP2 details ------------------------------------------------------------------
    @property
    def _sharded(self) -> bool:
        return self.info.distributed and self.strategy == "fsdp"

    def _gather_rng(self, generator: torch.Generator) -> list[dict[str, Any]]:
        state = ckpt.rng_state(generator)
        if not self.info.distributed:
            return [state]
        states: list[Any] = [None] * self.info.world_size
        tdist.all_gather_object(states, state)
        return states

    def _model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(model, options=opts)
        return {k: v.detach().cpu() for k, v in hdist.unwrap(model).state_dict().items()}

    def _optim_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(model, optimizer, options=opts)
        return optimizer.state_dict()

    def _load_modules(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, payload: dict[str, Any]
    ) -> None:
        state = payload["optimizer"]
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(model, payload["model"], options=opts)
            if state["state"] and all(isinstance(k, int) for k in state["state"]):  # from DDP
                state = optim_state_to_names(state, param_order(model, optimizer))
            set_optimizer_state_dict(model, optimizer, state, options=opts)
            return
        hdist.unwrap(model).load_state_dict(payload["model"])
        if state["state"] and all(isinstance(k, str) for k in state["state"]):  # from FSDP
            state = optim_state_to_indices(state, param_order(hdist.unwrap(model), optimizer))
        optimizer.load_state_dict(state)
