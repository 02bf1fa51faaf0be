"""Runs a Scheduler against a NullWorker to completion, checking pages at every step."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.requests import FinishReason, TokenizedRequest, Usage
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo

VOCAB = 64
EOS = 2


def worker_info(num_pages: int, page_size: int = 1, max_running: int = 64,
                context_len: int = 4096) -> WorkerInfo:
    return WorkerInfo(model_id="null", num_pages=num_pages, page_size=page_size,
                      context_len=context_len, vocab_size=VOCAB, eos_token_ids=(EOS,),
                      kv_dtype="float32", max_running_requests=max_running)


@dataclass
class Run:
    outputs: dict[str, list[int]] = field(default_factory=dict)
    finishes: dict[str, FinishReason] = field(default_factory=dict)
    usages: dict[str, Usage] = field(default_factory=dict)
    plans: list[StepPlan] = field(default_factory=list)
    max_inflight: int = 0


class Driver:
    def __init__(self, info: WorkerInfo, **config: object) -> None:
        self.scheduler = Scheduler(SchedulerConfig(**config), info)
        self.worker = NullWorker(info, check_pages=True)

    def add(self, rid: str, prompt: list[int], max_new_tokens: int, cache_salt: str | None = None,
            **sampling: object) -> None:
        params = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
        self.scheduler.add_request(TokenizedRequest(rid, tuple(prompt), params,
                                                    cache_salt=cache_salt))

    def run(self, max_steps: int = 100_000, run: Run | None = None,
            pipelined: bool = False) -> Run:
        """Pipelined: like the scheduler service, plan step N+1 before processing result N."""
        run = run or Run()
        depth = 2 if pipelined else 1
        inflight: deque[StepResult] = deque()
        for _ in range(max_steps):
            if not self.scheduler.has_work and not inflight:
                break
            plan = self.scheduler.schedule() if self.scheduler.has_work else None
            if plan is not None:
                run.plans.append(plan)
                inflight.append(self.worker.execute(plan))
                run.max_inflight = max(run.max_inflight, self.scheduler.num_inflight)
            assert inflight, "a scheduler with work and nothing in flight must plan"
            if plan is None or len(inflight) >= depth:
                self._process(inflight.popleft(), run)
        assert not self.scheduler.has_work and not inflight, "did not finish within max_steps"
        self.scheduler.check_integrity()
        assert self.worker.num_requests == 0
        return run

    def _process(self, result: StepResult, run: Run) -> None:
        for delta in self.scheduler.process_result(result):
            run.outputs.setdefault(delta.rid, []).extend(delta.token_ids)
            if delta.finish is not None:
                run.finishes[delta.rid] = delta.finish
            if delta.usage is not None:
                run.usages[delta.rid] = delta.usage

    def expected_output(self, num_tokens: int) -> list[int]:
        return [self.worker.token_at(n) for n in range(num_tokens)]
