"""Process groups under torchrun: device choice, DDP / FSDP2 wrapping, rank-0 helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from hip.errors import UserError


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:<local rank> when CUDA is available, else cpu."""
    if name == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"run.device={name!r} but CUDA is not available here; use auto or cpu")
        suffix = name.split(":", 1)[1] if ":" in name else str(local_rank)
        if not suffix.isdigit():
            raise UserError(f"run.device={name!r}: use auto, cpu, cuda or cuda:N")
        index = int(suffix)
        if index >= torch.cuda.device_count():
            raise UserError(
                f"run.device={name!r}: no CUDA device {index} (this machine has "
                f"{torch.cuda.device_count()})"
            )
        return torch.device(f"cuda:{index}")
    return torch.device(name)


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if WORLD_SIZE > 1 (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if world > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
        here = True
    return DistInfo(
        rank=rank, world_size=world, local_rank=local, device=dev, initialized_here=here
    )


def teardown(info: DistInfo) -> None:
    """Leave the process group if this process created it."""
    if info.initialized_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """DDP (or FSDP2 `fully_shard` per HiP block, then the root) when distributed."""
    if not info.distributed:
        return model
    if strategy == "fsdp":
        import warnings

        from torch.distributed.fsdp import fully_shard

        # MAE returns a scalar loss inside a dataclass; nothing modifies it in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        for module in model.modules():
            if type(module).__name__ == "HiPBlock":
                fully_shard(module)
        fully_shard(model)
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a scalar tensor over ranks (identity when not distributed)."""
    if not info.distributed:
        return value
    v = value.detach().float().clone()
    dist.all_reduce(v)
    return v / info.world_size


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's Python object on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
