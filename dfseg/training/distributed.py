"""Multi-process (DDP) pieces the bundles wire: which rank writes, process-group set-up, per-rank device.

Outside ``torchrun`` every function behaves as for a single process that is rank 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from dfseg.errors import InputError

__all__ = ["ddp", "destroy_distributed", "handlers_for_rank", "init_distributed", "is_rank0", "local_rank",
           "rank_device"]


def is_rank0() -> bool:
    """True without DDP and on rank 0: the process that writes checkpoints, logs and TensorBoard."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def handlers_for_rank(handlers: Sequence[Any], rank0_handlers: Sequence[Any]) -> list:
    """``handlers`` then ``rank0_handlers`` on rank 0 (or without DDP); ``handlers`` alone on other ranks.

    The bundles list logging and TensorBoard handlers under ``rank0_handlers``, so one process writes them.
    """
    return [*handlers, *(rank0_handlers if is_rank0() else ())]


def init_distributed() -> None:
    """Join the ``torchrun`` process group (NCCL on CUDA, gloo on CPU) and select this process's GPU
    (:func:`rank_device`: the local rank's, so several nodes work)."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(rank_device())


def local_rank() -> int:
    """This process's index on its own machine: ``LOCAL_RANK``, which ``torchrun`` sets (0 without it).

    On more than one node the global rank counts processes across machines (node 1's first process is
    rank ``nproc_per_node``), so only the local rank names a GPU of this machine.
    """
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        rank = int(value)
    except ValueError:
        raise InputError("LOCAL_RANK", f"expected a non-negative integer, got {value!r}") from None
    if rank < 0:
        raise InputError("LOCAL_RANK", f"expected a non-negative integer, got {value!r}")
    return rank


def rank_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU.

    Raises:
        InputError: ``LOCAL_RANK`` is not an index, or names a GPU this machine does not have (more
            processes per node than GPUs: ``--nproc_per_node`` at most ``torch.cuda.device_count()``).
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise InputError(f"LOCAL_RANK {index}", f"this machine has {count} CUDA device(s); "
                         f"start at most {count} processes per node (torchrun --nproc_per_node)")
    return torch.device(f"cuda:{index}")


def ddp(network: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``network`` moved to ``device`` and wrapped in ``DistributedDataParallel`` (device ids on CUDA only)."""
    device_ids = [device] if torch.cuda.is_available() else None
    return torch.nn.parallel.DistributedDataParallel(network.to(device), device_ids=device_ids)


def destroy_distributed() -> None:
    """Leave the process group, if one was joined, once every rank has reached this point.

    Without the barrier a rank that finishes first can tear down gloo's connections while another
    still uses them, and that rank aborts ("terminate called without an active exception").
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
