"""The whole pipeline in one process: tokenizer -> scheduler <-> worker -> detokenizer.

The same objects the services wrap, wired by direct calls instead of gRPC streams. `offline`
and the benchmarks use it; tests use it to hold the engine against HF transformers.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from radixmesh.make_model import default_model_path
from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.tokenizer.request_builder import RequestBuilder
from radixmesh.services.worker.base import LaunchedStep
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.worker_registry import model_path_of
from radixmesh.shared.requests import FinishReason, TextDelta, Usage
from radixmesh.shared.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class Completion:
    """What one request produced, accumulated from its deltas."""

    rid: str
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish: FinishReason | None = None
    usage: Usage | None = None


class Engine:
    def __init__(self, worker_config: WorkerConfig | None = None,
                 scheduler_config: SchedulerConfig | None = None) -> None:
        worker_config = worker_config or WorkerConfig()
        if worker_config.model_path is None:
            worker_config = dataclasses.replace(worker_config, model_path=str(default_model_path()))
        scheduler_config = scheduler_config or SchedulerConfig()
        model_path = model_path_of(worker_config)
        self.runner = ModelRunner(worker_config, model_path)
        self.info = self.runner.info()
        self.scheduler = Scheduler(scheduler_config, self.info)
        self.tokenizer = load_tokenizer(model_path)
        self.builder = RequestBuilder(self.tokenizer, self.info.vocab_size, self.info.context_len,
                                      self.info.max_total_tokens)
        self.detokenizer = Detokenizer(self.tokenizer) if self.tokenizer is not None else None
        self._num_generated = 0
        self._inflight: LaunchedStep | None = None  # launched, its result not processed yet

    def submit(self, rid: str, body: dict) -> None:
        """Validates, tokenizes and queues one request; raises InvalidRequestError if it is bad."""
        request = self.builder.build(rid, body)
        self.scheduler.add_request(request)
        if self.detokenizer is not None:
            self.detokenizer.add_request(rid, request.sampling.stop, request.input_ids)

    def abort(self, rid: str) -> None:
        delta = self.scheduler.abort(rid)
        if delta is not None and self.detokenizer is not None:
            self.detokenizer.release(rid)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._inflight is not None

    def step(self) -> list[TextDelta]:
        """Plans and launches the next step, then finishes the one launched before it (as the
        mesh's worker does: the device runs step N while step N + 1 is planned and queued);
        returns the text deltas of the finished step."""
        plan = self.scheduler.schedule()
        launched = self.runner.launch(plan) if plan is not None else None
        finished, self._inflight = self._inflight, launched
        if finished is None:
            return []
        token_deltas = self.scheduler.process_result(self.runner.finish(finished))
        if self.detokenizer is None:
            return [TextDelta(d.rid, "", d.token_ids, d.finish, d.usage) for d in token_deltas]
        text_deltas = self.detokenizer.feed(token_deltas)
        for delta in text_deltas:
            if delta.finish is not None:
                # A stop string matched: the scheduler runs the request until it is told.
                ended = self.scheduler.abort(delta.rid, delta.finish)
                if ended is not None:
                    delta.usage = ended.usage
                self.detokenizer.release(delta.rid)
        return text_deltas

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

    def run_until_done(self, completions: dict[str, Completion], on_finish=None) -> None:
        while self.has_work:
            for delta in self.step():
                completion = completions[delta.rid]
                completion.output_ids.extend(delta.token_ids)
                completion.text += delta.text
                if delta.finish is not None:
                    completion.finish, completion.usage = delta.finish, delta.usage
                    if on_finish is not None:
                        on_finish(completion)

