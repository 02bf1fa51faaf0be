"""A tensor-parallel worker group as one ModelWorker: rank 0 serves the scheduler and drives
ranks 1..N-1, processes it starts, each running the same plans on its share of the model.

Rank 0 sends each follower every call that changes a runner's state, in order, as bytes on a
pipe (rank_link.py): "launch this plan" and "finish the oldest step", so every
rank makes the same calls, and so the same collectives, in the same order. A pipe rather than a
collective: a follower waits for the next plan as long as the mesh stays idle, and learns that
rank 0 is gone from the pipe's end rather than from a timeout.

A group fails whole: a follower that exits makes rank 0 exit at once (so supervision restarts
the group, and the scheduler fails the group's requests as for any lost worker); rank 0 that
exits closes the pipes, and the followers leave. Collectives time out (`--tp-timeout`), so a
rank that hangs is a failure too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from multiprocessing.connection import Connection, wait
from pathlib import Path

from radixmesh.services.worker.base import LaunchedStep, ModelWorker
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.parallel.follower import follower_main, group_device
from radixmesh.services.worker.parallel.rank_link import (
    FINISH,
    READY,
    backed_up_of,
    launch_message,
)
from radixmesh.services.worker.parallel.tensor_parallel import (
    TensorParallel,
    init_group,
    leave_group,
)
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo

logger = logging.getLogger(__name__)
FOLLOWER_LOST_EXIT = 70  # rank 0's exit status when a follower is gone


class TensorParallelWorker(ModelWorker):
    name = "model"

    def __init__(self, config: WorkerConfig, model_path: Path) -> None:
        size = config.tp_size
        # The ranks meet through a file store: one host, no port to pick (a group across
        # hosts would meet at --dist-init-addr, as SGLang's do; not built).
        self._store_dir = tempfile.mkdtemp(prefix="radixmesh-tp-")
        init_method = f"file://{self._store_dir}/store"
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._closing = threading.Event()
        self._followers: list[multiprocessing.process.BaseProcess] = []
        for rank in range(1, size):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=follower_main, name=f"tp-rank-{rank}", daemon=True,
                args=(rank, config, model_path, init_method, theirs))
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._followers.append(process)
        parallel = TensorParallel(0, size)
        init_group(parallel, init_method, group_device(config, 0), config.tp_timeout)
        self.runner = ModelRunner(config, model_path, parallel,
                                  device=str(group_device(config, 0)))
        for pipe, process in zip(self._pipes, self._followers, strict=True):
            if pipe.recv_bytes() != READY:  # EOFError if it died while loading
                raise RuntimeError(f"{process.name} did not start")
        # Each follower's newest step with all its host backups in place (as it last said).
        self._backed_up = [0] * len(self._pipes)
        self.on_gpu = self.runner.on_gpu
        threading.Thread(target=self._watch_followers, name="tp-watch", daemon=True).start()
        logger.info("tensor-parallel group of %d ranks ready", size)

    def info(self) -> WorkerInfo:
        return self.runner.info()

    @property
    def num_requests(self) -> int:
        return self.runner.num_requests

    def execute(self, plan: StepPlan) -> StepResult:
        return self.finish(self.launch(plan))

    def launch(self, plan: StepPlan) -> LaunchedStep:
        self._send(launch_message(plan))
        return self.runner.launch(plan)

    def finish(self, step: LaunchedStep) -> StepResult:
        self._send(FINISH)
        result = self.runner.finish(step)
        # The scheduler may reuse a host slot's pages only once every rank's part has landed.
        for index, pipe in enumerate(self._pipes):
            while pipe.poll():
                self._backed_up[index] = backed_up_of(pipe.recv_bytes())
        result.backed_up_through = min(result.backed_up_through, *self._backed_up)
        return result

    def close(self) -> None:
        """Ends the followers, then this rank's part. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()  # before the followers leave: the watcher then lets them go
        for pipe in self._pipes:
            while pipe.poll():  # unread progress reports would make the close a reset
                pipe.recv_bytes()
            pipe.close()  # the followers' cue to leave
        for process in self._followers:
            process.join(timeout=10)
        self._pipes.clear()
        self.runner.close()
        leave_group()
        shutil.rmtree(self._store_dir, ignore_errors=True)

    def _send(self, message: bytes) -> None:
        for pipe in self._pipes:
            pipe.send_bytes(message)

    def _watch_followers(self) -> None:
        """Ends this process as soon as any follower ends: the group cannot step without it,
        and a collective would only find out at its timeout."""
        wait([process.sentinel for process in self._followers])
        if self._closing.is_set():
            return
        gone = [f"{p.name} (exit {p.exitcode})" for p in self._followers if not p.is_alive()]
        logger.error("tensor-parallel rank lost: %s; the group stops", ", ".join(gone))
        os._exit(FOLLOWER_LOST_EXIT)
