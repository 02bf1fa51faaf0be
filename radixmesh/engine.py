"""The whole pipeline in one process, composed of the objects the services run.

The front door's RequestBuilder validates and tokenizes; the scheduler service's SchedulerLoop
plans, pipelines and keeps its bookkeeping; the worker registry's ModelWorker executes; the
detokenizer service's BatchDetokenizer turns each TokenBatch into text deltas. Where the mesh
has a gRPC stream between two of them, the engine hands the loop an in-process callable, so
the calling order is the services' own: step N + 1 is launched before step N's result is
read, exactly as the Worker service does with a pipelined scheduler. `offline` and the
benchmarks use it; tests use it to hold the engine against HF transformers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from radixmesh.make_model import default_model_path
from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.loop import SchedulerLoop
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.base import LaunchedStep
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.worker_registry import build_worker, model_path_of
from radixmesh.shared.cli_args import add_config_arguments, config_from_args
from radixmesh.shared.completion import TextCompletion
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.request_builder import RequestBuilder
from radixmesh.shared.requests import TextDelta
from radixmesh.shared.step import StepPlan, StepResult
from radixmesh.shared.token_batch import TokenBatch
from radixmesh.shared.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)
T = TypeVar("T")


# What one request produced: the shared accumulator over the cores' TextDeltas.
Completion = TextCompletion


class Engine:
    """A synchronous face over the async SchedulerLoop: each call runs the loop's coroutines
    to completion on a private event loop (none of the in-process callables ever waits).

    Invariants: every submitted request yields exactly one finishing delta from `step`, unless
    the caller aborts it first, after which it yields nothing; the fields of the configs that
    only a service process uses (`SERVICE_FIELDS`: where it listens, where its peers are) are
    ignored.
    """

    def __init__(self, worker_config: WorkerConfig | None = None,
                 scheduler_config: SchedulerConfig | None = None) -> None:
        worker_config = worker_config or WorkerConfig()
        if worker_config.model_path is None:
            worker_config = dataclasses.replace(worker_config, model_path=str(default_model_path()))
        scheduler_config = scheduler_config or SchedulerConfig()
        self.runner = build_worker(worker_config)
        self.info = self.runner.info()
        self.scheduler = Scheduler(scheduler_config, self.info)
        self.tokenizer = load_tokenizer(model_path_of(worker_config))
        self.builder = RequestBuilder(self.tokenizer, self.info.vocab_size, self.info.context_len,
                                      self.info.max_total_tokens)
        self.detokenizer = BatchDetokenizer(self.tokenizer)
        self.loop = SchedulerLoop(self.scheduler, self._launch, self._finish, self._publish,
                                  scheduler_config.max_inflight_steps)
        self._launched: deque[LaunchedStep] = deque()  # in launch order, not finished yet
        self._live: set[str] = set()       # submitted, not finished, not aborted by the caller
        self._deltas: list[TextDelta] = []  # published, not returned by `step` yet
        self._num_generated = 0
        self._aio = asyncio.new_event_loop()
        weakref.finalize(self, self._aio.close)

    # ---- the loop's peers, in process ------------------------------------------------------

    async def _launch(self, plan: StepPlan) -> None:
        self._launched.append(self.runner.launch(plan))

    async def _finish(self) -> StepResult:
        return self.runner.finish(self._launched.popleft())

    async def _publish(self, batch: TokenBatch) -> None:
        for delta in self.detokenizer.round(batch):
            if delta.rid not in self._live:  # the caller aborted it: it hears nothing more
                continue
            if delta.finish is not None:
                self._live.discard(delta.rid)
                if delta.ends_on_stop_string:
                    self.loop.abort(delta.rid)
            self._deltas.append(delta)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._aio.run_until_complete(coroutine)

    # ---- the public, synchronous API -------------------------------------------------------

    def submit(self, rid: str, body: dict) -> None:
        """Validates, tokenizes and queues one request; raises InvalidRequestError if it is bad."""
        if rid in self._live:
            raise InvalidRequestError("rid", f"request id {rid!r} is already in use")
        request = self.builder.build(rid, body)
        self._live.add(rid)
        self.loop.submit([request])

    def abort(self, rid: str) -> None:
        """Ends a request now and frees its pages; it yields no more deltas. Unknown: no-op."""
        self._live.discard(rid)
        self.loop.abort(rid)
        self._run(self.loop.flush())  # the detokenizer lets go of it now, not at the next step

    @property
    def has_work(self) -> bool:
        return bool(self._live) or self.scheduler.has_work or self.loop.num_inflight > 0

    def step(self) -> list[TextDelta]:
        """One turn of the scheduler loop (launch the next step, finish the oldest one), then
        the detokenizer's round over its tokens; returns the text deltas that came out."""
        self._run(self._turn())
        deltas, self._deltas = self._deltas, []
        return deltas

    async def _turn(self) -> None:
        await self.loop.turn()
        await self.loop.flush()

    def generate(self, bodies: list[dict]) -> list[Completion]:
        """Runs `bodies` to completion (each must be valid) and returns them in order."""
        completions = {}
        for body in bodies:
            self._num_generated += 1
            rid = f"generate-{self._num_generated}"
            self.submit(rid, body)
            completions[rid] = Completion(rid)
        self.run_until_done(completions)
        return list(completions.values())

    def run_until_done(self, completions: dict[str, Completion],
                       on_finish: Callable[[Completion], None] | None = None) -> None:
        while self.has_work:
            for delta in self.step():
                completion = completions[delta.rid]
                completion.add(delta)
                if delta.finish is not None and on_finish is not None:
                    on_finish(completion)


# ---- the engine's flags: the worker's and the scheduler's, less the service-only ones ------

def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, WorkerConfig, skip=WorkerConfig.SERVICE_FIELDS)
    add_config_arguments(parser, SchedulerConfig, skip=SchedulerConfig.SERVICE_FIELDS)


def engine_configs_from_args(args: argparse.Namespace) -> tuple[WorkerConfig, SchedulerConfig]:
    """Raises ValueError for a flag a config rejects."""
    return config_from_args(WorkerConfig, args), config_from_args(SchedulerConfig, args)
