"""Multi-process runs with PyTorch's own stack: `torchrun` sets the environment, we join it.

    torchrun --nproc_per_node=N -m ddim train …     data-parallel training (DDP)
    torchrun --nproc_per_node=N -m ddim sample …    each rank samples its own share of indices

Outside torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process.
The backend is NCCL when the device is CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (idempotent); returns this rank's device.

    On CUDA each process takes the GPU of its LOCAL_RANK; on the CPU the device is unchanged.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(n: int) -> range:
    """This rank's contiguous share of the indices 0 … n−1 (sizes differ by at most one)."""
    r, w = rank(), world_size()
    return range(r * n // w, (r + 1) * n // w)


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (float64); the identity for one process."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's (n_r, …) CPU tensor, concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return x
    parts: list[torch.Tensor | None] = [None] * world_size()
    dist.all_gather_object(parts, x)  # pickles, between this run's own processes only
    return torch.cat(parts)


def gather_to_main(x: torch.Tensor) -> torch.Tensor | None:
    """Concatenate every rank's (n_r, …) CPU tensor in rank order on rank 0 (None elsewhere)."""
    if not dist.is_initialized():
        return x
    parts: list[torch.Tensor | None] = [None] * world_size() if is_main() else []
    dist.gather_object(x, parts if is_main() else None, dst=0)
    return torch.cat(parts) if is_main() else None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
