"""Process-group setup for torchrun: one process per device, NCCL on CUDA, Gloo on CPU; a plain process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process sits: its global `rank` of `world_size`, its `local_rank` on the node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool


def init_distributed() -> DistEnv:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    Without those variables this is a single process on `cuda:0` when CUDA is available, else the CPU.
    Under torchrun each process takes GPU `local_rank`; on a CPU-only machine the processes share the CPU over Gloo.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistEnv(rank=0, world_size=1, local_rank=0, device=device, is_main=True)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # device_id binds the NCCL communicator to this GPU now, instead of guessing it at the first collective
        dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, is_main=rank == 0)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
