"""One rank's place in its tensor-parallel group, and the collectives the model calls.

A model built with `TensorParallel(rank, size)` holds the rank's share of every split tensor
(attention heads, MLP columns, vocabulary rows) and calls `all_reduce` after each row-split
projection and `all_gather` for the logits. `SINGLE` (size 1) makes every collective a no-op,
so the one-device model is the same code with no communication.

Invariants: every rank of a group calls the same collectives in the same order with tensors of
the same shape (the group runs one step plan, in lockstep); the collectives run on
torch.distributed's default process group, which `init_group` sets up with a timeout, so a
dead rank turns into an error on the others rather than a hang.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} of a group of {self.size}")

    @property
    def is_split(self) -> bool:
        return self.size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's `x`, in place."""
        if self.is_split:
            dist.all_reduce(x)
        return x

    def agree_on_min(self, value: int, device: torch.device) -> int:
        """The smallest of every rank's `value` (sizes every rank must share)."""
        if not self.is_split:
            return value
        smallest = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        return int(smallest.item())

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's `x` (same shape on all) concatenated along `dim`, in rank order."""
        if not self.is_split:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)


SINGLE = TensorParallel()


def init_group(parallel: TensorParallel, init_method: str, device: torch.device,
               timeout_s: float) -> None:
    """Joins this process to its group's default process group: NCCL on CUDA, gloo on CPU.
    Collectives that wait longer than `timeout_s` raise (a rank died or hangs)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu":
        # The ranks share the machine's cores: each taking all of them for its intra-op threads
        # oversubscribes it, and a collective then waits for whichever rank was descheduled.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel.size))
    # NVLink multicast (NVLS) makes NCCL reserve memory and hang on some hosts; off unless the
    # operator turns it on explicitly.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    dist.init_process_group(backend, init_method=init_method, rank=parallel.rank,
                            world_size=parallel.size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
