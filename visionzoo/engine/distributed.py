"""Process group set-up and the few collectives the loops need, through torch's own engine.

``torchrun --nproc_per_node N train.py ...`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
(read in :mod:`visionzoo._env`); :func:`init` then joins the group: NCCL on CUDA, gloo on CPU.
Every helper here is a no-op in a single process, so the loops call them unconditionally.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .. import _env

__all__ = ["DistInfo", "init", "wrap_ddp", "all_reduce_sum", "any_true", "gather_objects", "barrier", "shutdown"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``None`` picks CUDA when present, else CPU; ``cuda`` means this process's local GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init(device: str | None) -> DistInfo:
    rank, world_size, local_rank = _env.distributed_env()
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP; ``device_ids`` only for accelerators (DDP rejects them for CPU modules)."""
    if not info.distributed:
        return model
    device_ids = [info.device] if info.device.type != "cpu" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values, info: DistInfo) -> list[float]:
    """Sum a list of numbers over ranks (float64 on the process group's device)."""
    if not info.distributed:
        return [float(v) for v in values]
    dev = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_true(flags, info: DistInfo) -> list[bool]:
    """Element-wise OR of boolean flags over ranks (so that every rank takes the same branch)."""
    return [v > 0 for v in all_reduce_sum([1.0 if f else 0.0 for f in flags], info)]


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
