"""Device and distributed setup, in one small module: the only place that knows about torchrun.

`setup()` autodetects the device and, when started by torchrun (RANK, LOCAL_RANK and WORLD_SIZE
in the environment), joins the process group: gloo on CPU, NCCL on CUDA. One process per rank;
rank 0 is the master and the only one that writes files or prints (`print0`). Single-process
runs need no process group, and every helper here works the same in both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from cfglab.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank, 0..world_size-1
    local_rank: int  # rank on this node (picks the GPU)
    world_size: int
    device: torch.device

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when started by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (
        int(os.environ["RANK"]),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ["WORLD_SIZE"]),
    )


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU if CUDA is available, else the CPU. Otherwise the named device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device is {name!r} but CUDA is not available; use auto or cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun, start the process group (once per process)."""
    env = torchrun_env()
    if env is None:
        return DistInfo(0, 0, 1, pick_device(device))
    rank, local_rank, world_size = env
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch_dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank, local_rank, world_size, dev)


def cleanup() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_master() -> bool:
    return not torch_dist.is_initialized() or torch_dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print on the master rank only."""
    if is_master():
        print(*args, **kwargs)


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (in place; identity for one process)."""
    if torch_dist.is_initialized():
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
        x /= torch_dist.get_world_size()
    return x


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's boolean on every rank (e.g. 'stop now' after Ctrl-C or a NaN)."""
    if not torch_dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch_dist.broadcast(t, src=0)
    return bool(t.item())


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank."""
    if not torch_dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item())


def unwrap(model: nn.Module) -> nn.Module:
    """The raw model under DDP and/or torch.compile wrappers (what checkpoints save)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def local_batch(global_batch: int, world_size: int) -> int:
    """Windows per rank per step; the global batch stays fixed for any world size."""
    if global_batch % world_size:
        raise ConfigError(
            f"train.batch_size {global_batch} is not divisible by the world size "
            f"{world_size}; pick a batch that is a multiple of the number of "
            "processes"
        )
    return global_batch // world_size
