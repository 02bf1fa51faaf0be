"""Ranks 1..N-1 of a tensor-parallel worker group: each a process that rank 0 started, running
the plans rank 0 sends over its link (rank_link.py) on its share of the model, and nothing
else. A follower's steps are rank 0's, so its results are dropped: rank 0 alone answers the
scheduler.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from radixmesh.services.worker.base import LaunchedStep
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.memory import resolve_device
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.parallel.rank_link import (
    FINISH,
    LAUNCH,
    READY,
    backed_up_message,
    plan_of,
)
from radixmesh.services.worker.parallel.tensor_parallel import (
    TensorParallel,
    init_group,
    leave_group,
)
from radixmesh.services.worker.request_table import PlanError

logger = logging.getLogger(__name__)


def group_device(config: WorkerConfig, rank: int) -> torch.device:
    """Rank r computes on cuda:(--base-gpu-id + r) on a GPU machine, on the CPU otherwise."""
    device = resolve_device(config.device)
    return torch.device("cuda", config.base_gpu_id + rank) if device.type == "cuda" else device


def follower_main(rank: int, config: WorkerConfig, model_path: Path, init_method: str,
                  pipe: Connection) -> None:
    """A follower process's whole life: join the group, load the rank's share, then run what
    rank 0 sends until the pipe ends."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s tp-rank-{rank}: %(message)s")
    # Rank 0 alone decides when the group ends (it closes the pipe): a Ctrl-C or SIGTERM sent
    # to the whole process group must not take a rank away while rank 0 shuts down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parallel = TensorParallel(rank, config.tp_size)
    device = group_device(config, rank)
    init_group(parallel, init_method, device, config.tp_timeout)
    try:
        runner = ModelRunner(config, model_path, parallel, device=str(device))
        pipe.send_bytes(READY)
        follow(runner, pipe)
        runner.close()
    finally:
        leave_group()


def follow(runner: ModelRunner, pipe: Connection) -> None:
    launched: deque[LaunchedStep] = deque()
    while True:
        try:
            message = pipe.recv_bytes()
        except (EOFError, ConnectionResetError):
            return  # rank 0 closed the group (or is gone)
        if message[:1] == LAUNCH:
            try:
                launched.append(runner.launch(plan_of(message)))
            except PlanError:
                pass  # rank 0 raised the same error from the same state: it finishes nothing
        elif message == FINISH:
            result = runner.finish(launched.popleft())
            try:
                pipe.send_bytes(backed_up_message(result.backed_up_through))
            except (BrokenPipeError, ConnectionResetError):
                return  # rank 0 closed the group after its last finish
        else:
            raise ValueError(f"unknown tensor-parallel message {message[:8]!r}")
