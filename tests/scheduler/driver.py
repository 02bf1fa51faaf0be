"""Runs a Scheduler against a NullWorker to completion, checking pages at every step."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.requests import FinishReason, TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan, WorkerInfo

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
    plans: list[StepPlan] = field(default_factory=list)


class Driver:
    def __init__(self, info: WorkerInfo, **config: object) -> None:
        self.scheduler = Scheduler(SchedulerConfig(**config), info)
        self.worker = NullWorker(info, check_pages=True)

    def add(self, rid: str, prompt: list[int], max_new_tokens: int, **sampling: object) -> None:
        params = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
        self.scheduler.add_request(TokenizedRequest(rid, tuple(prompt), params))

    def run(self, max_steps: int = 100_000, run: Run | None = None) -> Run:
        run = run or Run()
        for _ in range(max_steps):
            if not self.scheduler.has_work:
                break
            plan = self.scheduler.schedule()
            assert plan is not None, "a scheduler with work must plan"
            run.plans.append(plan)
            for delta in self.scheduler.process_result(self.worker.execute(plan)):
                run.outputs.setdefault(delta.rid, []).extend(delta.token_ids)
                if delta.finish is not None:
                    run.finishes[delta.rid] = delta.finish
        assert not self.scheduler.has_work, "did not finish within max_steps"
        self.scheduler.check_integrity()
        assert self.worker.num_requests == 0
        return run

    def expected_output(self, num_tokens: int) -> list[int]:
        return [self.worker.token_at(n) for n in range(num_tokens)]
